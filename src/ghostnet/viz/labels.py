"""Point labels that do not overlap: each label takes the first of a ring of offsets around its point whose box
crosses no label already placed and no other point, trying rings further out (with a leader line) when the near
ones are taken.

Greedy, in the order given (put the points whose labels matter most first); boxes are measured with the figure's
renderer, in display pixels, so font size and axis scales are what they will be in the saved picture.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["place_labels", "text_box"]

#: Directions tried at each distance, in order: right, left, up, down, the diagonals, then eight in between.
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (-1, 1), (1, -1), (-1, -1),
               (2, 1), (-2, 1), (2, -1), (-2, -1), (1, 2), (-1, 2), (1, -2), (-1, -2))
#: Distances from the point tried, in points (1/72 inch); a leader line is drawn from the second ring on. The far
#: rings are for crowds (a front's 30 points between 2 and 12 ms), where only empty parts of the axes are left.
_RINGS = (4, 14, 26, 40, 56, 76, 100, 130, 165, 205, 250, 300)
#: Half-size of the box kept clear around each point, in pixels.
_POINT_RADIUS = 4.0


def text_box(label, renderer):
    """The box of an annotation's text alone (an Annotation's own extent includes its leader line), where it is
    drawn: an annotation's text position is only computed when it is drawn, or here."""
    from matplotlib.text import Text

    if hasattr(label, "update_positions"):
        label.update_positions(renderer)
    return Text.get_window_extent(label, renderer)


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def place_labels(ax, points: Sequence[tuple[float, float, str]], fontsize: float = 6.0) -> list[Any]:
    """Annotate `ax` with each (x, y, text) so that no two labels overlap and no label covers a point (where the
    rings allow: a label with no free place goes to its last try); returns the Text objects, in `points`' order."""
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    dpi_scale = fig.dpi / 72.0
    centres = [ax.transData.transform((x, y)) for x, y, _ in points]
    taken = [Bbox.from_extents(cx - _POINT_RADIUS, cy - _POINT_RADIUS, cx + _POINT_RADIUS, cy + _POINT_RADIUS)
             for cx, cy in centres]
    placed = []
    for (x, y, text), own in zip(points, taken[:]):
        label = None
        for ring, (dx, dy) in ((r, d) for r in _RINGS for d in _DIRECTIONS):
            if label is not None:
                label.remove()
            norm = math.hypot(dx, dy)
            offset = (ring * dx / norm, ring * dy / norm)
            label = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=fontsize,
                                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                                va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                                arrowprops={"arrowstyle": "-", "lw": 0.4, "color": "gray"} if ring > _RINGS[0]
                                else None)
            box = text_box(label, renderer).expanded(1.0 + 1.0 / max(dpi_scale, 1), 1.05)
            if not any(_overlaps(box, other) for other in taken if other is not own):
                break
        taken.append(text_box(label, renderer))
        placed.append(label)
    return placed
