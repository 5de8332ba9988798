"""Optimizers and the learning-rate schedule.

The schedule is a pure function of the global step (`lr_at`), so a resumed run needs only the step to continue it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from .config import TrainConfig
from .finetune import classifier_name


#: timm's marker (`MATCH_PREV_GROUP`): a group key whose last element is this joins the group before it.
MATCH_PREVIOUS = 99999.0

GroupKey = tuple[float, ...]


def _matcher_keys(matcher: Any) -> Callable[[str], GroupKey]:
    """A function from a parameter name to its sort key under a `group_matcher()` result: timm's dict of regexes
    (in order: stem, blocks, ... each a regex or a list of (regex, suffix)) or a function of the name. Unmatched
    names sort last (the head)."""
    if callable(matcher):
        def key_of(name: str) -> GroupKey:
            key = matcher(name)
            return tuple(map(float, key)) if isinstance(key, (tuple, list)) else (float(key),)
        return key_of
    rules = []
    for ordinal, spec in enumerate(matcher.values()):
        if spec is None:
            continue
        for regex, suffix in (spec if isinstance(spec, (list, tuple)) else [(spec, None)]):
            rules.append((re.compile(regex), ordinal, tuple(suffix or ())))

    def key_of(name: str) -> GroupKey:
        for regex, ordinal, suffix in rules:
            found = regex.match(name)
            if found:
                groups = tuple(int(g) for g in found.groups() if g is not None)
                return tuple(map(float, (ordinal, *groups, *suffix)))
        return (math.inf,)
    return key_of


def group_ids(model: nn.Module, coarse: bool = True) -> tuple[dict[str, int], int]:
    """(group of every parameter, K) from the model's `group_matcher(coarse=...)` (timm's convention, as timm's
    `group_parameters` reads it): the stem is 0, the stages (coarse) or blocks 1..K-1 in order, and the head (what
    the matcher puts last, and anything it does not match) is K."""
    matcher = getattr(model, "group_matcher", None)
    if not callable(matcher):
        raise ValueError(f"layer_decay needs a model with a group_matcher() that names its stem, stages and head "
                         f"(every ghostnet model and timm's models have one); {type(model).__name__} has none")
    key_of = _matcher_keys(matcher(coarse=coarse))
    keys = {name: key_of(name) for name, _ in model.named_parameters()}
    ids, group = {}, -1
    for key in sorted(set(keys.values())):
        if group < 0 or key[-1] != MATCH_PREVIOUS:
            group += 1
        ids[key] = group
    return {name: ids[key] for name, key in keys.items()}, group


def lr_scales(model: nn.Module, backbone_lr_scale: float = 1.0, layer_decay: Optional[float] = None
              ) -> dict[str, float]:
    """Each parameter's multiple of the scheduled lr: 1 for the classifier and `backbone_lr_scale` for the rest,
    times `layer_decay ** (K - k)` for a parameter of stage k of K (`group_ids`: the stem 0, each stage of the
    model's coarse `group_matcher`, the head K) when `layer_decay` is given."""
    names = [n for n, _ in model.named_parameters()]
    if backbone_lr_scale == 1 and layer_decay is None:
        return dict.fromkeys(names, 1.0)
    head = classifier_name(model) + "."
    ids, last = group_ids(model) if layer_decay is not None else ({}, 0)
    return {n: (1.0 if n.startswith(head) else backbone_lr_scale)
               * (layer_decay ** (last - ids[n]) if layer_decay is not None else 1.0) for n in names}


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """The parameters the model asks to keep out of weight decay (timm's `no_weight_decay()`; none if it has none)."""
    hook = getattr(model, "no_weight_decay", None)
    return set(hook()) if callable(hook) else set()


def param_groups(model: nn.Module, weight_decay: float, wd_norm_bias: bool = False,
                 scales: Optional[dict[str, float]] = None) -> list[dict]:
    """Parameter groups of the trainable parameters; unless `wd_norm_bias`, 1-D parameters (biases, norm scales)
    get no weight decay, nor do those the model's `no_weight_decay()` names. With `scales` (parameter name ->
    multiple of the lr, see `lr_scales`), each group also holds its `lr_scale`, which `set_lr` applies."""
    skip = no_weight_decay_names(model)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def decay_of(name: str, p: torch.Tensor) -> float:
        return 0.0 if name in skip or (p.ndim <= 1 and not wd_norm_bias) else weight_decay

    if scales is None or all(v == 1 for v in scales.values()):
        if weight_decay == 0 or (wd_norm_bias and not skip):
            return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
        decay = [p for n, p in named if decay_of(n, p)]
        no_decay = [p for n, p in named if not decay_of(n, p)]
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups: dict[tuple[float, float], dict] = {}
    for name, p in named:
        key = (scales.get(name, 1.0), decay_of(name, p))
        groups.setdefault(key, {"params": [], "weight_decay": key[1], "lr_scale": key[0]})["params"].append(p)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), AdamW, or TensorFlow-style RMSProp (timm's RMSpropTF, as the v2 recipe uses), over
    `param_groups` with the lr multiples of `cfg.backbone_lr_scale` and `cfg.layer_decay`."""
    groups = param_groups(model, cfg.weight_decay, cfg.wd_norm_bias,
                          lr_scales(model, cfg.backbone_lr_scale, cfg.layer_decay))
    if not any(group["params"] for group in groups):
        raise ValueError(f"{cfg.model} has no trainable parameters")
    for group in groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0)
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
        total = cfg.epochs * steps_per_epoch
        start = max(0 if cfg.cosine_from_start else warmup_steps, round(cfg.cosine_flat * total))
        if step < start:  # the flat part of a flat-cos schedule
            return cfg.lr
        t = (step - start) / max(1, total - start)
        return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule == "multistep":
        return cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** math.floor(epoch / cfg.decay_epochs)
    return cfg.lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group: `lr` times the group's `lr_scale` (1 where it has none)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
