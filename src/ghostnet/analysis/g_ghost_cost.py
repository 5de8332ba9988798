"""What the G-Ghost stages of a model cost, part by part, and what the ordinary stages they replace would cost.

A G-Ghost stage (`layers.g_ghost.GGhostStage`) runs a full-width first block (`base`) and last block (`end`), its
`depth - 2` inner blocks on the intrinsic channels only (`layers`), and makes the other channels by a cheap 1x1 conv
(`cheap`) plus a mix of pooled features (`merge`). The ordinary stage it replaces (`layers.g_ghost.plain_stage`) is
the same first block followed by `depth - 1` blocks shaped like `end`, so its multiply-adds are counted exactly from
the stage's own: base + (depth - 1) x end, without building it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from ..layers.g_ghost import GGhostStage

__all__ = ["GGhostStageRow", "g_ghost_rows", "g_ghost_summary"]


@dataclass
class GGhostStageRow:
    """One G-Ghost stage: channels, depth, multiply-adds per part, and those of the plain stage it replaces."""

    path: str
    depth: int
    out_chs: int
    raw_chs: int  # channels through the inner blocks (intrinsic features)
    cheap_chs: int  # channels made by the cheap operation (ghost features)
    full_blocks_macs: int  # base + end, at full width
    inner_blocks_macs: int  # the depth - 2 narrow blocks
    cheap_macs: int  # cheap 1x1 conv + the mix (merge)
    macs: int  # the whole stage
    plain_macs: int  # base + (depth - 1) x end: the ordinary stage in its place


def g_ghost_rows(model: nn.Module, subtree_macs: dict[str, int]) -> list[GGhostStageRow]:
    """A row per G-Ghost stage of `model` that ran, from every module's subtree multiply-adds (by module path)."""
    rows = []
    for path, stage in model.named_modules():
        if not isinstance(stage, GGhostStage) or path not in subtree_macs:
            continue
        part = {name: subtree_macs.get(f"{path}.{name}" if path else name, 0)
                for name in ("base", "end", "layers", "cheap", "merge")}
        depth = len(stage.layers) + 2
        rows.append(GGhostStageRow(
            path=path, depth=depth, out_chs=stage.raw_chs + stage.cheap_chs, raw_chs=stage.raw_chs,
            cheap_chs=stage.cheap_chs, full_blocks_macs=part["base"] + part["end"], inner_blocks_macs=part["layers"],
            cheap_macs=part["cheap"] + part["merge"], macs=subtree_macs[path],
            plain_macs=part["base"] + (depth - 1) * part["end"]))
    return rows


def g_ghost_summary(rows: list[GGhostStageRow], model_macs: int) -> dict[str, Any]:
    """Totals over the G-Ghost stages, and the model's multiply-adds with ordinary stages in their place."""
    macs, plain = sum(r.macs for r in rows), sum(r.plain_macs for r in rows)
    return dict(count=len(rows), macs=macs, plain_macs=plain,
                full_blocks_macs=sum(r.full_blocks_macs for r in rows),
                inner_blocks_macs=sum(r.inner_blocks_macs for r in rows),
                cheap_macs=sum(r.cheap_macs for r in rows), model_macs_without_g_ghost=model_macs - macs + plain)
