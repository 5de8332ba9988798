"""What the tests of every file runtime check alike (tests/test_openvino.py, test_ncnn.py, test_litert.py): a
corrupted weight caught, the runtime's bench backend, its rows through the CLI and the front on it."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from ghostnet.cli import main as cli_main
from ghostnet.deploy import fuse
from ghostnet.deploy.export import load_exported
from support.conditioned import conditioned_model, sample_images
from support.numerics import corrupt_one_weight, eager_and_reference, float32_parity

#: The CLI's bench options for a quick run at 32x32, one thread.
QUICK = ["--threads", "1", "--image-size", "32", "--rounds", "1", "--reps", "2", "--warmup", "1", "--no-plot"]
PEER = "timm:mobilenetv3_small_100"


def assert_corrupted_weight_caught(export: Callable, path: Path, model_name: str, batch: int) -> None:
    """A file of the fused model with one weight off by 1e-3 fails the float32 parity check (which can fail)."""
    model = conditioned_model(model_name)
    x = sample_images(batch)
    eager, reference = eager_and_reference(model, x)
    broken = fuse(model, example_input=x[:1])
    corrupt_one_weight(broken)
    written = export(broken, path, x[:1])
    assert not float32_parity(load_exported(written, threads=1)(x), eager, reference).ok


def assert_bench_backend_times(backend: str) -> None:
    """`backend` times ghostnet_050 in the runtime of its name."""
    from ghostnet.deploy.bench import BenchConfig, run_benchmark

    cfg = BenchConfig(models=["ghostnet_050"], peers=[], backends=[backend], threads=[1], image_size=32,
                      rounds=1, reps=2, warmup=1)
    rows = run_benchmark(cfg).rows
    assert [(r.model, r.backend, r.runtime) for r in rows] == [("ghostnet_050", backend, backend)]
    assert rows[0].median_ms > 0


def assert_cli_bench_rows(backends: list[str], tmp_path: Path, capsys) -> None:
    """`ghostnet bench ghostnet_050 --peers PEER --backends ...` prints a row for each model and backend."""
    pytest.importorskip("timm")
    assert cli_main(["bench", "ghostnet_050", "--peers", PEER, "--backends", ",".join(backends),
                     "--out-dir", str(tmp_path), *QUICK]) == 0
    table = capsys.readouterr().out
    for model in ("ghostnet_050", "timm/" + PEER.split(":")[1]):
        for backend in backends:
            assert f"| {model} | {backend} |" in table


def assert_front_runs_on(backend: str, tmp_path: Path) -> None:
    """`ghostnet bench --front --backends BACKEND` measures ours and the peer there."""
    pytest.importorskip("timm")
    assert cli_main(["bench", "--front", "ghostnet_050", "--peers", PEER, "--backends", backend,
                     "--out-dir", str(tmp_path), "--name", "front", *QUICK]) == 0
    points = json.loads((tmp_path / "front.json").read_text())["points"]
    assert {(p["label"], p["backend"]) for p in points} == {("ghostnet_050", backend),
                                                          ("timm/" + PEER.split(":")[1], backend)}
