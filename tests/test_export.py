"""Export: ONNX checked against onnxruntime for every registered model, TorchScript, torch.export, the CLI."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from support.conditioned import conditioned_model, sample_images

import ghostnet
from ghostnet.cli import main as cli_main
from ghostnet.deploy import fuse
from ghostnet.deploy.export import export_model, load_exported
from ghostnet.deploy.onnx_io import export_onnx, onnx_session, run_onnx
from ghostnet.deploy.runtimes.torch_export import export_program
from ghostnet.deploy.runtimes.torchscript import export_torchscript
from support.numerics import assert_float32_parity, corrupt_one_weight, eager_and_reference, float32_parity

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

pytestmark = pytest.mark.usefixtures("one_thread")

# Every exported model is held to the float32 eager model's own error against a float64 run of the same model
# (support/numerics.py): a fixed absolute tolerance measured the CPU (AVX-512 or AVX2 kernels), not the exporter.


_model, _images = conditioned_model, sample_images


@pytest.mark.slow
@pytest.mark.parametrize("name", ghostnet.list_models())
def test_onnx_matches_eager_for_every_model(name, tmp_path):
    """Fused, exported at 32x32 (GhostNetV2's DFC maps are 1x1 at the last stage), run at another batch size."""
    model = _model(name)
    path = export_onnx(fuse(model, example_input=_images(1)), tmp_path / f"{name}.onnx", _images(1))
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 17
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    x = _images(3)
    eager, reference = eager_and_reference(model, x)
    got = run_onnx(onnx_session(path, threads=1), x)
    assert got.shape == eager.shape
    assert_float32_parity(got, eager, reference, what=f"onnxruntime, {name}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnet_100", "ghost_resnet50_s2"])
def test_onnx_check_fails_for_one_corrupted_weight(name, tmp_path):
    """The bound above can fail: 1e-3 added to one stem weight (of millions) before export is caught.

    ghost_resnet50_s2 is the registered model where that corruption comes closest to the bound: 6x over it on
    AVX-512 and AVX2, against 100x or more for the GhostNets.
    """
    model = _model(name)
    fused = fuse(model, example_input=_images(1))
    weight = corrupt_one_weight(fused)
    path = export_onnx(fused, tmp_path / "corrupt.onnx", _images(1))
    x = _images(3)
    eager, reference = eager_and_reference(model, x)
    parity = float32_parity(run_onnx(onnx_session(path, threads=1), x), eager, reference)
    assert not parity.ok, f"{weight} + 1e-3 went unnoticed: {parity}"


@pytest.mark.slow
def test_dynamo_exporter_matches(tmp_path):
    """The dynamo (torch.export-based) exporter on GhostNetV2 at 32x32: DFC maps of 1x1, fewer nodes."""
    model = _model("ghostnetv2_100")
    fused = fuse(model, example_input=_images(1))
    path = export_onnx(fused, tmp_path / "d.onnx", _images(1), exporter="dynamo")
    x = _images(3)
    eager, reference = eager_and_reference(model, x)
    assert_float32_parity(run_onnx(onnx_session(path, threads=1), x), eager, reference, what="dynamo exporter")
    scripted = onnx.load(str(export_onnx(fused, tmp_path / "t.onnx", _images(1))))
    assert len(onnx.load(str(path)).graph.node) < len(scripted.graph.node)


#: The families (v1 is covered by ONNX for every model), each in TorchScript and torch.export.
FAMILIES = ["ghostnetv2_100", "ghostnetv3_050", "repghostnet_050", "g_ghost_regnetx_032", "parameternet_600m"]


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES + ["ghost_resnet20_cifar"])
def test_torchscript_round_trip(name, tmp_path):
    model = _model(name)
    path = export_torchscript(fuse(model, example_input=_images(1)), tmp_path / "m.pt", _images(1))
    loaded = load_exported(path)
    x = _images(3)
    eager, reference = eager_and_reference(model, x)
    with torch.no_grad():
        assert_float32_parity(loaded(x), eager, reference, what="TorchScript")


@pytest.mark.slow
@pytest.mark.parametrize("name", FAMILIES + ["resnet20_cifar"])
def test_torch_export_round_trip_with_dynamic_batch(name, tmp_path):
    model = _model(name)
    path = export_program(fuse(model, example_input=_images(1)), tmp_path / "m.pt2", _images(1))
    loaded = load_exported(path)
    for batch in (1, 3):
        x = _images(batch)
        eager, reference = eager_and_reference(model, x)
        with torch.no_grad():
            assert_float32_parity(loaded(x), eager, reference, what=f"torch.export, batch {batch}")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100"])
