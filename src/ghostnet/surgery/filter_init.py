"""Start a Ghost module from a trained convolution's filters (`ghostify(..., init_from_weights=True)`).

The primary convolution keeps the filters of largest L1 norm with their BN statistics, so those channels come out
exactly as before; every other filter becomes a ghost of the kept filter it is most parallel to, a centre-tap cheap
kernel and a cheap BN that rescale the kept map (the derivation is in docs/ghost-twins.md).
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..layers.swap import OrderedGhostModule

__all__ = ["init_from_conv_"]


def _norm_affine(conv: nn.Conv2d, norm: Optional[_BatchNorm], eps: float) -> tuple[torch.Tensor, ...]:
    """(gamma, beta, mean, var, eps) of the eval-mode affine map after `conv`, its bias folded into the mean.

    Without a BN the map is the identity plus the conv's bias (var = 1 - eps, so that sqrt(var + eps) = 1).
    """
    w = conv.weight
    n = conv.out_channels
    bias = conv.bias.detach() if conv.bias is not None else w.new_zeros(n)
    ones, zeros = w.new_ones(n), w.new_zeros(n)
    if norm is None:
        return ones, zeros, -bias, ones - eps, eps
    gamma = norm.weight.detach() if norm.affine else ones
    beta = norm.bias.detach() if norm.affine else zeros
    mean = norm.running_mean if norm.running_mean is not None else zeros
    var = norm.running_var if norm.running_var is not None else ones
    return gamma, beta, mean - bias, var, norm.eps


def _match_ghosts(kept: torch.Tensor, dropped: torch.Tensor, ratio: int) -> list[int]:
    """For each dropped filter, the kept filter it is most parallel to, each kept filter taking at most s-1.

    Ghost slot g of a Ghost module comes from intrinsic map g // (s-1), and only the first len(dropped) slots
    survive the cut to out_chs, so kept filter p has as many slots as g in range(len(dropped)) with g // (s-1) == p.
    """
    capacity = torch.bincount(torch.arange(len(dropped)) // (ratio - 1), minlength=len(kept))
    cos = (dropped @ kept.T) / (dropped.norm(dim=1, keepdim=True) * kept.norm(dim=1)).clamp_min(1e-12)
    cos = cos.abs()
    cos[:, capacity == 0] = -1.0  # a kept filter without slots is never a candidate
    choice = [0] * len(dropped)
    # Greedy: the dropped filters that have the closest partner choose first.
    for j in torch.argsort(cos.max(dim=1).values, descending=True).tolist():
        p = int(cos[j].argmax())
        choice[j] = p
        capacity[p] -= 1
        if capacity[p] == 0:
            cos[:, p] = -1.0
    return choice


@torch.no_grad()
def init_from_conv_(ghost: OrderedGhostModule, conv: nn.Conv2d, norm: Optional[_BatchNorm] = None) -> torch.Tensor:
    """Initialise `ghost` from a trained `conv` (and the BN that followed it); returns the indices of kept filters.

    The primary convolution takes the ceil(n/s) filters of largest L1 norm (as in Li et al.'s filter pruning) with
    their BN statistics, so in eval mode those channels come out exactly as before. Every other filter becomes a
    ghost of the kept filter it is most parallel to: a centre-tap cheap kernel and a cheap BN that rescale the kept
    map, exact when the dropped filter is a multiple of the kept one. `channel_order` puts every channel back at
    its original position.
    """
    if not isinstance(ghost, OrderedGhostModule):
        raise ValueError("init_from_conv_ needs an OrderedGhostModule (ghost_module_like(..., ordered=True))")
    if (ghost.in_chs, ghost.out_chs) != (conv.in_channels, conv.out_channels):
        raise ValueError(f"Ghost module {ghost.in_chs}->{ghost.out_chs} does not fit the convolution "
                         f"{conv.in_channels}->{conv.out_channels}")
    weight = conv.weight.detach()
    primary, primary_bn = ghost.primary_conv[0], ghost.primary_conv[1]
    gamma, beta, mean, var, eps = _norm_affine(conv, norm, primary_bn.eps)

    l1 = weight.abs().flatten(1).sum(dim=1)
    kept = torch.topk(l1, ghost.init_chs).indices.sort().values
    dropped_mask = torch.ones(conv.out_channels, dtype=torch.bool, device=weight.device)
    dropped_mask[kept] = False
    dropped = dropped_mask.nonzero().flatten()

    primary.weight.copy_(weight[kept])
    primary_bn.eps = eps
    primary_bn.weight.copy_(gamma[kept])
    primary_bn.bias.copy_(beta[kept])
    primary_bn.running_mean.copy_(mean[kept])
    primary_bn.running_var.copy_(var[kept])

    order = torch.empty(conv.out_channels, dtype=torch.long, device=weight.device)
    order[kept] = torch.arange(ghost.init_chs, device=weight.device)
    if len(dropped):
        kept_w, dropped_w = weight[kept].flatten(1), weight[dropped].flatten(1)
        choice = _match_ghosts(kept_w.cpu(), dropped_w.cpu(), ghost.ratio)
        cheap, cheap_bn = ghost.cheap_operation[0], ghost.cheap_operation[1]
        centre = ghost.dw_size // 2
        used = Counter()
        slots = []
        for p in choice:
            slots.append(p * (ghost.ratio - 1) + used[p])
            used[p] += 1
        slots_t = torch.tensor(slots, device=weight.device)
        p_t = torch.tensor(choice, device=weight.device)
        i, j = kept[p_t], dropped
        # alpha: least-squares scale with W_j ~ alpha * W_i.
        alpha = (dropped_w * kept_w[p_t]).sum(dim=1) / kept_w[p_t].pow(2).sum(dim=1).clamp_min(1e-12)
        std_i, std_j = (var[i] + eps).sqrt(), (var[j] + eps).sqrt()
        cheap.weight[slots_t] = 0.0
        cheap.weight[slots_t, 0, centre, centre] = 1.0
        # The intrinsic map z_i has mean beta_i and std |gamma_i| under the original statistics; the cheap BN
        # normalises it with those and rescales it into channel j (derivation in docs/ghost-twins.md).
        cheap_bn.running_mean[slots_t] = beta[i]
        cheap_bn.running_var[slots_t] = (gamma[i].pow(2) - cheap_bn.eps).clamp_min(0.0)
        cheap_bn.weight[slots_t] = gamma[j] * torch.sign(gamma[i]) * alpha * std_i / std_j
        cheap_bn.bias[slots_t] = beta[j] + gamma[j] * (alpha * mean[i] - mean[j]) / std_j
        order[dropped] = ghost.init_chs + slots_t
    ghost.channel_order.copy_(order)
    return kept
