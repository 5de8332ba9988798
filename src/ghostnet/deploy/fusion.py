"""The fused inference form: batch norms folded into convolutions, v3 branches re-parameterized, lean Ghost blocks.

`fuse(model)` works on any model of the registry (and most CNNs):

1. every module with a `reparameterize()` method (GhostNetV3's branches) is re-parameterized;
2. every BatchNorm whose input is the output of a Conv2d, and nothing else, is folded into that conv. The pairs are
   found by running the model once and watching which tensor each op consumes, so no naming convention is
   assumed (`conv1`/`bn1`, Sequential neighbours, ...);
3. Ghost modules, Ghost bottlenecks and SE blocks become `FusedGhostModule` / `FusedGhostBottleneck` /
   `FusedSqueezeExcite`: one forward each, calling convolutions directly instead of through nested containers;
   Identity modules left where batch norms were are dropped from Sequentials. A GhostNetV2/V3 module's DFC
   attention becomes `dfc.DeployDFC`: the same gate with every size a constant of the traced graph, which
   onnxruntime runs in its blocked layout (docs/benchmarks.md, "DFC attention in onnxruntime").

The Ghost module keeps its concat here. Its concat-free single-path form (`FusedGhostModule.to_single_path`,
`single_path_ghost_modules`) duplicates the primary conv's outputs, which eager PyTorch does not repay;
`align.align_channels` uses it for onnxruntime where it pays (`align.MACS_PER_COPIED_CHANNEL`). The
"channel multiplier" form (one grouped conv from the intrinsic maps to both halves) was measured 2-9x slower than
the conv plus concat it replaces: oneDNN's depthwise kernel does not cover multipliers > 1 (docs/deployment.md).
"""
from __future__ import annotations

import copy
from collections import defaultdict
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..layers import GhostBottleneck, GhostBottleneckV3, GhostModule, GhostModuleV3, SqueezeExcite, reparameterize_model
from ..layers.dynamic_conv import DynamicConv2d
from ..layers.helpers import HardSigmoid, bias_or_zeros, conv_from, fuse_conv_bn_weights, identity_kernel
from ..models.registry import input_size_of
from .dfc import DeployDFC

__all__ = ["FusedGhostBottleneck", "FusedGhostModule", "FusedSqueezeExcite", "example_input_for", "fold_batchnorms",
           "fuse", "single_path_ghost_modules"]


def example_input_for(model: nn.Module, batch_size: int = 1, image_size: Optional[int] = None) -> torch.Tensor:
    """A random input batch of the model's configured size (`pretrained_cfg["input_size"]`), on its device."""
    chans, height, width = input_size_of(model, default=None)  # no configured size: a ValueError
    if image_size is not None:
        height = width = image_size
    param = next(model.parameters(), None)
    kwargs = dict(device=param.device, dtype=param.dtype) if param is not None else {}
    return torch.randn(batch_size, chans, height, width, **kwargs)


# --- BatchNorm folding -------------------------------------------------------------------------------------------


class _ConsumerRecorder(TorchFunctionMode):
    """Counts, for every tensor, the ops that read it (ops returning no tensor, such as `.shape`, do not count)."""

    def __init__(self) -> None:
        super().__init__()
        self.consumers: dict[int, int] = defaultdict(int)
        self.keep_alive: list[torch.Tensor] = []  # ids stay unique while the tensors live

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(isinstance(leaf, torch.Tensor) for leaf in tree_leaves(out)):
            for leaf in tree_leaves((args, kwargs)):
                if isinstance(leaf, torch.Tensor):
                    self.consumers[id(leaf)] += 1
        for leaf in tree_leaves(out):
            if isinstance(leaf, torch.Tensor):
                self.keep_alive.append(leaf)
        return out


def _is_foldable_bn(module: nn.Module) -> bool:
    return (isinstance(module, nn.BatchNorm2d) and module.track_running_stats and module.running_mean is not None
            and module.running_var is not None)