def test_channel_aligned_onnx_matches(name, tmp_path):
    """Zero-padded channels for onnxruntime's blocked kernels: same outputs, every Concat/Add in blocked form."""
    from ghostnet.deploy.align import align_channels

    model = _model(name)
    fused = fuse(model, example_input=_images(1))
    concats = _op_count(export_onnx(fused, tmp_path / "f.onnx", _images(1)), "Concat")
    aligned = align_channels(fused, 16)
    path = export_onnx(aligned, tmp_path / "a.onnx", _images(1))
    x = _images(3)
    eager, reference = eager_and_reference(model, x)
    assert_float32_parity(run_onnx(onnx_session(path, threads=1), x), eager, reference, what="channel-aligned")
    # Single-path Ghost modules (where padding would waste channels) leave no concat behind.
    single_path = sum(getattr(m, "single_path", False) for m in aligned.modules())
    assert single_path == 8 and _op_count(path, "Concat") == concats - single_path


def _op_count(path, op_type: str) -> int:
    return sum(node.op_type == op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.slow
def test_cli_export_single_path(tmp_path, capsys):
    out = tmp_path / "sp.onnx"
    assert cli_main(["export", "ghostnet_050", "--image-size", "32", "--single-path", "all", "-o", str(out),
                     "--check"]) == 0
    assert _op_count(out, "Concat") == 0
    assert "fused, 32 single-path Ghost modules" in capsys.readouterr().out
    assert cli_main(["export", "ghostnet_050", "--single-path", "all", "--no-fuse", "-o", str(out)]) == 2
    assert "need the fused model" in capsys.readouterr().err


@pytest.mark.slow
def test_unfused_export_also_matches(tmp_path):
    model = _model("ghostnet_050")
    path = export_onnx(model, tmp_path / "raw.onnx", _images(2), dynamic_batch=False)
    x = _images(2)
    eager, reference = eager_and_reference(model, x)
    assert_float32_parity(run_onnx(onnx_session(path, threads=1), x), eager, reference, what="unfused ONNX")


@pytest.mark.slow
def test_fused_onnx_graph_is_smaller(tmp_path):
    """Folded batch norms leave nothing behind: no BatchNormalization node, fewer nodes than the plain export."""
    model = _model("ghostnet_050")
    plain = onnx.load(str(export_onnx(model, tmp_path / "plain.onnx", _images(1))))
    fused = onnx.load(str(export_onnx(fuse(model, example_input=_images(1)), tmp_path / "f.onnx", _images(1))))
    assert "BatchNormalization" not in {n.op_type for n in fused.graph.node}
    assert len(fused.graph.node) <= len(plain.graph.node)


def test_export_errors(tmp_path):
    model = _model("resnet20_cifar")
    with pytest.raises(ValueError, match="opset must be >= 17"):
        export_onnx(model, tmp_path / "m.onnx", _images(1), opset=16)
    with pytest.raises(ValueError, match="unknown ONNX exporter"):
        export_onnx(model, tmp_path / "m.onnx", _images(1), exporter="tf2onnx")
    with pytest.raises(ValueError, match="unknown export format"):
        export_model(model, tmp_path / "m.x", _images(1), "caffe")
    with pytest.raises(ValueError, match="eval mode"):
        export_onnx(model.train(), tmp_path / "m.onnx", _images(1))
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.onnx")
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_exported(tmp_path / "weights.bin")


class _FailsOnTrace(nn.Module):
    def forward(self, x):
        if x.shape[0] > 1:
            raise RuntimeError("broken model")
        return x


def test_failed_export_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="broken model"):
        export_torchscript(_FailsOnTrace().eval(), tmp_path / "m.pt", torch.randn(1, 3, 4, 4))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_export_with_check(tmp_path, capsys):
    out = tmp_path / "g.onnx"
    assert cli_main(["export", "ghostnetv2_100", "--image-size", "32", "-o", str(out), "--check"]) == 0
    assert out.is_file()
    assert "max abs difference" in capsys.readouterr().out
    assert cli_main(["export", "resnet20_cifar", "--format", "torch.export", "-o",
                     str(tmp_path / "g.pt2"), "--check"]) == 0


def test_cli_export_bad_input(tmp_path, capsys):
    assert cli_main(["export", "no_such_model", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert cli_main(["export", "ghostnet_050", "--weights", str(tmp_path / "missing.pth")]) == 2


@pytest.mark.parametrize("fmt, name", [("onnx", "g.onnx"), ("openvino", "g.xml"), ("ncnn", "g.param"),
                                       ("torchscript", "g.pt"), ("torch.export", "g.pt2")])
def test_cli_export_to_a_relative_path(fmt, name, tmp_path, monkeypatch, capsys):
    """`-o out/g.param` from the working folder, as a user types it (ncnn's converter runs in a folder of its own,
    where a relative path pointed elsewhere)."""
    from ghostnet.deploy.runtimes import get_runtime

    runtime = get_runtime(fmt if fmt != "onnx" else "onnxruntime")
    if not runtime.available():
        pytest.skip(f"{runtime.name} is not installed")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["export", "ghostnet_050", "--format", fmt, "--image-size", "32", "--check", "-o",
                     f"out/{name}"]) == 0, capsys.readouterr().err
    assert (tmp_path / "out" / name).is_file() and "limit" in capsys.readouterr().out
