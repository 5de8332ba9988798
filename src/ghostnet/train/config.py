"""The training configuration: one flat dataclass, every knob visible, filled from a YAML recipe and CLI flags.

Recipes are YAML files whose keys are `TrainConfig` fields (plus `description`); the shipped ones live in
`ghostnet/recipes/`. Unknown keys and wrongly typed values are rejected with a message naming the key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from ..data.transforms import TransformConfig
from .finetune import check_pretrained, normalise_pretrained
from .layout import normalise_channels_last

RECIPE_DIR = Path(__file__).resolve().parent.parent / "recipes"

OPTIMIZERS = ("sgd", "adamw", "rmsproptf")
SCHEDULES = ("cosine", "multistep", "step", "constant")
AMP_MODES = ("none", "bf16", "fp16")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")  # torch.compile's modes
DEVICES = ("auto", "cpu", "cuda")


#: Ranges of numeric settings (a test and how to say it) beside the checks in `validate`; NaN and infinity are refused
#: for every setting. An unset optional setting is not checked.
NUMBER_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"), "weight_decay": (lambda v: v >= 0, ">= 0"),
    "warmup_lr": (lambda v: v >= 0, ">= 0"), "min_lr": (lambda v: v >= 0, ">= 0"),
    "gamma": (lambda v: v > 0, "> 0"), "opt_eps": (lambda v: v > 0, "> 0"),
    "grad_clip": (lambda v: v > 0, "> 0 (leave it unset for no clipping)"),
    "hflip": (lambda v: 0 <= v <= 1, "in [0, 1]"), "random_erasing": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "kd_weight": (lambda v: v >= 0, ">= 0"),
    "betas": (lambda v: all(isinstance(b, (int, float)) and 0 <= b < 1 for b in v), "numbers in [0, 1)"),
    "skip_nonfinite_steps": (lambda v: v >= 0, ">= 0"), "save_every_steps": (lambda v: v >= 0, ">= 0"),
    "workers": (lambda v: v >= 0, ">= 0"),
}


class ConfigError(ValueError):
    """A setting that cannot work; `field` names it, so the message can blame the flag or recipe it came from."""

    def __init__(self, field: Optional[str], message: str) -> None:
        super().__init__(message)
        self.field = field


#: When a recipe's warm-up is as long as the run (a short trial run), it is cut to this share of the run, so that the
#: learning rate reaches its peak and the run actually trains.
SHORT_RUN_WARMUP_SHARE = 0.2


def effective_warmup_epochs(warmup_epochs: float, epochs: int) -> float:
    """The warm-up a run of `epochs` uses: `warmup_epochs`, or SHORT_RUN_WARMUP_SHARE of the run when it is not
    shorter than the run itself."""
    return warmup_epochs if warmup_epochs < epochs else SHORT_RUN_WARMUP_SHARE * epochs


def _f(default: Any, help: str, **kwargs: Any) -> Any:
    """A dataclass field with its help text (shown by `ghostnet train --help`)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, **kwargs})
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    """Every setting of a training run. Batch size and learning rate are global (summed over all processes)."""

    description: str = _f("", "what the recipe is for", cli=False)
    # --- model
    model: str = _f("ghostnet_100", "model spec: NAME (ghostnet models lists them), timm:NAME, torchvision:NAME "
                                    "or package.module:callable")
    model_kwargs: dict = _f({}, "extra model arguments, e.g. {stem_stride: 1, drop_rate: 0.2} (JSON on the CLI)")
    pretrained: Optional[str] = _f(None, "initialise from weights: true (the model's published weights), a weights "
                                         "tag (timm, official, mindcv, ema, ...), a checkpoint file or a URL; the "
                                         "classifier is replaced for the data's classes, and the weights' data "
                                         "config (size, crop, interpolation, mean/std) is used unless set here",
                                   cli_const="true")
    linear_probe: bool = _f(False, "train the classifier only: every other parameter frozen, BatchNorm in eval mode")
    backbone_lr_scale: float = _f(1.0, "learning rate of everything but the classifier, as a fraction of lr")
    layer_decay: Optional[float] = _f(None, "layer-wise lr decay: stage k of K (stem 0, head K) gets "
                                            "lr * layer_decay^(K-k), as in BEiT and timm")
    sync_bn: bool = _f(False, "SyncBatchNorm across processes (CUDA only)")
    freeze_bn: bool = _f(False, "keep BatchNorm layers in eval mode (running statistics frozen)")
    # --- data
    data: Optional[str] = _f(None, "ImageFolder root, folder of .npz shards, or cifar10/cifar100")
    data_dir: Optional[str] = _f(None, "where cifar10/cifar100 are (or are downloaded to)")
    download: bool = _f(False, "download cifar10/cifar100 if missing")
    subset: Optional[int] = _f(None, "train on a fixed pseudo-random selection of N training samples")
    val_subset: Optional[int] = _f(None, "evaluate on a fixed pseudo-random selection of N validation samples")
    skip_bad_images: int = _f(0, "skip up to N unreadable images over the run, each logged with its path and "
                                 "counted in metrics.jsonl; one more stops the run (0: the first one stops it)")
    workers: int = _f(4, "data-loading worker processes per training process")
    preset: str = _f("imagenet", "transform preset: imagenet or cifar")
    img_size: Optional[int] = _f(None, "training/eval image size (default: the model's input size)")
    crop_pct: Optional[float] = _f(None, "eval centre-crop fraction (default: the model's, 0.875)")
    interpolation: Optional[str] = _f(None, "resize interpolation (default: the model's)")
    train_interpolation: Optional[str] = _f(None, "training crop interpolation: as --interpolation (default), one "
                                                  "of its values, or random (bilinear or bicubic per image, timm's "
                                                  "train.py default)")
    mean: Optional[list] = _f(None, "normalization mean (default: the model's)")
    std: Optional[list] = _f(None, "normalization std (default: the model's)")
    scale: list = _f([0.08, 1.0], "RandomResizedCrop area range")
    hflip: float = _f(0.5, "horizontal flip probability")
    color_jitter: float = _f(0.4, "ColorJitter strength (0 = off; ignored with RandAugment)")
    randaugment: Optional[int] = _f(None, "RandAugment magnitude 0..10 (2 ops; timm's scale: 9 = timm's m9)")
    randaugment_impl: str = _f("torchvision", "RandAugment implementation: torchvision, or timm (timm's own, as the "
                                             "official GhostNetV2 command used it; needs timm)")
    randaugment_mstd: float = _f(0.0, "timm RandAugment: standard deviation of the magnitude noise (mstd)")
    random_erasing: float = _f(0.0, "RandomErasing probability")
    re_mode: str = _f("pixel", "RandomErasing fill: pixel (noise) or const")
    padding: int = _f(4, "cifar preset: padding before the random crop")
    # --- optimization
    epochs: int = _f(100, "training epochs")
    batch_size: int = _f(256, "global batch size (split evenly over processes)")
    optimizer: str = _f("sgd", f"one of {', '.join(OPTIMIZERS)}")
    lr: float = _f(0.1, "peak learning rate (for the global batch)")
    momentum: float = _f(0.9, "SGD / RMSProp momentum")
    nesterov: bool = _f(True, "Nesterov momentum (SGD)")
    weight_decay: float = _f(1e-4, "weight decay")
    wd_norm_bias: bool = _f(False, "apply weight decay to normalization weights and biases too")
    opt_eps: Optional[float] = _f(None, "optimizer epsilon (AdamW 1e-8, RMSProp-TF 1e-3 by default)")
    betas: list = _f([0.9, 0.999], "AdamW betas")
    rmsprop_alpha: float = _f(0.9, "RMSProp-TF smoothing constant")
    schedule: str = _f("cosine", f"one of {', '.join(SCHEDULES)}")
    warmup_epochs: float = _f(0.0, "linear warmup length in epochs (fractions allowed)")
    warmup_lr: float = _f(0.0, "learning rate at the start of warmup")
    min_lr: float = _f(0.0, "cosine: final learning rate")
    milestones: list = _f([], "multistep: epochs at which lr is multiplied by gamma")
    decay_epochs: float = _f(1.0, "step: multiply lr by gamma every this many epochs")
    gamma: float = _f(0.1, "multistep/step decay factor")
    cosine_flat: float = _f(0.0, "cosine: hold the peak lr until this fraction of the run before annealing "
                                 "(fastai's flat-cos schedule; its Imagenette baseline uses 0.72); 0 anneals from the "
                                 "warmup's end")
    cosine_from_start: bool = _f(False, "cosine: count it from step 0, the warmup replacing its start (timm's "
                                        "train.py), instead of from the end of the warmup")
    lr_per_epoch: bool = _f(False, "hold the lr for a whole epoch at its value at the epoch's start (timm's "
                                   "epoch-stepped schedulers) instead of updating it every step")
    lr_noise: Optional[list] = _f(None, "timm's lr noise: [start, end] fractions of the epochs (or [start]) in which "
                                        "each epoch's lr is multiplied by 1 + a clipped normal draw")
    lr_noise_pct: float = _f(0.67, "lr noise: draws are redrawn until |noise| < this")
    lr_noise_std: float = _f(1.0, "lr noise: standard deviation of the draw")
    lr_noise_seed: int = _f(42, "lr noise: seed (each epoch draws from seed + epoch)")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy")
    grad_clip: Optional[float] = _f(None, "clip the gradient norm to this value")
    skip_nonfinite_steps: int = _f(0, "skip (do not apply) up to N optimizer steps whose loss or clipped gradient "
                                      "norm is NaN/inf, as fp16 grad scalers do; the next one stops the run "
                                      "(0: the first stops it)")
    ema_decay: Optional[float] = _f(None, "keep an EMA of the weights with this decay, e.g. 0.9999")
    amp: str = _f("none", f"mixed precision: {', '.join(AMP_MODES)} (fp16 needs CUDA)")
    channels_last: str = _f("auto", "memory layout of the training steps: true (channels-last), false (NCHW), or "
                                    "auto: the faster of the two (and of the batch fold on or off, for models that "
                                    "have one) by a few timed steps at the start, cached per CPU, model, batch and "
                                    "threads (docs/training.md)", cli_const="true", cli_negative="false",
                                metavar="auto|true|false")
    compile: str = _f("none", f"torch.compile the training model: {', '.join(COMPILE_MODES)} (the first steps "
                               "compile; evaluation runs uncompiled)")
    grad_checkpointing: bool = _f(False, "recompute each stage's activations in the backward pass: less memory, "
                                         "one more forward pass of compute, same results")
    # --- distillation
    teacher: Optional[str] = _f(None, "teacher model spec: NAME, timm:NAME, torchvision:NAME or "
                                       "package.module:callable")
    teacher_pretrained: Optional[str] = _f(None, "teacher weights: a file, or 'true' for published weights")
    kd_weight: float = _f(1.0, "weight of the soft-target loss (hard-label loss has weight 1)")
    kd_temperature: float = _f(1.0, "distillation temperature")
    # --- run
    seed: int = _f(0, "random seed")
    deterministic: bool = _f(False, "torch.use_deterministic_algorithms (slower on GPU)")
    device: str = _f("auto", f"one of {', '.join(DEVICES)}")
    output: str = _f("runs/train", "output folder (checkpoints, metrics, plots)")
    save_every_steps: int = _f(0, "also save the resumable checkpoint every N steps (0: once per epoch)")
    eval_every: int = _f(1, "evaluate every N epochs (and after the last)")
    log_every_steps: int = _f(0, "log the mean training loss and the lr every N steps into metrics.jsonl's 'steps' "
                                 "(0: about 20 points per epoch)")
    progress: bool = _f(True, "show progress bars")
    tensorboard: bool = _f(False, "also log to TensorBoard (needs the tensorboard package)")
    plots: bool = _f(True, "write PNG curves at the end")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (a ValueError naming the field) for values that cannot work."""
        choices = {"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "amp": AMP_MODES, "device": DEVICES,
                   "compile": COMPILE_MODES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(name, f"{name} must be one of {', '.join(allowed)}, "
                                        f"got {getattr(self, name)!r}")
        self._validate_numbers()
        try:
            self.channels_last = normalise_channels_last(self.channels_last)
        except ValueError as exc:
            raise ConfigError("channels_last", str(exc)) from None
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every": self.eval_every}
        if self.log_every_steps < 0:
            raise ConfigError("log_every_steps", f"log_every_steps must be >= 0, got {self.log_every_steps}")
        if self.skip_bad_images < 0:
            raise ConfigError("skip_bad_images", f"skip_bad_images must be >= 0, got {self.skip_bad_images}")
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(name, f"{name} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ConfigError("lr", f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing", f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.ema_decay is not None and not 0 < self.ema_decay < 1:
            raise ConfigError("ema_decay", f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.warmup_epochs < 0:  # longer than the run is allowed: effective_warmup_epochs scales it down
            raise ConfigError("warmup_epochs", f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 <= self.cosine_flat < 1:
            raise ConfigError("cosine_flat", f"cosine_flat must be in [0, 1), got {self.cosine_flat}")
        if self.schedule == "step" and self.decay_epochs <= 0:
            raise ConfigError("decay_epochs", f"decay_epochs must be > 0, got {self.decay_epochs}")
        if sorted(self.milestones) != list(self.milestones):
            raise ConfigError("milestones", f"milestones must be increasing, got {self.milestones}")
        if self.lr_noise is not None and not (1 <= len(self.lr_noise) <= 2 and all(0 <= f for f in self.lr_noise)):
            raise ConfigError("lr_noise", f"lr_noise must be [start] or [start, end] fractions of the epochs, "
                                          f"got {self.lr_noise}")
        if self.lr_noise_pct <= 0:
            raise ConfigError("lr_noise_pct", f"lr_noise_pct must be > 0, got {self.lr_noise_pct}")
        if self.kd_temperature <= 0:
            raise ConfigError("kd_temperature", f"kd_temperature must be > 0, got {self.kd_temperature}")
        self._validate_finetuning()
        # Building the transform config checks preset, interpolation and erasing mode.
        self.transform_config()

    def _validate_numbers(self) -> None:
        """Every number finite, and the optimizer's and counters' settings in their ranges."""
        for f in dataclasses.fields(self):
            _check_finite(f.name, getattr(self, f.name))
        for name, (ok, accepted) in NUMBER_RANGES.items():
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(name, f"{name} must be {accepted}, got {value}")

    def _validate_finetuning(self) -> None:
        self.pretrained = normalise_pretrained(self.pretrained)  # True/False from Python or YAML
        if self.pretrained is not None:
            try:
                check_pretrained(self.model, self.pretrained)
            except ValueError as exc:
                raise ConfigError("pretrained", f"pretrained: {exc}") from None
        if not self.backbone_lr_scale > 0:
            raise ConfigError("backbone_lr_scale", f"backbone_lr_scale must be > 0, got {self.backbone_lr_scale} "
                                                   "(linear_probe freezes the backbone)")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError("layer_decay", f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.linear_probe and (self.backbone_lr_scale != 1 or self.layer_decay is not None):
            raise ConfigError("linear_probe", "linear_probe freezes the backbone: backbone_lr_scale and layer_decay "
                                              "would have nothing to scale; drop them or linear_probe")

    def transform_config(self, model_cfg: Optional[dict] = None) -> TransformConfig:
        """The transform settings, taking unset sizes/normalization from the model's data config."""
        return TransformConfig.from_model_cfg(
            model_cfg or {}, preset=self.preset, img_size=self.img_size or None,
            mean=tuple(self.mean) if self.mean else None, std=tuple(self.std) if self.std else None,
            crop_pct=self.crop_pct or None, interpolation=self.interpolation or None,
            scale=tuple(self.scale), hflip=self.hflip, color_jitter=self.color_jitter, randaugment=self.randaugment,
            randaugment_impl=self.randaugment_impl, randaugment_mstd=self.randaugment_mstd,
            train_interpolation=self.train_interpolation,
            random_erasing=self.random_erasing, re_mode=self.re_mode, padding=self.padding)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only (stored in checkpoints loaded with weights_only=True)."""
        return dataclasses.asdict(self)


def config_fields() -> dict[str, dataclasses.Field]:
    """The fields of TrainConfig by name."""
    return {f.name: f for f in dataclasses.fields(TrainConfig)}


_HINTS = typing.get_type_hints(TrainConfig)


def _check_type(name: str, value: Any) -> Any:
    hint = _HINTS[name]
    optional = typing.get_origin(hint) is Union and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    if value is None:
        if optional:
            return None
        raise ValueError(f"{name} cannot be empty")
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    ok = isinstance(value, base) and not (base in (int, float) and isinstance(value, bool))
    if not ok:
        raise ValueError(f"{name} must be {base.__name__}, got {type(value).__name__} {value!r}")
    return value


def _check_finite(name: str, value: Any) -> None:
    """Refuse NaN and infinity in a float setting or a list of numbers (`--lr nan` would train nothing, silently)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        what = "hold finite numbers" if isinstance(value, (list, tuple)) else "be a finite number"
        raise ConfigError(name, f"{name} must {what}, got {value!r}")


