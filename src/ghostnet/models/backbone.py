"""What the ImageNet backbones share (GhostNet and the networks on its skeleton, G-GhostNet), in timm's conventions:
dense-prediction taps (`feature_info`, `features_only`, `out_indices`), output stride 8/16 by dilation, the input
check, gradient checkpointing and the classifier slot.
"""
from __future__ import annotations

from dataclasses import dataclass

from typing import Sequence

import torch
import torch.nn as nn

from ..layers.checkpointing import run_stage

OUTPUT_STRIDES = (8, 16, 32)


@dataclass(frozen=True)
class FeatureInfo:
    """A dense-prediction tap: channels, total stride (reduction) and the module whose output it is."""

    num_chs: int
    reduction: int
    module: str
    stage: int


def check_output_stride(output_stride: int) -> None:
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")


def check_io_channels(in_chans: int, num_classes: int) -> None:
    if in_chans < 1 or num_classes < 0:
        raise ValueError(f"in_chans must be >= 1 and num_classes >= 0, got {in_chans} and {num_classes}")


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
    """The taps, input check, forward switch and classifier slot of a backbone.

    A subclass sets `in_chans`, `num_classes`, `min_input_size`, `features_only`, `out_indices`, `feature_info_all`,
    `head_hidden_size` (the classifier's input width) and `grad_checkpointing`, names its classifier attribute in
    `classifier_name`, and defines `built_stages`, `forward_stem`, `forward_intermediates` and `forward_head`.
    """

    classifier_name = "classifier"

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """The taps returned by `features_only` (all of them when the model is a classifier)."""
        taps = self.feature_info_all
        return [taps[i] for i in self.out_indices] if self.features_only else list(taps)

    def _check_input(self, x: torch.Tensor) -> None:
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

    def built_stages(self) -> Sequence[nn.Module]:
        """The stages after the stem, in order (a features_only model's later stages are not built)."""
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Stem and every stage: the final map."""
        x = self.forward_stem(x)
        for stage in self.built_stages():
            x = run_stage(stage, x, self.grad_checkpointing)
        return x

    def forward(self, x: torch.Tensor):
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the classifier (0 removes it)."""
        if self.features_only:
            raise ValueError("a features_only model has no classifier")
        self.num_classes = num_classes
        device = next(self.parameters()).device
        classifier = nn.Linear(self.head_hidden_size, num_classes, device=device) if num_classes > 0 else nn.Identity()
        setattr(self, self.classifier_name, classifier)