def _find_conv_bn_pairs(model: nn.Module, example_input: torch.Tensor) -> list[tuple[nn.Module, nn.BatchNorm2d]]:
    """(conv, bn) pairs where bn reads the conv's output and nothing else does; each module runs exactly once.

    A conv is an nn.Conv2d or a DynamicConv2d (ParameterNet), which folds a batch norm into its experts.
    """
    calls: dict[nn.Module, int] = defaultdict(int)
    conv_of_output: dict[int, nn.Module] = {}
    bn_input: dict[nn.Module, int] = {}

    def after_conv(module, args, output):
        calls[module] += 1
        conv_of_output[id(output)] = module

    def before_bn(module, args):
        calls[module] += 1
        bn_input[module] = id(args[0])

    handles = []
    for module in model.modules():
        if (isinstance(module, nn.Conv2d) and module.padding_mode == "zeros") or isinstance(module, DynamicConv2d):
            handles.append(module.register_forward_hook(after_conv))
        elif _is_foldable_bn(module):
            handles.append(module.register_forward_pre_hook(before_bn))
    recorder = _ConsumerRecorder()
    try:
        with torch.no_grad(), recorder:
            model(example_input)
    finally:
        for handle in handles:
            handle.remove()
    pairs = []
    for bn, tensor_id in bn_input.items():
        conv = conv_of_output.get(tensor_id)
        if conv is not None and calls[conv] == 1 and calls[bn] == 1 and recorder.consumers[tensor_id] == 1:
            pairs.append((conv, bn))
    return pairs


