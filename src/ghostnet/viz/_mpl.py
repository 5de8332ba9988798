"""Matplotlib access for the plots: an optional dependency, used without pyplot's global state."""
from __future__ import annotations

import os
from typing import Any, Union

from ..utils import atomic_write


def new_figure(**kwargs: Any):
    """A matplotlib Figure not registered with pyplot (no backend, no global state, safe in threads)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:  # matplotlib is the optional "plot" extra
        raise ImportError("plotting needs matplotlib: pip install 'ghostnet-torch[plot]'") from exc
    return Figure(**kwargs)


def save_png(fig, path: Union[str, os.PathLike], dpi: int = 100) -> None:
    """Write the figure as PNG, atomically."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
