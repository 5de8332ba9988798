"""The benchmark harness: interleaving, rows and reports, MACs from the counter, config validation, CLI.

No timing is asserted here (speed is measured in benchmarks/, never in tests).
"""
from __future__ import annotations

import json

import pytest
import torch

import ghostnet
from ghostnet.allocator import tune_allocator
from ghostnet.cli import main as cli_main
from ghostnet.deploy.bench import BenchConfig, build_model, count_macs, run_benchmark, to_markdown, write_report
from ghostnet.deploy.bench_backends import _alignment, _exported_file
from ghostnet.deploy.bench_config import PreparedModel
from ghostnet.deploy.bench_timing import measure_interleaved
from ghostnet.deploy.runtimes import get_runtime

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, macs_m", [("ghostnet_050", 42.3), ("ghostnet_100", 141.2), ("ghostnetv2_100", 167.0)])
def test_macs_match_the_facts_file(name, macs_m):
    """Conv + linear MACs at 224x224 (ghostnet-facts.md §1.1 widths table)."""
    _, _, model = build_model(name)
    assert round(count_macs(model, torch.randn(1, 3, 224, 224)) / 1e6, 1) == macs_m


def test_candidates_take_turns_in_rotating_order():
    calls: list[str] = []
    prep = PreparedModel("m", "ghostnet", torch.nn.Identity(), 0, 0)
    runners = [(prep, name, (lambda n=name: calls.append(n)), "eager") for name in ("a", "b", "c")]
    cfg = BenchConfig(rounds=3, reps=2, warmup=1)
    rows = measure_interleaved(runners, cfg, threads=1, progress=None)
    assert calls[:3] == ["a", "b", "c"]  # warm-up, once each
    timed = calls[3:]
    assert timed == ["a", "a", "b", "b", "c", "c", "b", "b", "c", "c", "a", "a", "c", "c", "a", "a", "b", "b"]
    assert [r.calls for r in rows] == [6, 6, 6]
    assert all(r.p25_ms <= r.median_ms <= r.p75_ms and r.best_round_ms > 0 for r in rows)


