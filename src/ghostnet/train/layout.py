"""The layout a run trains in: `channels_last` "true" or "false" as set, or, with "auto" (the default), chosen at
the start of the run by timing a few SGD steps of each candidate (`ghostnet.analysis.training_layout`: NCHW or
channels-last, and the batch fold on or off where the model has one; cached per CPU, model, batch and threads).

Rank 0 measures and every rank takes its answer, so the processes of a DDP run train alike. The choice is logged,
recorded in metrics.jsonl (the first epoch's row, `layout`) and saved in the checkpoint: a resumed run keeps it.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from ..analysis.training_layout import Layout, LayoutChoice, choose_training_layout
from .distributed import DistInfo, broadcast_from_main, log_main

#: The values of `channels_last`; YAML and Python booleans, on/off and yes/no are read as true/false.
CHANNELS_LAST_SETTINGS = ("auto", "true", "false")
_WORDS = {"true": "true", "on": "true", "yes": "true", "1": "true",
          "false": "false", "off": "false", "no": "false", "0": "false", "auto": "auto"}

__all__ = ["CHANNELS_LAST_SETTINGS", "Layout", "LayoutChoice", "choose_training_layout", "normalise_channels_last",
           "run_layout"]


def normalise_channels_last(value: Any) -> str:
    """"auto", "true" or "false" from a setting as written (a recipe's `channels_last: true` is a boolean);
    ValueError for anything else."""
    if isinstance(value, bool):
        return "true" if value else "false"
    word = _WORDS.get(str(value).strip().lower()) if isinstance(value, str) else None
    if word is None:
        raise ValueError(f"channels_last must be one of {', '.join(CHANNELS_LAST_SETTINGS)}, got {value!r}")
    return word


def run_layout(setting: str, dist: DistInfo, model: nn.Module, batch_shape: tuple[int, ...], num_classes: int, *,
               model_name: str, amp: str = "none", compiled: bool = False,
               stored: Optional[Mapping[str, Any]] = None, key_extra: Optional[Mapping[str, Any]] = None
               ) -> LayoutChoice:
    """The layout of a run whose `channels_last` is `setting`: the one `stored` in the checkpoint being resumed,
    the one set, or (auto) the fastest for `model` (on the run's device, in training mode) with per-process batches
    of `batch_shape`, measured on rank 0 and sent to every rank (`key_extra`: more of what the cached choice
    depends on). Logs one line."""
    if stored is not None:
        choice = LayoutChoice.from_dict(stored)
        log_main(dist, f"{choice.describe()}, kept from the checkpoint")
        return choice
    if setting != "auto":
        choice = LayoutChoice(Layout(channels_last=setting == "true"), "setting", f"channels_last {setting}")
    else:
        measured = None
        if dist.is_main:
            generator = torch.Generator().manual_seed(0)
            example = torch.randn(batch_shape, generator=generator).to(dist.device)
            measured = choose_training_layout(model, example, num_classes=num_classes, model_name=model_name,
                                              amp=amp, compiled=compiled, key_extra=key_extra).to_dict()
        choice = LayoutChoice.from_dict(broadcast_from_main(measured))
    log_main(dist, choice.describe())
    return choice
