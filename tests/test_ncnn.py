"""ncnn (deploy/runtimes/ncnn.py through pnnx; ncnn_int8.py): every registered model that ncnn can express computes
the model's function in ncnn, and those it cannot are refused with the op named (a list kept here as data); a
corrupted weight is caught; the CLI, `--format auto --runtimes ncnn`, the bench backends, atomic writes; the int8
rewrite (ncnn2table's KL calibration, ncnn2int8's layout)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import ghostnet
from ghostnet.cli import main as cli_main
from ghostnet.deploy import fuse
from ghostnet.deploy.forms import Form, build_form
from support.conditioned import BrokenModel, ConvDepthwiseLinear, conditioned_model, sample_images
from support.numerics import assert_file_parity
from support.runtime_checks import (assert_bench_backend_times, assert_cli_bench_rows,
                                    assert_corrupted_weight_caught, assert_front_runs_on)

ncnn = pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from ghostnet.deploy.runtimes.ncnn import (OFF, NcnnSession, export_ncnn, export_ncnn_int8, ncnn_files,  # noqa: E402
                                           ncnn_layers)
from ghostnet.deploy.runtimes.ncnn_int8 import kl_threshold  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

#: Registered models ncnn cannot express, and the op pnnx leaves unmapped (docs/deployment.md lists them): the CIFAR
#: ResNets' option-A shortcut subsamples with a strided slice, x[:, :, ::2, ::2], which ncnn's Crop cannot do.
NOT_CONVERTIBLE = {name: "Tensor.slice" for name in (
    "resnet20_cifar", "resnet32_cifar", "resnet44_cifar", "resnet56_cifar", "resnet110_cifar",
    "ghost_resnet20_cifar", "ghost_resnet32_cifar", "ghost_resnet44_cifar", "ghost_resnet56_cifar",
    "ghost_resnet110_cifar")}


@pytest.mark.slow
@pytest.mark.parametrize("name", ghostnet.list_models())
def test_ncnn_matches_the_model_for_every_model_it_can_express(name, tmp_path):
    """Fused, converted by pnnx, run image by image on a batch of 3; the others refused naming the op."""
    model = conditioned_model(name)
    x = sample_images(1)
    if name in NOT_CONVERTIBLE:
        with pytest.raises(ValueError, match=rf"ncnn cannot express {NOT_CONVERTIBLE[name]} \(layer "):
            export_ncnn(fuse(model, example_input=x), tmp_path / f"{name}.param", x)
        assert list(tmp_path.iterdir()) == []
        return
    path = export_ncnn(fuse(model, example_input=x), tmp_path / f"{name}.param", x)
    assert path.with_suffix(".bin").is_file() and sorted(p.name for p in tmp_path.iterdir()) == [
        f"{name}.bin", f"{name}.param"]
    assert_file_parity(model, path, sample_images(3), f"ncnn, {name}")


def test_ghostnet_matches_in_ncnn_in_float32_image_by_image(tmp_path):
    """ncnn's x86 defaults store activations in float16 where the CPU has F16C (500x the float32 error): sessions
    switch that off, and Winograd F(4,3)/F(6,3), whose rounding a VGG's output cannot afford. A batch runs image by
    image."""
    model = conditioned_model("ghostnet_100")
    x = sample_images(1)
    path = export_ncnn(fuse(model, example_input=x), tmp_path / "g.param", x)
    assert {"Concat", "ConvolutionDepthWise", "HardSigmoid"} <= {kind for kind, _ in ncnn_layers(path)}
    assert_file_parity(model, path, sample_images(2), "ncnn, ghostnet_100")
    session = NcnnSession(path, threads=1)
    assert all(getattr(session.net.opt, flag) is False for flag in OFF) and session.net.opt.num_threads == 1
    batch = sample_images(2)
    assert torch.equal(session(batch), torch.cat([session(batch[:1]), session(batch[1:])]))
    assert session.bind(batch)() is not None
    with pytest.raises(ValueError, match="one image at a time"):
        export_ncnn(fuse(model, example_input=x), tmp_path / "d.param", batch, dynamic_batch=True)


@pytest.mark.slow
@pytest.mark.parametrize("name,form", [("ghostnet_100", Form(split=True)), ("ghostnet_100", Form(align=4)),
                                       ("ghostnet_100", Form(single_path="all")),
                                       ("ghostnetv2_100", Form(split=True, dfc="training"))])
def test_deployment_forms_match_in_ncnn(name, form, tmp_path):
    """The forms `--format auto --runtimes ncnn` chooses among (the split form is the fastest for v1 here)."""
    model = conditioned_model(name)
    x = sample_images(1)
    path = export_ncnn(build_form(model, form, x), tmp_path / "f.param", x)
    assert_file_parity(model, path, sample_images(2), f"ncnn {form.describe()}, {name}")


def test_a_corrupted_weight_is_caught(tmp_path):
    assert_corrupted_weight_caught(export_ncnn, tmp_path / "b.param", "ghostnet_100", batch=3)


def test_output_names_and_stems(tmp_path):
    assert ncnn_files(tmp_path / "m.param") == (tmp_path / "m.param", tmp_path / "m.bin")
    assert ncnn_files(tmp_path / "m") == (tmp_path / "m.param", tmp_path / "m.bin")
    with pytest.raises(ValueError, match=r"STEM.param \+ STEM.bin"):
        ncnn_files(tmp_path / "m.onnx")


def test_cli_export_and_check(tmp_path, capsys):
    stem = tmp_path / "g"
    assert cli_main(["export", "ghostnet_050", "--format", "ncnn", "--image-size", "32", "--check",
                     "-o", str(stem)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {stem}.param (ncnn, fused)" in text and "limit" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.bin", "g.param"]
    assert cli_main(["export", "ghostnet_050", "--format", "ncnn", "-o", str(tmp_path / "h.onnx")]) == 2
    assert "STEM.param + STEM.bin" in capsys.readouterr().err
    assert cli_main(["export", "ghostnet_050", "--format", "ncnn", "--source", "pytorch",
                     "-o", str(tmp_path / "h.param")]) == 2
    assert "source: not an export option of ncnn" in capsys.readouterr().err


def test_cli_names_the_op_ncnn_cannot_express(tmp_path, capsys):
    assert cli_main(["export", "resnet20_cifar", "--format", "ncnn", "-o", str(tmp_path / "r.param")]) == 2
    err = capsys.readouterr().err.strip()
    assert list(tmp_path.iterdir()) == [] and len(err.splitlines()) == 1
    assert "ncnn cannot express Tensor.slice (layer Tensor.slice_" in err and "steps=(2,2)" in err


def test_failed_or_misnamed_export_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError, match="broken model"):
        export_ncnn(BrokenModel().eval(), tmp_path / "m.param", torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"STEM.param"):
        export_ncnn(conditioned_model("ghostnet_050"), tmp_path / "m.bin", sample_images(1))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_format_auto_with_ncnn_named(tmp_path):
    """ncnn is not among the runtimes `--format auto` tries by default (tunable=False), but named it is used."""
    from ghostnet.deploy.autotune import export_fastest, tunable_runtimes

    assert "ncnn" not in {r.name for r in tunable_runtimes()}
    result = export_fastest("ghostnet_050", tmp_path / "g", runtimes=["ncnn"], image_size=32, rounds=1, reps=2)
    assert result.record["runtime"] == "ncnn" and result.path == tmp_path / "g.param"
    assert (tmp_path / "g.bin").is_file() and all(c["runtime"] == "ncnn" for c in result.record["candidates"])
    assert any(c["form"]["split"] for c in result.record["candidates"])


def test_bench_ncnn_backend():
    assert_bench_backend_times("ncnn")


@pytest.mark.slow
def test_cli_bench_ncnn_and_int8_rows(tmp_path, capsys):
    assert_cli_bench_rows(["ncnn", "ncnn-int8"], tmp_path, capsys)


@pytest.mark.slow
def test_front_runs_on_ncnn(tmp_path):
    assert_front_runs_on("ncnn", tmp_path)


# int8 ---------------------------------------------------------------------------------------------------------


def _ncnn2table_kl(hist: np.ndarray, target_bin: int = 128) -> int:
    """ncnn2table's KL threshold search (tools/quantize/ncnn2table.cpp, QuantNet::quantize_KL), ported literally."""
    hn = hist / hist.sum()
    nb, eps = len(hn), 0.0001
    best, best_kl = target_bin, math.inf
    for threshold in range(target_bin, nb):
        clip = [eps + hn[j] for j in range(threshold)]
        clip[threshold - 1] += sum(hn[threshold:])
        npb = threshold / target_bin
        q = [0.0] * target_bin
        rl = math.floor(npb)
        rs = npb - rl
        q[0] = (rs * hn[rl] if rs > 0 else 0.0) + sum(hn[:rl])
        q[0] /= rl + rs
        for j in range(1, target_bin - 1):
            start, end = j * npb, (j + 1) * npb
            lu, rl = math.ceil(start), math.floor(end)
            ls, rs = lu - start, end - rl
            q[j] = (ls * hn[lu - 1] if ls > 0 else 0.0) + (rs * hn[rl] if rs > 0 else 0.0) + sum(hn[lu:rl])
            q[j] /= rl - lu + ls + rs
        start = threshold - npb
        lu = math.ceil(start)
        ls = lu - start
        q[-1] = (ls * hn[lu - 1] if ls > 0 else 0.0) + sum(hn[lu:threshold])
        q[-1] /= threshold - lu + ls
        ex = [eps] * threshold
        rl = math.floor(npb)
        rs = npb - rl
        if rs > 0:
            ex[rl] += rs * q[0]
        for k in range(rl):
            ex[k] += q[0]
        for j in range(1, target_bin - 1):
            start, end = j * npb, (j + 1) * npb
            lu, rl = math.ceil(start), math.floor(end)
            ls, rs = lu - start, end - rl
            if ls > 0:
                ex[lu - 1] += ls * q[j]
            if rs > 0:
                ex[rl] += rs * q[j]
            for k in range(lu, rl):
                ex[k] += q[j]
        start = threshold - npb
        lu = math.ceil(start)
        ls = lu - start
        if ls > 0:
            ex[lu - 1] += ls * q[-1]
        for k in range(lu, threshold):
            ex[k] += q[-1]
        kl = sum(a * math.log(a / b) for a, b in zip(clip, ex))
        if kl < best_kl:
            best, best_kl = threshold, kl
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kl_threshold_is_ncnn2tables(seed):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(5000)) ** (1 + seed / 2)
    x = np.concatenate([x, [x.max() * (2 + seed)]])  # an outlier, as activations have, so that clipping pays
    hist = np.bincount(np.minimum((x / x.max() * 384).astype(int), 383), minlength=384)
    assert kl_threshold(hist) == _ncnn2table_kl(hist) < 384


