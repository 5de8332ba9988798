"""Point labels placed without overlapping each other or the points (viz/labels.py), as the front's plot needs."""
from __future__ import annotations

import itertools

import pytest

pytest.importorskip("matplotlib")

from ghostnet.viz.figure import new_figure  # noqa: E402
from ghostnet.viz.labels import place_labels, text_box  # noqa: E402


def _crowded_axes():
    """Twelve points bunched between 5 and 10 ms and 74-78 % (where the front's labels used to collide)."""
    fig = new_figure(figsize=(6, 4), dpi=100)
    ax = fig.subplots()
    points = [(5.0 + 0.4 * i, 74.0 + 0.3 * (i % 5), f"model_{i} (weights_{i}, openvino)") for i in range(12)]
    ax.scatter([p[0] for p in points], [p[1] for p in points])
    ax.set_xscale("log")
    ax.set_xlim(4, 12)
    ax.set_ylim(73, 80)
    return fig, ax, points


def test_labels_do_not_overlap_each_other_or_the_points():
    fig, ax, points = _crowded_axes()
    labels = place_labels(ax, points, fontsize=6)
    renderer = fig.canvas.get_renderer()
    boxes = [text_box(label, renderer) for label in labels]
    assert [label.get_text() for label in labels] == [p[2] for p in points]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)
    for box in boxes:
        for x, y, _ in points:
            px, py = ax.transData.transform((x, y))
            assert not (box.x0 < px < box.x1 and box.y0 < py < box.y1)


def test_the_naive_placement_does_overlap():
    """The same points labelled at one fixed offset (what the front did before) collide: the test above means
    something."""
    fig, ax, points = _crowded_axes()
    labels = [ax.annotate(text, (x, y), xytext=(3, 2), textcoords="offset points", fontsize=6) for x, y, text in points]
    renderer = fig.canvas.get_renderer()
    boxes = [text_box(label, renderer) for label in labels]
    assert any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
