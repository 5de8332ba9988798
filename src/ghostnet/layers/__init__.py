"""Layers: the Ghost module and everything GhostNet is built from."""
from .bottleneck import GhostBottleneck, make_shortcut
from .ghost import (CHEAP_OPS, CheapOpFactory, GhostModule, depthwise_cheap_op, dfc_attention, ghost_channels,
                    group_cheap_op, pointwise_cheap_op)
from .helpers import ConvBnAct, fuse_conv_bn_weights, hard_sigmoid, make_divisible
from .reparam import GhostBottleneckV3, GhostModuleV3, fuse_branches, reparameterize_model
from .squeeze_excite import SE_GATES, ClipGate, SqueezeExcite

__all__ = [
    "CHEAP_OPS", "CheapOpFactory", "ConvBnAct", "GhostBottleneck", "GhostBottleneckV3", "GhostModule",
    "GhostModuleV3", "SE_GATES", "ClipGate", "SqueezeExcite", "depthwise_cheap_op", "dfc_attention", "fuse_branches",
    "fuse_conv_bn_weights", "ghost_channels", "group_cheap_op", "hard_sigmoid", "make_divisible",
    "make_shortcut", "pointwise_cheap_op", "reparameterize_model",
]
