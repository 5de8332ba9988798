"""The engine's parts: schedule, parameter groups, distillation loss, config validation, exports and model specs."""
from __future__ import annotations

import json
import math

import pytest
import torch

import ghostnet
from ghostnet.train import (distillation_loss, export_checkpoint, load_trained, lr_at, make_config, param_groups,
                            read_training_state, soft_target_loss, train)
from ghostnet.models.spec import create_from_spec, data_config_of
from support.common import single_thread
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg(**values):
    return make_config({"epochs": 10, "lr": 0.1, **values})


def test_warmup_then_cosine():
    c = cfg(warmup_epochs=1, warmup_lr=0.0, min_lr=0.001, schedule="cosine")
    assert lr_at(c, 0, 10) == 0.0
    assert lr_at(c, 5, 10) == pytest.approx(0.05)  # halfway through a linear warmup
    assert lr_at(c, 10, 10) == pytest.approx(0.1)  # peak right after warmup
    assert lr_at(c, 55, 10) == pytest.approx(0.001 + 0.5 * (0.1 - 0.001))  # half of the cosine
    assert lr_at(c, 100, 10) == pytest.approx(0.001)


def test_multistep_and_step_decay():
    c = cfg(schedule="multistep", milestones=[2, 3], gamma=0.1)
    assert [lr_at(c, s, 10) for s in (19, 20, 29, 30)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    # GhostNetV2's official schedule: x0.973 every 2.4 epochs.
    c = cfg(schedule="step", decay_epochs=2.4, gamma=0.973)
    assert lr_at(c, 23, 10) == pytest.approx(0.1) and lr_at(c, 24, 10) == pytest.approx(0.0973)
    assert lr_at(c, 50, 10) == pytest.approx(0.1 * 0.973 ** 2)


def test_no_weight_decay_on_norms_and_biases():
    model = ghostnet.create_model("ghostnet_050", num_classes=4)
    decay, no_decay = param_groups(model, 1e-4)
    assert no_decay["weight_decay"] == 0 and all(p.ndim == 1 for p in no_decay["params"])
    ids = {name: {id(p) for p in group["params"]} for name, group in (("decay", decay), ("no_decay", no_decay))}
    assert {id(model.bn1.weight), id(model.classifier.bias)} <= ids["no_decay"]
    assert {id(model.conv_stem.weight), id(model.classifier.weight)} <= ids["decay"]
    everything, = param_groups(model, 1e-4, wd_norm_bias=True)
    assert len(everything["params"]) == len(list(model.parameters()))


def test_soft_target_loss_is_returned_and_uses_the_temperature():
    torch.manual_seed(0)
    student = torch.randn(6, 5, requires_grad=True)
    targets = torch.tensor([0, 1, 2, 3, 4, 0])
    hard = torch.nn.functional.cross_entropy(student, targets)
    # A teacher sure of the labels makes the soft-target term the ordinary cross-entropy (T=1).
    confident = torch.nn.functional.one_hot(targets, 5).float() * 100
    assert soft_target_loss(student, confident).item() == pytest.approx(hard.item(), rel=1e-5)
    assert distillation_loss(student, confident, hard, kd_weight=0.5).item() == pytest.approx(1.5 * hard.item(), 1e-5)
    # A student equal to its teacher gets no gradient from the soft term, at any temperature.
    for t in (1.0, 4.0):
        (grad,) = torch.autograd.grad(soft_target_loss(student, student.detach(), t), student)
        assert grad.abs().max() < 1e-6
    teacher = torch.randn(6, 5)
    at_1, at_4 = soft_target_loss(student, teacher, 1.0).item(), soft_target_loss(student, teacher, 4.0).item()
    assert at_1 != pytest.approx(at_4)


@pytest.mark.parametrize("values, message", [
    ({"wieght_decay": 0.1}, "unknown key.*'wieght_decay' \\(did you mean 'weight_decay'\\?\\)"),
    ({"lr": "fast"}, "lr must be float"),
    ({"epochs": 0}, "epochs must be >= 1"),
    ({"optimizer": "lion"}, "optimizer must be one of sgd, adamw, rmsproptf"),
    ({"schedule": "poly"}, "schedule must be one of"),
    ({"warmup_epochs": -1}, "warmup_epochs must be >= 0"),
    ({"milestones": [30, 20]}, "milestones must be increasing"),
    ({"preset": "coco"}, "unknown transform preset"),
])
def test_config_errors_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        make_config(values)


def test_device_limits_are_clear_errors(tmp_path):
    data = write_npz_data(tmp_path / "d")
    for values, message in (({"amp": "fp16", "device": "cpu"}, "amp fp16 needs CUDA"),
                            ({"sync_bn": True, "device": "cpu"}, "sync_bn needs CUDA"),
                            ({"batch_size": 64}, "larger than the training set")):
        with pytest.raises(ValueError, match=message):
            train(make_config(tiny_config(data, tmp_path / "run", **values)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch run of the tiny model with EMA, gradient clipping and label smoothing."""
    data = write_npz_data(tmp_path_factory.mktemp("npz"))
    out = tmp_path_factory.mktemp("run")
    with single_thread():
        train(make_config(tiny_config(data, out, epochs=1, ema_decay=0.5, plots=True, grad_clip=1.0,
                                      label_smoothing=0.1)))
    return out


def test_run_outputs(run):
    names = {p.name for p in run.iterdir()}
    assert {"last.pt", "best.pt", "best.safetensors", "last.safetensors", "metrics.jsonl", "config.yaml",
            "curves.png", "confusion.png"} <= names
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and {"train_loss", "val_top1", "val_top5", "ema_val_top1", "lr"} <= rows[0].keys()
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_export_loads_with_create_model_and_load_trained(run):
    from safetensors import safe_open

    with safe_open(str(run / "best.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["ghostnet.model"]) == "ghostnet_050"
    assert json.loads(meta["ghostnet.model_kwargs"]) == {"num_classes": 4, "stem_stride": 1, "drop_rate": 0.2}
    assert json.loads(meta["ghostnet.classes"]) == ["class0", "class1", "class2", "class3"]
    by_hand = ghostnet.create_model("ghostnet_050", pretrained=str(run / "best.safetensors"), num_classes=4,
                                    stem_stride=1).eval()
    trained = load_trained(run / "best.safetensors")
    assert trained.classes == ["class0", "class1", "class2", "class3"] and trained.data_config["img_size"] == 16
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(by_hand(x), trained.model(x))
    # The export holds the EMA weights (the ones evaluated); the raw ones come from the training checkpoint.
    state = read_training_state(run / "last.pt")
    assert all(torch.equal(v, state["ema"][k]) for k, v in trained.model.state_dict().items())
    raw = export_checkpoint(run / "last.pt", run / "raw.safetensors")
    assert all(torch.equal(v, state["model"][k]) for k, v in load_trained(raw).model.state_dict().items())


def test_timm_models_train_with_the_same_recipe():
    model = create_from_spec("timm:ghostnet_050", num_classes=3)
    assert model.classifier.out_features == 3 and model.model_name == "timm:ghostnet_050"
    assert data_config_of("timm:mobilenetv3_large_100")["crop_pct"] == 0.875
    with pytest.raises(ValueError, match="unknown timm model"):
        create_from_spec("timm:ghostnet_999")


def test_a_warmup_as_long_as_the_run_is_cut_so_the_lr_peaks():
    from ghostnet.train.config import SHORT_RUN_WARMUP_SHARE, effective_warmup_epochs

    assert effective_warmup_epochs(5, 10) == 5  # shorter than the run: kept
    assert effective_warmup_epochs(1, 1) == SHORT_RUN_WARMUP_SHARE  # the whole run: cut
    assert effective_warmup_epochs(5, 3) == pytest.approx(3 * SHORT_RUN_WARMUP_SHARE)
    short = cfg(epochs=1, warmup_epochs=effective_warmup_epochs(1, 1), lr=0.1)
    lrs = [lr_at(short, step, 20) for step in range(20)]
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 0.01
    uncut = cfg(epochs=1, warmup_epochs=1, lr=0.1)  # what the run did before: never above lr * 19/20
    assert max(lr_at(uncut, step, 20) for step in range(20)) < 0.1 * 0.96


def test_cosine_reaches_min_lr_at_the_last_step():
    c = cfg(schedule="cosine", min_lr=0.0, warmup_epochs=0)
    assert lr_at(c, 99, 10) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 99 / 100)))


def test_flat_cosine_holds_the_peak_then_anneals_over_the_rest():
    c = cfg(schedule="cosine", warmup_epochs=1, warmup_lr=0.0, cosine_flat=0.5, min_lr=0.0)
    assert lr_at(c, 5, 10) == pytest.approx(0.05)  # the warmup is unchanged
    assert [lr_at(c, s, 10) for s in (10, 30, 49)] == pytest.approx([0.1] * 3)  # flat to half the run
    assert lr_at(c, 75, 10) == pytest.approx(0.05)  # half of the cosine over the second half
    assert lr_at(c, 99, 10) < lr_at(c, 98, 10) < 0.001
    with pytest.raises(ValueError, match="cosine_flat must be in"):
        cfg(cosine_flat=1.0)


def test_per_update_cosine_matches_timms_train_py_with_sched_on_updates():
    """The Imagewoof comparison runs timm's train.py with --sched-on-updates and ours with --cosine-from-start: the
    two trainers must set the same lr at every step (timm's step_update(n) sets the lr of step n)."""
    from timm.scheduler import create_scheduler_v2

    c = ghostnet.train.load_recipe("imagewoof_ghostnet")
    c = make_config({**c.to_dict(), "cosine_from_start": True, "warmup_lr": 1e-5})
    steps_per_epoch = 141
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=c.epochs, warmup_lr=c.warmup_lr,
                                       warmup_epochs=int(c.warmup_epochs), min_lr=c.min_lr, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    for step in range(c.epochs * steps_per_epoch):
        if step:
            scheduler.step_update(num_updates=step)
        assert lr_at(c, step, steps_per_epoch) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), step


def test_bf16_autocast_run_trains_and_keeps_float32_weights(tmp_path):
    """amp bf16 (the GPU recipes' mixed precision) through the whole loop, run here with CPU autocast."""
    data = write_npz_data(tmp_path / "d")
    with single_thread():
        result = train(make_config(tiny_config(data, tmp_path / "run", epochs=1, amp="bf16", ema_decay=0.5)))
    state = read_training_state(tmp_path / "run" / "last.pt")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(rows[0]["train_loss"]) and 0.0 <= rows[0]["val_top1"] <= 100.0
    assert result["best_epoch"] == 1 and len(result["history"]) == 1  # epochs count from 1


@pytest.mark.slow
@pytest.mark.parametrize("mode,checkpointing", [("default", False), ("max-autotune", True)])
def test_compiled_training_run_ends_where_the_plain_run_ends(tmp_path, monkeypatch, mode, checkpointing):
    """--compile wraps the training model in torch.compile; here with the aot_eager backend (dynamo and AOT
    autograd without inductor's code generation, which takes minutes on CPU), so the same numbers must come out."""
    data = write_npz_data(tmp_path / "d")
    calls, real_compile = [], torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: calls.append(mode) or
                        real_compile(model, backend="aot_eager"))
    states = []
    for label, compile_mode in (("plain", "none"), ("compiled", mode)):
        with single_thread():
            train(make_config(tiny_config(data, tmp_path / label, epochs=1, compile=compile_mode,
                                          grad_checkpointing=checkpointing)))
        states.append(read_training_state(tmp_path / label / "last.pt")["model"])
    assert calls == [None if mode == "default" else mode]
    for key, value in states[0].items():
        assert torch.allclose(value.double(), states[1][key].double(), rtol=1e-4, atol=1e-5), key
    with pytest.raises(ValueError, match="compile must be one of"):
        make_config(tiny_config(data, tmp_path / "x", compile="fast"))


def test_v3_recipes_cosine_matches_timms_scheduler():
    """The official v3 train.py builds timm's cosine scheduler from its defaults (warmup from 1e-4, cosine to 1e-5)."""
    from timm.scheduler import create_scheduler_v2

    c = ghostnet.train.load_recipe("imagenet_ghostnetv3")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=c.epochs, warmup_lr=c.warmup_lr,
                                       warmup_epochs=int(c.warmup_epochs), min_lr=c.min_lr)
    for epoch in range(c.epochs):
        scheduler.step(epoch)
        for step in range(epoch * 3, epoch * 3 + 3):
            assert lr_at(c, step, 3) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), (epoch, step)
    shifted = make_config({**c.to_dict(), "cosine_from_start": False, "lr_per_epoch": False})
    assert lr_at(shifted, 3 * 3, 3) == pytest.approx(c.lr)  # the default starts the cosine after the warmup


