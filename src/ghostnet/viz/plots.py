"""Bar charts of a cost profile: MACs, parameters and peak live activations per stage."""
from __future__ import annotations

from typing import Sequence

from ..analysis.cost import Profile
from ..utils import PathLike
from .figure import new_figure, save_png

_PANELS = (
    ("MACs (millions)", lambda s: s.macs / 1e6),
    ("parameters (millions)", lambda s: s.params / 1e6),
    ("peak live activations (MiB)", lambda s: s.peak_live_bytes / 2**20),
)


def plot_profiles(profiles: Sequence[Profile], path: PathLike) -> None:
    """One column per model, one row per quantity, a bar per stage; written as a PNG."""
    if not profiles:
        raise ValueError("no profile to plot")
    cols = len(profiles)
    widest = max(len(p.stages) for p in profiles)
    fig = new_figure(figsize=(max(6.0, 0.45 * widest) * cols, 3.0 * len(_PANELS)))
    axes = fig.subplots(len(_PANELS), cols, squeeze=False)
    for col, p in enumerate(profiles):
        names = [s.name for s in p.stages]
        for row, (label, value) in enumerate(_PANELS):
            ax = axes[row][col]
            ax.bar(range(len(names)), [value(s) for s in p.stages], color=f"C{row}")
            ax.set_ylabel(label)
            ax.set_xticks(range(len(names)))
            ax.set_xticklabels(names if row == len(_PANELS) - 1 else [], rotation=60, ha="right", fontsize=8)
            ax.grid(axis="y", alpha=0.3)
        axes[0][col].set_title(f"{p.model}: {p.macs / 1e6:.1f}M MACs, {p.params / 1e6:.2f}M params\n"
                               f"input {p.batch_size}x{'x'.join(map(str, p.input_size))}, {p.dtype}")
    save_png(fig, path)
