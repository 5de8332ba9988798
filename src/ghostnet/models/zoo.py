"""The registered GhostNet builders, named as in timm."""
from __future__ import annotations

from typing import Any

from .ghostnet import GhostNet
from .registry import register_model


def _ghostnet(version: str, width: float, **kwargs: Any) -> GhostNet:
    return GhostNet(version=version, width=width, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnet_050(**kwargs: Any) -> GhostNet:
    """GhostNet 0.5x (paper: 2.6M params, 42M MACs, 66.2% top-1)."""
    return _ghostnet("v1", 0.5, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnet_100(**kwargs: Any) -> GhostNet:
    """GhostNet 1.0x (paper: 5.2M params, 141M MACs, 73.9% top-1)."""
    return _ghostnet("v1", 1.0, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnet_130(**kwargs: Any) -> GhostNet:
    """GhostNet 1.3x (paper: 7.3M params, 226M MACs, 75.7% top-1)."""
    return _ghostnet("v1", 1.3, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv2_100(**kwargs: Any) -> GhostNet:
    """GhostNetV2 1.0x (6.1M params, 167M MACs, 75.3% top-1)."""
    return _ghostnet("v2", 1.0, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv2_130(**kwargs: Any) -> GhostNet:
    """GhostNetV2 1.3x (8.9M params, 269M MACs, 76.9% top-1)."""
    return _ghostnet("v2", 1.3, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv2_160(**kwargs: Any) -> GhostNet:
    """GhostNetV2 1.6x (12.3M params, 399M MACs, 77.8% top-1)."""
    return _ghostnet("v2", 1.6, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv3_050(**kwargs: Any) -> GhostNet:
    """GhostNetV3 0.5x, training form (2.86M params, 49.6M MACs after reparameterize())."""
    return _ghostnet("v3", 0.5, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv3_100(**kwargs: Any) -> GhostNet:
    """GhostNetV3 1.0x, training form (77.1% top-1; 6.15M params, 167M MACs after reparameterize())."""
    return _ghostnet("v3", 1.0, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv3_130(**kwargs: Any) -> GhostNet:
    """GhostNetV3 1.3x, training form (79.1% top-1)."""
    return _ghostnet("v3", 1.3, **kwargs)


@register_model(skeleton="ghostnet", dense_backbone=True)
def ghostnetv3_160(**kwargs: Any) -> GhostNet:
    """GhostNetV3 1.6x, training form (80.4% top-1)."""
    return _ghostnet("v3", 1.6, **kwargs)


# PaddleClas's GhostNet: the v1 network with PaddleClas's SE (clip gate, in_chs // 4) and a batch norm in the head, the
# form its published weights (0.5x, 1.0x, 1.3x and a distilled 1.3x) need; see ghostnet.convert.paddle. PaddleClas
# evaluates with OpenCV's bilinear resize of the short side to 256 and a 224 centre crop.
PADDLE_VARIANT = dict(se_gate="clip", se_divisor=1, head_norm=True)


@register_model(interpolation="bilinear", skeleton="ghostnet", dense_backbone=True)
def ghostnet_050_paddle(**kwargs: Any) -> GhostNet:
    """GhostNet 0.5x in PaddleClas's form (PaddleClas: 66.8% top-1)."""
    return _ghostnet("v1", 0.5, **PADDLE_VARIANT, **kwargs)


@register_model(interpolation="bilinear", skeleton="ghostnet", dense_backbone=True)
def ghostnet_100_paddle(**kwargs: Any) -> GhostNet:
    """GhostNet 1.0x in PaddleClas's form (PaddleClas: 74.0% top-1)."""
    return _ghostnet("v1", 1.0, **PADDLE_VARIANT, **kwargs)


@register_model(interpolation="bilinear", skeleton="ghostnet", dense_backbone=True)
def ghostnet_130_paddle(**kwargs: Any) -> GhostNet:
    """GhostNet 1.3x in PaddleClas's form (PaddleClas: 75.7% top-1, 79.4% distilled)."""
    return _ghostnet("v1", 1.3, **PADDLE_VARIANT, **kwargs)
