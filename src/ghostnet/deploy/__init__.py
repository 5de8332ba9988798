"""Deployment: the fused inference form, ONNX / TorchScript / torch.export export, int8 and a latency harness."""
import sys as _sys
import types as _types
import warnings as _warnings
from typing import Any as _Any

from . import fusion as _fusion
from .fusion import (FusedGhostBottleneck, FusedGhostModule, FusedSqueezeExcite, fold_batchnorms, fuse,
                     single_path_ghost_modules)

__all__ = ["FusedGhostBottleneck", "FusedGhostModule", "FusedSqueezeExcite", "fold_batchnorms", "fuse",
           "single_path_ghost_modules"]


class _MovedFuseModule(_types.ModuleType):
    """`ghostnet.deploy.fuse`, the old path of `ghostnet.deploy.fusion`: every name, with a DeprecationWarning."""

    def __getattr__(self, name: str) -> _Any:
        # Module metadata (__file__, __spec__, ...) is not forwarded: tools that scan sys.modules (inspect) would
        # find fusion.py twice and warn on every scan.
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        _warnings.warn("ghostnet.deploy.fuse moved to ghostnet.deploy.fusion (ghostnet.deploy.fuse is the function)",
                       DeprecationWarning, stacklevel=2)
        return getattr(_fusion, name)

    def __dir__(self) -> list:
        return dir(_fusion)


# The module was `ghostnet.deploy.fuse`, a name the `fuse` function shadows as a package attribute (the module was
# reachable only through sys.modules). A file of that name would set the attribute back to a module when imported;
# an entry in sys.modules is found by the import system without touching the attribute, so old imports
# (`from ghostnet.deploy.fuse import example_input_for`, pickles of fused models) keep working and `fuse` stays the
# function.
_sys.modules.setdefault(__name__ + ".fuse", _MovedFuseModule(__name__ + ".fuse", _fusion.__doc__))