def _int8(model, tmp_path, x, **kwargs):
    fp32 = export_ncnn(model, tmp_path / "f.param", x)
    int8 = export_ncnn_int8(model, tmp_path / "q.param", x, [sample_images(8)], **kwargs)
    return fp32, int8


def test_int8_computes_what_ncnn2int8s_scales_mean(tmp_path):
    """Each int8 layer: the input quantized with 127 / max|input| over the calibration images (minmax), weights
    with 127 / max|w| per output channel, rounded half away from zero; the int8 sum dequantized, plus the bias."""
    torch.manual_seed(0)
    model = ConvDepthwiseLinear().eval()
    calibration = torch.randn(4, 3, 16, 16)
    path = export_ncnn_int8(model, tmp_path / "q.param", calibration[:1], [calibration], method="minmax",
                            quantize_depthwise=True)

    def q(v, scale):
        return torch.clamp(torch.sign(v * scale) * torch.floor((v * scale).abs() + 0.5), -127, 127)

    def int8_layer(x, calibrated, weight, bias, op):
        s_in, s_w = 127 / calibrated.abs().max(), 127 / weight.abs().flatten(1).amax(1)
        per_output = (1, -1) + (1,) * (weight.dim() - 2)
        return (op(q(x, s_in), q(weight, s_w.view((-1,) + (1,) * (weight.dim() - 1))))
                / (s_in * s_w.view(per_output)) + bias.view(per_output))

    conv, dw, fc = model.conv, model.dw, model.fc
    x = calibration[:1]
    with torch.no_grad():
        seen = torch.relu(conv(calibration))  # what calibration saw at the depthwise conv's input
        y = torch.relu(int8_layer(x, calibration, conv.weight, conv.bias,
                                  lambda a, w: torch.nn.functional.conv2d(a, w, None, 2, 1)))
        y = int8_layer(y, seen, dw.weight, dw.bias, lambda a, w: torch.nn.functional.conv2d(a, w, None, 1, 1, 1, 8))
        simulated = int8_layer(y.mean((2, 3)), dw(seen).mean((2, 3)), fc.weight, fc.bias, lambda a, w: a @ w.T)
    got = NcnnSession(path, threads=1)(x)
    assert torch.allclose(got, simulated, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, model(x).detach(), rtol=1e-5, atol=1e-6)  # it is int8, not the float model


