"""Model names the trainer accepts: a registered ghostnet model, or `timm:NAME` for any timm model.

timm models train with the same recipe and loop, which is how peers are compared side by side (benchmarks/).
"""
from __future__ import annotations

from typing import Any

import torch.nn as nn

TIMM_PREFIX = "timm:"


def _timm():
    try:
        import timm
    except ImportError:
        raise ValueError("timm: models need timm (pip install 'ghostnet-torch[timm]')") from None
    return timm


def create(spec: str, pretrained: Any = None, **kwargs: Any) -> nn.Module:
    """Build `spec` with `kwargs`; `pretrained` is a checkpoint file, True for published weights, or None."""
    if spec.startswith(TIMM_PREFIX):
        timm = _timm()
        name = spec[len(TIMM_PREFIX):]
        if name not in timm.list_models():
            raise ValueError(f"unknown timm model {name!r}")
        file = pretrained if isinstance(pretrained, str) else ""
        model = timm.create_model(name, pretrained=pretrained is True, checkpoint_path=file, **kwargs)
        model.model_name = spec
        return model
    from ..models import create_model

    return create_model(spec, pretrained=pretrained, **kwargs)


def data_defaults(spec: str) -> dict[str, Any]:
    """The model's data config (input_size, crop_pct, interpolation, mean, std) without building it."""
    if spec.startswith(TIMM_PREFIX):
        cfg = _timm().get_pretrained_cfg(spec[len(TIMM_PREFIX):])
        if cfg is None:
            raise ValueError(f"unknown timm model {spec[len(TIMM_PREFIX):]!r}")
        return cfg.to_dict()
    from ..models import get_model_entry

    return dict(get_model_entry(spec).default_cfg)
