"""`--channels-last auto`: the trainer's memory format and batch fold, chosen by timing a few SGD steps.

The choice must be the faster candidate (a candidate is slowed on purpose, both ways round), cached (a second call
times nothing), recorded in metrics.jsonl and the checkpoint, kept on resume, and actually used by the run; old
recipes and checkpoints with `channels_last: true/false` keep their meaning.
"""
from __future__ import annotations

import copy
import json
import time

import pytest
import torch
import torch.nn as nn

import ghostnet
import ghostnet.layers.folded_conv as folded_conv
from ghostnet.allocator import tune_allocator
from ghostnet.analysis.training_layout import Layout, LayoutChoice, candidate_layouts, choose_training_layout
from ghostnet.train import make_config, read_training_state, train
from ghostnet.train.config import ConfigError
from support.common import single_thread
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

SLOW_S = 0.05  # what a candidate slowed on purpose loses per step: far above the tiny model's step and its noise


class SlowIn(nn.Module):
    """Sleeps in each forward whose input is in `slow_format` (channels-last or contiguous NCHW)."""

    def __init__(self, slow_format: torch.memory_format) -> None:
        super().__init__()
        self.slow_format = slow_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=self.slow_format):
            time.sleep(SLOW_S)
        return x


def small_net(slow_format: torch.memory_format) -> nn.Module:
    return nn.Sequential(SlowIn(slow_format), nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of this test alone, so that the first choice is measured."""
    from ghostnet.tuning import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("slow, fast", [(torch.channels_last, "nchw"), (torch.contiguous_format, "channels-last")])
def test_auto_picks_the_faster_layout(slow, fast):
    x = torch.randn(4, 3, 8, 8)
    choice = choose_training_layout(small_net(slow), x, num_classes=4, steps=3, use_cache=False)
    assert choice.source == "measured" and choice.layout.name == fast
    assert set(choice.timings_ms) == {"nchw", "channels-last"}  # a plain net has no fold to switch
    slow_name = ({"nchw", "channels-last"} - {fast}).pop()
    assert choice.timings_ms[slow_name] >= 1e3 * SLOW_S > choice.timings_ms[fast]


def test_the_batch_fold_is_a_candidate_and_a_slow_fold_loses(monkeypatch):
    model = ghostnet.create_model("ghost_resnet20_cifar", num_classes=4)
    assert [layout.name for layout in candidate_layouts(model)] == [
        "nchw", "nchw-nofold", "channels-last", "channels-last-fused"]
    assert [layout.name for layout in candidate_layouts(ghostnet.create_model("resnet20_cifar"))] == [
        "nchw", "channels-last"]  # no Ghost module to fuse
    real, calls = folded_conv.batch_folded_conv, []

    def slow_fold(conv, x):
        calls.append(1)
        time.sleep(SLOW_S / 10)  # 18 folded convs a step in ResNet-20's first stage
        return real(conv, x)

    monkeypatch.setattr(folded_conv, "batch_folded_conv", slow_fold)
    nchw = [Layout(False, True), Layout(False, False)]
    choice = choose_training_layout(model, torch.randn(4, 3, 16, 16), num_classes=4, steps=3, use_cache=False,
                                    layouts=nchw)
    assert choice.layout == Layout(False, False) and calls  # the fold ran in its candidate's steps, and lost
    assert choice.timings_ms["nchw"] > choice.timings_ms["nchw-nofold"] + 1e3 * SLOW_S


def test_the_callers_model_and_rng_are_untouched():
    model = ghostnet.create_model("ghost_resnet20_cifar", num_classes=4, drop_rate=0.2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    choose_training_layout(model, x, num_classes=4, steps=1, use_cache=False)
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.conv1.weight.is_contiguous() and folded_conv.batch_fold_enabled(model)


def test_a_cached_choice_is_reused_without_timing(cache):
    x = torch.randn(4, 3, 8, 8)
    first = choose_training_layout(small_net(torch.channels_last), x, num_classes=4, steps=2, model_name="net")
    assert first.source == "measured" and (cache / "train-layout.json").is_file()

    def no_timing() -> float:
        raise AssertionError("a cached choice was measured again")

    again = choose_training_layout(small_net(torch.channels_last), x, num_classes=4, model_name="net",
                                   timer=no_timing)
    assert again.source == "cache" and again.layout == first.layout and again.timings_ms == first.timings_ms
    with pytest.raises(AssertionError, match="measured again"):  # another batch is another workload
        choose_training_layout(small_net(torch.channels_last), x[:2], num_classes=4, model_name="net",
                               timer=no_timing)
    with single_thread(), pytest.raises(AssertionError, match="measured again"):
        torch.set_num_threads(2)  # and other threads another machine
        choose_training_layout(small_net(torch.channels_last), x, num_classes=4, model_name="net", timer=no_timing)


def test_a_close_call_is_timed_again():
    """Candidates whose medians are within CLOSE_CALL take as many rounds again; a clear winner does not."""
    from ghostnet.analysis import training_layout

    readings = []

    def level() -> float:  # every step takes one second: a close call
        readings.append(1)
        return float(len(readings) // 2)

    x = torch.randn(4, 3, 8, 8)
    choice = choose_training_layout(small_net(torch.channels_last), x, num_classes=4, steps=3, use_cache=False,
                                    timer=level)
    assert "median of 6 steps" in choice.reason and len(readings) == 2 * (2 * 3) * 2  # 2 candidates, 3 rounds, twice
    clear = choose_training_layout(small_net(torch.channels_last), x, num_classes=4, steps=3, use_cache=False)
    assert "median of 3 steps" in clear.reason  # the sleeping layout loses by far
    assert 0 < training_layout.CLOSE_CALL < 0.2


def test_rules_where_nothing_is_measured():
    model = ghostnet.create_model("ghost_resnet20_cifar", num_classes=4)
    compiled = choose_training_layout(model, torch.randn(4, 3, 16, 16), compiled=True, timer=None)
    assert (compiled.source, compiled.layout) == ("rule", Layout(False, True))
    only = choose_training_layout(model, torch.randn(2, 3, 16, 16), layouts=[Layout(True)], timer=None)
    assert (only.source, only.layout) == ("rule", Layout(True))
    assert LayoutChoice.from_dict(only.to_dict()) == only


@pytest.mark.parametrize("value, expected", [(True, "true"), (False, "false"), ("auto", "auto"), ("on", "true"),
                                             ("OFF", "false"), ("no", "false")])
def test_channels_last_settings(value, expected):
    assert make_config({"channels_last": value}).channels_last == expected
    assert make_config({}).channels_last == "auto"


def test_a_bad_channels_last_names_the_field(tmp_path):
    for value in ("maybe", 2):
        with pytest.raises(ConfigError, match="channels_last must be one of auto, true, false"):
            make_config({"channels_last": value})


def test_old_recipes_with_booleans_still_load(tmp_path):
    from ghostnet.train import load_recipe

    assert load_recipe("imagenet_ghostnet").channels_last == "true"  # a shipped recipe: `channels_last: true`
    assert load_recipe("imagenet_g_ghost_regnet").channels_last == "false"
    recipe = tmp_path / "old.yaml"
    recipe.write_text("model: resnet20_cifar\nchannels_last: false\n")
    assert load_recipe(str(recipe)).channels_last == "false"


@pytest.mark.parametrize("flags, expected", [([], "auto"), (["--channels-last"], "true"),
                                             (["--no-channels-last"], "false"), (["--channels-last", "auto"], "auto"),
                                             (["--channels-last", "false"], "false")])
def test_cli_flags(flags, expected):
    from ghostnet.cli import build_parser
    from ghostnet.commands.train import build_train_config

    cfg, _ = build_train_config(build_parser().parse_args(["train", "--model", "resnet20_cifar", *flags]))
    assert cfg.channels_last == expected


# ----------------------------------------------------------------------------------------------- real runs
@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"))


class Killed(Exception):
    """Stands in for a process being killed."""


def test_a_run_records_its_choice_and_resume_keeps_it(data, tmp_path, cache, monkeypatch, capsys):
    out = tmp_path / "run"
    cfg = make_config(tiny_config(data, out, epochs=2, channels_last="auto"))

    def stop_after_epoch_1(progress):
        if progress.global_step == 6:  # 5 steps an epoch: epoch 1's checkpoint is written
            raise Killed

    with pytest.raises(Killed):
        train(cfg, on_step=stop_after_epoch_1)
    first_row = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first_row["allocator"] == tune_allocator() and "applied" in first_row["allocator"]  # ghostnet.allocator
    record = first_row["layout"]
    assert record["source"] == "measured" and set(record["timings_ms"]) == {"nchw", "nchw-nofold", "channels-last",
                                                                         "channels-last-fused"}
    assert record["layout"] == min(record["timings_ms"], key=record["timings_ms"].get)
    assert record["key"]["model"] == "ghostnet_050" and record["key"]["input"] == [8, 3, 16, 16]
    assert read_training_state(out / "last.pt")["layout"] == record
    assert capsys.readouterr().out.count("training layout ") == 1

    # Resumed, the run keeps its layout, even where a new measurement would choose another one.
    other = Layout.from_name("nchw" if record["layout"] != "nchw" else "channels-last")
    monkeypatch.setattr("ghostnet.train.layout.choose_training_layout",
                        lambda *args, **kwargs: LayoutChoice(other, "measured"))
    train(cfg, resume=out / "last.pt")
    assert "kept from the checkpoint" in capsys.readouterr().out
    state = read_training_state(out / "last.pt")
    assert state["layout"] == record and state["history"][0]["layout"] == record
    assert "layout" not in state["history"][1]
    weight = state["model"]["conv_stem.weight"]  # saved as the run trained it
    assert weight.is_contiguous(memory_format=torch.channels_last) == record["channels_last"]


@pytest.mark.parametrize("chosen", ["channels-last", "nchw-nofold", "nchw"])
def test_the_run_trains_in_the_chosen_layout(chosen, data, tmp_path, monkeypatch):
    monkeypatch.setattr("ghostnet.train.layout.choose_training_layout",
                        lambda *args, **kwargs: LayoutChoice(Layout.from_name(chosen), "measured"))
    real, folds = folded_conv.batch_folded_conv, []

    def counted(conv, x):
        y = real(conv, x)
        folds.append(y is not None)  # None: the fold does not apply to this input
        return y

    monkeypatch.setattr(folded_conv, "batch_folded_conv", counted)
    train(make_config(tiny_config(data, tmp_path, epochs=1, channels_last="auto", eval_every=1)))
    state = read_training_state(tmp_path / "last.pt")
    assert state["layout"]["layout"] == chosen
    assert state["model"]["conv_stem.weight"].is_contiguous(memory_format=torch.channels_last) == (
        chosen == "channels-last")
    assert any(folds) == (chosen == "nchw")  # the fold runs only where chosen (and never in channels-last)


def test_a_set_layout_is_not_measured(data, tmp_path, monkeypatch):
    monkeypatch.setattr("ghostnet.train.layout.choose_training_layout", None)  # calling it would fail
    train(make_config(tiny_config(data, tmp_path, epochs=1, channels_last="true")))
    record = read_training_state(tmp_path / "last.pt")["layout"]
    assert (record["source"], record["layout"]) == ("setting", "channels-last")


def test_bench_train_mode_defaults_to_the_trainers_choice(monkeypatch):
    from ghostnet.deploy.bench import run_benchmark
    from ghostnet.deploy.bench_config import BenchConfig

    asked = []

    def choose(model, x, **kwargs):
        asked.append((kwargs["model_name"], tuple(x.shape), kwargs["compiled"]))
        return LayoutChoice(Layout(False, False), "measured")

    import ghostnet.deploy.bench_backends as backends

    monkeypatch.setattr(backends, "choose_training_layout", choose)
    real_step, stepped = backends._train_step, []

    def train_step(model, x, compiled):
        stepped.append((x.is_contiguous(memory_format=torch.channels_last), folded_conv.batch_fold_enabled(model)))
        return real_step(model, x, compiled)

    monkeypatch.setattr(backends, "_train_step", train_step)
    cfg = BenchConfig(models=["ghost_resnet20_cifar"], peers=[], backends=["eager"], threads=[1], image_size=16,
                      batch_size=4, rounds=1, reps=1, warmup=1, mode="train")
    assert cfg.channels_last is None
    (row,) = run_benchmark(cfg).rows
    assert row.images_per_s > 0 and asked == [("ghost_resnet20_cifar", (4, 3, 16, 16), False)]
    assert stepped == [(False, False)]  # NCHW without the fold, as chosen
    for asked_for, expected in ((True, (True, True)), (False, (False, True))):  # a layout asked for: not measured
        cfg.channels_last = asked_for
        run_benchmark(cfg)
        assert len(asked) == 1 and stepped[-1] == expected


@pytest.mark.slow
def test_ddp_ranks_take_rank_0s_choice(data, tmp_path):
    """Under torchrun, rank 0 measures and logs, and every rank trains in its choice."""
    import os
    import subprocess
    import sys

    from support.training import TINY

    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ghostnet",
               "train", "--data", str(data), "--model", TINY["model"], "--model-kwargs", "{stem_stride: 1}",
               "--preset", "cifar", "--img-size", "16", "--epochs", "1", "--batch-size", "8", "--workers", "0",
               "--channels-last", "auto", "--no-progress", "--no-plots", "--output", str(out)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("training layout ") == 1  # rank 0 alone measures and logs
    record = read_training_state(out / "last.pt")["layout"]
    assert record["key"]["input"] == [4, 3, 16, 16]  # measured at the per-process batch
    assert [rank["layout"] for rank in read_training_state(out / "last.pt")["ranks"]] == [record["layout"]] * 2


# ----------------------------------------------------------------------------------------------- the Ghost concat
def test_channels_last_concat_hands_dense_gradients_of_the_same_numbers():
    from ghostnet.layers.ghost import concat_ghost_maps

    def parts():
        torch.manual_seed(0)
        return [torch.randn(4, c, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_() for c in (3, 5)]

    grad = torch.randn(4, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    plain, dense = parts(), parts()
    handed = {"plain": [], "dense": []}  # the gradients as the concat's backward hands them over (before the leaves)
    for name, tensors in (("plain", plain), ("dense", dense)):
        for t in tensors:
            t.register_hook(lambda g, n=name: handed[n].append(g.is_contiguous(memory_format=torch.channels_last)))
    torch.cat(plain, 1).backward(grad)
    out = concat_ghost_maps(*dense)
    assert torch.equal(out, torch.cat(dense, 1)) and out.grad_fn.name() != "CatBackward0"
    assert out.is_contiguous(memory_format=torch.channels_last) and out._base is None  # no view: in-place ops follow
    out.backward(grad)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(plain, dense))
    assert handed == {"plain": [False, False], "dense": [True, True]}
    nchw = [p.detach().contiguous().requires_grad_() for p in dense]
    assert concat_ghost_maps(*nchw).grad_fn.name() == "CatBackward0"  # NCHW keeps the plain concat
    with torch.no_grad():
        assert concat_ghost_maps(*dense).grad_fn is None


def test_a_ghost_net_trains_the_same_in_every_layout():
    """One training step's output and gradients in float64, in each candidate layout, against NCHW without the fold
    (the plain graph)."""
    torch.manual_seed(0)
    model = ghostnet.create_model("ghost_resnet20_cifar", num_classes=4).double().train()
    x, targets = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    results = {}
    for layout in candidate_layouts(model):
        trial = layout.apply(copy.deepcopy(model))
        loss = nn.functional.cross_entropy(trial(x.contiguous(memory_format=layout.memory_format)), targets)
        loss.backward()
        results[layout.name] = [loss.detach()] + [p.grad for p in trial.parameters()]
    for name, values in results.items():
        for got, expected in zip(values, results["nchw-nofold"]):
            torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=name)