def test_lr_noise_matches_timms_scheduler_for_the_v2_command():
    """The GhostNetV2 command trained with timm's train.py and --lr-noise 0.42 0.9: its scheduler is the golden."""
    from timm.scheduler import create_scheduler_v2

    c = ghostnet.train.load_recipe("imagenet_ghostnetv2")
    assert c.lr_noise == [0.42, 0.9]
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=c.lr)
    scheduler, _ = create_scheduler_v2(optimizer, sched="step", num_epochs=c.epochs, decay_epochs=c.decay_epochs,
                                       decay_rate=c.gamma, warmup_lr=c.warmup_lr, warmup_epochs=int(c.warmup_epochs),
                                       noise=c.lr_noise)
    noisy = 0
    for epoch in range(c.epochs):
        scheduler.step(epoch)
        for step in range(epoch * 5, epoch * 5 + 5):  # every step: the recipe holds the lr per epoch, as timm does
            assert lr_at(c, step, 5) == pytest.approx(optimizer.param_groups[0]["lr"], rel=1e-12), (epoch, step)
        noisy += lr_at(c, epoch * 5, 5) != lr_at(make_config({**c.to_dict(), "lr_noise": None}), epoch * 5, 5)
    assert noisy == round(0.9 * 450) - round(0.42 * 450)  # epochs 189..404 carry noise, the rest none
    with pytest.raises(ValueError, match="lr_noise must be"):
        cfg(lr_noise=[0.5, 0.9, 1.0])
