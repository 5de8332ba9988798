"""Deployment: the fused inference form, ONNX / TorchScript / torch.export export, int8 and a latency harness."""
from .fuse import FusedGhostBottleneck, FusedGhostModule, FusedSqueezeExcite, fold_batchnorms, fuse

__all__ = ["FusedGhostBottleneck", "FusedGhostModule", "FusedSqueezeExcite", "fold_batchnorms", "fuse"]
