"""Channel-folded BatchNorm: channels-last CPU training of a BatchNorm whose channels are no multiple of the vector.

ATen's channels-last BatchNorm kernels vectorize along the channels, and a channel count that is no multiple of the
float vector (16 with AVX-512 kernels, 8 with AVX2) drops them onto a path 3-15x slower (torch 2.14, 2 threads,
128x8x32x32 on AVX-512: forward and backward 11.7 ms, against 1.0 ms for the same values in 16 channels). That made
channels-last Ghost-ResNet-56 train at 0.55x ResNet-56's speed: the 8-channel BatchNorms of its first stage took
half of its step (docs/training.md, "The training layout").

A channels-last map (N, C, H, W) is (N*H*W, C) in memory. Viewed as (N*H*W/k, kC), with kC the least common multiple
of C and the vector (`norm_block`), it is a map of kC channels in which channel j holds channel j % C of every k-th
position: a free view, on which ATen's fast kernels run. The statistics of channel c are those of its k folded
channels combined (ATen's statistics kernel on the view); the backward's per-channel sums are ATen's training
backward on the view, summed over the k copies; normalizing and the input gradient are elementwise passes on the
view. The same function as `nn.BatchNorm2d`, running statistics included (float64 checks in
tests/test_folded_norm.py). `set_norm_fold` puts it in a model's BatchNorms; the trainer's channels-last layout does.
"""
from __future__ import annotations

import functools
import math
from typing import Optional

import torch
import torch.nn as nn


