"""Exact resume: a run killed mid-epoch or between epochs and resumed ends with the weights of an uninterrupted run."""
from __future__ import annotations

import pytest
import torch

from ghostnet.cli import main
from ghostnet.train import make_config, read_training_state, train
from support.common import single_thread
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

# Everything random is on: dropout, colour jitter, random erasing, EMA; 40 images / batch 8 = 5 steps per epoch.
SETTINGS = dict(epochs=2, ema_decay=0.9, color_jitter=0.4, random_erasing=0.5, weight_decay=5e-4)


class Killed(Exception):
    """Stands in for a process being killed."""


def kill_at(global_step: int):
    def on_step(progress):
        if progress.global_step == global_step:
            raise Killed

    return on_step


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"))


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted two-epoch run's final checkpoint."""
    out = tmp_path_factory.mktemp("straight")
    with single_thread():
        train(make_config(tiny_config(data, out, **SETTINGS)))
    return read_training_state(out / "last.pt")


def assert_same_run(a: dict, b: dict) -> None:
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        different = [k for k in a[key] if not torch.equal(a[key][k], b[key][k])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[:3]}"
    opt_a, opt_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["momentum_buffer"], opt_b[i]["momentum_buffer"]) for i in opt_a)
    assert a["progress"] == b["progress"]
    timing = ("epoch_time_s", "train_img_s")
    assert [{k: v for k, v in row.items() if k not in timing} for row in a["history"]] == \
           [{k: v for k, v in row.items() if k not in timing} for row in b["history"]]


@pytest.mark.slow
def test_resume_mid_epoch_gives_identical_weights(data, straight, tmp_path):
    # Checkpoints every 3 steps; killed at step 8, so the last checkpoint is step 6 (epoch 2, step 1 of 5). The
    # killed run loads data with 2 worker processes, the resumed one in-process: augmentation must not care.
    cfg = make_config(tiny_config(data, tmp_path, save_every_steps=3, workers=2, **SETTINGS))
    with pytest.raises(Killed):
        train(cfg, on_step=kill_at(8))
    saved = read_training_state(tmp_path / "last.pt")["progress"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 1, 6)
    train(make_config(tiny_config(data, tmp_path, save_every_steps=3, **SETTINGS)), resume=tmp_path / "last.pt")
    assert_same_run(straight, read_training_state(tmp_path / "last.pt"))


@pytest.mark.slow
def test_resume_between_epochs_gives_identical_weights(data, straight, tmp_path):
    cfg = make_config(tiny_config(data, tmp_path, **SETTINGS))
    with pytest.raises(Killed):
        train(cfg, on_step=kill_at(7))  # the epoch-1 checkpoint (step 5) is the last one written
    assert read_training_state(tmp_path / "last.pt")["progress"]["global_step"] == 5
    train(cfg, resume=tmp_path / "last.pt")
    assert_same_run(straight, read_training_state(tmp_path / "last.pt"))


@pytest.mark.slow
def test_cli_resume_rules(data, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}",
            "--preset", "cifar", "--img-size", "16", "--epochs", "1", "--batch-size", "20", "--workers", "0",
            "--no-progress", "--no-plots", "--output", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    # A second run into the same folder must not overwrite the first.
    assert main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    # Resuming may extend the run but not change what it computes.
    assert main(["train", "--resume", "--output", str(out), "--lr", "0.5"]) == 2
    assert "cannot change lr when resuming" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nothing.pt")]) == 2
    assert "no checkpoint to resume from" in capsys.readouterr().err
    assert main(["train", "--resume", "--output", str(out), "--epochs", "2", "--grad-checkpointing"]) == 0
    state = read_training_state(out / "last.pt")
    assert state["progress"]["epoch"] == 2 and [row["epoch"] for row in state["history"]] == [1, 2]
    assert state["config"]["grad_checkpointing"]  # memory-only settings may be taken up on resume
