"""The front's picture: every point numbered and named in the key, no label over another or over a point, in the
figure as saved (after its layout), on the 30 points of a real `ghostnet bench --front` run (the crowd between 2 and
12 ms where labels used to collide)."""
from __future__ import annotations

import itertools

import pytest

pytest.importorskip("matplotlib")

from ghostnet.deploy.bench_config import BenchResult  # noqa: E402
from ghostnet.deploy.front import FrontPoint, FrontResult, draw_front, machine_caption  # noqa: E402
from ghostnet.viz.labels import text_box  # noqa: E402

#: (label, source, weights, top1, latency ms, runtime, on the front): the 1-thread front of 2026-12-05 (Intel Xeon).
POINTS = [
    ("timm/mobilenetv3_small_100", "timm", "lamb_in1k", 67.636, 1.69, "openvino", True),
    ("repghostnet_050", "ghostnet", "timm", 66.946, 1.76, "openvino", False),
    ("repghostnet_058", "ghostnet", "timm", 68.944, 1.96, "openvino", True),
    ("ghostnet_050_paddle", "ghostnet", "paddle", 66.8, 2.05, "onnxruntime", False),
    ("ghostnet_050", "ghostnet", "mindcv", 66.03, 2.06, "onnxruntime", False),
    ("repghostnet_080", "ghostnet", "timm", 72.238, 2.53, "openvino", True),
    ("timm/mobilenetv4_conv_small", "timm", "e2400_r224_in1k", 73.756, 2.91, "onnxruntime", True),
    ("repghostnet_100", "ghostnet", "timm", 74.218, 3.22, "openvino", True),
    ("repghostnet_111", "ghostnet", "timm", 75.066, 3.84, "onnxruntime", True),
    ("ghostnet_100_paddle", "ghostnet", "paddle", 74.0, 4.04, "openvino", False),
    ("ghostnet_100", "ghostnet", "timm", 73.958, 4.08, "openvino", False),
    ("timm/mobilenetv3_large_100", "timm", "ra4_e3600_r224_in1k", 76.31, 4.52, "openvino", True),
    ("timm/mobilenetv3_large_100", "timm", "ra_in1k", 75.784, 4.52, "openvino", False),
    ("repghostnet_130", "ghostnet", "timm", 76.374, 4.61, "openvino", True),
    ("ghostnetv2_100", "ghostnet", "timm", 75.186, 5.34, "openvino", False),
    ("ghostnetv3_100", "ghostnet", "ema", 77.134, 5.37, "openvino", True),
    ("ghostnet_130", "ghostnet", "mindcv", 75.5, 6.05, "onnxruntime", False),
    ("ghostnet_130_paddle", "ghostnet", "ssld", 79.4, 6.05, "onnxruntime", True),
    ("repghostnet_150", "ghostnet", "timm", 77.454, 6.13, "openvino", False),
    ("timm/efficientnet_lite0", "timm", "ra_in1k", 75.488, 6.33, "openvino", False),
    ("ghostnetv2_130", "ghostnet", "timm", 76.746, 7.79, "openvino", False),
    ("repghostnet_200", "ghostnet", "timm", 78.806, 8.79, "onnxruntime", False),
    ("timm/efficientnet_b0", "timm", "ra4_e3600_r224_in1k", 78.568, 10.19, "onnxruntime", False),
    ("timm/efficientnet_b0", "timm", "ra_in1k", 77.698, 10.19, "onnxruntime", False),
    ("ghostnetv2_160", "ghostnet", "timm", 77.836, 10.9, "openvino", False),
    ("timm/mobilenetv4_conv_medium", "timm", "e500_r224_in1k", 79.092, 11.45, "onnxruntime", False),
    ("g_ghost_regnetx_032", "ghostnet", "official", 77.8, 26.26, "openvino", False),
    ("g_ghost_regnetx_040", "ghostnet", "official", 78.6, 34.12, "openvino", False),
    ("g_ghost_regnetx_080", "ghostnet", "official", 79.0, 59.51, "openvino", False),
    ("g_ghost_regnetx_160", "ghostnet", "official", 79.9, 114.86, "openvino", True),
]


def _front() -> FrontResult:
    points = [FrontPoint(label, source, weights, top1, "test", "best", 1, ms, ms, ms, 0, 0, on_front, runtime)
              for label, source, weights, top1, ms, runtime, on_front in POINTS]
    env = {"cpu": "Intel(R) Xeon(R) Processor (family 6, model 207)", "isa": "AVX-512", "torch": "2.14.1",
           "onnxruntime": "1.32.0", "openvino": "2026.4.1", "timm": "1.0.31", "date": "2026-12-05 21:07:48"}
    return FrontResult(points, BenchResult({"threads": [1], "batch_size": 1, "image_size": 224}, env))


def test_every_label_is_clear_of_the_others_and_of_the_points_as_saved():
    fig = draw_front(_front())
    fig.canvas.draw()  # the saved figure's layout: nothing may move the axes after the labels were placed
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    key, *labels = [t for t in ax.texts if t.get_text()]  # the key beside the axes, then one number per point
    assert sorted(int(t.get_text()) for t in labels) == list(range(1, len(POINTS) + 1))
    by_latency = sorted(POINTS, key=lambda p: (p[4], -p[3]))
    for t in labels:  # each number sits at its point, and the key names that point
        label, _, weights, top1, ms, runtime, on_front = by_latency[int(t.get_text()) - 1]
        assert t.xy == (ms, top1)
        line = f"{int(t.get_text()):>2}{'*' if on_front else ' '} {label.removeprefix('timm/')} ({weights}, {runtime})"
        assert line in key.get_text().splitlines()
    boxes = [text_box(t, renderer) for t in labels]
    clashes = [(a.get_text(), b.get_text()) for (a, ba), (b, bb) in itertools.combinations(zip(labels, boxes), 2)
               if ba.overlaps(bb)]
    assert not clashes, clashes
    centres = [ax.transData.transform((p[4], p[3])) for p in POINTS]
    covered = [(t.get_text(), i) for t, box in zip(labels, boxes) for i, (x, y) in enumerate(centres)
               if box.x0 < x < box.x1 and box.y0 < y < box.y1]
    assert not covered, covered


def test_the_caption_names_every_runtime_of_the_points_with_its_version():
    caption = machine_caption(_front())
    assert "onnxruntime 1.32.0" in caption and "openvino 2026.4.1" in caption and "AVX-512" in caption