@pytest.mark.slow
def test_int8_model_has_ncnn2int8s_layout(tmp_path):
    model = fuse(conditioned_model("ghostnet_050"), example_input=sample_images(1))
    fp32, int8 = _int8(model, tmp_path, sample_images(1), method="minmax", quantize_depthwise=True)
    quantized = [line for line in int8.read_text().splitlines()[2:]
                 if line.split()[0] in ("Convolution", "ConvolutionDepthWise", "InnerProduct")]
    assert quantized and all(" 8=1" in line if line.startswith("ConvolutionDepthWise") else " 8=2" in line
                             for line in quantized)
    assert int8.with_suffix(".bin").stat().st_size < 0.3 * fp32.with_suffix(".bin").stat().st_size
    assert torch.isfinite(NcnnSession(int8, threads=1)(sample_images(2))).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin", "f.param", "q.bin", "q.param"]


@pytest.mark.slow
def test_int8_keeps_depthwise_float_by_default(tmp_path):
    """ncnn's x86 int8 depthwise kernels ran slower than float32 (docs/benchmarks.md): left in float32 unless asked."""
    model = fuse(conditioned_model("ghostnet_050"), example_input=sample_images(1))
    _, int8 = _int8(model, tmp_path, sample_images(1), method="minmax")
    lines = int8.read_text().splitlines()[2:]
    depthwise = [line for line in lines if line.startswith("ConvolutionDepthWise")]
    assert depthwise and not any(" 8=" in line for line in depthwise)
    assert all(" 8=2" in line for line in lines if line.startswith("Convolution "))


def test_int8_needs_calibration_images_of_the_input_shape(tmp_path):
    model = fuse(conditioned_model("ghostnet_050"), example_input=sample_images(1))
    with pytest.raises(ValueError, match=r"no calibration image of shape \(3, 32, 32\)"):
        export_ncnn_int8(model, tmp_path / "q.param", sample_images(1), [sample_images(2, size=40)])
    with pytest.raises(ValueError, match="calibration method"):
        export_ncnn_int8(model, tmp_path / "q.param", sample_images(1), [sample_images(2)], method="entropy")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_cli_int8_export_on_real_images(shared_data, tmp_path, capsys):
    out = tmp_path / "q.param"
    assert cli_main(["export", "ghostnet_050", "--format", "ncnn", "--image-size", "32", "--num-images", "16",
                     "--int8-calibration-data", str(shared_data / "cifar10"), "--check", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"wrote {out} (ncnn, int8, fused)" in text and "limit" in text
    assert " 8=2" in out.read_text()
