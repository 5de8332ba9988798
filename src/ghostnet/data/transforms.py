"""Transform presets built from torchvision's v2 transforms.

- "imagenet": RandomResizedCrop, flip, ColorJitter or RandAugment, RandomErasing; evaluation resizes the short side
  to size / crop_pct and takes the centre crop (the models' `crop_pct`, 0.875 for GhostNet).
- "cifar": pad-and-crop and flip (He et al.); evaluation uses the image as it is (resized only if its size differs).

All random choices draw from torch's global generator, which the loader seeds per sample (see loader.py), so
augmentation does not depend on worker count, world size or where a resumed run starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import torch

from ..constants import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD

PRESETS = ("imagenet", "cifar")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
RE_MODES = ("pixel", "const")
RANDAUGMENT_LEVELS = 10  # magnitudes 0..10, as in the RandAugment paper and timm
RANDAUGMENT_IMPLS = ("torchvision", "timm")
RANDOM_INTERPOLATIONS = ("bilinear", "bicubic")  # what timm's "random" training interpolation chooses from
EVAL_KEYS = ("preset", "img_size", "crop_pct", "interpolation", "mean", "std")  # what evaluation needs


@dataclass(frozen=True)
class TransformConfig:
    """Everything the presets need; `TrainConfig.transform_config()` fills it from a recipe.

    The defaults are those of a model's data config (`ghostnet.models.default_data_config`): ImageNet 224, crop
    0.875, bicubic, ImageNet mean/std; `from_model_cfg` replaces them with a model's own.
    """

    preset: str = "imagenet"
    img_size: int = DEFAULT_INPUT_SIZE[-1]
    mean: Sequence[float] = IMAGENET_MEAN
    std: Sequence[float] = IMAGENET_STD
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    train_interpolation: Optional[str] = None  # training resize: None (as `interpolation`), one of those, or "random"
    scale: Sequence[float] = (0.08, 1.0)
    ratio: Sequence[float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.4
    randaugment: Optional[int] = None  # magnitude 0..10; two ops per image as in RandAugment's paper and timm's "m9"
    randaugment_impl: str = "torchvision"  # or "timm": timm's own RandAugment, as the official v2 command used it
    randaugment_mstd: float = 0.0  # timm only: standard deviation of the per-op magnitude noise ("mstd0.5")
    random_erasing: float = 0.0
    re_mode: str = "pixel"
    padding: int = 4

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"unknown transform preset {self.preset!r}; expected one of {PRESETS}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unknown interpolation {self.interpolation!r}; expected one of {INTERPOLATIONS}")
        if self.re_mode not in RE_MODES:
            raise ValueError(f"unknown random-erasing mode {self.re_mode!r}; expected one of {RE_MODES}")
        if self.train_interpolation not in (None, "random", *INTERPOLATIONS):
            raise ValueError(f"train_interpolation must be 'random' or one of {INTERPOLATIONS}, got "
                             f"{self.train_interpolation!r}")
        if self.randaugment_impl not in RANDAUGMENT_IMPLS:
            raise ValueError(f"randaugment_impl must be one of {RANDAUGMENT_IMPLS}, got {self.randaugment_impl!r}")
        if self.randaugment_mstd < 0 or (self.randaugment_mstd and self.randaugment_impl != "timm"):
            raise ValueError(f"randaugment_mstd (magnitude noise) needs randaugment_impl 'timm' and must be >= 0, got "
                             f"{self.randaugment_mstd} with {self.randaugment_impl!r}")
        if self.randaugment is not None and not 0 <= self.randaugment <= RANDAUGMENT_LEVELS:
            raise ValueError(f"randaugment magnitude must be in 0..{RANDAUGMENT_LEVELS}, got {self.randaugment}")
        if self.img_size < 1 or not 0 < self.crop_pct <= 1:
            raise ValueError(f"img_size must be >= 1 and crop_pct in (0, 1], got {self.img_size} and {self.crop_pct}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(self.mean)} and {list(self.std)}")

    @classmethod
    def from_model_cfg(cls, model_cfg: Mapping[str, Any], **overrides: Any) -> "TransformConfig":
        """Settings from a model's data config (timm's pretrained_cfg keys: input_size, mean, std, crop_pct,
        interpolation); `overrides` that are not None win, other fields keep their defaults."""
        values: dict[str, Any] = {"img_size": int(model_cfg["input_size"][-1])} if "input_size" in model_cfg else {}
        values.update({k: model_cfg[k] for k in ("crop_pct", "interpolation") if k in model_cfg})
        values.update({k: tuple(model_cfg[k]) for k in ("mean", "std") if k in model_cfg})
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_eval_dict(cls, data_config: Mapping[str, Any], img_size: Optional[int] = None) -> "TransformConfig":
        """The inverse of `eval_dict` (optionally at another image size); unknown keys are ignored."""
        values = {k: data_config[k] for k in EVAL_KEYS if k in data_config}
        if img_size:
            values["img_size"] = img_size
        return cls(**values)

    def eval_dict(self) -> dict[str, Any]:
        """The evaluation settings as plain types: what checkpoints store as their `data_config`."""
        return {k: list(v) if k in ("mean", "std") else v for k, v in ((k, getattr(self, k)) for k in EVAL_KEYS)}


def _interpolation(name: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(name)


def _to_normalized_tensor(cfg: TransformConfig) -> list:
    from torchvision.transforms import v2

    return [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(cfg.mean), list(cfg.std))]


def _random_resized_crop(cfg: TransformConfig):
    """RandomResizedCrop with the training interpolation; "random" picks bilinear or bicubic per image (timm's
    train.py default)."""
    from torchvision.transforms import v2

    def crop(name: str):
        return v2.RandomResizedCrop(cfg.img_size, scale=tuple(cfg.scale), ratio=tuple(cfg.ratio),
                                    interpolation=_interpolation(name))

    if cfg.train_interpolation == "random":
        return v2.RandomChoice([crop(name) for name in RANDOM_INTERPOLATIONS])
    return crop(cfg.train_interpolation or cfg.interpolation)


def train_transform(cfg: TransformConfig):
    """The training-time augmentation of `cfg.preset`."""
    from torchvision.transforms import v2

    interp = _interpolation(cfg.interpolation)
    if cfg.preset == "cifar":
        ops = [v2.Resize(cfg.img_size, interpolation=interp),
               v2.RandomCrop(cfg.img_size, padding=cfg.padding)]
    else:
        ops = [_random_resized_crop(cfg)]
    if cfg.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.randaugment is not None and cfg.randaugment_impl == "timm":
        ops.append(_timm_randaugment(cfg))
    elif cfg.randaugment is not None:
        # Its rotations and shears take only nearest/bilinear on tensors (the .npz data sets), so bicubic becomes
        # bilinear here, for PIL images too, so that both kinds of data get the same augmentation.
        affine_interp = interp if cfg.interpolation == "nearest" else _interpolation("bilinear")
        # Magnitudes on the 0-10 scale of the RandAugment paper and timm ("m9" = 90% of each op's range), not
        # torchvision's default 0-30 (31 bins), on which 9 would be a third of timm's strength.
        ops.append(v2.RandAugment(num_ops=2, magnitude=cfg.randaugment, num_magnitude_bins=RANDAUGMENT_LEVELS + 1,
                                  interpolation=affine_interp))
    elif cfg.color_jitter > 0:
        ops.append(v2.ColorJitter(cfg.color_jitter, cfg.color_jitter, cfg.color_jitter))
    ops += _to_normalized_tensor(cfg)
    if cfg.random_erasing > 0:
        # "pixel" fills with per-pixel normal noise (timm's --remode pixel); "const" with zeros (the mean).
        ops.append(v2.RandomErasing(cfg.random_erasing, value="random" if cfg.re_mode == "pixel" else 0))
    return v2.Compose(ops)


class _OnPILImages:
    """Runs a PIL-only transform (timm's RandAugment) on PIL images and on image tensors (the .npz data sets)."""

    def __init__(self, transform) -> None:
        self.transform = transform

    def __call__(self, image):
        if isinstance(image, torch.Tensor):
            from torchvision.transforms import v2

            return v2.PILToTensor()(self.transform(v2.ToPILImage()(image)))
        return self.transform(image)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.transform!r})"


