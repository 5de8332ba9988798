"""Fine-tuning: where a run's initial weights come from, the data config they bring, loading them with the classifier
resized for the data, and a linear probe's frozen backbone.

`pretrained` (TrainConfig, `ghostnet train --pretrained`) is one of:

- "true": the model's published weights, as `create_model(name, pretrained=True)` loads them (our weights table and
  the one downloader; timm's and torchvision's own loaders for `timm:NAME` / `torchvision:NAME`);
- a weights tag of our table (`timm`, `official`, `mindcv`, `ema`, ...), as `create_model(name, pretrained=TAG)`;
- a checkpoint file, or a URL (fetched through the one downloader: its cache, `GHOSTNET_OFFLINE`), read by
  `ghostnet.load_checkpoint`.

Every weight but the classifier must fit; a classifier of another class count is replaced by a fresh one. The
weights' data config (input size, crop, interpolation, mean/std) is known before anything is built, so the
transforms are made from it without building the model twice.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch.nn as nn

from ..convert.checkpoints import (download_checkpoint, extract_state_dict, in_our_names, load_checkpoint,
                                   looks_like_location, read_checkpoint)
from ..models.registry import classifier_classes, classifier_name
from ..models.spec import ModelSpec, create_from_spec, data_config_of, parse_model_spec
from ..utils import PathLike

#: Words that mean "the published weights" / "no initial weights" in a recipe or on the command line.
PUBLISHED_WORDS = ("true",)
NO_WEIGHTS_WORDS = ("false", "none", "")


def normalise_pretrained(value: Any) -> Optional[str]:
    """A recipe's or caller's `pretrained` as the config stores it: True -> "true", False/"false"/"none" -> None."""
    if isinstance(value, bool):
        return "true" if value else None
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in NO_WEIGHTS_WORDS:
            return None
        return "true" if text.lower() in PUBLISHED_WORDS else text
    return value


def _published(value: str) -> Union[None, bool, str]:
    """True for the default published weights, the tag for tagged ones, None for a file or URL."""
    if value.lower() in PUBLISHED_WORDS:
        return True
    return None if looks_like_location(value) else value


def check_pretrained(model: str, pretrained: str) -> None:
    """Raise ValueError when `pretrained` cannot name weights of `model` (an unknown tag, a model without
    published weights, a tag for a model outside our table); files are checked when the run starts."""
    from ..weights import get_weights

    published = _published(pretrained)
    if published is None:
        return
    spec = parse_model_spec(model)
    if spec.source == "ghostnet":
        get_weights(spec.name, None if published is True else published)
    elif published is not True:
        raise ValueError(f"weights tags are for ghostnet models; {spec.text} takes pretrained 'true' (its "
                         f"{spec.source} default weights), a checkpoint file or a URL, not {pretrained!r}")
    elif spec.source == "import":
        raise ValueError(f"{spec.text}: an imported builder has no published weights; pass a checkpoint file or URL")


@dataclass
class InitialWeights:
    """Where a run's initial weights come from, resolved before anything is built.

    `published` is True or a tag (published weights), `path` a local checkpoint (a URL already downloaded); neither
    for random weights, or when resuming (the checkpoint holds the weights). `data_config` is the model data config
    (timm's `pretrained_cfg` keys) the transforms start from; `source_classes` the class count of the weights'
    classifier where known before loading.
    """

    spec: ModelSpec
    data_config: dict[str, Any]
    published: Union[None, bool, str] = None
    path: Optional[Path] = None
    label: str = ""
    source_classes: Optional[int] = None
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def loads(self) -> bool:
        """True when the model must be initialised from weights."""
        return self.published is not None or self.path is not None


def initial_weights(model: str, pretrained: Optional[str], progress: bool = True,
                    resumed_data_config: Optional[dict[str, Any]] = None) -> InitialWeights:
    """Resolve `pretrained` for `model`: the weights' data config, a URL downloaded (once, into the cache).

    When resuming, pass the data config the run stored (`resumed_data_config`): nothing is loaded then, and the
    run keeps its transforms even if the weights have moved since.
    """
    spec = parse_model_spec(model)
    defaults = data_config_of(spec)
    if resumed_data_config is not None:
        return InitialWeights(spec, {**defaults, **model_data_config(resumed_data_config)})
    if not pretrained:
        return InitialWeights(spec, defaults)
    check_pretrained(model, pretrained)
    published = _published(pretrained)
    if published is not None:
        return _published_weights(spec, published, defaults)
    path = download_checkpoint(pretrained, progress) if "://" in pretrained else Path(pretrained).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"pretrained {pretrained}: no such checkpoint file")
    shapes, stored = _inspect(path)
    label = pretrained if "://" not in pretrained else f"{pretrained} (cached as {path})"
    return InitialWeights(spec, {**defaults, **stored}, path=path, label=label, shapes=shapes)


def _published_weights(spec: ModelSpec, published: Union[bool, str], defaults: dict[str, Any]) -> InitialWeights:
    if spec.source != "ghostnet":  # timm's / torchvision's default weights: their data config is the spec's
        return InitialWeights(spec, defaults, published=True, label=f"{spec.label} default weights",
                              source_classes=defaults.get("num_classes"))
    from ..weights import get_weights

    entry = get_weights(spec.name, None if published is True else published)
    data_config = {**defaults, **{k: v for k, v in entry.data_config.items() if k != "num_classes"}}
    return InitialWeights(spec, data_config, published=published, label=f"published weights {entry.key} "
                          f"({entry.url})", source_classes=entry.data_config.get("num_classes"))


def model_data_config(eval_config: dict[str, Any]) -> dict[str, Any]:
    """A run's stored data config (TransformConfig.eval_dict: img_size, crop_pct, ...) as model data config keys."""
    out = {k: eval_config[k] for k in ("crop_pct", "interpolation") if k in eval_config}
    out.update({k: tuple(eval_config[k]) for k in ("mean", "std") if k in eval_config})
    if eval_config.get("img_size"):
        out["input_size"] = (3, int(eval_config["img_size"]), int(eval_config["img_size"]))
    return out


def _inspect(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """(shape of every weight, under our key names; the data config the file stores, if ghostnet train wrote it)."""
    import json

    obj, metadata = read_checkpoint(path)
    stored: Any = json.loads(metadata["ghostnet.data_config"]) if "ghostnet.data_config" in metadata else \
        (obj.get("model_info") or {}).get("data_config")
    # Foreign formats are renamed on load (load_checkpoint); rename here too, to find their classifier.
    state, _ = in_our_names(extract_state_dict(obj, source=str(path)), path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return shapes, model_data_config(stored) if isinstance(stored, dict) else {}


# ----------------------------------------------------------------------------------------------- the classifier
def replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Give the model a freshly initialised classifier for `num_classes` classes (its own `reset_classifier` where
    it has one, else a new Linear layer in place of the old)."""
    reset = getattr(model, "reset_classifier", None)
    if callable(reset):
        reset(num_classes)
        return
    name = classifier_name(model)
    old = model.get_submodule(name)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr,
            nn.Linear(old.in_features, num_classes, bias=old.bias is not None, device=old.weight.device,
                      dtype=old.weight.dtype))
    if hasattr(model, "num_classes"):
        model.num_classes = num_classes


def load_initial_weights(model: nn.Module, location: PathLike,
                         shapes: Optional[dict[str, tuple[int, ...]]] = None) -> list[str]:
    """Load a checkpoint file or URL for fine-tuning. Every weight must fit (`ghostnet.load_checkpoint`, strict)
    except the classifier: one of another class count is replaced by a fresh one. Returns the names of the
    weights left fresh (the classifier's, when replaced)."""
    replaced = _load_file(model, location, shapes)
    head = classifier_name(model)
    return [n for n, _ in model.get_submodule(head).named_parameters(prefix=head)] if replaced is not None else []


def _load_file(model: nn.Module, location: PathLike, shapes: Optional[dict[str, tuple[int, ...]]]) -> Optional[int]:
    """`load_initial_weights`; returns the class count of the file's classifier when it was replaced, else None."""
    location = str(location)
    path = download_checkpoint(location) if "://" in location else Path(location)
    head = classifier_name(model)
    wanted = classifier_classes(model)
    stored = (shapes if shapes is not None else _inspect(path)[0]).get(f"{head}.weight")
    swap = stored is not None and len(stored) == 2 and stored[0] != wanted
    if swap:
        replace_classifier(model, stored[0])  # load the file whole, then give the model its own head back
    try:
        load_checkpoint(model, path)
    finally:
        if swap:
            replace_classifier(model, wanted)
    return stored[0] if swap else None


def create_initialised(init: InitialWeights, model_kwargs: dict[str, Any],
                       log: Callable[[str], None] = print) -> nn.Module:
    """The model `init.spec` names, built with `model_kwargs` (num_classes: the data's) and initialised from `init`;
    logs where the weights came from and whether the classifier was replaced."""
    num_classes = int(model_kwargs["num_classes"])
    if not init.loads:
        return create_from_spec(init.spec, **model_kwargs)
    if init.path is not None:
        model = create_from_spec(init.spec, **model_kwargs)
        source_classes = _load_file(model, init.path, init.shapes) or num_classes
    elif init.spec.source == "torchvision":
        # torchvision's builders refuse a num_classes other than their weights'; the head is replaced after loading.
        model = create_from_spec(init.spec, pretrained=True, **{k: v for k, v in model_kwargs.items()
                                                                 if k != "num_classes"})
        source_classes = classifier_classes(model)
        if source_classes != num_classes:
            replace_classifier(model, num_classes)
    else:
        # Our hub and timm load the published file whole and put a fresh classifier of num_classes in its place.
        model = create_from_spec(init.spec, pretrained=init.published, **model_kwargs)
        source_classes = init.source_classes or num_classes
    log(f"initialised from {init.label}")
    if source_classes != num_classes:
        log(f"classifier replaced: {source_classes} -> {num_classes} classes (head initialised fresh)")
    else:
        log(f"classifier kept: the weights' {num_classes} classes match the data")
    return model


def freeze_backbone(model: nn.Module) -> list[str]:
    """A linear probe: freeze every parameter but the classifier's; returns the names of those left trainable.
    (The engine also keeps the frozen backbone's BatchNorm in eval mode, so its statistics do not move.)"""
    head = classifier_name(model)
    trainable = []
    for name, p in model.named_parameters():
        keep = name.startswith(head + ".")
        p.requires_grad_(keep)
        if keep:
            trainable.append(name)
    return trainable
