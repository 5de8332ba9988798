"""Dynamic convolution (ParameterNet, Han et al. CVPR 2024; CondConv, Yang et al. 2019): K expert kernels mixed per
sample by a routing function of the input.

`DynamicConv2d(x) = conv(x, sum_k r_k(x) W_k)` with `r(x) = sigmoid(Linear(GAP(x)))`: K times the weights of one
convolution, but per image the multiply-adds of one convolution plus the mixing (K x the kernel's size) and the
routing (a global average pool and a C_in x K linear layer). The routing weights do not sum to 1 (sigmoid, not
softmax), which is why a folded batch norm's shift becomes a separate, unmixed bias (`fold_batchnorm`).

Key names and layouts are those of the official ParameterNet code (huawei-noah/Efficient-AI-Backbones
`parameternet_pytorch/cv/parameternet.py`, whose `DynamicConv` wraps timm's `CondConv2d`): `routing.weight` (K, C_in),
`routing.bias` (K,), `cond_conv.weight` (K, C_out * C_in/groups * kh * kw), `cond_conv.bias` (K, C_out) when the
experts have biases. Checkpoints of the official network, or of timm's `CondConv2d`, load unchanged.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .helpers import same_padding
from .tracing import is_symbolic_tracing

IntPair = Union[int, tuple[int, int]]

#: How `CondConv2d` computes its output: "grouped" mixes one kernel per sample and runs a single grouped conv over
#: the batch (timm's CondConv2d; the fast eager form), "traceable" never lets a shape depend on the batch size (a 1x1
#: dense conv becomes a batched matmul with the mixed kernel, any other conv computes every expert's output and mixes
#: those), "auto" (default) picks "traceable" while tracing, scripting, compiling or exporting, "grouped" otherwise
#: and inside `static_batch_capture()`.
IMPLEMENTATIONS = ("auto", "grouped", "traceable")

_capture = threading.local()  # .static_batch: depth of this thread's nested static_batch_capture() blocks


def _static_batch() -> bool:
    return getattr(_capture, "static_batch", 0) > 0


@contextlib.contextmanager
def static_batch_capture() -> Iterator[None]:
    """Within this block a graph recorded from the model serves one batch size only (an ONNX file without a dynamic
    batch, a static-shape program), so "auto" keeps the grouped form while capturing: groups x batch is a constant
    then, and every conv costs one kernel's multiply-adds instead of the traceable form's K for convs other than
    1x1 (ParameterNet-600M: 590M MACs against 709M, 0.74x the latency in onnxruntime at batch 1; docs/benchmarks.md).
    A file recorded this way accepts no other batch size."""
    _capture.static_batch = getattr(_capture, "static_batch", 0) + 1
    try:
        yield
    finally:
        _capture.static_batch -= 1


def _pair(value: IntPair, what: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
        raise ValueError(f"{what} must be an int >= {minimum} or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def _graph_capture() -> bool:
    """True while a tracer, TorchScript, dynamo or torch.export records the forward: the grouped form's group count
    (groups x batch) would be frozen into the graph, and ONNX's Conv takes its group count as a constant."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    if compiler is None:
        return False
    return bool(compiler.is_compiling() or getattr(compiler, "is_exporting", lambda: False)())


