"""Channels-last CPU training of a Ghost module as one autograd function.

Written as modules, a Ghost module's training step is conv, BatchNorm, depthwise conv, BatchNorm and a concat, each
with its own autograd node: the concat copies both halves into a new map, its backward copies the gradient's two
halves out again, the intrinsic maps' two gradients (from the concat and from the cheap operation) are summed in one
more pass, and on 8-channel maps every one of those copies runs on 8-float rows. `ghost_training_forward` computes the
same function with fewer passes over memory: the second BatchNorm writes straight into the output's channel slice;
the backward reads the output gradient's halves where they lie, adds the concat's share into the cheap operation's
input gradient in place; BatchNorms run on ATen's channels-last kernels, channel-folded where the count is no
multiple of the vector (`ghostnet.layers.folded_norm`). Ghost-ResNet-56's step (batch 128, 2 threads, Intel Xeon
AVX-512) ran about 5% faster in an interleaved run, not everywhere (docs/benchmarks.md), so the trainer measures it
(the `channels-last-fused` training layout).

Each convolution's backward runs in the fastest of its exact forms for the shape (the weight gradient of the
transposed problem, the input gradient as a forward convolution, or oneDNN's own), measured once per shape on this
machine and cached (`ghostnet.layers.conv_backward`).

`GhostModule.forward` takes this path by itself when it applies (`ghost_training_spec`): training with gradients,
a channels-last CPU map, a module made of Conv2d + BatchNorm2d (+ ReLU) halves with a depthwise cheap operation and
no DFC gate, no hooks on its parts, no autocast, no graph capture. Everywhere else the modules run as written.
Outputs, gradients and running statistics equal the modules' (float64 checks in tests/test_ghost_training.py).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.nn.modules import module as module_state

from .conv_backward import ConvGeometry, backward_plan, conv_backward
from .folded_norm import (FoldingBatchNorm2d, affine_params, batch_affine, batch_norm_backward, channel_fold,
                          norm_block, normalize, running_factor, update_running_stats)
from .tracing import is_graph_capture

CL = torch.channels_last
_BATCH_NORMS = (nn.BatchNorm2d, FoldingBatchNorm2d)
_ACTIVATIONS = (nn.Identity, nn.ReLU)

__all__ = ["ghost_training_forward", "ghost_training_spec", "has_fusable_ghost_modules", "set_ghost_fusion"]


@dataclass(frozen=True)
class _Spec:
    """What the autograd function needs of the module besides tensors."""

    primary: ConvGeometry
    cheap: ConvGeometry
    relu1: bool
    relu2: bool
    bn1: nn.BatchNorm2d
    bn2: nn.BatchNorm2d


def _train_affine(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                  k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch mean, inverse std, scale and shift of `bn` in training on the channels-last map `x` (statistics on
    its k-folded view); updates `bn`'s running statistics."""
    mean, var, invstd, scale, shift = batch_affine(x, k, weight, bias, bn.eps)
    update_running_stats(bn, mean, var, x.numel() // x.shape[1])
    return mean, invstd, scale, shift


def _norm_train(bn: nn.BatchNorm2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                relu: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Training BatchNorm (then ReLU, in place) of the channels-last map `x` into a new channels-last map; returns
    it, the batch mean and inverse std, and the fold the backward uses. Updates `bn`'s running statistics."""
    k = channel_fold(x.shape[1], x.numel() // x.shape[1])
    if k == 1:  # ATen's own channels-last kernel: statistics, output and running statistics in one call
        factor = running_factor(bn)
        running = (bn.running_mean, bn.running_var) if factor is not None else (None, None)
        y, mean, invstd = torch.native_batch_norm(x, weight, bias, *running, True, factor or 0.0, bn.eps)
    else:
        mean, invstd, scale, shift = _train_affine(bn, x, weight, bias, k)
        y = normalize(x, scale, shift)
    if relu:
        y.clamp_min_(0)
    return y, mean, invstd, k


class _GhostModuleTraining(torch.autograd.Function):
    """cat([bn1(conv(x)), bn2(dwconv(bn1(conv(x))))], 1), each BN (and ReLU) as its module, in fewer passes."""

    @staticmethod
    def forward(ctx, x, w_primary, w1, b1, w_cheap, w2, b2, spec: _Spec):
        x1 = spec.primary.conv(x, w_primary).contiguous(memory_format=CL)
        y1, mean1, invstd1, k1 = _norm_train(spec.bn1, x1, w1, b1, spec.relu1)
        z = spec.cheap.conv(y1, w_cheap).contiguous(memory_format=CL)
        n, init, h, w = y1.shape
        out = torch.empty((n, init + z.shape[1], h, w), dtype=x.dtype, device=x.device, memory_format=CL)
        out_nhwc = out.permute(0, 2, 3, 1)
        # Per position, the output holds init channels of y1, then z's: a write into either slice runs ATen's loop
        # over rows of that many floats, vectorized only where they are a multiple of its vector.
        if spec.relu2 or init % norm_block() or z.shape[1] % norm_block():
            y2, mean2, invstd2, k2 = _norm_train(spec.bn2, z, w2, b2, spec.relu2)
            torch.cat([y1.permute(0, 2, 3, 1), y2.permute(0, 2, 3, 1)], dim=3, out=out_nhwc)
            y2 = y2 if spec.relu2 else None  # the ReLU's backward reads it (the output may change in place later)
        else:  # the second BatchNorm written straight into the output's slice
            y2 = None
            k2 = channel_fold(z.shape[1], z.numel() // z.shape[1])
            mean2, invstd2, scale2, shift2 = _train_affine(spec.bn2, z, w2, b2, k2)
            torch.addcmul(shift2, z.permute(0, 2, 3, 1), scale2, out=out_nhwc[..., init:])
            out_nhwc[..., :init].copy_(y1.permute(0, 2, 3, 1))
        ctx.save_for_backward(x, w_primary, x1, w1, mean1, invstd1, y1, w_cheap, z, w2, mean2, invstd2, y2)
        ctx.spec, ctx.folds = spec, (k1, k2)
        return out

    @staticmethod
    def backward(ctx, grad):
        x, w_primary, x1, w1, mean1, invstd1, y1, w_cheap, z, w2, mean2, invstd2, y2 = ctx.saved_tensors
        spec, (k1, k2) = ctx.spec, ctx.folds
        init = y1.shape[1]
        grad_nhwc = grad.permute(0, 2, 3, 1)
        grad2 = torch.empty_like(z, memory_format=CL)
        grad2.permute(0, 2, 3, 1).copy_(grad_nhwc[..., init:])
        if y2 is not None:
            grad2 = torch.ops.aten.threshold_backward(grad2, y2, 0)
        grad_z, grad_w2, grad_b2 = batch_norm_backward(grad2, z, w2, mean2, invstd2, k2)
        grad_y1, grad_w_cheap = conv_backward(backward_plan(grad_z, y1, w_cheap, spec.cheap), grad_z, y1, w_cheap,
                                              spec.cheap, (True, ctx.needs_input_grad[4]))
        grad_y1 = grad_y1.contiguous(memory_format=CL)
        grad_y1.permute(0, 2, 3, 1).add_(grad_nhwc[..., :init])  # the concat's share, read where it lies
        if spec.relu1:
            grad_y1 = torch.ops.aten.threshold_backward(grad_y1, y1, 0)
        grad_x1, grad_w1, grad_b1 = batch_norm_backward(grad_y1, x1, w1, mean1, invstd1, k1)
        grad_x = grad_w_primary = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            grad_x, grad_w_primary = conv_backward(backward_plan(grad_x1, x, w_primary, spec.primary), grad_x1, x,
                                                   w_primary, spec.primary, ctx.needs_input_grad[:2])
        return grad_x, grad_w_primary, grad_w1, grad_b1, grad_w_cheap, grad_w2, grad_b2, None


def _conv_bn_act(part: nn.Module) -> Optional[tuple[nn.Conv2d, nn.BatchNorm2d, bool]]:
    """(conv, bn, relu) of a Ghost module half that is Conv2d + BatchNorm2d (+ ReLU or Identity), else None."""
    if type(part) is not nn.Sequential or len(part._modules) not in (2, 3):
        return None
    conv, bn, *act = part._modules.values()
    act = act[0] if act else nn.Identity()
    if (type(conv) is not nn.Conv2d or conv.bias is not None or conv.padding_mode != "zeros"
            or isinstance(conv.padding, str) or type(bn) not in _BATCH_NORMS or type(act) not in _ACTIVATIONS):
        return None
    return conv, bn, type(act) is nn.ReLU


def _has_hooks(*modules: nn.Module) -> bool:
    if module_state._global_forward_hooks or module_state._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in modules)


def _fusable_halves(module: nn.Module) -> Optional[tuple[tuple[nn.Conv2d, nn.BatchNorm2d, bool], ...]]:
    """The two halves of a Ghost module whose structure the fused function computes, else None."""
    if (getattr(module, "short_conv", None) is not None or not hasattr(module, "init_chs")
            or module.init_chs + module.new_chs != module.out_chs):
        return None
    first, cheap = _conv_bn_act(module.primary_conv), _conv_bn_act(module.cheap_operation)
    if first is None or cheap is None:
        return None
    conv1, conv2 = first[0], cheap[0]
    if conv1.groups != 1 or conv2.groups != conv2.in_channels or conv2.stride != (1, 1):
        return None
    return first, cheap


def has_fusable_ghost_modules(model: nn.Module) -> bool:
    """Whether `model` has Ghost modules that `set_ghost_fusion` would train as one function."""
    return any(hasattr(m, "fused_training") and _fusable_halves(m) is not None for m in model.modules())


def set_ghost_fusion(model: nn.Module, enabled: bool) -> nn.Module:
    """Train `model`'s Ghost modules as one function each where it applies (`ghost_training_spec`), or as written.
    Off unless set: `ghostnet.analysis.training_layout` measures whether it pays for a model on this machine (on an
    AVX-512 Xeon it made Ghost-ResNet-56's step about 5% faster and GhostNet-1.0's 4% slower to level, run to run).
    Returns `model`."""
    for module in model.modules():
        if hasattr(module, "fused_training"):
            module.fused_training = enabled
    return model


def ghost_training_spec(module: nn.Module, x: torch.Tensor) -> Optional[_Spec]:
    """What `ghost_training_forward` needs to compute `module(x)`, or None where it does not apply (see the module
    docstring; in every such case the caller runs the modules as written)."""
    if (not getattr(module, "fused_training", False)
            or is_graph_capture() or torch.compiler.is_compiling()  # before any look at x: a graph node there
            or not module.training or not torch.is_grad_enabled() or x.device.type != "cpu" or x.dim() != 4
            or x.is_contiguous() or not x.is_contiguous(memory_format=CL) or torch.is_autocast_enabled("cpu")):
        return None
    halves = _fusable_halves(module)
    if halves is None:
        return None
    (conv1, bn1, relu1), (conv2, bn2, relu2) = halves
    if (not bn1.training or not bn2.training
            or _has_hooks(module.primary_conv, module.cheap_operation, conv1, bn1, conv2, bn2)):
        return None
    tensors = [conv1.weight, conv2.weight] + [t for bn in (bn1, bn2) for t in (bn.weight, bn.running_mean)
                                              if t is not None]
    if any(t.dtype != x.dtype or t.device != x.device for t in tensors):
        return None
    if not (x.requires_grad or any(t.requires_grad for t in tensors)):
        return None
    return _Spec(ConvGeometry.of(conv1), ConvGeometry.of(conv2), relu1, relu2, bn1, bn2)


def ghost_training_forward(module: nn.Module, x: torch.Tensor, spec: _Spec) -> torch.Tensor:
    """`module(x)` for a Ghost module, as one autograd function, where `ghost_training_spec(module, x)` gave `spec`."""
    conv1, conv2 = module.primary_conv[0], module.cheap_operation[0]
    return _GhostModuleTraining.apply(x, conv1.weight, *affine_params(spec.bn1, x), conv2.weight,
                                      *affine_params(spec.bn2, x), spec)
