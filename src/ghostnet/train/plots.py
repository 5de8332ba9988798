"""PNG plots of a run: loss/accuracy/learning-rate curves and a confusion matrix (`viz.figure`: no pyplot)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ..utils import PathLike
from ..viz.figure import new_figure, save_png


def plot_curves(history: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Loss, top-1 accuracy and learning rate per epoch, from the rows of the metrics log."""
    fig = new_figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    epochs = [row["epoch"] for row in history]
    panels = (("loss", ("train_loss", "val_loss", "ema_val_loss")),
              ("top-1 accuracy (%)", ("train_top1", "val_top1", "ema_val_top1")),
              ("learning rate", ("lr",)))
    # The in-epoch log, on the same epoch axis: a step's position is its global step over the steps per epoch.
    steps = [(s["step"] * row["epoch"] / row["step"], s) for row in history for s in row.get("steps", [])]
    for ax, key in ((axes[0], "loss"), (axes[2], "lr")):
        if steps:
            ax.plot([x for x, _ in steps], [s[key] for _, s in steps], linewidth=0.8, alpha=0.6,
                    label=f"{'train_loss' if key == 'loss' else 'lr'} (steps)")
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(e, row[key]) for e, row in zip(epochs, history) if row.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    return save_png(fig, path, dpi=120)


def plot_confusion(confusion: torch.Tensor, classes: Optional[Sequence[str]], path: PathLike) -> Path:
    """A row-normalized confusion matrix (true class down, predicted across); counts written when few classes."""
    k = confusion.shape[0]
    names = list(classes) if classes else [str(i) for i in range(k)]
    norm = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    side = min(3 + 0.45 * k, 40)
    fig = new_figure(figsize=(side, side))
    ax = fig.subplots()
    im = ax.imshow(norm.numpy(), cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046)
    if k <= 30:
        ax.set_xticks(range(k), names, rotation=90)
        ax.set_yticks(range(k), names)
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return save_png(fig, path, dpi=120)
