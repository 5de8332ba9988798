"""int8 post-training quantization: which convs get quantized, per-channel scales, calibration on real images."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import ghostnet
from ghostnet.cli import main as cli_main
from ghostnet.deploy import fuse
from ghostnet.deploy.onnx_io import export_onnx, onnx_session, run_onnx
from ghostnet.deploy.quantize import (calibration_batches, depthwise_conv_nodes, load_calibration_images,
                                      load_images, quantize_onnx)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")
numpy_helper = onnx.numpy_helper

CIFAR_CFG = ghostnet.create_model("resnet20_cifar").pretrained_cfg  # 32x32, CIFAR-10 mean and std


@pytest.fixture(scope="module")
def fused_model() -> nn.Module:
    torch.manual_seed(0)
    model = ghostnet.create_model("ghostnet_050", num_classes=10).eval()
    return fuse(model, example_input=torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def fp32_path(fused_model, tmp_path_factory):
    return export_onnx(fused_model, tmp_path_factory.mktemp("q") / "fp32.onnx", torch.randn(1, 3, 32, 32))


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    from support.common import SHARED_DATA

    cifar = SHARED_DATA / "cifar10"
    if not cifar.is_dir():
        pytest.skip(f"CIFAR-10 not found at {cifar} (set GHOSTNET_DATA)")
    # the test split: one 24 MB shard to decompress instead of two 59 MB ones
    return load_calibration_images(cifar, CIFAR_CFG, num_images=64, split="val")


def _conv_weights(path) -> dict[str, tuple[str, list[int]]]:
    """For every Conv node: ("int8", shape of its weight scale) or ("float", []) by how its weight arrives."""
    model = onnx.load(str(path))
    producers = {out: node for node in model.graph.node for out in node.output}
    inits = {init.name: init for init in model.graph.initializer}
    kinds = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        producer = producers.get(node.input[1])
        if producer is not None and producer.op_type == "DequantizeLinear":
            kinds[node.name] = ("int8", list(inits[producer.input[1]].dims))
        else:
            kinds[node.name] = ("float", [])
    return kinds


@pytest.mark.slow
def test_calibration_images_are_real_and_normalized(calibration):
    assert calibration.shape == (64, 3, 32, 32)
    # CIFAR-10 normalized by its own training statistics: about zero mean, unit spread
    assert abs(calibration.mean().item()) < 0.25 and 0.75 < calibration.std().item() < 1.25
    assert len(torch.unique(calibration[:, 0, 0, 0])) > 32  # distinct images, not one repeated


@pytest.mark.slow
def test_depthwise_nodes_are_the_grouped_convs(fused_model, fp32_path):
    grouped = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in fused_model.modules())
    assert grouped > 0
    assert len(depthwise_conv_nodes(onnx.load(str(fp32_path)))) == grouped


@pytest.mark.slow
def test_default_keeps_depthwise_float_with_per_channel_weights(fused_model, fp32_path, calibration, tmp_path):
    path = quantize_onnx(fp32_path, tmp_path / "int8.onnx", calibration_batches(calibration, 32))
    kinds = _conv_weights(path)
    grouped = set(depthwise_conv_nodes(onnx.load(str(fp32_path))))
    assert {name for name, (kind, _) in kinds.items() if kind == "float"} == grouped
    quantized = [dims for kind, dims in kinds.values() if kind == "int8"]
    assert quantized and all(len(dims) == 1 and dims[0] > 1 for dims in quantized)  # one scale per out channel
    x = calibration[:3]
    with torch.no_grad():
        expected = fused_model(x)
    got = run_onnx(onnx_session(path, threads=1), x)
    assert got.shape == expected.shape and torch.isfinite(got).all()


@pytest.mark.slow
def test_naive_per_tensor_quantizes_every_conv(fp32_path, calibration, tmp_path):
    path = quantize_onnx(fp32_path, tmp_path / "naive.onnx", calibration_batches(calibration, 32),
                         per_channel=False, keep_depthwise_float=False)
    kinds = _conv_weights(path)
    assert all(kind == "int8" and dims in ([], [1]) for kind, dims in kinds.values())


def test_quantize_errors(fp32_path, tmp_path):
    with pytest.raises(ValueError, match="unknown calibration method"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", [torch.randn(2, 3, 32, 32)], method="kl")
    with pytest.raises(ValueError, match="activations must be one of"):
        quantize_onnx(fp32_path, tmp_path / "x.onnx", [torch.randn(2, 3, 32, 32)], activations="fp8")
    with pytest.raises(FileNotFoundError):
        quantize_onnx(tmp_path / "missing.onnx", tmp_path / "x.onnx", [torch.randn(2, 3, 32, 32)])
    with pytest.raises(ValueError, match="non-empty"):
        calibration_batches(torch.empty(0, 3, 32, 32))
    with pytest.raises(ValueError, match="num_images"):
        load_calibration_images(tmp_path, CIFAR_CFG, num_images=0)
    assert not (tmp_path / "x.onnx").exists()


def test_load_images_keeps_labels_with_their_images(tmp_path):
    import numpy as np

    from ghostnet.data import TransformConfig

    # image k is filled with the value 10 * k, label k % 3: a wrong pairing or order shows
    images = np.stack([np.full((8, 8, 3), 10 * k, dtype=np.uint8) for k in range(12)])
    np.savez(tmp_path / "val.npz", images=images, labels=np.arange(12) % 3)
    cfg = TransformConfig(preset="cifar", img_size=8, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    x, y = load_images(tmp_path, cfg, "val")
    assert x.shape == (12, 3, 8, 8) and y.tolist() == [k % 3 for k in range(12)]
    assert torch.allclose(x[:, 0, 0, 0], torch.arange(12) * 10 / 255.0)
    x5, y5 = load_images(tmp_path, cfg, "val", num_images=5, seed=3)
    k = torch.round(x5[:, 0, 0, 0] * 25.5).long()  # which images were drawn
    assert len(set(k.tolist())) == 5 and y5.tolist() == (k % 3).tolist()
    assert torch.equal(load_images(tmp_path, cfg, "val", num_images=5, seed=3)[0], x5)  # a fixed selection
    empty = tmp_path / "empty"
    empty.mkdir()
    np.savez(empty / "val.npz", images=images[:0], labels=np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="holds no images"):
        load_images(empty, cfg, "val")


@pytest.mark.slow
def test_cli_quantize(calibration, tmp_path, capsys):
    from support.common import SHARED_DATA

    model = ghostnet.create_model("resnet20_cifar").eval()
    fp32 = export_onnx(fuse(model, example_input=torch.randn(1, 3, 32, 32)), tmp_path / "r.onnx",
                       torch.randn(1, 3, 32, 32))
    code = cli_main(["quantize", str(fp32), "--model", "resnet20_cifar", "--calibration-data",
                     str(SHARED_DATA / "cifar10"), "--split", "val", "--num-images", "32"])
    assert code == 0
    assert (tmp_path / "r.int8.onnx").is_file()
    assert "calibrated on 32 images" in capsys.readouterr().out
    assert cli_main(["quantize", str(fp32), "--model", "resnet20_cifar", "--calibration-data",
                     str(tmp_path / "nowhere")]) == 2
