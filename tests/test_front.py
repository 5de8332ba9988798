"""Accuracy per millisecond (`ghostnet bench --front`, ghostnet/deploy/front.py): the Pareto front, the published
accuracies it reads, and the command's files. No timing is asserted (speed is measured in benchmarks/)."""
from __future__ import annotations

import json

import pytest

from ghostnet.cli import main as cli_main
from ghostnet.deploy.bench_config import BenchConfig, BenchResult, BenchRow
from ghostnet.deploy.front import (FRONT_PEERS, PublishedAccuracy, front_entries, front_points, our_published,
                                   pareto_front)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("points, front", [
    ([(1.0, 70.0), (2.0, 75.0), (1.5, 69.0), (3.0, 74.0), (0.5, 60.0)], [4, 0, 1]),  # dominated: slower and worse
    ([(1.0, 70.0), (1.0, 72.0)], [1]),  # as fast and more accurate dominates
    ([(1.0, 70.0), (2.0, 70.0)], [0]),  # as accurate and faster dominates
    ([(2.0, 75.0), (2.0, 75.0), (1.0, 60.0)], [2, 0, 1]),  # equal points do not dominate each other
    ([(3.0, 80.0), (2.0, 79.0), (1.0, 78.0)], [2, 1, 0]),  # every trade-off is on the front, fastest first
    ([], []),
])
def test_pareto_front(points, front):
    assert pareto_front(points) == front


def _row(model: str, backend: str, ms: float, threads: int = 1, source: str = "ghostnet") -> BenchRow:
    return BenchRow(model, source, backend, threads, 1, 224, "cpu", "float32", "infer", ms, ms, ms, ms, ms, 1e3 / ms,
                    1, 1, 1)


def test_points_keep_each_models_fastest_backend_and_mark_the_front():
    rows = [_row("ghostnet_100", "onnxruntime", 5.0), _row("ghostnet_100", "fused", 9.0),
            _row("timm/mobilenetv3_large_100", "onnxruntime", 4.0, source="timm"),
            _row("ghostnet_050", "onnxruntime", 3.0)]
    entries = [PublishedAccuracy("ghostnet_100", 74.0, "timm", "s"), PublishedAccuracy("ghostnet_050", 66.0, "m", "s"),
               PublishedAccuracy("timm:mobilenetv3_large_100", 75.8, "ra_in1k", "s"),
               PublishedAccuracy("timm:mobilenetv3_large_100", 76.3, "ra4", "s"),
               PublishedAccuracy("ghostnet_130", 75.5, "m", "s")]  # not measured (skipped): no point
    points = front_points(BenchResult({}, {}, rows), entries)
    assert [(p.label, p.weights, p.backend, p.latency_ms, p.on_front) for p in points] == [
        ("ghostnet_050", "m", "onnxruntime", 3.0, True),
        ("timm/mobilenetv3_large_100", "ra4", "onnxruntime", 4.0, True),
        ("timm/mobilenetv3_large_100", "ra_in1k", "onnxruntime", 4.0, False),
        ("ghostnet_100", "timm", "onnxruntime", 5.0, False)]


def test_published_accuracies_come_from_the_tables():
    ours = {entry.spec: entry for entry in our_published()}
    assert ours["ghostnet_100"].top1 == 73.958 and ours["ghostnetv3_100"].weights == "ema"
    assert "repghostnet_100" in ours and "parameternet_600m" not in ours  # no published top-1 registered
    peers = {(entry.spec, entry.weights): entry.top1 for entry in FRONT_PEERS}
    assert peers[("timm:mobilenetv3_large_100", "ra_in1k")] == 75.784
    assert peers[("timm:mobilenetv4_conv_medium", "e500_r224_in1k")] == 79.092
    with pytest.raises(ValueError, match="no published top-1 for"):
        our_published(["parameternet_600m"])
    with pytest.raises(ValueError, match="no published top-1 is listed for peer"):
        front_entries(["ghostnet_050"], ["timm:resnet50"])


@pytest.mark.slow
def test_front_command_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    pytest.importorskip("matplotlib")
    code = cli_main(["bench", "--front", "ghostnet_050", "--peers", "timm:mobilenetv3_small_100", "--threads", "1",
                     "--image-size", "32", "--rounds", "1", "--reps", "2", "--warmup", "1", "--out-dir",
                     str(tmp_path), "--name", "front"])
    assert code == 0
    data = json.loads((tmp_path / "front.json").read_text())
    assert {p["label"] for p in data["points"]} == {"ghostnet_050", "timm/mobilenetv3_small_100"}
    # each at its fastest: ours in the form and runtime --format auto chose, the peer in its fastest runtime
    assert all(p["backend"] == "best" and p["latency_ms"] > 0 for p in data["points"])
    assert any(p["on_front"] for p in data["points"]) and data["bench"]["environment"]["isa"]
    table = (tmp_path / "front.md").read_text()
    assert "| ghostnet_050 |" in table or "| **ghostnet_050** |" in table
    assert "66.03" in table and "67.64" in table and table in capsys.readouterr().out
    assert (tmp_path / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_front_refuses_a_peer_without_a_published_accuracy(tmp_path, capsys):
    assert cli_main(["bench", "--front", "ghostnet_050", "--peers", "timm:resnet50", "--out-dir", str(tmp_path)]) == 2
    assert "no published top-1 is listed for peer" in capsys.readouterr().err


def test_front_needs_something_to_measure():
    with pytest.raises(ValueError, match="nothing to measure"):
        BenchConfig(models=[], peers=[]).validate()
