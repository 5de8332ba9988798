"""Training-step memory: what autograd saves per module, the measured memory at backward, checkpointing's saving."""
from __future__ import annotations

import pytest
import torch.nn as nn

import ghostnet
from ghostnet.analysis.training_memory import training_memory
from ghostnet.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_saved_tensors_are_what_autograd_keeps():
    # A conv keeps its input (its weight is a parameter, left out); a ReLU keeps its output.
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU())
    tm = training_memory(model, (3, 8, 8), batch_size=2)
    assert tm.saved_by_module == {"0": 2 * 3 * 8 * 8 * 4, "1": 2 * 8 * 8 * 8 * 4}
    # The input was allocated before the step; what else is alive at backward is the ReLU output (+ the loss).
    assert 2 * 8 * 8 * 8 * 4 <= tm.retained_bytes <= 2 * 8 * 8 * 8 * 4 + 64
    assert tm.peak_bytes >= tm.retained_bytes
    assert tm.weights_bytes == tm.gradient_bytes == tm.momentum_bytes == 8 * 3 * 3 * 3 * 4


def test_ghostnet_stages_and_what_checkpointing_saves():
    plain = training_memory(ghostnet.create_model("ghostnet_050"), (3, 64, 64), batch_size=4)
    ckpt = training_memory(ghostnet.create_model("ghostnet_050"), (3, 64, 64), batch_size=4, grad_checkpointing=True)
    input_bytes = 4 * 3 * 64 * 64 * 4
    stages = [k for k in plain.saved_by_module if k.startswith("blocks.")]
    assert stages == [f"blocks.{i}" for i in range(10)] and all(plain.saved_by_module[k] > 0 for k in stages)
    # Measured and counted agree: what is alive at backward is what was saved, less the input made before the step.
    assert plain.retained_bytes == pytest.approx(plain.saved_bytes - input_bytes, rel=0.02)
    # ... and with checkpointing, each of the 10 checkpointed stages also keeps its RNG state (5 KB on CPU).
    assert 0 <= ckpt.retained_bytes - (ckpt.saved_bytes - input_bytes) <= 10 * 8192
    assert not any(k.startswith("blocks.") for k in ckpt.saved_by_module)  # checkpointed stages keep only inputs
    assert ckpt.retained_bytes < 0.3 * plain.retained_bytes
    # The peak also holds the gradients (as large as the weights: most of it at this small input) and a stage
    # being recomputed.
    assert ckpt.peak_bytes < plain.peak_bytes


@pytest.mark.slow
def test_mixed_precision_saves_half_width_activations():
    import torch

    # At 224x224 the activations outweigh the bfloat16 copies of the weights that autocast also keeps.
    fp32 = training_memory(ghostnet.create_model("ghostnet_050"), (3, 224, 224), batch_size=4)
    bf16 = training_memory(ghostnet.create_model("ghostnet_050"), (3, 224, 224), batch_size=4,
                           autocast_dtype=torch.bfloat16)
    assert bf16.autocast == "bfloat16" and fp32.autocast is None
    # Convs save bfloat16 inputs under autocast; batch norms run in float32 and keep theirs.
    assert 0.4 * fp32.saved_bytes < bf16.saved_bytes < 0.75 * fp32.saved_bytes
    assert bf16.weights_bytes == fp32.weights_bytes  # the weights stay float32


def test_cli_profile_train(capsys, tmp_path):
    import json

    assert main(["profile", "resnet20_cifar", "--batch-size", "4", "--no-measure", "--train",
                 "--grad-checkpointing", "--dtype", "bfloat16", "--json", str(tmp_path / "p.json")]) == 0
    training, = json.loads((tmp_path / "p.json").read_text())["training"]
    assert training["grad_checkpointing"] and training["autocast"] == "bfloat16" and training["batch_size"] == 4
    assert training["saved_bytes"] == sum(training["saved_by_module"].values()) > 0
    out = capsys.readouterr().out
    assert "resnet20_cifar: one training step, batch 4, 3x32x32, with gradient checkpointing, bfloat16 autocast" in out
    assert "alive when backward starts" in out and "SGD momentum" in out
    assert main(["profile", "resnet20_cifar", "--no-measure", "--grad-checkpointing"]) != 0
    assert "--grad-checkpointing goes with --train" in capsys.readouterr().err
