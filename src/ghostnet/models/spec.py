"""One model-spec grammar for every command and API: which model a string names, how to build it, its data config.

    NAME                      a registered ghostnet model (`ghostnet models` lists them); `ghostnet:NAME` too
    timm:NAME                 any timm model (needs the timm extra)
    torchvision:NAME          any torchvision classification model (torchvision.models.get_model)
    package.module:callable   any importable builder, called with the keyword arguments
                              (e.g. torchvision.models:mobilenet_v3_large)
    hf-hub:ORG/NAME[@REV]     a Hugging Face Hub repository in timm's layout (config.json, model.safetensors) whose
                              architecture is one of ours (needs the hub extra)
    local-dir:PATH            a folder in that layout (`ghostnet.save_pretrained` writes one)

`train --model/--teacher`, `eval/predict --model`, `bench` (models and `--peers`) and `profile` (models and
`--compare`) all go through `parse_model_spec` / `create_from_spec`, so one spelling works everywhere.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Union

import torch.nn as nn

from .registry import default_data_config

SOURCES = ("ghostnet", "timm", "torchvision", "hf-hub", "local-dir")
#: Sources served by the registry's source loaders (`registry.set_source_loader`): the name keeps its prefix.
FOLDER_SOURCES = ("hf-hub", "local-dir")
GRAMMAR = "NAME, timm:NAME, torchvision:NAME, hf-hub:ORG/NAME, local-dir:PATH or package.module:callable"
Pretrained = Union[None, bool, str]


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: `source` is ghostnet, timm, torchvision, hf-hub, local-dir or import; `name` the
    rest."""

    text: str
    source: str
    name: str

    @property
    def label(self) -> str:
        """How reports name the model: NAME for ours, timm/NAME, torchvision/NAME, or the spec as given (an import
        path, hf-hub:ORG/NAME, local-dir:PATH)."""
        return self.name if self.source == "ghostnet" else self.text if self.source in ("import",) + FOLDER_SOURCES \
            else f"{self.source}/{self.name}"


def parse_model_spec(text: str) -> ModelSpec:
    """Split a spec into source and name; a prefix that is no known source is an importable module."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"empty model spec; expected {GRAMMAR}")
    prefix, sep, rest = text.partition(":")
    if not sep:
        return ModelSpec(text, "ghostnet", text)
    if not rest:
        raise ValueError(f"model spec {text!r} names no model after ':'; expected {GRAMMAR}")
    if prefix in SOURCES:
        return ModelSpec(text, prefix, rest)
    if not all(part.isidentifier() for part in prefix.split(".")):
        raise ValueError(f"unknown model source {prefix!r} in {text!r}; expected {GRAMMAR}")
    return ModelSpec(text, "import", rest)


def _timm():
    try:
        import timm
    except ImportError:
        raise ImportError("timm: models need timm (pip install 'ghostnet-torch[timm]')") from None
    return timm


def _imported_builder(spec: ModelSpec) -> Any:
    module_name = spec.text.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import {module_name!r} for model {spec.text!r}: {exc}") from exc
    builder: Any = module
    for part in spec.name.split("."):
        builder = getattr(builder, part, None)
    if not callable(builder):
        raise ValueError(f"{spec.text!r} does not name a callable (expected 'package.module:builder')")
    return builder


def create_from_spec(text: Union[str, ModelSpec], pretrained: Pretrained = None, **kwargs: Any) -> nn.Module:
    """Build the model a spec names with `kwargs` (num_classes, ...).

    `pretrained`: None/False for random weights; True (or a tag, for ours) for published weights, or an hf-hub:
    / local-dir: folder's weights; a file for ours and timm's. The model gets `model_name` (the spec as given) and,
    where known, `pretrained_cfg`.
    """
    spec = text if isinstance(text, ModelSpec) else parse_model_spec(text)
    if spec.source == "ghostnet" or spec.source in FOLDER_SOURCES:
        from .registry import create_model

        return create_model(spec.name if spec.source == "ghostnet" else spec.text, pretrained=pretrained, **kwargs)
    if spec.source == "timm":
        timm = _timm()
        if spec.name not in timm.list_models():
            raise ValueError(f"unknown timm model {spec.name!r}")
        file = pretrained if isinstance(pretrained, str) else ""
        model = timm.create_model(spec.name, pretrained=pretrained is True, checkpoint_path=file, **kwargs)
    elif spec.source == "torchvision":
        import torchvision

        if spec.name not in torchvision.models.list_models():
            raise ValueError(f"unknown torchvision model {spec.name!r}")
        if isinstance(pretrained, str):
            raise ValueError(f"{spec.text}: torchvision models take pretrained=True (their default weights), "
                             "not a file")
        model = torchvision.models.get_model(spec.name, weights="DEFAULT" if pretrained else None, **kwargs)
        model.pretrained_cfg = data_config_of(spec)
    else:
        if pretrained not in (None, False):
            raise ValueError(f"{spec.text}: an imported builder cannot load pretrained weights here")
        model = _imported_builder(spec)(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{spec.text!r} returned {type(model).__name__}, not an nn.Module")
    model.model_name = spec.text
    return model


def data_config_of(text: Union[str, ModelSpec]) -> dict[str, Any]:
    """The model's data config (input_size, crop_pct, interpolation, mean, std) without building it.

    torchvision's classification weights are evaluated at 224 with ImageNet statistics and a bilinear resize; an
    imported builder gets the same ImageNet defaults.
    """
    spec = text if isinstance(text, ModelSpec) else parse_model_spec(text)
    if spec.source == "ghostnet":
        from .registry import get_model_entry

        return dict(get_model_entry(spec.name).default_cfg)
    if spec.source in FOLDER_SOURCES:
        from .registry import model_source

        sourced = model_source(spec.text)
        if sourced is None:
            raise ValueError(f"{spec.text}: no reader of {spec.source}: names is registered (import ghostnet does it)")
        return sourced[0].data_config(sourced[1])
    if spec.source == "timm":
        cfg = _timm().get_pretrained_cfg(spec.name)
        if cfg is None:
            raise ValueError(f"unknown timm model {spec.name!r}")
        return cfg.to_dict()
    return default_data_config(interpolation="bilinear")
