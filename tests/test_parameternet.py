"""ParameterNet: equal to the official network (reference fixture), the official key layout and size, the paper's
MACs, the dynamic convolution's own checks (per-sample kernels, traceable form, BN folding, cost counting), errors.

The fixture is the official network (huawei-noah/Efficient-AI-Backbones parameternet_pytorch/cv/parameternet.py, run
with timm 0.4.9) at width 0.1 with random weights and measured BN statistics, with its float64 eval-mode logits on a
seeded batch of two images (tests/data/make_parameternet_reference.py; neither the official code nor old timm is
needed here).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import ghostnet
from ghostnet.analysis import profile
from ghostnet.layers.dynamic_conv import CondConv2d, DynamicConv2d
from ghostnet.models.parameternet import ParameterNet

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = Path(__file__).resolve().parent / "data"
REFERENCE = np.load(DATA / "parameternet_w0_1_io.npz")
FIXTURE = DATA / "parameternet_w0_1.safetensors"

# Both networks compute the same float64 operations on the same float32-exact weights; only the order of sums may
# differ (another torch build may pick another conv algorithm), about 1e-16 relative per operation. One expert weight
# off by 1e-3 moves these logits by 1e-5 to 1e-3 of their scale (see the corruption test).
RTOL_OF_SCALE = 1e-10

#: Counted from the official code (`parameternet_600m()` built with timm 0.4.9, torch 2.14.1): its parameters, and
#: its MACs at 224x224 under torch.utils.flop_counter (the grouped conv over the batch, the kernel mixing and the
#: routing linear layers).
OFFICIAL_PARAMS, OFFICIAL_MACS = 34_504_504, 589_646_596
#: The paper (abstract: "0.6G") and the official README's figure (ParameterNet-600M at 600M FLOPs = MACs).
PAPER_MACS = 600e6


def fixture_model() -> ParameterNet:
    model = ParameterNet(width=0.1, num_classes=10).eval()
    model.load_state_dict(load_file(str(FIXTURE)), strict=True)
    return model.double()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


def fixture_error(model: nn.Module) -> float:
    with torch.no_grad():
        logits = model(torch.from_numpy(REFERENCE["input"]).double())
    return relative_error(logits, torch.from_numpy(REFERENCE["logits"]))


def test_official_network_and_ours_give_the_same_logits():
    assert fixture_error(fixture_model()) <= RTOL_OF_SCALE
    expected = torch.from_numpy(REFERENCE["logits"])
    assert relative_error(expected[0], expected[1]) > 0.1  # the two images give different logits: the body counts


def test_parity_check_fails_for_one_corrupted_expert_weight():
    model = fixture_model()
    with torch.no_grad():  # expert 2 of a mid-network primary conv: only the mixing reads it
        model.blocks[6][3].ghost1.primary_conv[0].cond_conv.weight[2, 0] += 1e-3
    assert fixture_error(model) > 1e3 * RTOL_OF_SCALE


def test_key_layout_and_size_are_the_official_ones():
    model = ghostnet.create_model("parameternet_600m")
    state = model.state_dict()
    assert set(state) == set(load_file(str(FIXTURE)))  # same table, so the official names at every width
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS
    # timm's CondConv2d layout: experts flattened, (K, C_out * C_in/groups * k * k).
    assert state["conv_stem.cond_conv.weight"].shape == (4, 32 * 3 * 3 * 3)
    assert state["conv_stem.routing.weight"].shape == (4, 3)
    # blocks.1.0: expansion make_divisible(48 * 1.9, 4) = 92, so 46 intrinsic maps, each with one 3x3 cheap kernel.
    assert state["blocks.1.0.ghost1.cheap_operation.0.cond_conv.weight"].shape == (4, 46 * 1 * 3 * 3)
    assert state["blocks.9.0.conv.cond_conv.weight"].shape == (4, 1824 * 304)
    assert state["conv_head.weight"].shape == (1280, 1824, 1, 1)  # ordinary in the official code
    assert state["blocks.1.0.conv_dw.weight"].shape == (92, 1, 3, 3)  # ordinary too


def test_macs_against_the_paper_and_the_official_code():
    with torch.device("meta"):  # counts need shapes only
        model = ghostnet.create_model("parameternet_600m")
    p = profile(model)
    assert p.params == OFFICIAL_PARAMS and p.macs == OFFICIAL_MACS
    assert abs(p.macs - PAPER_MACS) / PAPER_MACS < 0.02  # 589.6M against "0.6G"


def _static_twin(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """The same network with every dynamic conv replaced by the static conv it computes for image x[0:1]."""
    routing = {}

    def record(module, args, output):  # returns None: a forward hook's return value would replace the output
        routing[module] = module.routing_weights(args[0])

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, DynamicConv2d)]
    with torch.no_grad():
        model(x[:1])
    for h in hooks:
        h.remove()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, DynamicConv2d):
                setattr(parent, name, child.to_static(routing[child][0]))
    return model


@pytest.mark.slow
def test_dynamic_conv_counts_one_conv_plus_mixing_and_routing_per_image():
    """Per image: one static conv's MACs, plus K x kernel size (mixing), plus C_in x K (routing); batch scales it."""
    model = ParameterNet(width=0.25, num_classes=10).eval()
    dynamic = [m for m in model.modules() if isinstance(m, DynamicConv2d)]
    extra = sum(m.num_experts * m.cond_conv.weight.shape[1] + m.in_channels * m.num_experts for m in dynamic)
    counted = {b: profile(model, (3, 64, 64), batch_size=b, measure_memory=False).macs for b in (1, 3)}
    x = torch.randn(1, 3, 64, 64)
    twin = _static_twin(model, x)
    assert not any(isinstance(m, DynamicConv2d) for m in twin.modules())
    static = profile(twin, (3, 64, 64), measure_memory=False).macs
    assert counted[1] == static + extra
    assert counted[3] == 3 * counted[1]  # the grouped conv over the batch counts each image once


