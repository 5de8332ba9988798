"""OpenVINO (deploy/runtimes/openvino.py): every registered model's IR computes the model's function, from ONNX and
from the PyTorch module directly, static and dynamic batch; a corrupted weight is caught; the CLI, the bench
backend and atomic writes."""
from __future__ import annotations

import pytest
import torch

import ghostnet
from ghostnet.cli import main as cli_main
from ghostnet.deploy import fuse
from ghostnet.deploy.runtimes.openvino import compile_config, export_openvino
from support.conditioned import BrokenModel, conditioned_model, sample_images
from support.numerics import assert_file_parity
from support.runtime_checks import assert_bench_backend_times, assert_corrupted_weight_caught

ov = pytest.importorskip("openvino")
pytest.importorskip("onnx")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
@pytest.mark.parametrize("name", ghostnet.list_models())
def test_openvino_matches_the_model_for_every_model(name, tmp_path):
    """Fused, converted through ONNX with a dynamic batch, run at a batch size the export did not see."""
    model = conditioned_model(name)
    path = export_openvino(fuse(model, example_input=sample_images(1)), tmp_path / f"{name}.xml", sample_images(1))
    assert path.with_suffix(".bin").is_file()
    assert_file_parity(model, path, sample_images(3), f"openvino, {name}")


@pytest.mark.parametrize("name", ["ghostnet_100"] + [pytest.param(n, marks=pytest.mark.slow)
                                                     for n in ("ghostnetv2_100", "ghostnetv3_100", "repghostnet_100")])
@pytest.mark.parametrize("source", ["onnx", "pytorch"])
def test_both_converters_static_batch(name, source, tmp_path):
    model = conditioned_model(name)
    x = sample_images(1)
    path = export_openvino(fuse(model, example_input=x), tmp_path / "m.xml", x, dynamic_batch=False, source=source)
    assert list(ov.Core().read_model(str(path)).inputs[0].get_partial_shape()) == [1, 3, 32, 32]
    assert_file_parity(model, path, x, f"openvino {source}, {name}")


def test_a_corrupted_weight_is_caught(tmp_path):
    assert_corrupted_weight_caught(export_openvino, tmp_path / "b.xml", "ghostnet_100", batch=3)


def test_inference_is_float32_whatever_the_cpu_default():
    """OpenVINO's default on AMX / AVX-512-bf16 Xeons is bfloat16 inference: not the model's function."""
    config = compile_config(2)
    assert config["INFERENCE_PRECISION_HINT"] == "f32" and config["INFERENCE_NUM_THREADS"] == 2
    assert "INFERENCE_NUM_THREADS" not in compile_config(None)


def test_cli_export_and_check(tmp_path, capsys):
    out = tmp_path / "g.xml"
    assert cli_main(["export", "ghostnet_050", "--format", "openvino", "--image-size", "32", "--check",
                     "--source", "pytorch", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (openvino, fused, source=pytorch)" in text and "limit" in text
    assert out.is_file() and out.with_suffix(".bin").is_file()
    assert cli_main(["export", "ghostnet_050", "--format", "openvino", "--exporter", "dynamo",
                     "-o", str(tmp_path / "h.xml")]) == 2
    assert "exporter: not an export option of openvino" in capsys.readouterr().err


def test_failed_or_misnamed_export_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="broken model"):
        export_openvino(BrokenModel().eval(), tmp_path / "m.xml", torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"NAME.xml"):
        export_openvino(conditioned_model("resnet20_cifar"), tmp_path / "m.bin", sample_images(1))
    assert list(tmp_path.iterdir()) == []


def test_bench_openvino_backend():
    assert_bench_backend_times("openvino")
