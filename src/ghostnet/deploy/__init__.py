"""Deployment: the fused inference form, ONNX / TorchScript / torch.export export, int8 and a latency harness."""
from .fusion import (FusedGhostBottleneck, FusedGhostModule, FusedSqueezeExcite, fold_batchnorms, fuse,
                     single_path_ghost_modules)

__all__ = ["FusedGhostBottleneck", "FusedGhostModule", "FusedSqueezeExcite", "fold_batchnorms", "fuse",
           "single_path_ghost_modules"]

