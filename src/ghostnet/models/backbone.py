"""What every network here shares, in timm's model API: dense-prediction taps (`feature_info`, `features_only`,
`out_indices`, `forward_intermediates`, `prune_intermediate_layers`), output stride 8/16 by dilation, the input
check, gradient checkpointing, and the head (`global_pool` of any kind timm's `SelectAdaptivePool2d` takes,
`forward_head(pre_logits=)`, `get_classifier`, `reset_classifier`, `num_features`, `head_hidden_size`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers.checkpointing import checkpointing_active, run_stage
from ..layers.pooling import POOL_TYPES, GlobalPool, canonical_pool_type, pool_feat_mult
from ..layers.tracing import is_symbolic_tracing
from .features import FeatureInfo, FeatureInfoList, Indices, take_indices

__all__ = ["Backbone", "DilationSchedule", "FeatureInfo", "FeatureInfoList", "OUTPUT_STRIDES", "check_io_channels",
           "check_out_indices", "check_output_stride"]

OUTPUT_STRIDES = (8, 16, 32)
#: A stage of `built_stages()`: a module, or modules run one after the other (parts of a flat Sequential, or a pool
#: and a stage) that are not a submodule of their own, so that `torch.fx` sees each under its own name.
Stage = Union[nn.Module, tuple[nn.Module, ...]]


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def check_io_channels(in_chans: int, num_classes: int) -> None:
    if in_chans < 1 or num_classes < 0:
        raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans} and {num_classes}")


def check_out_indices(out_indices: Sequence[int], num_taps: int) -> tuple[int, ...]:
    """`out_indices` as a tuple, or a ValueError unless it is a non-empty selection of the taps."""
    if not out_indices or any(not 0 <= i < num_taps for i in out_indices):
        raise ValueError(f"out_indices must be a non-empty selection of 0..{num_taps - 1}, got {tuple(out_indices)}")
    return tuple(out_indices)


class DilationSchedule:
    """Walks a network's strides and turns those past `output_stride` into dilation, DeepLab style: the layer that
    gives up its stride keeps the old dilation, the layers after it use the new one. Weights are unchanged, so a
    checkpoint loads at every output stride."""

    def __init__(self, output_stride: int, stem_stride: int = 1) -> None:
        self.output_stride = output_stride
        self.net_stride = stem_stride  # the actual total stride so far
        self.table_stride = stem_stride  # the total stride without dilation (which taps are chosen by)
        self.dilation = 1  # of the layers after the last step

    def step(self, stride: int) -> tuple[int, int]:
        """(stride, dilation) of the next layer, whose stride in the table is `stride`."""
        layer_dilation = self.dilation
        self.table_stride *= stride
        if stride > 1 and self.net_stride * stride > self.output_stride:
            self.dilation, stride = self.dilation * stride, 1
        else:
            self.net_stride *= stride
        return stride, layer_dilation


class Backbone(nn.Module):
    """The taps, input check, forward switch and head of a network, in timm's model API.

    A subclass sets `in_chans`, `num_classes`, `drop_rate`, `min_input_size`, `features_only`, `out_indices`,
    `feature_info_all` (every tap), `num_features`, `head_hidden_size`, `grad_checkpointing` and `global_pool` (a
    `GlobalPool`; None with features_only), names its classifier in `classifier_name`, and defines `forward_stem`,
    `built_stages`, `tap_depth`, `_truncate_stages` and `group_matcher`. The default head is pool -> dropout ->
    classifier; a head with more layers overrides `forward_head`, `_pre_logits_width` and `_drop_head_layers`.
    """

    classifier_name = "classifier"
    #: The global pools the head takes (canonical names, "" = none).
    pool_types: tuple[str, ...] = POOL_TYPES

    # ----------------------------------------------------------------------------------------------------- taps
    @property
    def feature_info(self) -> FeatureInfoList:
        """The taps (those of `out_indices` for a features_only model, else all), with timm's accessors."""
        return FeatureInfoList(self.feature_info_all, self.out_indices if self.features_only else None)

    @property
    def default_cfg(self) -> dict:
        """timm's older name of `pretrained_cfg`."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict) -> None:
        self.pretrained_cfg = cfg

    def tap_depth(self, index: int) -> int:
        """How many of `built_stages()` run before tap `index` is taken (0: the stem's output)."""
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        if is_symbolic_tracing():  # shapes are graph nodes there; a traced graph checks nothing
            return
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D batch (N, C, H, W), got a tensor of shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got {x.shape[1]} (input shape "
                             f"{tuple(x.shape)}); build the model with in_chans={x.shape[1]} to accept it")
        if x.shape[-2] < self.min_input_size or x.shape[-1] < self.min_input_size:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]} is too small: this network needs at least "
                             f"{self.min_input_size}x{self.min_input_size} pixels")

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of storing them: less activation memory
        for about one more forward pass of compute; outputs, gradients and BN statistics stay those of a plain step
        (see ghostnet.layers.checkpointing)."""
        self.grad_checkpointing = enable

    def built_stages(self) -> Sequence[Stage]:
        """The stages after the stem, in order (a features_only or pruned model's later stages are not built)."""
        raise NotImplementedError

    def _forward_stage(self, stage: Stage, x: torch.Tensor) -> torch.Tensor:
        if isinstance(stage, tuple):
            if not checkpointing_active(self.grad_checkpointing):
                for layer in stage:
                    x = layer(x)
                return x
            stage = nn.Sequential(*stage)
        return run_stage(stage, x, self.grad_checkpointing)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and every stage: the final map."""
        x = self.forward_stem(x)
        for stage in self.built_stages():
            x = self._forward_stage(stage, x)
        return x

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def _take_taps(self, indices: Indices) -> list[int]:
        built = len(self.built_stages())
        if indices is None:
            indices = self.out_indices if self.features_only else [
                i for i in range(len(self.feature_info_all)) if self.tap_depth(i) <= built]
        taken, _ = take_indices(len(self.feature_info_all), indices)
        missing = [i for i in taken if self.tap_depth(i) > built]
        if missing:
            raise ValueError(f"taps {missing} are not built in this model (the stages after out_indices "
                             f"{self.out_indices} of a features_only model, or after a pruned model's last tap)")
        return taken

    def forward_intermediates(self, x: torch.Tensor, indices: Indices = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False
                              ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's: the maps at taps `indices` (None: every tap, `out_indices` for a features_only model; an int n:
        the last n; a sequence: those taps, negative ones from the end) and, unless `intermediates_only`, the final
        map first (`forward_features`'s; with `stop_early`, the map where the last tap asked for is taken). `norm` is
        accepted as in timm's signature: these networks have no final norm layer."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt must be 'NCHW' (these networks are convolutional), got {output_fmt!r}")
        depths = [self.tap_depth(i) for i in self._take_taps(indices)]
        stages = list(self.built_stages())
        x = self.forward_stem(x)
        maps = {0: x}
        for depth, stage in enumerate(stages[: max(depths)] if stop_early else stages, start=1):
            x = self._forward_stage(stage, x)
            if depth in depths:
                maps[depth] = x
        intermediates = [maps[d] for d in depths]
        return intermediates if intermediates_only else (x, intermediates)

    def prune_intermediate_layers(self, indices: Indices = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's: remove what taps `indices` do not need, the stages after the last of them and (with `prune_head`,
        or when stages go, since the head is sized for the final map) the head; returns the absolute tap indices.
        `prune_norm` is accepted as in timm's signature: there is no final norm layer."""
        taken = self._take_taps(indices)
        last = max(taken)
        depth = self.tap_depth(last)
        truncate = depth < len(self.built_stages())
        if truncate:
            self._truncate_stages(depth)
        if (truncate or prune_head) and not self.features_only:
            self.num_features = self.feature_info_all[last].num_chs
            self._drop_head_layers()
            self.reset_classifier(0, "")
        return taken

    def _truncate_stages(self, depth: int) -> None:
        """Remove every stage after the first `depth` (their parameters with them)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------------------------------- head
    def check_head(self, num_classes: int, global_pool: Optional[str]) -> str:
        """The canonical pool type, or a ValueError for a head that cannot be built."""
        kind = canonical_pool_type(global_pool, self.pool_types)
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if not kind and num_classes > 0:
            raise ValueError(f"global_pool='' leaves the features unpooled, which a classifier cannot take: use "
                             f"num_classes=0 with it (as timm requires), got num_classes={num_classes}")
        return kind

    def _pre_logits_width(self, pool_kind: str) -> int:
        """The classifier's input width with this pool (the pooled features by default)."""
        return self.num_features * pool_feat_mult(pool_kind)

    def _make_classifier(self, in_features: int, num_classes: int) -> nn.Module:
        return nn.Linear(in_features, num_classes) if num_classes > 0 else nn.Identity()

    def _drop_head_layers(self) -> None:
        """Replace the head's layers between the pool and the classifier by Identity (none by default)."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global pool -> dropout -> classifier (pre_logits: before the classifier)."""
        x = self.global_pool(x)
        if self.drop_rate > 0.0:
            x = F.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.get_classifier()(x)

    def get_classifier(self) -> nn.Module:
        return self.get_submodule(self.classifier_name)

    def _set_classifier(self, classifier: nn.Module) -> None:
        parent, _, name = self.classifier_name.rpartition(".")
        setattr(self.get_submodule(parent) if parent else self, name, classifier)

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the classifier (0 removes it), and the global pool when `global_pool` is given ("" removes it,
        with num_classes=0: the head then returns unpooled maps)."""
        if self.features_only:
            raise ValueError("a features_only model has no classifier")
        kind = self.check_head(num_classes, self.global_pool.pool_type if global_pool is None else global_pool)
        if global_pool is not None:
            self.global_pool = GlobalPool(global_pool, flatten=self.global_pool.flatten)
        self.num_classes = num_classes
        self.head_hidden_size = self._pre_logits_width(kind)
        like = next(self.parameters())
        classifier = self._make_classifier(self.head_hidden_size, num_classes).to(like.device, like.dtype)
        self._set_classifier(classifier.train(self.training))

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay beyond the 1-D ones (timm's hook): none here."""
        return set()
