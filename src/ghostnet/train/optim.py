"""Optimizers and the learning-rate schedule.

The schedule is a pure function of the global step (`lr_at`), so a resumed run needs only the step to continue it.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float, wd_norm_bias: bool = False) -> list[dict]:
    """Parameter groups; unless `wd_norm_bias`, 1-D parameters (biases, norm scales) get no weight decay."""
    if wd_norm_bias or weight_decay == 0:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": weight_decay}]
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), AdamW, or TensorFlow-style RMSProp (timm's RMSpropTF, as the v2 recipe uses)."""
    groups = param_groups(model, cfg.weight_decay, cfg.wd_norm_bias)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.opt_eps or 1e-8)
    try:
        from timm.optim import RMSpropTF
    except ImportError:
        raise ValueError("optimizer rmsproptf needs timm (pip install 'ghostnet-torch[timm]')") from None
    # TF's RMSProp: epsilon inside the square root, squares initialised to 1, lr applied inside the momentum buffer.
    return RMSpropTF(groups, lr=cfg.lr, alpha=cfg.rmsprop_alpha, eps=cfg.opt_eps or 1e-3, momentum=cfg.momentum)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate for optimizer step `step` (0-based): linear warmup, then the chosen schedule, times the
    epoch's lr noise where `cfg.lr_noise` asks for it; with `cfg.lr_per_epoch`, the value at the epoch's start."""
    epoch = step // steps_per_epoch
    if cfg.lr_per_epoch:
        step = epoch * steps_per_epoch
    return _scheduled_lr(cfg, step, steps_per_epoch) * (1.0 + lr_noise(cfg, epoch))


def lr_noise(cfg: TrainConfig, epoch: int) -> float:
    """timm's scheduler noise for `epoch` (0 outside the noise range): a normal draw scaled by `lr_noise_std` from a
    generator seeded with `lr_noise_seed + epoch`, redrawn until its magnitude is below `lr_noise_pct`. The
    GhostNetV2 command trains with it (timm's --lr-noise 0.42 0.9)."""
    if not cfg.lr_noise:
        return 0.0
    start = cfg.lr_noise[0] * cfg.epochs
    end = cfg.lr_noise[1] * cfg.epochs if len(cfg.lr_noise) > 1 else math.inf
    if not start <= epoch < end:
        return 0.0
    generator = torch.Generator().manual_seed(cfg.lr_noise_seed + epoch)
    while True:
        noise = torch.randn(1, generator=generator).item() * cfg.lr_noise_std
        if abs(noise) < cfg.lr_noise_pct:
            return noise


def _scheduled_lr(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    epoch = step / steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    if step < warmup_steps:
        return cfg.warmup_lr + (cfg.lr - cfg.warmup_lr) * step / warmup_steps
    if cfg.schedule == "cosine":
        start = 0 if cfg.cosine_from_start else warmup_steps
        t = (step - start) / max(1, cfg.epochs * steps_per_epoch - start)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** math.floor(epoch / cfg.decay_epochs)
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