#: Where a setting came from, for error messages: a label, or a function of (key, value) giving one (the CLI's
#: names the flag, e.g. "--epochs 0").
Source = Union[str, Callable[[str, Any], str]]


def make_config(values: dict[str, Any], source: str = "config", overrides: Optional[dict[str, Any]] = None,
                overrides_source: Source = "overrides") -> TrainConfig:
    """Build a TrainConfig from `values` with `overrides` on top, rejecting unknown keys (with suggestions), wrong
    types and values that cannot work. Each error names where the bad value came from: `source` for `values`,
    `overrides_source` for `overrides`."""
    overrides = dict(overrides or {})

    def blame(key: Optional[str]) -> str:
        if key not in overrides:
            return source
        return overrides_source(key, overrides[key]) if callable(overrides_source) else overrides_source

    fields = config_fields()
    merged = {**values, **overrides}
    unknown = [k for k in merged if k not in fields]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{blame(unknown[0])}: unknown key(s) {', '.join(hints)}")
    checked = {}
    for key, value in merged.items():
        if key == "pretrained":
            value = normalise_pretrained(value)  # a YAML `pretrained: true` is the word true
        try:
            if key == "channels_last":  # recipes and checkpoints before "auto" hold booleans
                value = normalise_channels_last(value)
            checked[key] = _check_type(key, value)
        except ValueError as exc:
            raise ConfigError(key, f"{blame(key)}: {exc}") from None
    try:
        return TrainConfig(**checked)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{blame(exc.field)}: {exc}") from None
    except ValueError as exc:  # from the transform settings; the message names the setting
        raise ValueError(f"{source}: {exc}" if not overrides else str(exc)) from None


