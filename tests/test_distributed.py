"""DDP: two gloo processes under torchrun match one process at the same global batch.

BatchNorm is frozen (`--freeze-bn`): with per-rank batches, BN batch statistics differ between one process and two
unless SyncBatchNorm is used, and torch's SyncBatchNorm runs on CUDA only. Everything else is live: dropout is off
(each rank draws its own masks), augmentation on (seeded per sample, so it is the same for any world size), EMA on.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ghostnet.train import make_config, read_training_state, train
from support.training import TINY, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(epochs=2, batch_size=8, freeze_bn=True, ema_decay=0.5, color_jitter=0.4,
                model_kwargs={"stem_stride": 1, "drop_rate": 0.0})


@pytest.mark.slow
def test_two_gloo_processes_match_one(tmp_path):
    data = write_npz_data(tmp_path / "data")
    values = {**TINY, **SETTINGS, "data": str(data)}
    train(make_config({**values, "output": str(tmp_path / "one")}))

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ghostnet",
               "train", "--data", str(data), "--model", TINY["model"],
               "--model-kwargs", "{stem_stride: 1, drop_rate: 0}",
               "--preset", "cifar", "--img-size", "16", "--epochs", "2", "--batch-size", "8", "--lr", str(TINY["lr"]),
               "--freeze-bn", "--ema-decay", "0.5", "--color-jitter", "0.4", "--channels-last", TINY["channels_last"],
               "--workers", "0", "--no-progress",
               "--no-plots", "--output", str(tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 process(es)" in done.stdout and done.stdout.count("training ghostnet_050") == 1  # rank 0 alone prints

    one, two = read_training_state(tmp_path / "one" / "last.pt"), read_training_state(tmp_path / "two" / "last.pt")
    assert two["config"]["batch_size"] == one["config"]["batch_size"] == 8  # the global batch: 4 per process
    assert len(two["ranks"]) == 2 and one["progress"] == two["progress"]
    for key in ("model", "ema"):
        for name, tensor in one[key].items():
            torch.testing.assert_close(two[key][name], tensor, msg=lambda m, where=f"{key} {name}": f"{where}: {m}")
    # Train metrics are reduced over both processes; evaluation splits the val set and sums the counts.
    for row_one, row_two in zip(one["history"], two["history"]):
        assert row_two["train_loss"] == pytest.approx(row_one["train_loss"], rel=1e-5)
        assert row_two["train_top1"] == row_one["train_top1"] and row_two["val_top1"] == row_one["val_top1"]
        assert row_two["val_loss"] == pytest.approx(row_one["val_loss"], rel=1e-5)