@functools.lru_cache(maxsize=None)
def norm_block() -> int:
    """The channel multiple ATen's channels-last BatchNorm kernels need to be fast: its float vector, 16 with AVX-512
    kernels, 8 otherwise (AVX2, and ATen's 256-bit default elsewhere). Measured under `ATEN_CPU_CAPABILITY=avx2`:
    24 and 40 channels run faster plain than folded to 48 and 80, 4, 8 and 12 faster folded."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def norm_fold_factor(bn: nn.Module, x: torch.Tensor) -> int:
    """k for `bn(x)` run channel-folded, or 0 where plain is as fast or the fold does not apply: `bn` a training
    BatchNorm2d (plain or `FoldingBatchNorm2d`), `x` a channels-last (not also NCHW) CPU map of its weights' dtype
    whose channels are no multiple of `norm_block()`, and k dividing N*H*W; not while torch.compile traces
    (Inductor writes its own BatchNorm)."""
    if (type(bn) not in (nn.BatchNorm2d, FoldingBatchNorm2d) or not bn.training or x.device.type != "cpu"
            or x.dim() != 4 or x.shape[1] % norm_block() == 0 or x.is_contiguous()
            or not x.is_contiguous(memory_format=torch.channels_last)
            or any(t is not None and t.dtype != x.dtype for t in (bn.weight, bn.running_mean))
            or torch.compiler.is_compiling()):
        return 0
    k = channel_fold(x.shape[1], x.shape[0] * x.shape[2] * x.shape[3])
    return k if k > 1 else 0


def channel_fold(channels: int, positions: int) -> int:
    """The least k with k * `channels` a multiple of `norm_block()` that divides `positions` (N*H*W), or 1 (no fold:
    the channels already are a multiple, or the positions do not split)."""
    k = norm_block() // math.gcd(channels, norm_block())
    return k if positions % k == 0 else 1


def _rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """The channels-last map `x` as the (N*H*W/k, kC) view of its memory (channel j: channel j % C). One call
    (`as_strided`): this runs a few times per BatchNorm, where each call's overhead counts."""
    n, c, h, w = x.shape
    return x.as_strided((n * h * w // k, k * c), (k * c, 1))


def _rows4d(x: torch.Tensor, k: int) -> torch.Tensor:
    """`_rows` as the (N*H*W/k, kC, 1, 1) map ATen's BatchNorm kernels take (channels-last and NCHW at once)."""
    n, c, h, w = x.shape
    return x.as_strided((n * h * w // k, k * c, 1, 1), (k * c, 1, 1, 1))


@functools.lru_cache(maxsize=None)
def _row_index(channels: int, k: int) -> torch.Tensor:
    return torch.arange(channels).repeat(k)


def _per_row(k: int, *vectors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-channel vectors repeated k times, for the folded view's kC channels: an `index_select` each (a few
    microseconds; `repeat` takes 20, and this runs several times per BatchNorm)."""
    if k == 1:
        return vectors
    index = _row_index(vectors[0].shape[0], k)
    return tuple(v.index_select(0, index) for v in vectors)


def batch_stats(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and biased variance of the channels-last map `x`, by ATen's channels-last statistics kernel on
    its k-folded view (torch.var_mean over the rows is 15x slower)."""
    mean_k, var_k = torch.batch_norm_update_stats(_rows4d(x, k), None, None, 0.0)
    if k == 1:
        return mean_k, var_k
    c = x.shape[1]
    # Equal counts in each folded channel: the variance is the mean of theirs plus that of their means.
    var_of_means, mean = torch.var_mean(mean_k.view(k, c), 0, correction=0)
    return mean, var_k.view(k, c).mean(0) + var_of_means


#: Rows at least this wide for the elementwise passes: a per-channel vector broadcast over narrow rows runs ATen's
#: loop a row at a time (8 or 16 floats), 1.5-2x slower than over rows of a few hundred.
ELEMENTWISE_ROW = 256


def _wide_fold(x: torch.Tensor, k: int) -> int:
    """A multiple of the fold k whose rows are about `ELEMENTWISE_ROW` floats wide and still split the positions."""
    positions = x.numel() // x.shape[1]
    while 2 * k * x.shape[1] <= ELEMENTWISE_ROW and positions % (2 * k) == 0:
        k *= 2
    return k


def batch_affine(x: torch.Tensor, k: int, weight: torch.Tensor, bias: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A training BatchNorm of the channels-last map `x` as a per-channel affine map: the batch mean and biased
    variance (`batch_stats` on the k-folded view), the inverse std, and the scale and shift that `normalize` applies."""
    mean, var = batch_stats(x, k)
    invstd = torch.rsqrt(var + eps)
    scale = weight * invstd
    return mean, var, invstd, scale, torch.addcmul(bias, mean, scale, value=-1)


def normalize(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift per channel (as ATen's inference kernel computes it) of the channels-last map `x`, written to
    a new channels-last map (no view: in-place activations follow)."""
    k = _wide_fold(x, 1)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    scale_k, shift_k = _per_row(k, scale, shift)
    torch.addcmul(shift_k, _rows(x, k), scale_k, out=_rows(y, k))
    return y


def batch_norm_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mean: torch.Tensor,
                        invstd: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The gradients (input, weight, bias) of a training BatchNorm of the channels-last map `x` (batch `mean` and
    `invstd`), on its k-folded view: ATen's channels-last training backward itself where k is 1."""
    grad = grad.contiguous(memory_format=torch.channels_last)
    if k == 1:
        return torch.ops.aten.native_batch_norm_backward(grad, x, weight, None, None, mean, invstd, True, 0.0,
                                                         [True, True, True])
    c = x.shape[1]
    weight_k, mean_k, invstd_k = _per_row(k, weight, mean, invstd)
    # sum(g * xhat) and sum(g) of each folded channel, by ATen's channels-last training backward.
    _, sum_gx, sum_g = torch.ops.aten.native_batch_norm_backward(
        _rows4d(grad, k), _rows4d(x, k), weight_k, None, None, mean_k, invstd_k, True, 0.0, [False, True, True])
    sum_gx, sum_g = sum_gx.view(k, c).sum(0), sum_g.view(k, c).sum(0)
    count = x.numel() // c
    # dx = w * invstd * (g - sum_g / count - (x - mean) * invstd * sum_gx / count), as ATen computes it
    scale = weight * invstd
    xscale = (scale * invstd).mul_(sum_gx).mul_(-1.0 / count)
    shift = (scale * sum_g).mul_(-1.0 / count)
    k = _wide_fold(x, k)
    scale_k, xscale_k, shift_k, mean_k = _per_row(k, scale, xscale, shift, mean)
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    grad_x_rows = torch.sub(_rows(x, k), mean_k, out=_rows(grad_x, k))
    torch.addcmul(shift_k, grad_x_rows, xscale_k, out=grad_x_rows).addcmul_(_rows(grad, k), scale_k)
    return grad_x, sum_gx, sum_g


def affine_params(bn: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`bn`'s weight and bias, or ones and zeros where it has none (affine=False)."""
    weight = bn.weight if bn.weight is not None else like.new_ones(bn.num_features)
    bias = bn.bias if bn.bias is not None else like.new_zeros(bn.num_features)
    return weight, bias


def running_factor(bn: nn.BatchNorm2d) -> Optional[float]:
    """Count this training batch and return the weight of its statistics in `bn`'s running ones, as
    `nn.BatchNorm2d` does (momentum, or 1/batches for momentum=None); None where `bn` keeps no running statistics."""
    if not bn.track_running_stats or bn.running_mean is None:
        return None
    bn.num_batches_tracked.add_(1)
    return 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum


def update_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
    """Fold a training batch's `mean` and biased `var` (over `count` values per channel; tensors without gradient)
    into `bn`'s running statistics, as `nn.BatchNorm2d` does (the running variance is unbiased)."""
    factor = running_factor(bn)
    if factor is not None:
        bn.running_mean.lerp_(mean, factor)
        bn.running_var.lerp_(var * (count / max(count - 1, 1)), factor)


class _FoldedBatchNorm(torch.autograd.Function):
    """Training BatchNorm of a channels-last map on its channel-folded view; returns the output and the batch's mean
    and (biased) variance, for the caller's running statistics."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, k: int):
        mean, var, invstd, scale, shift = batch_affine(x, k, weight, bias, eps)
        y = normalize(x, scale, shift)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.k = k
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _mean_grad, _var_grad):
        x, weight, mean, invstd = ctx.saved_tensors
        return (*batch_norm_backward(grad, x, weight, mean, invstd, ctx.k), None, None)


def folded_batch_norm(bn: nn.BatchNorm2d, x: torch.Tensor, k: int) -> torch.Tensor:
    """`bn(x)` in training mode, computed channel-folded by k (`norm_fold_factor`), running statistics updated as
    `nn.BatchNorm2d` updates them."""
    y, mean, var = _FoldedBatchNorm.apply(x, *affine_params(bn, x), bn.eps, k)
    update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return y


def norm_maybe_folded(bn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`bn(x)`, channel-folded where channels-last CPU training makes ATen's kernel slow (module docstring). One
    opaque node in a `torch.fx` graph: whether to fold depends on the map's layout, which a graph only knows when it
    runs."""
    k = norm_fold_factor(bn, x)
    return folded_batch_norm(bn, x, k) if k else nn.BatchNorm2d.forward(bn, x)


torch.fx.wrap("norm_maybe_folded")


class FoldingBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that trains channel-folded where that is faster (`norm_maybe_folded`); the same parameters,
    buffers and state_dict. `set_norm_fold` turns a model's BatchNorm2d modules into these and back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return norm_maybe_folded(self, x)


def set_norm_fold(model: nn.Module, enabled: bool) -> nn.Module:
    """Make every plain `nn.BatchNorm2d` of `model` a `FoldingBatchNorm2d` (in place: the same modules, parameters
    and buffers; only their class changes), or turn them back. The trainer does it for channels-last CPU training
    (`ghostnet.analysis.training_layout.Layout.apply`); a training loop of your own can call it. Returns `model`."""
    for module in model.modules():
        if type(module) in (nn.BatchNorm2d, FoldingBatchNorm2d):
            module.__class__ = FoldingBatchNorm2d if enabled else nn.BatchNorm2d
    return model
