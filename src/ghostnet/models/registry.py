"""Model registry: `create_model(name, pretrained=..., **kwargs)` and `list_models(pattern)`, named as in timm."""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

import torch.nn as nn

from ..constants import DEFAULT_INPUT_SIZE, IMAGENET_MEAN, IMAGENET_STD

#: Loads published weights (or a checkpoint file/URL) into a built model: `loader(model, name, pretrained)`.
#: Models know no files or downloads; `ghostnet.hub` (imported with the package) sets it.
PretrainedLoader = Callable[[nn.Module, str, Union[bool, str]], nn.Module]
_pretrained_loader: Optional[PretrainedLoader] = None


def set_pretrained_loader(loader: PretrainedLoader) -> None:
    """Install what `create_model(pretrained=...)` calls (done by `ghostnet.hub` on import)."""
    global _pretrained_loader
    _pretrained_loader = loader


#: Name prefixes that name a model outside the registry ("hf-hub:org/name", "local-dir:PATH"): for each, what
#: `create_model` calls (`create(rest, pretrained, **kwargs)`) and what gives its data config (`data_config(rest)`).
#: Models read no files; `ghostnet.hub_format` (imported with the package) registers them.
@dataclass(frozen=True)
class ModelSource:
    create: Callable[..., nn.Module]
    data_config: Callable[[str], dict]


_model_sources: dict[str, ModelSource] = {}


def set_source_loader(prefix: str, create: Callable[..., nn.Module], data_config: Callable[[str], dict]) -> None:
    """Serve names "PREFIX:rest" with `create(rest, pretrained, **kwargs)` and `data_config(rest)`."""
    _model_sources[prefix] = ModelSource(create, data_config)


def model_source(name: str) -> Optional[tuple[ModelSource, str]]:
    """(its source, the rest of the name) for a name with a registered prefix ("hf-hub:org/name"), else None."""
    prefix, sep, rest = name.partition(":")
    return (_model_sources[prefix], rest) if sep and prefix in _model_sources else None


def default_data_config(**overrides: Any) -> dict[str, Any]:
    """The data config a model carries (timm's `pretrained_cfg` keys): ImageNet 224, crop 0.875, bicubic."""
    cfg = dict(input_size=DEFAULT_INPUT_SIZE, crop_pct=0.875, interpolation="bicubic", mean=IMAGENET_MEAN,
               std=IMAGENET_STD, num_classes=1000, first_conv="conv_stem", classifier="classifier")
    cfg.update(overrides)
    return cfg


@dataclass(frozen=True)
class ModelInfo:
    """What a registered model is, beyond its data config: the capabilities other parts of the package look up."""

    skeleton: str = ""  # the layout its builder makes: "ghostnet", "regnet", "resnet", "cifar_resnet", "vgg"
    dense_backbone: bool = False  # GhostNet's stem, stages and a tap per stride: a backbone for ghostnet.dense


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    default_cfg: dict = field(default_factory=default_data_config)
    description: str = ""
    info: ModelInfo = field(default_factory=ModelInfo)


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: Optional[str] = None, *, skeleton: str = "", dense_backbone: bool = False,
                   **cfg_overrides: Any) -> Callable:
    """Decorator: register a builder under `name` (default: the function's name) with its data config and its
    `ModelInfo` (`skeleton`, `dense_backbone`)."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in _REGISTRY:
            raise ValueError(f"model {key!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[key] = ModelEntry(key, fn, default_data_config(**cfg_overrides), doc[0] if doc else "",
                                    ModelInfo(skeleton, dense_backbone))
        return fn

    return wrap


#: Modules whose import registers the built-in models (their @register_model decorators run on import).
BUILTIN_MODEL_MODULES = ("ghostnet.models.zoo", "ghostnet.models.cifar", "ghostnet.models.resnet",
                         "ghostnet.models.repghost", "ghostnet.models.g_ghost", "ghostnet.models.parameternet")


def _ensure_builtin_models() -> None:
    import importlib

    for module in BUILTIN_MODEL_MODULES:
        importlib.import_module(module)


def list_models(pattern: str = "*", *, skeleton: Optional[str] = None,
                dense_backbone: Optional[bool] = None) -> list[str]:
    """Registered model names matching a shell-style pattern and, where given, a skeleton and dense_backbone; sorted."""
    _ensure_builtin_models()
    return sorted(n for n, e in _REGISTRY.items() if fnmatch.fnmatchcase(n, pattern)
                  and skeleton in (None, e.info.skeleton) and dense_backbone in (None, e.info.dense_backbone))


def model_info(name: str) -> ModelInfo:
    """The `ModelInfo` of a registered model (its skeleton, whether it is a dense-prediction backbone)."""
    return get_model_entry(name).info


def get_model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`; unknown names give a ValueError with close matches."""
    _ensure_builtin_models()
    if name not in _REGISTRY:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} (list_models() gives all {len(_REGISTRY)} names)")
    return _REGISTRY[name]


