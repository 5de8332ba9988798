"""A run cannot go bad silently: non-finite settings are refused at parse time, a NaN/inf loss or gradient norm stops
the run (or is skipped and counted, up to --skip-nonfinite-steps) with the last good checkpoint intact, weights are
never saved non-finite, and a loss that grows by orders of magnitude is reported once.

NaN losses are made deterministic by a forward hook on the tiny model (installed by wrapping engine.build_model)
that replaces the logits of chosen training steps."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

import ghostnet.train.build
import ghostnet.train.engine as engine
from ghostnet.cli import main
from ghostnet.train import load_trained, load_recipe, make_config, read_training_state, train
from ghostnet.train.config import ConfigError, TrainConfig
from ghostnet.train.guard import DIVERGED_STATUS, LOSS_GROWTH_FACTOR, TrainingDiverged, skip_step
from ghostnet.train.lock import pid_alive
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

# 40 training images / batch 8: 5 steps per epoch. Dropout off, so that a skipped step can be compared exactly.
SETTINGS = dict(model_kwargs={"stem_stride": 1, "drop_rate": 0.0})


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"))


class Poison:
    """Replaces the logits of chosen training steps (1-based, counted from `first`): NaN, inf, or a huge but finite
    loss whose gradient stays that of the true logits."""

    def __init__(self, monkeypatch, steps: dict[int, str], first: int = 1) -> None:
        self.steps, self.step, self.model = steps, first - 1, None
        self.params_at: dict[int, dict[str, torch.Tensor]] = {}  # weights and buffers as each step began
        build = ghostnet.train.build.build_model  # the real one, not an earlier Poison's wrapper

        def build_and_poison(*args, **kwargs):
            parts = build(*args, **kwargs)
            self.model = parts.model
            parts.model.register_forward_pre_hook(self.count)
            parts.model.register_forward_hook(self.hook)
            return parts

        monkeypatch.setattr(engine, "build_model", build_and_poison)

    def count(self, module, inputs) -> None:
        if module.training:
            self.step += 1
            self.params_at[self.step] = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def hook(self, module, inputs, out):
        kind = self.steps.get(self.step) if module.training else None
        if kind == "nan":
            return out * float("nan")
        if kind == "inf":  # class 0 impossible: an infinite loss for its samples
            impossible = torch.zeros_like(out, dtype=torch.bool)
            impossible[:, 0] = True
            return out.masked_fill(impossible, -math.inf)
        if kind == "huge":  # class 0 at 1e4 for every sample: a loss of about 1e4 for 3/4 of the batch
            big = torch.zeros_like(out)
            big[:, 0] = 1e4
            return out + (big - out).detach()
        return None


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_finite(state: dict[str, torch.Tensor]) -> None:
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, bad[:5]


# ---------------------------------------------------------------------------------------------- parse time
@pytest.mark.parametrize("key, value", [("lr", "nan"), ("lr", "inf"), ("weight_decay", "-inf"), ("momentum", "nan"),
                                        ("warmup_epochs", "nan"), ("label_smoothing", "nan"), ("grad_clip", "inf"),
                                        ("ema_decay", "nan"), ("kd_temperature", "inf")])
def test_nonfinite_settings_are_refused_in_one_line_naming_the_flag(key, value, tmp_path, capsys):
    flag = "--" + key.replace("_", "-")
    assert main(["train", "--data", str(tmp_path), "--output", str(tmp_path / "run"), f"{flag}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{flag} {value}: {key} must be a finite number" in err
    assert not (tmp_path / "run").exists()  # refused before anything was made


def test_nonfinite_settings_are_refused_from_a_recipe_and_in_python(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: .nan\nepochs: 2\n")
    with pytest.raises(ConfigError, match=r"r\.yaml: lr must be a finite number, got nan") as info:
        load_recipe(str(recipe))
    assert info.value.field == "lr"
    recipe.write_text("betas: [0.9, .inf]\n")
    with pytest.raises(ConfigError, match="betas must hold finite numbers"):
        load_recipe(str(recipe))
    with pytest.raises(ConfigError, match="min_lr must be a finite number"):
        TrainConfig(min_lr=float("nan"))
    for values, message in (({"momentum": 1.5}, r"momentum must be in \[0, 1\)"),
                            ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
                            ({"grad_clip": 0.0}, "grad_clip must be > 0"),
                            ({"skip_nonfinite_steps": -1}, "skip_nonfinite_steps must be >= 0")):
        with pytest.raises(ConfigError, match=message):
            make_config(values)
    assert make_config({"lr": 1e15}).lr == 1e15  # finite is allowed: a run that blows up is stopped (below)


# ---------------------------------------------------------------------------------------------- non-finite losses
def test_nan_loss_stops_the_run_with_the_last_good_checkpoint_intact(data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    poison = Poison(monkeypatch, {7: "nan"})  # epoch 2, step 2
    args = ["train", "--data", str(data), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}",
            "--preset", "cifar", "--img-size", "16", "--batch-size", "8", "--workers", "0", "--epochs", "3",
            "--ema-decay", "0.5", "--no-progress", "--no-plots", "--output", str(out)]
    assert main(args) == DIVERGED_STATUS == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    line = err[-1]
    assert line.startswith("ghostnet train: error: training diverged at epoch 2, step 2 (global step 7): the loss is "
                           "nan"), line
    assert f"the last good checkpoint is {out / 'last.pt'}" in line
    # The checkpoint of epoch 1 is what is left, finite and loadable; the NaN step was not applied.
    state = read_training_state(out / "last.pt")
    assert state["progress"]["global_step"] == 5 and state["progress"]["epoch"] == 1
    assert_finite(state["model"])
    assert_finite(state["ema"])
    assert_finite(torch.load(out / "best.pt", weights_only=True)["model"])
    trained = load_trained(out / "best.safetensors")
    with torch.no_grad():
        assert torch.isfinite(trained.model(torch.rand(2, 3, 16, 16))).all()
    assert all(torch.equal(v, poison.params_at[7][k]) for k, v in poison.model.named_parameters())
    assert not (out / ".lock").exists()


def test_an_inf_gradient_norm_stops_a_clipped_run(data, tmp_path, monkeypatch):
    poison = Poison(monkeypatch, {})

    def inf_grads(progress):  # from step 3 on, the classifier's gradient is inf while the loss stays finite
        if progress.global_step == 2:
            poison.model.classifier.weight.register_hook(lambda grad: grad + float("inf"))

    cfg = make_config(tiny_config(data, tmp_path, epochs=1, grad_clip=1.0, save_every_steps=2, **SETTINGS))
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 3 \(global step 3\): the gradient norm is inf") as info:
        train(cfg, on_step=inf_grads)
    assert f"the last good checkpoint is {tmp_path / 'last.pt'}" in str(info.value)
    assert read_training_state(tmp_path / "last.pt")["progress"]["global_step"] == 2
    assert all(torch.equal(v, poison.params_at[3][k]) for k, v in poison.model.named_parameters())


def test_a_learning_rate_that_blows_up_stops_the_run_before_the_weights_are_saved(data, tmp_path):
    # Epoch 1 trains at lr 0.05; then multistep multiplies it by 1e20 and the run diverges within a few steps.
    cfg = make_config(tiny_config(data, tmp_path, epochs=3, schedule="multistep", milestones=[1], gamma=1e20))
    with pytest.raises(TrainingDiverged, match="training diverged .*epoch 2") as info:
        train(cfg)
    assert f"the last good checkpoint is {tmp_path / 'last.pt'}" in str(info.value)
    state = read_training_state(tmp_path / "last.pt")
    assert state["progress"]["epoch"] == 1
    assert_finite(state["model"])


def test_nonfinite_weights_are_never_saved(data, tmp_path, monkeypatch):
    poison = Poison(monkeypatch, {})

    def spoil_bn(progress):  # BN running statistics do not enter the training loss: only the save can see them
        if progress.global_step == 3:
            next(m for m in poison.model.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var.fill_(math.inf)

    cfg = make_config(tiny_config(data, tmp_path, epochs=1, save_every_steps=2, **SETTINGS))
    with pytest.raises(TrainingDiverged, match="global step 4: the weights are NaN/inf, so they were not saved to"):
        train(cfg, on_step=spoil_bn)
    assert read_training_state(tmp_path / "last.pt")["progress"]["global_step"] == 2
    assert_finite(read_training_state(tmp_path / "last.pt")["model"])


# ---------------------------------------------------------------------------------------------- skipping
@pytest.mark.slow
def test_skip_nonfinite_steps_skips_counts_and_survives_resume(data, tmp_path, monkeypatch, capsys):
    steps = {2: "nan", 7: "inf"}
    poison = Poison(monkeypatch, steps)
    result = train(make_config(tiny_config(data, tmp_path / "straight", epochs=2, skip_nonfinite_steps=2,
                                           **SETTINGS)))
    assert [row["skipped_steps"] for row in result["history"]] == [1, 1]
    rows = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert [row["skipped_steps"] for row in rows] == [1, 1]
    err = capsys.readouterr().err
    assert "skipped epoch 1, step 2 (global step 2): the loss is nan; the step was not applied (1 of 2" in err
    assert "skipped epoch 2, step 2 (global step 7): the loss is inf" in err
    # A skipped step leaves weights and BN statistics as they were: the next step starts from the same state.
    for skipped in steps:
        assert all(torch.equal(v, poison.params_at[skipped + 1][k]) for k, v in poison.params_at[skipped].items())
    straight = read_training_state(tmp_path / "straight" / "last.pt")
    assert straight["progress"]["skipped_steps"] == 2
    assert_finite(straight["model"])

    # Killed after step 4 (checkpoint at step 3, one step skipped so far) and resumed: the same run, the same count.
    class Killed(Exception):
        pass

    def kill_at_4(progress):
        if progress.global_step == 4:
            raise Killed

    Poison(monkeypatch, steps)
    cfg = make_config(tiny_config(data, tmp_path / "resumed", epochs=2, skip_nonfinite_steps=2, save_every_steps=3,
                                  **SETTINGS))
    with pytest.raises(Killed):
        train(cfg, on_step=kill_at_4)
    assert read_training_state(tmp_path / "resumed" / "last.pt")["progress"]["skipped_steps"] == 1
    Poison(monkeypatch, steps, first=4)
    train(cfg, resume=tmp_path / "resumed" / "last.pt")
    resumed = read_training_state(tmp_path / "resumed" / "last.pt")
    assert resumed["progress"] == straight["progress"]
    assert [row["skipped_steps"] for row in resumed["history"]] == [1, 1]
    assert all(torch.equal(v, straight["model"][k]) for k, v in resumed["model"].items())


def test_one_nonfinite_step_more_than_allowed_stops_the_run(data, tmp_path, monkeypatch):
    Poison(monkeypatch, {2: "nan", 3: "nan", 7: "nan"})
    cfg = make_config(tiny_config(data, tmp_path, epochs=2, skip_nonfinite_steps=2, **SETTINGS))
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 2 \(global step 7\): the loss is nan after skipping 2 "
                                               r"such step\(s\) \(--skip-nonfinite-steps 2\)"):
        train(cfg)
    assert read_training_state(tmp_path / "last.pt")["progress"]["skipped_steps"] == 2


def test_a_skipped_step_resets_an_fp16_grad_scaler():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    for unscaled in (False, True):
        before = [p.detach().clone() for p in model.parameters()]
        scaler.scale(model(torch.full((1, 3), float("nan"))).sum()).backward()
        if unscaled:  # as with gradient clipping
            scaler.unscale_(optimizer)
        skip_step(scaler, optimizer, unscaled)
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        optimizer.zero_grad()
    assert scaler.get_scale() == 2.0 ** 8  # halved at each skipped step, as after an overflow
    scaler.scale(model(torch.ones(1, 3)).sum()).backward()
    scaler.unscale_(optimizer)  # refused if the skipped steps had left the scaler's per-step state behind
    scaler.step(optimizer)
    scaler.update()


# ---------------------------------------------------------------------------------------------- loss growth
@pytest.mark.slow
def test_a_loss_grown_by_orders_of_magnitude_is_reported_once_and_the_run_goes_on(data, tmp_path, monkeypatch,
                                                                                  capsys):
    Poison(monkeypatch, {3: "huge", 4: "huge", 8: "huge"})
    result = train(make_config(tiny_config(data, tmp_path, epochs=2, **SETTINGS)))
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if "warning: the training loss grew" in line]
    assert len(warnings) == 1, err
    assert "at global step 3" in warnings[0]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [("loss_warning" in row) for row in rows] == [True, False]
    assert rows[0]["loss_warning"] == warnings[0]
    point = next(p for p in rows[0]["steps"] if p["step"] == 3)
    assert point["loss"] > LOSS_GROWTH_FACTOR * math.log(4) and point["warning"] == warnings[0]
    assert len(result["history"]) == 2 and read_training_state(tmp_path / "last.pt")["progress"]["loss_warned"]


#: `ghostnet train` whose rank 1 alone gets a NaN loss at global step 3 (run under torchrun).
NAN_ON_RANK_1 = """
import os, sys
import ghostnet.train.build as build
import ghostnet.train.engine as engine
from ghostnet.cli import main

