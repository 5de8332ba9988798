"""The deploy package's layout: `fuse` is the function, one MAC counter, one input-size lookup,
and the export pipeline as a library function (the CLI only parses and prints; tests/test_export.py runs it)."""
from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn as nn

import ghostnet
import ghostnet.deploy
from ghostnet.analysis.cost import default_input_size, profile
from ghostnet.analysis.macs import MacCounter, count_macs
from ghostnet.deploy import bench, fusion
from ghostnet.deploy.pipeline import ExportCheck, export_for_deployment

pytestmark = pytest.mark.usefixtures("one_thread")


def test_fuse_is_the_function_and_no_module_of_that_name_remains():
    assert callable(ghostnet.deploy.fuse) and ghostnet.deploy.fuse is fusion.fuse
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("ghostnet.deploy.fuse")
    assert ghostnet.deploy.fuse is fusion.fuse


def test_bench_exposes_the_harness_and_the_split_modules_hold_the_rest():
    assert all(hasattr(bench, name) for name in bench.__all__)
    assert {"BenchConfig", "BenchResult", "BenchRow", "run_benchmark", "write_report"} <= set(bench.__all__)
    from ghostnet.deploy.bench_config import (MODES, OWN_ONLY_BACKENDS, PreparedModel,  # noqa: F401
                                              RuntimeUnavailable, known_backends)
    from ghostnet.deploy.bench_timing import measure_interleaved  # noqa: F401
    assert bench.known_backends is known_backends and bench.BenchConfig.__module__ == "ghostnet.deploy.bench_config"


def test_one_mac_counter_for_bench_profile_and_its_modules():
    model = ghostnet.create_model("ghostnet_050").eval()
    x = torch.randn(2, 3, 64, 64)
    macs = count_macs(model, x[:1])
    assert bench.count_macs(model, x) == macs  # the harness counts per image
    assert count_macs(model, x) == 2 * macs
    assert profile(model, input_size=(3, 64, 64), measure_memory=False).macs == macs
    with torch.no_grad(), MacCounter(model) as counter:
        model(x[:1])
    per_module = counter.flops_by_module()
    assert counter.total_macs() == macs and per_module[""] == 2 * macs
    stem = model.conv_stem.out_channels
    assert per_module["conv_stem"] == 2 * stem * 3 * 9 * 32 * 32  # stride-2 3x3 stem: maps of 32x32


def test_input_size_of_a_model_without_a_config():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3))
    assert default_input_size(plain) == (3, 224, 224)
    assert default_input_size(ghostnet.create_model("resnet20_cifar")) == (3, 32, 32)
    older_timm = nn.Sequential(nn.Conv2d(3, 4, 3))
    older_timm.default_cfg = {"input_size": (3, 64, 80)}  # timm before pretrained_cfg
    assert default_input_size(older_timm) == (3, 64, 80)
    with pytest.raises(ValueError, match=r"Sequential has no pretrained_cfg\['input_size'\]; pass an example input"):
        fusion.example_input_for(plain)
    assert fusion.example_input_for(ghostnet.create_model("ghostnet_050"), 2, image_size=48).shape == (2, 3, 48, 48)


@pytest.mark.slow
def test_export_pipeline_returns_what_it_wrote(tmp_path):
    export = export_for_deployment("ghostnet_050", tmp_path / "g.pt", "torchscript", image_size=32,
                                   single_path="all")
    assert export.path == tmp_path / "g.pt" and export.path.is_file()
    assert export.form == "torchscript, fused, 32 single-path Ghost modules"
    check = export.check()
    # a batch size the trace did not see, held to what float32 rounding explains (far below the old fixed 1e-4)
    assert check.passed and check.batch_size == 3 and 0 < check.limit < 1e-4
    with pytest.raises(ValueError, match="need the fused model"):
        export_for_deployment("ghostnet_050", tmp_path / "h.pt", "torchscript", fused=False, single_path="all")
    with pytest.raises(ValueError, match="single_path must be one of"):
        export_for_deployment("ghostnet_050", tmp_path / "h.pt", "torchscript", single_path="some")
    assert not (tmp_path / "h.pt").exists()


def test_an_export_without_dynamic_batch_is_for_batch_one(tmp_path):
    import onnx

    export = export_for_deployment("ghostnet_050", tmp_path / "g.onnx", "onnx", image_size=32, dynamic_batch=False)
    dims = onnx.load(str(export.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 32, 32]
    check = export.check()
    assert check.passed and check.batch_size == 1


def test_a_failed_check_says_by_how_much():
    ExportCheck(1e-5, 2, 1e-4).raise_if_failed()
    with pytest.raises(ValueError, match=r"differs from the model by 0.5 \(> 0.0001, what float32 rounding explains\)"):
        ExportCheck(0.5, 2, 1e-4).raise_if_failed()


@pytest.mark.slow
@pytest.mark.parametrize("flags, form, block", [
    ({"sse2", "avx", "avx2", "avx512f"}, "channels aligned to 16 (auto: AVX-512 CPU)", 16),
    ({"sse2", "avx", "avx2"}, "channels aligned to 8 (auto: AVX2 CPU)", 8),
    ({"fp", "asimd"}, "no channel alignment (auto: aarch64 CPU)", 0),
])
def test_export_aligns_to_the_cpu_it_runs_on(monkeypatch, tmp_path, flags, form, block):
    """`ghostnet export --align-channels auto`: the NCHWc block of this CPU, read from its flags (monkeypatched)."""
    onnx = pytest.importorskip("onnx")
    from ghostnet import hardware as machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(machine.platform, "machine", lambda: "aarch64" if "asimd" in flags else "x86_64")
    export = export_for_deployment("ghostnet_050", tmp_path / "g.onnx", "onnx", image_size=32, align_channels="auto")
    assert f"onnx, fused, {form}" in export.form and export.check().passed
    proto = onnx.load(str(export.path))
    weights = {init.name: init.dims for init in proto.graph.initializer}
    outs = [weights[node.input[1]][0] for node in proto.graph.node
            if node.op_type == "Conv" and node.input[1] in weights]
    assert all(c % 8 == 0 for c in outs) == (block > 0)  # ghostnet_050 has Ghost halves of 4, 12, 20, ... maps
    assert all(c % 16 == 0 for c in outs) == (block == 16)


def test_alignment_argument_is_a_count_or_auto(tmp_path, capsys):
    from ghostnet.cli import main as cli_main

    with pytest.raises(ValueError, match="integer >= 0 or 'auto'"):
        export_for_deployment("ghostnet_050", tmp_path / "h.pt", "torchscript", align_channels="sixteen")
    with pytest.raises(SystemExit):
        cli_main(["export", "ghostnet_050", "--align-channels", "automatic", "-o", str(tmp_path / "x.onnx")])
    assert "expected an integer >= 0 or 'auto', got 'automatic'" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