class CondConv2d(nn.Module):
    """K expert kernels mixed by routing weights given with the input (timm's `CondConv2d` layout and init).

    `forward(x, routing_weights)`: x (B, C_in, H, W), routing_weights (B, K); sample b is convolved with
    `sum_k routing_weights[b, k] * W_k` (and the experts' biases mixed the same way).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair = 3, stride: IntPair = 1,
                 padding: Optional[IntPair] = None, dilation: IntPair = 1, groups: int = 1, bias: bool = False,
                 num_experts: int = 4) -> None:
        super().__init__()
        if in_channels < 1 or out_channels < 1 or groups < 1:
            raise ValueError(f"channels and groups must be positive, got in_channels={in_channels}, "
                             f"out_channels={out_channels}, groups={groups}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be divisible "
                             f"by groups ({groups})")
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be a positive integer, got {num_experts!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.groups, self.num_experts = groups, num_experts
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        if padding is None:  # "same" at stride 1, as timm's default padding for a symmetric kernel
            padding = tuple(same_padding(k, d) for k, d in zip(self.kernel_size, self.dilation))
        self.padding = _pair(padding, "padding", 0)
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(num_experts, math.prod(self.weight_shape)))
        self.bias = nn.Parameter(torch.empty(num_experts, out_channels)) if bias else None
        self.impl = "auto"
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Each expert initialised as nn.Conv2d initialises its kernel (timm's CondConv2d does the same)."""
        for expert in self.weight:
            nn.init.kaiming_uniform_(expert.view(self.weight_shape), a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
            nn.init.uniform_(self.bias, -bound, bound)

    def expert_weights(self) -> torch.Tensor:
        """The K kernels as (K, C_out, C_in/groups, kh, kw) (a view of `weight`)."""
        return self.weight.view(self.num_experts, *self.weight_shape)

    def mixed_weight(self, routing_weights: torch.Tensor) -> torch.Tensor:
        """Per-sample kernels (B, C_out, C_in/groups, kh, kw) for routing weights (B, K)."""
        return torch.matmul(routing_weights, self.weight).view(-1, *self.weight_shape)

    def mixed_bias(self, routing_weights: torch.Tensor) -> Optional[torch.Tensor]:
        """Per-sample biases (B, C_out), or None when the experts have none."""
        return None if self.bias is None else torch.matmul(routing_weights, self.bias)

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        if self.impl not in IMPLEMENTATIONS:
            raise ValueError(f"impl must be one of {IMPLEMENTATIONS}, got {self.impl!r}")
        if is_symbolic_tracing():
            return cond_conv_call(self, x, routing_weights)
        if self.impl == "traceable" or (self.impl == "auto" and _graph_capture() and not _static_batch()):
            return self._forward_traceable(x, routing_weights)
        return self._forward_grouped(x, routing_weights)

    def _forward_grouped(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """One grouped conv over the batch: sample b's channels are groups b*G .. b*G+G-1 with its own kernel."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        b, c, h, w = x.shape
        if tuple(routing_weights.shape) != (b, self.num_experts):
            raise ValueError(f"routing weights must have shape ({b}, {self.num_experts}) for this batch, got "
                             f"{tuple(routing_weights.shape)}")
        weight = self.mixed_weight(routing_weights).reshape(b * self.out_channels, *self.weight_shape[1:])
        bias = self.mixed_bias(routing_weights)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, None if bias is None else bias.reshape(-1),
                       self.stride, self.padding, self.dilation, self.groups * b)
        return out.view(b, self.out_channels, out.shape[-2], out.shape[-1])

    def _forward_traceable(self, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
        """The same function with the batch only ever in a leading -1 dimension (for ONNX, TorchScript, export)."""
        if self.kernel_size == (1, 1) and self.groups == 1 and self.padding == (0, 0):
            # A 1x1 conv is a matmul per sample: the mixed kernel, and exactly one conv's multiply-adds.
            if self.stride != (1, 1):
                x = x[:, :, :: self.stride[0], :: self.stride[1]]
            h, w = x.shape[-2], x.shape[-1]
            kernel = torch.matmul(routing_weights, self.weight).view(-1, self.out_channels, self.in_channels)
            out = torch.matmul(kernel, x.flatten(2)).view(-1, self.out_channels, h, w)
        else:
            # conv(x, sum_k r_k W_k) = sum_k r_k conv(x, W_k): all experts as one conv (K x the multiply-adds),
            # ordered group-major so that each group's K x C_out/G outputs read that group's inputs.
            k, g = self.num_experts, self.groups
            per_group = self.out_channels // g
            experts = self.expert_weights().view(k, g, per_group, *self.weight_shape[1:]).transpose(0, 1)
            out = F.conv2d(x, experts.reshape(g * k * per_group, *self.weight_shape[1:]), None, self.stride,
                           self.padding, self.dilation, g)
            h, w = out.shape[-2], out.shape[-1]
            out = out.view(-1, g, k, per_group, h, w) * routing_weights.view(-1, 1, k, 1, 1, 1)
            out = out.sum(2).view(-1, self.out_channels, h, w)
        bias = self.mixed_bias(routing_weights)
        return out if bias is None else out + bias.view(-1, self.out_channels, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"num_experts={self.num_experts}, bias={self.bias is not None}")


def cond_conv_call(module: CondConv2d, x: torch.Tensor, routing_weights: torch.Tensor) -> torch.Tensor:
    """`module(x, routing_weights)` as one opaque node of a `torch.fx` graph: the grouped form's group count is the
    batch size, known when the graph runs, where this picks the form the eager model picks (so both compute the same
    numbers; tracing the traceable form instead would sum the experts' outputs in another order)."""
    return module(x, routing_weights)


torch.fx.wrap("cond_conv_call")


class DynamicConv2d(nn.Module):
    """ParameterNet's dynamic convolution: `cond_conv(x, sigmoid(routing(GAP(x))))`, official key names.

    Args:
        in_chs, out_chs, kernel_size, stride, dilation, groups: as nn.Conv2d.
        padding: default "same" at stride 1 (`dilation * (k - 1) // 2`), the official code's value everywhere.
        bias: give the experts biases (mixed like the kernels); the official network has none.
        num_experts: K, 4 in ParameterNet.

    `bias` (the attribute) is an unmixed output bias, None until `fold_batchnorm` creates it.
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: IntPair = 1, stride: IntPair = 1,
                 padding: Optional[IntPair] = None, dilation: IntPair = 1, groups: int = 1, bias: bool = False,
                 num_experts: int = 4) -> None:
        super().__init__()
        self.cond_conv = CondConv2d(in_chs, out_chs, kernel_size, stride, padding, dilation, groups, bias,
                                    num_experts)
        self.routing = nn.Linear(in_chs, num_experts)
        self.register_parameter("bias", None)

    in_channels = property(lambda self: self.cond_conv.in_channels)
    out_channels = property(lambda self: self.cond_conv.out_channels)
    kernel_size = property(lambda self: self.cond_conv.kernel_size)
    stride = property(lambda self: self.cond_conv.stride)
    padding = property(lambda self: self.cond_conv.padding)
    dilation = property(lambda self: self.cond_conv.dilation)
    groups = property(lambda self: self.cond_conv.groups)
    num_experts = property(lambda self: self.cond_conv.num_experts)

    def routing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B, K) expert weights for input x: sigmoid of a linear layer on the global average pool."""
        return torch.sigmoid(self.routing(F.adaptive_avg_pool2d(x, 1).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked before the routing layer fails with a matmul error; not while tracing, where shapes are traced values.
        if not (_graph_capture() or is_symbolic_tracing()) and (x.ndim != 4 or x.shape[1] != self.in_channels):
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}")
        out = self.cond_conv(x, self.routing_weights(x))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    @torch.no_grad()
    def to_static(self, routing_weights: torch.Tensor) -> nn.Conv2d:
        """The ordinary Conv2d this layer computes for one set of routing weights (K,) or (1, K), e.g. those of
        `routing_weights(x)` for a single image x; biases (mixed and folded) included."""
        r = routing_weights.reshape(1, -1)
        if r.shape[1] != self.num_experts:
            raise ValueError(f"expected {self.num_experts} routing weights, got shape {tuple(routing_weights.shape)}")
        cc = self.cond_conv
        r = r.to(cc.weight)
        bias = cc.mixed_bias(r)
        bias = None if bias is None else bias[0]
        if self.bias is not None:
            bias = self.bias.clone() if bias is None else bias + self.bias
        conv = nn.Conv2d(cc.in_channels, cc.out_channels, cc.kernel_size, cc.stride, cc.padding, cc.dilation,
                         cc.groups, bias=bias is not None, device=cc.weight.device, dtype=cc.weight.dtype)
        conv.weight.copy_(cc.mixed_weight(r)[0])
        if bias is not None:
            conv.bias.copy_(bias)
        return conv

    @torch.no_grad()
    def fold_batchnorm(self, bn: nn.BatchNorm2d) -> None:
        """Fold an eval-mode batch norm that follows this layer into it, in place.

        BN is per-channel affine, so scaling every expert (kernel and bias) by BN's scale is exact whatever the
        routing; BN's shift cannot go into the experts (sigmoid routing weights do not sum to 1), so it becomes
        the unmixed `bias`.
        """
        if bn.num_features != self.out_channels or bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"cannot fold {bn} into a dynamic conv with {self.out_channels} output channels")
        cc = self.cond_conv
        scale = (bn.running_var + bn.eps).rsqrt()
        if bn.affine:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale + (bn.bias if bn.affine else 0.0)
        cc.weight.copy_((cc.expert_weights() * scale.view(1, -1, 1, 1, 1)).view_as(cc.weight))
        if cc.bias is not None:
            cc.bias.mul_(scale)
        if self.bias is not None:
            shift = shift + self.bias * scale
        self.bias = nn.Parameter(shift.to(cc.weight.dtype))

    def extra_repr(self) -> str:
        return f"unmixed_bias={self.bias is not None}"