def _replace_modules(model: nn.Module, replacements: dict[nn.Module, nn.Module]) -> None:
    """Swap child modules (by identity) for their replacements, wherever they are attached."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if child in replacements:
                setattr(parent, name, replacements[child])


@torch.no_grad()
def fold_batchnorms(model: nn.Module, example_input: torch.Tensor) -> int:
    """Fold every BatchNorm2d that directly and exclusively follows a Conv2d (or DynamicConv2d) into it, in place;
    returns the count.

    The model must be in eval mode (batch norms use their running statistics). Folded batch norms become
    `nn.Identity`.
    """
    if model.training:
        raise ValueError("fold_batchnorms needs a model in eval mode (call model.eval() first)")
    pairs = _find_conv_bn_pairs(model, example_input)
    for conv, bn in pairs:
        if isinstance(conv, DynamicConv2d):
            conv.fold_batchnorm(bn)
            continue
        weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn)
        conv.weight.copy_(weight)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias.to(conv.weight.dtype))
        else:
            conv.bias.copy_(bias)
    _replace_modules(model, {bn: nn.Identity() for _, bn in pairs})
    return len(pairs)


# --- Lean modules ------------------------------------------------------------------------------------------------


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _strip(seq: nn.Module) -> list[nn.Module]:
    """The modules of a Sequential without its Identities (a lone module is returned as a one-element list)."""
    modules = list(seq) if isinstance(seq, nn.Sequential) else [seq]
    return [m for m in modules if not isinstance(m, nn.Identity)]


def _conv_act(seq: nn.Module) -> Optional[tuple[nn.Conv2d, Optional[nn.Module]]]:
    """(conv, activation or None) when `seq` is a folded Conv [+ activation]; None if anything else is left."""
    modules = _strip(seq)
    if not modules or not isinstance(modules[0], nn.Conv2d) or len(modules) > 2:
        return None
    act = modules[1] if len(modules) == 2 else None
    if act is not None and (isinstance(act, nn.modules.batchnorm._BatchNorm) or any(True for _ in act.parameters())):
        return None
    return modules[0], act


#: Activations with act(act(x)) == act(x): a single-path Ghost module applies the cheap op's to the intrinsic maps too.
_IDEMPOTENT_ACTS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _apply_act(act: Optional[nn.Module], x: torch.Tensor) -> torch.Tensor:
    if act is None:
        return x
    if isinstance(act, nn.ReLU):
        return torch.relu_(x)  # x is a fresh conv output: in place saves an allocation
    return act(x)


class FusedGhostModule(nn.Module):
    """Ghost module in inference form: conv(+bias) -> act, depthwise conv(+bias) -> act, concat, optional DFC gate
    (`short_conv`, a `DeployDFC`)."""

    def __init__(self, primary: nn.Conv2d, primary_act: Optional[nn.Module], cheap: nn.Conv2d,
                 cheap_act: Optional[nn.Module], out_chs: int, short_conv: Optional[DeployDFC]) -> None:
        super().__init__()
        self.primary, self.primary_act = primary, primary_act
        self.cheap, self.cheap_act = cheap, cheap_act
        self.out_chs = out_chs
        self.short_conv = short_conv
        self.sliced = primary.out_channels + cheap.out_channels != out_chs
        self.single_path = False  # see `to_single_path`

    @classmethod
    def from_module(cls, module: nn.Module) -> Optional["FusedGhostModule"]:
        """Build from a GhostModule / re-parameterized GhostModuleV3 whose batch norms are folded, else None."""
        primary, cheap = _conv_act(module.primary_conv), _conv_act(module.cheap_operation)
        if primary is None or cheap is None:
            return None
        short_conv = None
        if module.short_conv is not None:
            convs = _strip(module.short_conv)
            if not all(isinstance(m, nn.Conv2d) for m in convs):
                return None
            short_conv = DeployDFC(*convs)  # the gate in a form runtimes run fast (deploy/dfc.py)
        return cls(primary[0], primary[1], cheap[0], cheap[1], module.out_chs, short_conv)

    def can_be_single_path(self) -> bool:
        """Whether `to_single_path` applies: a dense primary conv; a cheap conv in which each map reads one intrinsic
        map (groups == intrinsic maps), stride 1, zero 'same' padding; and a cheap-op activation that leaves the
        primary's activated output unchanged (none, or the primary's own when it is idempotent)."""
        primary, cheap = self.primary, self.cheap
        same = isinstance(cheap.padding, tuple) and cheap.padding_mode == "zeros" and all(
            p * 2 == d * (k - 1) for p, d, k in zip(cheap.padding, cheap.dilation, cheap.kernel_size))
        acts_ok = self.cheap_act is None or (type(self.cheap_act) is type(self.primary_act)
                                             and isinstance(self.cheap_act, _IDEMPOTENT_ACTS))
        return (not self.single_path and primary.groups == 1 and same and cheap.stride == (1, 1)
                and cheap.groups == cheap.in_channels == primary.out_channels and acts_ok)

    @torch.no_grad()
    def to_single_path(self) -> "FusedGhostModule":
        """Rewrite in place into two convs and no concat: the primary conv computes every intrinsic map twice, once
        for the output and once as the input of its cheap maps, and one depthwise conv then passes the first copies
        through (identity kernels) and applies the cheap kernels to the second. The output is the concat's, channel
        for channel.

        Costs more multiply-adds (the primary conv's duplicated outputs) and saves the concat copy and, in a
        bottleneck's second module, lets a runtime fuse the residual add into the conv; `align_channels` uses it
        where the duplicates mostly fill channels that padding would waste anyway. Raises ValueError where
        `can_be_single_path` is False.
        """
        if not self.can_be_single_path():
            raise ValueError("this Ghost module cannot be rewritten without its concat (see can_be_single_path)")
        primary, cheap = self.primary, self.cheap
        intrinsic = primary.out_channels
        n_cheap = self.out_chs - intrinsic  # cheap maps kept after the slice
        per_map = cheap.out_channels // cheap.in_channels  # cheap maps derived from each intrinsic map
        source = torch.arange(n_cheap, device=primary.weight.device) // per_map
        bias = bias_or_zeros(primary)
        self.primary = conv_from(primary, torch.cat([primary.weight, primary.weight[source]]),
                                 torch.cat([bias, bias[source]]))
        kernels = torch.cat([identity_kernel(intrinsic, intrinsic, cheap.kernel_size, cheap.weight),
                             cheap.weight[:n_cheap]])
        biases = torch.cat([bias.new_zeros(intrinsic), bias_or_zeros(cheap)[:n_cheap]])
        self.cheap = conv_from(cheap, kernels, biases, groups=self.out_chs)
        self.single_path, self.sliced = True, False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = _apply_act(self.primary_act, _conv(self.primary, x))
        if self.single_path:
            out = _apply_act(self.cheap_act, _conv(self.cheap, x1))
        else:
            x2 = _apply_act(self.cheap_act, _conv(self.cheap, x1))
            out = torch.cat([x1, x2], dim=1)
            if self.sliced:
                out = out[:, : self.out_chs]
        return out if self.short_conv is None else self.short_conv(out, x)


class FusedSqueezeExcite(nn.Module):
    """SE with the official hard sigmoid as one `hardsigmoid` op (relu6(x + 3) / 6 in three ops before)."""

    def __init__(self, se: SqueezeExcite) -> None:
        super().__init__()
        self.conv_reduce, self.act1, self.conv_expand = se.conv_reduce, se.act1, se.conv_expand
        self.gate = None if isinstance(se.gate, (HardSigmoid, nn.Hardsigmoid)) else se.gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(x, 1)  # GlobalAveragePool in ONNX: onnxruntime keeps it in its blocked layout
        s = _conv(self.conv_expand, _apply_act(self.act1, _conv(self.conv_reduce, pooled)))
        return x * (F.hardsigmoid(s) if self.gate is None else self.gate(s))


class FusedGhostBottleneck(nn.Module):
    """Ghost bottleneck (v1/v2/v3) in inference form: one forward over fused parts, shortcut as plain convs."""

    def __init__(self, ghost1: FusedGhostModule, conv_dw: Optional[nn.Conv2d], se: Optional[nn.Module],
                 ghost2: FusedGhostModule, shortcut: nn.Sequential) -> None:
        super().__init__()
        self.ghost1, self.conv_dw, self.se, self.ghost2 = ghost1, conv_dw, se, ghost2
        self.shortcut = shortcut

    @classmethod
    def from_module(cls, block: nn.Module) -> Optional["FusedGhostBottleneck"]:
        """Build from a GhostBottleneck / re-parameterized GhostBottleneckV3 whose parts are fused, else None."""
        if not (isinstance(block.ghost1, FusedGhostModule) and isinstance(block.ghost2, FusedGhostModule)):
            return None
        conv_dw = None
        if block.conv_dw is not None:
            folded = _conv_act(nn.Sequential(block.conv_dw, block.bn_dw))
            if folded is None or folded[1] is not None:
                return None
            conv_dw = folded[0]
        shortcut = _strip(block.shortcut)
        if not all(isinstance(m, nn.Conv2d) for m in shortcut):
            return None
        return cls(block.ghost1, conv_dw, block.se, block.ghost2, nn.Sequential(*shortcut))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ghost1(x)
        if self.conv_dw is not None:
            y = _conv(self.conv_dw, y)
        if self.se is not None:
            y = self.se(y)
        y = self.ghost2(y)
        for conv in self.shortcut:
            x = _conv(conv, x)
        return y + x


def _rewrite(model: nn.Module) -> None:
    """Replace Ghost modules, SE blocks and then bottlenecks by their lean forms; drop Identities from Sequentials."""
    replacements: dict[nn.Module, nn.Module] = {}
    for module in model.modules():
        if isinstance(module, (GhostModule, GhostModuleV3)):
            fused = FusedGhostModule.from_module(module)
        elif type(module) is SqueezeExcite:
            fused = FusedSqueezeExcite(module)
        else:
            continue
        if fused is not None:
            replacements[module] = fused
    _replace_modules(model, replacements)
    blocks = {}
    for module in model.modules():
        if isinstance(module, (GhostBottleneck, GhostBottleneckV3)):
            fused = FusedGhostBottleneck.from_module(module)
            if fused is not None:
                blocks[module] = fused
    _replace_modules(model, blocks)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            # Plain Sequentials only: a subclass may have a forward of its own (torchvision's ASPPPooling resizes
            # its output back), which a rebuilt nn.Sequential would lose.
            if type(child) is nn.Sequential and any(isinstance(m, nn.Identity) for m in child) and len(child) > 1:
                kept = _strip(child)
                setattr(parent, name, nn.Sequential(*kept) if kept else nn.Identity())


def fuse(model: nn.Module, example_input: Optional[torch.Tensor] = None, inplace: bool = False,
         channels_last: bool = False) -> nn.Module:
    """The inference form of `model`: re-parameterized, batch norms folded, lean Ghost blocks; eval mode.

    Args:
        model: any registered model (or CNN); it is copied unless `inplace`.
        example_input: a batch the model accepts, used once to find conv -> BN pairs (default: one random image of
            `model.pretrained_cfg["input_size"]`). A small one is enough.
        channels_last: also convert the weights to channels-last memory format (faster with oneDNN and cuDNN; inputs
            in either format are accepted).

    The result computes the same function as `model.eval()` (up to rounding) and keeps its attributes
    (`pretrained_cfg`, `model_name`, ...). It is an ordinary nn.Module: trace, script, export or compile it.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    if getattr(model, "grad_checkpointing", False):
        model.set_grad_checkpointing(False)  # a training-memory setting; tracing through checkpoints fails
    reparameterize_model(model)
    if example_input is None:
        example_input = example_input_for(model)
    fold_batchnorms(model, example_input)
    _rewrite(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.is_fused = True
    return model


def single_path_ghost_modules(model: nn.Module) -> int:
    """Rewrite, in place, every fused Ghost module of `model` that allows it into its concat-free single-path form
    (`FusedGhostModule.to_single_path`); returns how many were rewritten. For runtimes where a concat costs more
    than the duplicated primary outputs; `align_channels` makes this choice per module for onnxruntime."""
    rewritten = 0
    for module in model.modules():
        if isinstance(module, FusedGhostModule) and module.can_be_single_path():
            module.to_single_path()
            rewritten += 1
    return rewritten
