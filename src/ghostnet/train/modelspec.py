"""Deprecated: the model-spec grammar (NAME, timm:NAME, torchvision:NAME, package.module:callable) lives in
`ghostnet.models.spec`; these names are kept so that old imports work."""
from __future__ import annotations

import warnings

from ..models.spec import create_from_spec as create
from ..models.spec import data_config_of as data_defaults

TIMM_PREFIX = "timm:"

warnings.warn("ghostnet.train.modelspec is deprecated; use ghostnet.models.spec (create_from_spec, data_config_of)",
              DeprecationWarning, stacklevel=2)

__all__ = ["TIMM_PREFIX", "create", "data_defaults"]