def create_model(name: str, pretrained: Union[None, bool, str] = None, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    `pretrained`: None/False for random weights; a file path or URL of a checkpoint (loaded with
    `load_checkpoint`); True or a weight tag for the published weights (see docs/model-zoo.md).
    Other keyword arguments go to the model (num_classes, in_chans, drop_rate, features_only, ...).
    A name with a registered source prefix ("hf-hub:org/name", "local-dir:PATH") is built by that source.
    """
    sourced = model_source(name)
    if sourced is not None:
        return sourced[0].create(sourced[1], pretrained, **kwargs)
    entry = get_model_entry(name)
    model = entry.builder(**kwargs)
    cfg = dict(entry.default_cfg)
    if "num_classes" in kwargs:
        cfg["num_classes"] = kwargs["num_classes"]
    if "in_chans" in kwargs:
        cfg["input_size"] = (kwargs["in_chans"],) + tuple(cfg["input_size"][1:])
    model.pretrained_cfg = cfg
    model.model_name = name
    if pretrained is None or pretrained is False:
        return model
    if _pretrained_loader is None:  # only when ghostnet.hub failed to import
        raise ImportError("loading weights needs ghostnet.hub, which is not imported")
    return _pretrained_loader(model, name, pretrained)


def input_size_of(model: nn.Module, default: Optional[tuple[int, int, int]] = DEFAULT_INPUT_SIZE
                  ) -> tuple[int, int, int]:
    """(C, H, W) from the model's `pretrained_cfg["input_size"]` (ours, timm's; timm's older `default_cfg` too);
    `default` when it has none (None: an error)."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("input_size") is not None:
            return tuple(cfg["input_size"])  # type: ignore[return-value]
    if default is None:
        raise ValueError(f"{type(model).__name__} has no pretrained_cfg['input_size']; pass an example input")
    return tuple(default)  # type: ignore[return-value]


def classifier_name(model: nn.Module) -> str:
    """The name of the model's classifier (a Linear layer): its `pretrained_cfg["classifier"]` where that is one
    (ours, timm's), else its last Linear layer (torchvision's `fc`, `classifier.3`, `heads.head`)."""
    name = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(name, str):
        try:
            if isinstance(model.get_submodule(name), nn.Linear):
                return name
        except AttributeError:
            pass
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no classifier (no nn.Linear layer)")
    return linears[-1]


def classifier_classes(model: nn.Module) -> int:
    """The class count of the model's classifier (`classifier_name`)."""
    return model.get_submodule(classifier_name(model)).out_features


def num_classes_of(model: nn.Module) -> int:
    """How many classes the model predicts: its `num_classes` where it says, else its classifier's width."""
    num = getattr(model, "num_classes", None)
    if isinstance(num, int) and num > 0:
        return num
    return classifier_classes(model)