@pytest.mark.slow
def test_run_benchmark_rows_and_reports(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    cfg = BenchConfig(models=["ghostnet_050"], peers=["timm:ghostnet_050"],
                      backends=["eager", "fused", "single-path", "onnxruntime"], threads=[1], image_size=32,
                      rounds=2, reps=2, warmup=1)
    result = run_benchmark(cfg)
    got = {(r.model, r.backend) for r in result.rows}
    # "fused" and "single-path" are for our models only; every other backend runs for ours and the peer alike
    assert got == {("ghostnet_050", "eager"), ("ghostnet_050", "fused"), ("ghostnet_050", "single-path"),
                   ("ghostnet_050", "onnxruntime"), ("timm/ghostnet_050", "eager"),
                   ("timm/ghostnet_050", "onnxruntime")}
    macs = {r.model: r.macs for r in result.rows}
    assert macs["ghostnet_050"] == macs["timm/ghostnet_050"] > 0  # same architecture, same count
    assert all(r.calls == 4 and r.images_per_s > 0 and r.threads == 1 for r in result.rows)
    assert torch.get_num_threads() == 1  # restored

    paths = write_report(result, tmp_path, "b", reference="timm/ghostnet_050/eager")
    assert [p.name for p in paths] == ["b.json", "b.md", "b.png"]
    data = json.loads(paths[0].read_text())
    assert len(data["rows"]) == 6 and data["environment"]["torch"] == torch.__version__
    assert "load_average_after" in data["environment"]
    markdown = paths[1].read_text()
    assert "ratio vs timm/ghostnet_050/eager" in markdown and markdown.count("| ghostnet_050 |") == 4
    assert f"| timm/ghostnet_050 | eager | {macs['ghostnet_050'] / 1e6:.1f} |" in markdown
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert to_markdown(result, reference=None).count("ratio vs") == 0


def test_train_mode_measures_steps():
    cfg = BenchConfig(models=["resnet20_cifar"], peers=[], backends=["eager"], threads=[1], image_size=32,
                      batch_size=4, rounds=1, reps=1, warmup=1, mode="train")
    result = run_benchmark(cfg)
    (row,) = result.rows
    assert row.mode == "train" and row.images_per_s > 0
    # Run as the trainer runs (ghostnet.allocator), and the report says so.
    assert result.environment["allocator"] == tune_allocator()
    assert f"Allocator: {'glibc thresholds raised' if tune_allocator()['applied'] else 'unchanged'}" in to_markdown(
        result)


def test_bfloat16_train_step_runs_under_autocast():
    """The GPU preset trains with bf16 inputs and float32 weights; CPU autocast runs the same code path."""
    from ghostnet.deploy.bench_backends import _train_step

    model = ghostnet.create_model("ghostnet_050", stem_stride=1, num_classes=10)
    before = model.conv_stem.weight.detach().clone()
    _train_step(model, torch.randn(4, 3, 16, 16).to(torch.bfloat16), compiled=False)()
    assert model.conv_stem.weight.dtype == torch.float32
    assert not torch.equal(model.conv_stem.weight, before)  # a real step was taken


@pytest.mark.parametrize("kwargs, message", [
    (dict(backends=["tensorrt"]), "unknown backend"),
    (dict(mode="serve"), "mode must be"),
    (dict(mode="train", backends=["onnxruntime"]), "train mode"),
    (dict(mode="train", backends=["eager"], dtype="float16"), "train mode runs"),
    (dict(dtype="bfloat16"), "only float32"),
    (dict(cuda_graphs=True), "cuda_graphs needs"),
    (dict(threads=[0]), "threads"),
    (dict(rounds=0), "rounds must be"),
    (dict(models=[], peers=[]), "nothing to measure"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BenchConfig(**kwargs).validate()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is absent")
def test_cuda_requested_without_cuda():
    with pytest.raises(ValueError, match="cuda"):
        BenchConfig(device="cuda").validate()


def test_unknown_peer_source():
    # A prefix that is no source and no module path is refused; one that names no importable module says so.
    with pytest.raises(ValueError, match="unknown model source"):
        build_model("no-such-source:mobilenet")
    with pytest.raises(ValueError, match="cannot import 'no_such_package_for_ghostnet'"):
        build_model("no_such_package_for_ghostnet:mobilenet")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_cuda_bf16_channels_last(cuda_graphs, tmp_path):
    cfg = BenchConfig(models=["ghostnet_050"], peers=[], backends=["eager", "fused", "single-path"], threads=[1],
                      image_size=64, batch_size=8, rounds=1, reps=2, warmup=1, device="cuda", dtype="bfloat16",
                      cuda_graphs=cuda_graphs)
    result = run_benchmark(cfg)
    assert {r.backend for r in result.rows} == {"eager", "fused", "single-path"}
    assert all(r.device == "cuda" and r.median_ms > 0 for r in result.rows)


def test_cli_bench(tmp_path, capsys):
    code = cli_main(["bench", "ghostnet_050", "--peers", "", "--backends", "eager,fused", "--threads", "1",
                     "--image-size", "32", "--rounds", "1", "--reps", "1", "--warmup", "1", "--out-dir",
                     str(tmp_path), "--no-plot"])
    assert code == 0
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["backend"] for r in data["rows"]} == {"eager", "fused"}
    assert not (tmp_path / "bench.png").exists()
    assert cli_main(["bench", "--backends", "tensorrt", "--out-dir", str(tmp_path)]) == 2
    assert "unknown backend" in capsys.readouterr().err


@pytest.mark.slow
def test_int8_backend_quantizes_the_aligned_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    label, source, model = build_model("ghostnet_050")
    prep = PreparedModel(label, source, model, macs=0, params=0)
    int8 = _exported_file(prep, get_runtime("onnxruntime"), torch.randn(1, 3, 32, 32), tmp_path, 16, int8=True)
    assert set(prep.export_files) == {"onnxruntime-int8"}
    int8_ops = [n.op_type for n in onnx.load(str(int8)).graph.node]
    # quantized from the deployment form: channel-aligned, single-path Ghost modules dropped some of the 32 concats
    assert 0 < int8_ops.count("Concat") < 32 and int8_ops.count("QuantizeLinear") > 0


# --- channel alignment picked from the CPU (align.nchwc_block_size) ------------------------------------------------


@pytest.mark.parametrize("flags, machine_name, isa, block", [
    ({"sse2", "avx", "avx2", "fma", "avx512f", "avx512bw"}, "x86_64", "AVX-512", 16),
    ({"sse2", "avx", "avx2", "fma"}, "x86_64", "AVX2", 8),  # the AVX2 EPYC
    ({"sse2"}, "x86_64", "SSE", 8),  # onnxruntime's MLAS blocks by 8 on any x86-64 CPU
    ({"fp", "asimd"}, "aarch64", "aarch64", 0),  # no NCHWc kernels to align for
])
def test_auto_alignment_follows_the_cpu_flags(monkeypatch, flags, machine_name, isa, block):
    from ghostnet import hardware as machine
    from ghostnet.deploy.align import nchwc_block_size, resolve_alignment

    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(machine.platform, "machine", lambda: machine_name)
    # PyTorch held to AVX2 (ATEN_CPU_CAPABILITY=avx2) changes nothing: onnxruntime reads the CPU, not ATen.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert machine.cpu_isa() == isa and nchwc_block_size() == block
    assert resolve_alignment("auto") == resolve_alignment(None) == block and resolve_alignment(8) == 8
    assert _alignment(BenchConfig()) == block and _alignment(BenchConfig(align_channels=0)) == 0


def test_bad_alignments_are_refused():
    from ghostnet.deploy.align import resolve_alignment

    for value in ("eight", "-8", -8):
        with pytest.raises(ValueError, match="integer >= 0 or 'auto'"):
            resolve_alignment(value)
    with pytest.raises(ValueError, match="align_channels must be"):
        BenchConfig(align_channels="16x").validate()


@pytest.mark.slow
def test_benchmark_records_the_alignment_it_used(monkeypatch, tmp_path):
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from ghostnet import hardware

    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"sse2", "avx", "avx2"}))
    cfg = BenchConfig(models=["ghostnet_050"], peers=[], backends=["onnxruntime"], threads=[1], image_size=32,
                      rounds=1, reps=1, warmup=1)
    result = run_benchmark(cfg)
    assert result.config["align_channels"] == "auto" and result.config["align_channels_used"] == 8
    assert result.environment["isa"] == "AVX2"
    assert "our GhostNet exports aligned to 8 channels (auto: the CPU's NCHWc block)" in to_markdown(result)
    # ... and the file it timed is aligned to 8: every conv's output channels a multiple of 8, not all of 16
    label, source, model = build_model("ghostnet_050")
    path = _exported_file(PreparedModel(label, source, model, 0, 0), get_runtime("onnxruntime"),
                          torch.randn(1, 3, 32, 32), tmp_path, _alignment(cfg), int8=False)
    proto = onnx.load(str(path))
    weights = {init.name: init.dims for init in proto.graph.initializer}
    outs = [weights[node.input[1]][0] for node in proto.graph.node
            if node.op_type == "Conv" and node.input[1] in weights]
    assert outs and all(c % 8 == 0 for c in outs[1:]) and not all(c % 16 == 0 for c in outs)