def list_recipes() -> dict[str, str]:
    """Shipped recipe names and their one-line descriptions."""
    import yaml

    out = {}
    for path in sorted(RECIPE_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        out[path.stem] = str(data.get("description", "")).strip().splitlines()[0] if data.get("description") else ""
    return out


def recipe_path(name_or_file: str) -> Path:
    """The YAML file of a shipped recipe name, or the given file."""
    path = Path(name_or_file).expanduser()
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{name_or_file}: no such recipe file")
        return path
    shipped = RECIPE_DIR / f"{name_or_file}.yaml"
    if not shipped.is_file():
        names = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))
        close = difflib.get_close_matches(name_or_file, names, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"unknown recipe {name_or_file!r}{hint}; shipped recipes: {', '.join(names)}")
    return shipped


def read_recipe(name_or_file: str) -> dict[str, Any]:
    """The raw key/value mapping of a recipe (yaml.safe_load), checked to be a mapping."""
    import yaml

    path = recipe_path(name_or_file)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a mapping of settings, got {type(data).__name__}")
    return data


def load_recipe(name_or_file: str, overrides: Optional[dict[str, Any]] = None,
                overrides_source: Source = "overrides") -> TrainConfig:
    """A TrainConfig from a shipped recipe name or a YAML file, with `overrides` applied on top."""
    values = read_recipe(name_or_file)
    source = str(recipe_path(name_or_file))
    make_config(values, source)  # report errors in the recipe itself before blaming the overrides
    return make_config(values, source, overrides, overrides_source)
