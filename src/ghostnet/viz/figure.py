"""The one way the package makes a picture: a matplotlib Figure without pyplot's global state, saved atomically.

matplotlib is an optional dependency (the "plot" extra). A `Figure` made directly needs no backend and registers
nowhere, so plotting is safe in threads and leaves the caller's backend (a notebook's, a GUI's) alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..utils import PathLike, atomic_write

__all__ = ["new_figure", "save_png"]


def new_figure(**kwargs: Any):
    """A matplotlib Figure not registered with pyplot (no backend, no global state, safe in threads)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is the optional "plot" extra
        raise ImportError("plotting needs matplotlib: pip install 'ghostnet-torch[plot]'") from exc
    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)  # a renderer of its own, to measure text before saving (viz.labels); still no pyplot
    return figure


def save_png(fig, path: PathLike, dpi: int = 100) -> Path:
    """Write the figure as PNG, atomically; returns the path."""
    path = Path(path)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path