steps = [0]

def poison(module, inputs, out):
    if module.training:
        steps[0] += 1
        if steps[0] == 3 and os.environ["RANK"] == "1":
            return out * float("nan")

def build_and_poison(*args, **kwargs):
    parts = build.build_model(*args, **kwargs)
    parts.model.register_forward_hook(poison)
    return parts

engine.build_model = build_and_poison
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_under_ddp_every_process_stops_at_the_same_step(data, tmp_path):
    import os
    import subprocess
    import sys

    out, script = tmp_path / "ddp", tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
               "train", "--data", str(data), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}",
               "--preset", "cifar", "--img-size", "16", "--epochs", "2", "--batch-size", "8", "--workers", "0",
               "--save-every-steps", "2", "--no-progress", "--no-plots", "--output", str(out)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)  # a process left waiting in a collective would hang until this timeout
    assert done.returncode != 0
    stops = [line for line in done.stderr.splitlines() if "training diverged" in line]
    # Both processes stop at the step where only rank 1's loss was NaN, each with the one line.
    assert len(stops) == 2, done.stderr[-3000:]
    assert all("at epoch 1, step 3 (global step 3): the loss is" in line for line in stops), stops
    assert read_training_state(out / "last.pt")["progress"]["global_step"] == 2
    # Rank 0 releases the lock as it stops; torchrun may SIGTERM it first when rank 1 exits sooner, and then the lock
    # left behind is a stale one that the next run takes over.
    lock = out / ".lock"
    assert not lock.exists() or not pid_alive(json.loads(lock.read_text())["pid"])
