"""ExecuTorch (XNNPACK) export, the phone runtime: programs compute the model's function (tests/support/numerics.py),
the CLI, int8, and the bench backend at each thread count.

The tests that run ExecuTorch are skipped where the `executorch` extra is not installed; those that check the
messages shown when it is missing run only there. Lowering to XNNPACK costs 10-30 s a model, so each test lowers
one program.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

import ghostnet
from ghostnet.cli import main
from ghostnet.deploy import fuse
from ghostnet.deploy.bench import BenchConfig, run_benchmark
from ghostnet.deploy.export import load_exported
from ghostnet.deploy.runtimes.executorch import export_executorch

from support.common import randomize_bn
from support.conditioned import conditioned_model, sample_images
from support.numerics import assert_float32_parity, eager_and_reference

HAVE_EXECUTORCH = importlib.util.find_spec("executorch") is not None
needs_executorch = pytest.mark.skipif(not HAVE_EXECUTORCH, reason="executorch is an optional extra, not installed")


@needs_executorch
@pytest.mark.parametrize("name", ["ghostnetv3_050"])  # ghostnet_050: the CLI test
def test_executorch_program_matches_the_model(name, tmp_path):
    """Fused GhostNetV3 is GhostNetV2's inference graph: the deploy-form DFC gate included, whose sizes are asked
    of PyTorch while torch.export traces (`dfc.upsample_factor`)."""
    model = conditioned_model(name)
    x = sample_images(1)
    path = export_executorch(fuse(model, example_input=x), tmp_path / f"{name}.pte", x)
    eager, reference = eager_and_reference(model, x)
    assert_float32_parity(load_exported(path)(x), eager, reference, what=f"executorch, {name}")


@needs_executorch
def test_cli_export_executorch_with_check(tmp_path, capsys):
    out = tmp_path / "g.pte"
    assert main(["export", "ghostnet_050", "--format", "executorch", "--align-channels", "16", "--image-size", "32",
                 "-o", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (executorch, fused, channels aligned to 16" in text
    assert "max abs difference from the model's float64 output on a batch of 1" in text and "limit" in text


@needs_executorch
def test_int8_program_follows_the_float_model(tmp_path):
    model = randomize_bn(ghostnet.create_model("ghostnet_050")).eval()
    fused = fuse(model, example_input=torch.randn(1, 3, 32, 32))
    calibration = [torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))]
    x = calibration[0][:1]
    path = export_executorch(fused, tmp_path / "q.pte", x, calibration=calibration)
    with torch.no_grad():
        expected = model(x)
    error = (load_exported(path)(x) - expected).abs().max() / expected.abs().max()
    assert 0 < error <= 0.25  # quantized (not bit-equal) and not broken
    with pytest.raises(ValueError, match=r"no calibration batch of shape \(1, 3, 40, 40\)"):
        export_executorch(fused, tmp_path / "r.pte", torch.randn(1, 3, 40, 40), calibration=calibration)


@needs_executorch
def test_bench_times_executorch_at_each_thread_count():
    """The program is lowered once and loaded again after the thread pool is resized (`set_executorch_threads`);
    the executorch-int8 backend is the generic NAME-int8 one (tests/test_litert.py runs it)."""
    cfg = BenchConfig(models=["ghostnet_050"], peers=[], backends=["executorch"], threads=[1, 2],
                      rounds=1, reps=2, warmup=1, image_size=32)
    rows = run_benchmark(cfg).rows
    assert [(r.backend, r.threads) for r in rows] == [("executorch", 1), ("executorch", 2)]
    assert all(r.median_ms > 0 for r in rows)


@pytest.mark.slow
@pytest.mark.skipif(HAVE_EXECUTORCH, reason="checks the message shown when executorch is missing")
def test_export_without_executorch_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", "ghostnet_050", "--format", "executorch", "-o", str(tmp_path / "g.pte")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ghostnet export: error: executorch is not installed: pip install 'ghostnet-torch[executorch]'"
    assert not (tmp_path / "g.pte").exists()


@pytest.mark.skipif(HAVE_EXECUTORCH, reason="checks the message shown when executorch is missing")
def test_bench_without_executorch_says_how_to_get_it():
    cfg = BenchConfig(models=["ghostnet_050"], peers=[], backends=["eager", "executorch"], threads=[1], rounds=1,
                      reps=1, warmup=0, image_size=64)
    result = run_benchmark(cfg)
    assert [r.backend for r in result.rows] == ["eager"]
    assert result.skipped == ["ghostnet_050 / executorch: executorch is not installed "
                              "(pip install 'ghostnet-torch[executorch]')"]