def _timm_randaugment(cfg: TransformConfig):
    """timm's RandAugment, set up as timm's training transform sets it up ("rand-m{M}[-mstd{S}]", its defaults
    otherwise: 2 ops, each applied with probability 0.5). It draws from Python's and NumPy's generators, which the
    loader seeds per sample as it seeds torch's."""
    try:
        from timm.data.auto_augment import rand_augment_transform
        from timm.data.transforms import str_to_pil_interp
    except ImportError as exc:
        raise ValueError("randaugment_impl 'timm' needs timm (pip install timm, or the [timm] extra)") from exc
    config = f"rand-m{cfg.randaugment}" + (f"-mstd{cfg.randaugment_mstd:g}" if cfg.randaugment_mstd else "")
    hparams = {"translate_const": int(cfg.img_size * 0.45),
               "img_mean": tuple(min(255, round(255 * m)) for m in cfg.mean)}
    train_interpolation = cfg.train_interpolation or cfg.interpolation
    if train_interpolation != "random":  # without it, timm's ops pick bilinear or bicubic at random, as timm does
        hparams["interpolation"] = str_to_pil_interp(train_interpolation)
    return _OnPILImages(rand_augment_transform(config, hparams))


def eval_transform(cfg: TransformConfig):
    """The deterministic evaluation transform of `cfg.preset`."""
    from torchvision.transforms import v2

    interp = _interpolation(cfg.interpolation)
    if cfg.preset == "cifar":
        ops = [v2.Resize(cfg.img_size, interpolation=interp), v2.CenterCrop(cfg.img_size)]
    else:
        resize = int(cfg.img_size / cfg.crop_pct)  # floor, as timm and the official validate.py (224 -> 256)
        ops = [v2.Resize(resize, interpolation=interp), v2.CenterCrop(cfg.img_size)]
    return v2.Compose(ops + _to_normalized_tensor(cfg))
