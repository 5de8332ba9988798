"""Batch-folded convolution: a convolution with fewer than 16 output channels, run on 16 channels by folding samples
into them, for CPU training.

oneDNN's CPU convolutions work on blocks of 16 channels (AVX-512; 8 with AVX2). A convolution whose output has fewer
channels (the 8 intrinsic maps of a 16-channel Ghost module, and their 8 ghosts) is padded to a block by slow reorders
that cost more than the convolution itself, in the backward pass above all (docs/benchmarks.md, "Ghost twins:
training speed"). Folding k = 16 / C_out samples into the channels, (N, C, H, W) -> (N/k, kC, H, W) (a free view of a
contiguous tensor), and running the convolution with k times the groups and the filters repeated k times, computes
each sample with its own group: the same sums of the same products (bit for bit for a depthwise convolution, to float
rounding for a grouped or dense one, whose kernel sums in another order). The weight gradient sums the k copies.

The fold is a pair of custom operators (forward, backward) so that torch.compile treats it as one opaque kernel:
the compiled and the plain run then compute the same numbers, and Inductor cannot rewrite it (its own code for the
folded graph measured 2x slower than the plain convolution's).
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .helpers import conv_output_size

#: oneDNN's channel block on AVX-512 CPUs (AVX2 CPUs use 8, which 16 is a multiple of).
CONV_BLOCK = 16


def foldable(conv: nn.Module) -> bool:
    """Whether `conv` can run batch-folded: a plain zero-padded Conv2d whose output channels (fewer than 16) divide
    16."""
    return (type(conv) is nn.Conv2d and conv.out_channels < CONV_BLOCK and CONV_BLOCK % conv.out_channels == 0
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str))


def fold_factor(conv: nn.Module, x: torch.Tensor) -> int:
    """How many samples to fold into the channels for `conv(x)`: k = 16 / C_out, or 0 where the fold does not apply
    (`conv` not `foldable`, not a contiguous 4-d CPU input, or a batch that k does not divide)."""
    if not foldable(conv) or x.device.type != "cpu" or x.dim() != 4 or not x.is_contiguous():
        return 0
    k = CONV_BLOCK // conv.out_channels
    return k if x.shape[0] % k == 0 else 0


def _folded(x: torch.Tensor, k: int) -> torch.Tensor:
    return x.reshape(x.shape[0] // k, k * x.shape[1], x.shape[2], x.shape[3])


@torch.library.custom_op("ghostnet::folded_conv2d", mutates_args=())
def folded_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: list[int],
                  padding: list[int], dilation: list[int], groups: int, k: int) -> torch.Tensor:
    """F.conv2d(x, weight, bias, stride, padding, dilation, groups) computed on k samples folded into channels."""
    y = F.conv2d(_folded(x, k), weight.repeat(k, 1, 1, 1), None if bias is None else bias.repeat(k),
                 stride, padding, dilation, k * groups)
    return y.reshape(x.shape[0], weight.shape[0], y.shape[2], y.shape[3])


@folded_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, k):
    h = conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    w = conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return x.new_empty(x.shape[0], weight.shape[0], h, w)


@torch.library.custom_op("ghostnet::folded_conv2d_backward", mutates_args=())
def folded_conv2d_backward(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, has_bias: bool,
                           stride: list[int], padding: list[int], dilation: list[int], groups: int, k: int,
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of `folded_conv2d` for x, weight and bias (zeros of the bias's shape where there is none)."""
    c_out = weight.shape[0]
    grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
        _folded(grad.contiguous(), k), _folded(x, k), weight.repeat(k, 1, 1, 1), [k * c_out] if has_bias else None,
        stride, padding, dilation, False, [0, 0], k * groups, [True, True, has_bias])
    grad_b = grad_b.reshape(k, c_out).sum(0) if has_bias else weight.new_zeros(c_out)
    return grad_x.reshape(x.shape), grad_w.reshape(k, *weight.shape).sum(0), grad_b


@folded_conv2d_backward.register_fake
def _(grad, x, weight, has_bias, stride, padding, dilation, groups, k):
    return torch.empty_like(x), torch.empty_like(weight), weight.new_empty(weight.shape[0])


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias, stride, padding, dilation, groups, k = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None
    ctx.args = (stride, padding, dilation, groups, k)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad_x, grad_w, grad_b = folded_conv2d_backward(grad, x, weight, ctx.has_bias, *ctx.args)
    return grad_x, grad_w, grad_b if ctx.has_bias else None, None, None, None, None, None