GEOMETRIES = [  # in, out, kernel, stride, padding, dilation, groups, expert biases
    (8, 16, 3, 1, 1, 1, 1, False),
    (8, 8, 5, 2, 2, 1, 8, False),  # depthwise, strided (a shortcut's)
    (6, 12, 1, 1, 0, 1, 1, True),  # 1x1: the traceable form's matmul path
    (6, 9, 3, 2, 2, 2, 3, True),  # grouped, strided, dilated
    (4, 8, 1, 2, 0, 1, 1, False),  # strided 1x1
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
def test_dynamic_conv_is_a_per_sample_static_conv(geometry):
    cin, cout, k, s, p, d, g, bias = geometry
    torch.manual_seed(0)
    conv = DynamicConv2d(cin, cout, k, s, p, d, g, bias=bias, num_experts=3).double()
    x = torch.randn(4, cin, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        routing = conv.routing_weights(x)
        expected = torch.cat([conv.to_static(r)(xi[None]) for r, xi in zip(routing, x)])
        got = conv(x)
        channels_last = conv(x.to(memory_format=torch.channels_last))
        conv.cond_conv.impl = "traceable"
        traceable = conv(x)
    assert relative_error(got, expected) < 1e-12
    assert relative_error(channels_last, expected) < 1e-12
    assert relative_error(traceable, expected) < 1e-12
    assert relative_error(expected[0], expected[1]) > 1e-3  # the samples' kernels differ


def test_cond_conv_matches_timm():
    timm_layers = pytest.importorskip("timm.layers")
    ours = CondConv2d(6, 12, 3, 2, 1, groups=3, bias=True, num_experts=4).double()
    theirs = timm_layers.CondConv2d(6, 12, 3, 2, 1, groups=3, bias=True, num_experts=4).double()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x, r = torch.randn(3, 6, 10, 10, dtype=torch.float64), torch.rand(3, 4, dtype=torch.float64)
    with torch.no_grad():
        assert relative_error(ours(x, r), theirs(x, r)) < 1e-12


def test_traced_dynamic_conv_takes_any_batch():
    """Tracing (ONNX, TorchScript) takes the traceable form, whose graph does not freeze the batch size."""
    torch.manual_seed(0)
    model = nn.Sequential(DynamicConv2d(4, 8, 3, groups=2), DynamicConv2d(8, 6, 1)).eval()
    traced = torch.jit.trace(model, torch.randn(2, 4, 8, 8))
    x = torch.randn(5, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-6)


def test_fold_batchnorm_is_exact():
    torch.manual_seed(0)
    conv = DynamicConv2d(6, 8, 3, bias=True).double()
    bn = nn.BatchNorm2d(8).double().eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(3, 6, 7, 7, dtype=torch.float64)
    with torch.no_grad():
        expected = bn(conv(x))
        conv.fold_batchnorm(bn)
        assert relative_error(conv(x), expected) < 1e-12
        conv.fold_batchnorm(bn)  # a second BN folds on top of the first's bias
        assert relative_error(conv(x), bn(expected)) < 1e-12
    assert set(conv.state_dict()) == {"bias", "routing.weight", "routing.bias", "cond_conv.weight", "cond_conv.bias"}


def test_features_only_taps_and_output_stride():
    model = ParameterNet(width=0.25, features_only=True).eval()
    with torch.no_grad():
        maps = model(torch.randn(1, 3, 64, 64))
    assert [i.reduction for i in model.feature_info] == [2, 4, 8, 16, 32]
    assert [m.shape[1:] for m in maps] == [(i.num_chs, 64 // i.reduction, 64 // i.reduction)
                                          for i in model.feature_info]
    dilated = ParameterNet(width=0.25, output_stride=16, num_classes=7).eval()
    assert set(dilated.state_dict()) == set(ParameterNet(width=0.25, num_classes=7).state_dict())
    with torch.no_grad():
        assert dilated.forward_features(torch.randn(2, 3, 64, 64)).shape[-2:] == (4, 4)


def test_registry_options():
    model = ghostnet.create_model("parameternet_600m", num_classes=10, in_chans=1, drop_rate=0.0)
    assert model.classifier.out_features == 10 and model.conv_stem.in_channels == 1 and model.drop_rate == 0.0
    assert model.pretrained_cfg["interpolation"] == "bilinear"  # the official _cfg
    with pytest.raises(ValueError, match="expected 1 input channels"):
        model(torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("build, message", [
    (lambda: DynamicConv2d(8, 6, groups=4), "divisible by groups"),
    (lambda: DynamicConv2d(8, 8, num_experts=0), "num_experts"),
    (lambda: DynamicConv2d(8, 8, kernel_size=0), "kernel_size"),
    (lambda: DynamicConv2d(8, 8, padding=-1), "padding"),
    (lambda: ParameterNet(width=0), "width"),
    (lambda: ParameterNet(width=0.1, output_stride=4), "output_stride"),
    (lambda: ParameterNet(width=0.1, num_experts=0), "num_experts"),
])
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_bad_inputs():
    conv = DynamicConv2d(4, 8, 3)
    with pytest.raises(ValueError, match=r"routing weights must have shape \(2, 4\)"):
        conv.cond_conv(torch.randn(2, 4, 5, 5), torch.rand(2, 3))
    with pytest.raises(ValueError, match=r"expected input \(B, 4, H, W\)"):
        conv.cond_conv(torch.randn(2, 5, 5, 5), torch.rand(2, 4))
    with pytest.raises(ValueError, match=r"expected input \(B, 4, H, W\), got shape \(1, 3, 5, 5\)"):
        conv(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="expected 4 routing weights"):
        conv.to_static(torch.rand(3))
    conv.cond_conv.impl = "fast"
    with pytest.raises(ValueError, match="impl must be one of"):
        conv(torch.randn(1, 4, 5, 5))


@pytest.mark.slow
def test_static_batch_exports_mix_one_kernel_per_sample(tmp_path):
    """An export for one batch size keeps the grouped form: one conv's multiply-adds per sample, where the form a
    dynamic-batch export records computes every expert for convs other than 1x1. It computes the eager model's
    function (the dynamic-batch exports: tests/test_export.py)."""
    from ghostnet.analysis.macs import count_macs
    from ghostnet.deploy import fuse
    from ghostnet.deploy.export import load_exported
    from ghostnet.deploy.onnx_io import export_onnx, onnx_session, run_onnx
    from ghostnet.deploy.runtimes.torch_export import export_program
    from support.numerics import assert_float32_parity, eager_and_reference

    torch.manual_seed(0)
    model = ParameterNet(width=0.1, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    fused = fuse(model, example_input=x[:1])
    eager_macs = count_macs(fused, x)
    static = load_exported(export_program(fused, tmp_path / "static.pt2", x, dynamic_batch=False))
    assert count_macs(static, x) == eager_macs
    for conv in fused.modules():  # what a dynamic-batch export records
        if isinstance(conv, CondConv2d):
            conv.impl = "traceable"
    assert count_macs(fused, x) > 1.1 * eager_macs
    for conv in fused.modules():
        if isinstance(conv, CondConv2d):
            conv.impl = "auto"
    eager, reference = eager_and_reference(model, x)
    onnx_static = run_onnx(onnx_session(export_onnx(fused, tmp_path / "s.onnx", x, dynamic_batch=False)), x)
    with torch.no_grad():
        assert_float32_parity(static(x), eager, reference, what="torch.export, static batch")
        assert_float32_parity(onnx_static, eager, reference, what="ONNX, static batch")


def test_static_batch_capture_is_per_thread_and_nests():
    import threading

    from ghostnet.layers.dynamic_conv import _static_batch, static_batch_capture

    seen = []
    with static_batch_capture():
        with static_batch_capture():
            pass
        assert _static_batch()  # still inside the outer block
        worker = threading.Thread(target=lambda: seen.append(_static_batch()))
        worker.start()
        worker.join()
    assert seen == [False] and not _static_batch()
