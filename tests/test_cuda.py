"""CUDA paths: fused and single-path forms, bf16 / channels-last inference, AMP training, memory measurement,
gradient checkpointing.

Every test here needs a GPU and skips without one (the rest of the suite covers the same code on CPU);
`benchmarks/gpu_check.sh` runs this file first on a lent GPU machine.
"""
from __future__ import annotations

import json
import math

import pytest
import torch
from support.common import randomize_bn
from support.training import tiny_config, write_npz_data

import ghostnet
from ghostnet.analysis import profile
from ghostnet.deploy import fuse, single_path_ghost_modules
from ghostnet.train import make_config, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

GHOSTNETS = ["ghostnet_100", "ghostnetv2_100", "ghostnetv3_100"]


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls and convs, so that CUDA results can be held to float32 tolerances."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.mark.parametrize("name", GHOSTNETS)
def test_fused_and_single_path_match_float64_reference_on_cuda(name):
    model = randomize_bn(ghostnet.create_model(name)).eval()
    x = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.double()(x.double())
        model.float()
        fused = fuse(model, example_input=x[:1]).cuda()
        got = fused(x.cuda()).cpu()
        single_path_ghost_modules(fused)
        got_single_path = fused(x.cuda()).cpu()
    assert _relative_error(got, reference) <= 1e-4
    assert _relative_error(got_single_path, reference) <= 1e-4


@pytest.mark.parametrize("name", GHOSTNETS)
def test_bf16_channels_last_inference_on_cuda(name):
    model = ghostnet.create_model(name).eval()
    x = torch.randn(8, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(x)
        fused = fuse(model, example_input=x[:1], channels_last=True).cuda().to(torch.bfloat16)
        got = fused(x.cuda().to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float().cpu()
    assert torch.isfinite(got).all()
    # bf16 keeps 8 bits of mantissa; on CPU the same comparison gives 0.4-0.6% for these three models.
    assert _relative_error(got, reference) <= 2e-2


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_training_run_on_cuda(amp, tmp_path):
    data = write_npz_data(tmp_path / "d")
    result = train(make_config(tiny_config(data, tmp_path / "run", epochs=1, amp=amp, device="cuda",
                                           ema_decay=0.5, channels_last=True)))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(result["history"]) == 1 and math.isfinite(rows[0]["train_loss"])


def test_memory_is_measured_with_the_cuda_allocator():
    model = ghostnet.create_model("ghostnet_100").eval().cuda()
    memory = profile(model, input_size=(3, 224, 224), batch_size=8).memory
    assert memory.device.startswith("cuda") and memory.measure_method == "torch.cuda.max_memory_allocated"
    # The allocator also holds cuDNN workspaces, so the measured peak is at least the activations estimated from
    # tensor lifetimes, and of the same order.
    assert memory.peak_estimated_bytes * 0.9 <= memory.peak_measured_bytes <= memory.peak_estimated_bytes * 4


def test_grad_checkpointing_lowers_peak_cuda_memory_and_keeps_the_step():
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 224, 224, device="cuda"), torch.randint(0, 1000, (64,), device="cuda")
    peaks, losses = [], []
    for enable in (False, True):
        torch.manual_seed(0)
        model = ghostnet.create_model("ghostnet_100").cuda().train()
        model.set_grad_checkpointing(enable)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        torch.manual_seed(1)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated() - start)
        losses.append(loss.item())
        del model, loss
    print(f"ghostnet_100 batch 64 training step, peak CUDA memory: plain {peaks[0] / 2**20:.0f} MiB, "
          f"checkpointed {peaks[1] / 2**20:.0f} MiB")
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    assert peaks[1] < 0.8 * peaks[0]