folded_conv2d.register_autograd(_backward, setup_context=_setup_context)


def batch_folded_conv(conv: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """`conv(x)` computed batch-folded (module docstring), or None where the fold does not apply."""
    k = fold_factor(conv, x)
    if not k:
        return None
    weight, bias = conv.weight, conv.bias
    if torch.is_autocast_enabled("cpu"):
        # Autocast casts a convolution's inputs; a custom op it passes through, so cast here as it would: its
        # backward (not an autocast op) then sees one dtype, and the casts carry the gradients back to float32.
        dtype = torch.get_autocast_dtype("cpu")
        x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
    return folded_conv2d(x, weight, bias, list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups, k)


#: The attribute `set_batch_fold` sets on a (conv, BN, act) Sequential; unset means on.
FOLD_ATTR = "batch_fold"


def _folding(layers: nn.Module) -> bool:
    return (layers.training and torch.is_grad_enabled() and not torch.jit.is_tracing()
            and getattr(layers, FOLD_ATTR, True))


def _fold_sites(model: nn.Module) -> list[nn.Sequential]:
    """The (conv, BN, act) Sequentials of `model` whose conv `folded_forward` may fold."""
    return [m for m in model.modules() if isinstance(m, nn.Sequential) and len(m) and foldable(m[0])]


def set_batch_fold(model: nn.Module, enabled: bool) -> nn.Module:
    """Switch the batch fold of `model`'s CPU training on (the default) or off; both compute the same function, and
    which is faster depends on the CPU (the trainer measures it: `ghostnet.train.layout`). Returns `model`."""
    for layers in _fold_sites(model):
        setattr(layers, FOLD_ATTR, bool(enabled))
    return model


def batch_fold_enabled(model: nn.Module) -> bool:
    """Whether any of `model`'s foldable convolutions has the batch fold on (`set_batch_fold`)."""
    return any(getattr(layers, FOLD_ATTR, True) for layers in _fold_sites(model))


def first_conv_maybe_folded(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """`layers[0](x)`, batch-folded where CPU training allows it. One opaque node in a `torch.fx` graph: whether to
    fold depends on the batch, which a traced graph only knows when it runs (then it decides as the eager model)."""
    y = batch_folded_conv(layers[0], x) if _folding(layers) else None
    return layers[0](x) if y is None else y


torch.fx.wrap("first_conv_maybe_folded")


def folded_forward(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`layers(x)`; in CPU training, a (conv, BN, act) Sequential whose conv has fewer than 16 output channels runs
    the conv batch-folded: faster, and the same function. Eager and compiled runs take the same path (the choice
    depends only on the mode and the shapes); inference and exports keep the plain graph, and so does a `torch.fx`
    graph traced in eval mode (one traced in training mode decides when it runs, `first_conv_maybe_folded`)."""
    if not (isinstance(layers, nn.Sequential) and len(layers) and foldable(layers[0]) and _folding(layers)):
        return layers(x)
    y = first_conv_maybe_folded(layers, x)
    for layer in list(layers)[1:]:
        y = layer(y)
    return y


def has_folded_convs(model: nn.Module) -> bool:
    """Whether training `model` on CPU runs batch-folded convolutions: its weights on the CPU and a Ghost module
    (`primary_conv`, `cheap_operation`) whose conv is `foldable`."""
    first = next(model.parameters(), None)
    if first is None or first.device.type != "cpu":
        return False
    for module in model.modules():
        for name in ("primary_conv", "cheap_operation"):
            layers = getattr(module, name, None)
            if isinstance(layers, nn.Sequential) and len(layers) and foldable(layers[0]):
                return True
    return False


def compile_settings(model: nn.Module) -> contextlib.AbstractContextManager:
    """Inductor settings for compiling `model` (active while it compiles, i.e. during its first steps): for a model
    with batch-folded convolutions, Inductor's layout optimization is off. It converts convolutions to channels-last,
    which the fold (NCHW only) cannot take and in which BatchNorm on 8 channels is slow: without it, Ghost-ResNet-56's
    compiled step went from 0.75x compiled ResNet-56's to 1.06x (docs/benchmarks.md)."""
    if not has_folded_convs(model):
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(layout_optimization=False)