def test_best_keeps_each_models_fastest_runtime():
    from ghostnet.deploy.bench import _keep_best
    from ghostnet.deploy.bench_config import BenchRow

    def row(model, runtime, ms, threads=1, backend="best"):
        return BenchRow(model, "timm", backend, threads, 1, 32, "cpu", "float32", "infer", ms, ms, ms, ms, ms,
                        1e3 / ms, 0, 0, 1, runtime)

    rows = [row("a", "onnxruntime", 3.0), row("a", "openvino", 2.0), row("a", "openvino", 5.0, threads=2),
            row("a", "onnxruntime", 4.0, threads=2), row("b", "onnxruntime", 1.0, backend="onnxruntime")]
    _keep_best(rows)
    assert [(r.backend, r.runtime, r.threads) for r in rows] == [
        ("best-candidate", "onnxruntime", 1), ("best", "openvino", 1), ("best-candidate", "openvino", 2),
        ("best", "onnxruntime", 2), ("onnxruntime", "onnxruntime", 1)]


@pytest.mark.slow
def test_best_runs_ours_as_chosen_and_peers_in_every_runtime():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("timm")
    from ghostnet.deploy.runtimes import list_runtimes

    runtimes = {r.name for r in list_runtimes(available=True, files=True) if r.tunable}
    cfg = BenchConfig(models=["ghostnet_050"], peers=["timm:mobilenetv3_small_100"], backends=["best"], threads=[1],
                      image_size=32, rounds=1, reps=2, warmup=1)
    rows = run_benchmark(cfg).rows
    ours = [r for r in rows if r.model == "ghostnet_050"]
    peer = [r for r in rows if r.source == "timm"]
    assert [r.backend for r in ours] == ["best"] and ours[0].runtime in runtimes
    assert {r.runtime for r in peer} == runtimes and [r.backend for r in peer].count("best") == 1
    fastest = min(peer, key=lambda r: r.median_ms)
    assert fastest.backend == "best"
