"""Fine-tuning from published weights: `ghostnet train --pretrained true|TAG|FILE|URL` (and cfg.pretrained) loads the
weights through the weights table and the one downloader, replaces the classifier for the data's classes and uses
the weights' data config; a linear probe leaves the backbone (BN statistics included) alone; backbone lr scale and
layer-wise lr decay give each parameter group its lr; resuming keeps them all.

Published weights are served from 127.0.0.1 in the test process (tests/support/weights_server.py). The tests that
need an entry registered in the weights table run the command in-process (`ghostnet.cli.main`): a subprocess would
not see the entry. A file needs no table, so the file test runs `python -m ghostnet train` as a user would.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import ghostnet
from ghostnet.cli import main
from ghostnet.download import cache_dir
from ghostnet.train import engine, load_recipe, lr_at, make_config, read_training_state, train
from ghostnet.train.config import ConfigError
from ghostnet.train.finetune import create_initialised, initial_weights, load_initial_weights
from ghostnet.train.optim import build_optimizer, group_ids, lr_scales, param_groups, set_lr
from ghostnet.train.resume import RESUME_MUTABLE, run_config
from support.weights_server import (isolated, random_state, serve_entry, serve_published, server,  # noqa: F401
                                    torch_bytes)
from support.training import write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
SMALL = "ghostnet_050"
CLASSES = 10
#: A data config no model has by default, so that its use shows.
WEIGHTS_DATA = dict(input_size=(3, 24, 24), crop_pct=0.95, interpolation="bilinear", mean=(0.5, 0.4, 0.3),
                    std=(0.2, 0.25, 0.3), num_classes=1000)
NEW_FIELDS = ("pretrained", "linear_probe", "backbone_lr_scale", "layer_decay")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"), num_classes=CLASSES)


@pytest.fixture
def built(monkeypatch):
    """The state of every model a run builds, taken before its first step."""
    states = []
    real = engine.build_model

    def build_and_remember(*args, **kwargs):
        parts = real(*args, **kwargs)
        states.append({k: v.detach().clone() for k, v in parts.model.state_dict().items()})
        return parts

    monkeypatch.setattr(engine, "build_model", build_and_remember)
    return states


def cli_args(data: Path, out: Path, *extra: str) -> list[str]:
    """`ghostnet train` flags of a one-epoch run of GhostNet 0.5x (CIFAR stem) on the tiny data; no --img-size, so the
    size is the weights'."""
    return ["train", "--model", SMALL, "--model-kwargs", "{stem_stride: 1}", "--preset", "cifar", "--batch-size", "8",
            "--epochs", "1", "--workers", "0", "--no-progress", "--no-plots", "--data", str(data), "--output",
            str(out), *extra]


def assert_backbone(state: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> None:
    """Every weight and buffer but the classifier equal; the classifier sized for the data."""
    for key, value in reference.items():
        if not key.startswith("classifier."):
            assert torch.equal(state[key], value), key
    assert state["classifier.weight"].shape == (CLASSES, 1280) and state["classifier.bias"].shape == (CLASSES,)


def stored_data_config(out: Path) -> dict:
    return read_training_state(out / "last.pt")["model_info"]["data_config"]


def assert_weights_data_config(config: dict, img_size: int = 24, mean=WEIGHTS_DATA["mean"]) -> None:
    assert config["img_size"] == img_size and config["mean"] == pytest.approx(mean)
    assert config["std"] == pytest.approx(WEIGHTS_DATA["std"])
    assert (config["interpolation"], config["crop_pct"]) == ("bilinear", 0.95)


# ------------------------------------------------------------------------------------------ where weights come from
def test_pretrained_true_loads_the_published_file_and_replaces_the_classifier(server, data, tmp_path, built, capsys):
    state = random_state(SMALL, 0)
    serve_entry(server, SMALL, "test", torch_bytes(state), default=True, data_config=WEIGHTS_DATA)
    assert main(cli_args(data, tmp_path / "run", "--pretrained", "true")) == 0
    out = capsys.readouterr().out
    assert "classifier replaced: 1000 -> 10 classes (head initialised fresh)" in out
    assert "initialised from published weights ghostnet_050.test" in out
    assert server.hits == ["/ghostnet_050-test.pth"] and (cache_dir() / "ghostnet_050-test.pth").is_file()
    assert_backbone(built[0], state)
    # The weights' data config made the transforms (and is what the run stores for evaluation).
    assert_weights_data_config(stored_data_config(tmp_path / "run"))


def test_a_weights_tag_picks_its_file_and_flags_beat_its_data_config(server, data, tmp_path, built, capsys):
    state_a, state_b = random_state(SMALL, 1), random_state(SMALL, 2)
    serve_entry(server, SMALL, "a", torch_bytes(state_a), default=True)
    serve_entry(server, SMALL, "b", torch_bytes(state_b), data_config=WEIGHTS_DATA)
    assert main(cli_args(data, tmp_path / "run", "--pretrained", "b", "--img-size", "16", "--mean", "0.1,0.2,0.3")) == 0
    assert "ghostnet_050.b" in capsys.readouterr().out and server.hits == ["/ghostnet_050-b.pth"]
    assert_backbone(built[0], state_b)
    assert_weights_data_config(stored_data_config(tmp_path / "run"), img_size=16, mean=(0.1, 0.2, 0.3))


@pytest.mark.slow
def test_a_file_from_the_command_line_with_a_linear_probe(data, tmp_path):
    """`python -m ghostnet train --pretrained FILE --linear-probe`: after a whole epoch, every backbone weight and
    every BN statistic is still the file's; only the classifier trained."""
    state = random_state(SMALL, 3)
    torch.save(state, tmp_path / "weights.pth")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GHOSTNET_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-m", "ghostnet", *cli_args(data, tmp_path / "run", "--pretrained",
                                                                    str(tmp_path / "weights.pth"), "--linear-probe")],
                         capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "classifier replaced: 1000 -> 10 classes (head initialised fresh)" in run.stdout
    assert "linear probe: training classifier.weight, classifier.bias" in run.stdout
    after = read_training_state(tmp_path / "run" / "last.pt")["model"]
    assert_backbone(after, state)


@pytest.mark.slow
def test_a_url_goes_through_the_downloader_and_a_linear_probe_moves_only_the_classifier(server, data, tmp_path,
                                                                                        built, monkeypatch, capsys):
    state = random_state(SMALL, 4)
    server.files["/mine/run-best.pth"] = torch_bytes(state)
    url = server.url("/mine/run-best.pth")
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")  # the one offline switch applies to it
    assert main(cli_args(data, tmp_path / "refused", "--pretrained", url)) == 2
    assert "GHOSTNET_OFFLINE" in capsys.readouterr().err and server.hits == []
    monkeypatch.delenv("GHOSTNET_OFFLINE")
    assert main(cli_args(data, tmp_path / "run", "--pretrained", url, "--linear-probe")) == 0
    assert server.hits == ["/mine/run-best.pth"] and (cache_dir() / "run-best.pth").is_file()
    assert_backbone(built[0], state)
    after = read_training_state(tmp_path / "run" / "last.pt")
    assert_backbone(after["model"], state)  # weights, BN running statistics and counters unchanged by the epoch
    assert not torch.equal(after["model"]["classifier.weight"], built[0]["classifier.weight"])
    assert not torch.equal(after["model"]["classifier.bias"], built[0]["classifier.bias"])
    # Resuming needs no weights file: the checkpoint holds the weights, and the run keeps its data config.
    server.stop()
    (cache_dir() / "run-best.pth").unlink()
    cfg, resume = run_config(None, {"epochs": 2, "output": str(tmp_path / "run"), "progress": False}, resume="")
    assert cfg.pretrained == url and cfg.linear_probe
    train(cfg, resume=resume)
    resumed = read_training_state(tmp_path / "run" / "last.pt")
    assert resumed["progress"]["epoch"] == 2 and after["model_info"] == resumed["model_info"]
    assert_backbone(resumed["model"], state)


def test_timm_models_use_timm_s_own_pretrained_loading(data, tmp_path, built, monkeypatch, capsys):
    """`--model timm:NAME --pretrained true`: timm loads its weights (here its `file` override, so nothing is
    downloaded) and gives the model a fresh classifier of the data's class count; the data config is timm's."""
    import timm

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    state = timm.create_model("ghostnet_050").state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "timm.pth")
    values = dict(model="timm:ghostnet_050", pretrained=True, preset="cifar", img_size=32, batch_size=8, epochs=1,
                  workers=0, progress=False, plots=False, data=str(write_npz_data(tmp_path / "d", size=32,
                                                                                  num_classes=CLASSES)),
                  output=str(tmp_path / "run"), model_kwargs={"pretrained_cfg_overlay": {"file": str(tmp_path /
                                                                                                  "timm.pth")}})
    train(make_config(values))
    assert "classifier replaced: 1000 -> 10 classes" in capsys.readouterr().out
    assert_backbone(built[0], state)
    stored = stored_data_config(tmp_path / "run")
    assert (stored["interpolation"], stored["crop_pct"], stored["mean"]) == ("bicubic", 0.875, [0.485, 0.456, 0.406])


def test_torchvision_default_weights_get_a_new_classifier_after_loading(monkeypatch):
    """torchvision's builders refuse a num_classes other than their weights': the model is built with its weights
    and 1000 classes, then its last Linear layer (resnet's `fc`) is replaced. torchvision's download is stood in for
    by weights loaded from memory."""
    import torchvision

    real_get_model = torchvision.models.get_model
    published = real_get_model("resnet18").state_dict()
    published = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in published.items()}

    def get_model(name, weights=None, **kwargs):
        if weights is not None and "num_classes" in kwargs:
            raise ValueError("torchvision: num_classes does not match the weights")
        model = real_get_model(name, **kwargs)
        if weights is not None:
            model.load_state_dict(published)
        return model

    monkeypatch.setattr(torchvision.models, "get_model", get_model)
    lines = []
    model = create_initialised(initial_weights("torchvision:resnet18", "true"), {"num_classes": CLASSES},
                               log=lines.append)
    assert lines[-1] == "classifier replaced: 1000 -> 10 classes (head initialised fresh)"
    assert model.fc.out_features == CLASSES
    assert all(torch.equal(model.state_dict()[k], v) for k, v in published.items() if not k.startswith("fc."))


def test_loading_a_file_is_strict_outside_the_classifier(tmp_path):
    """Also for a model without reset_classifier (the CIFAR ResNets): its `fc` is swapped for the file's size, the
    file is loaded whole, and a fresh `fc` for the data takes its place."""
    state = ghostnet.create_model("resnet20_cifar", num_classes=100).state_dict()
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(state, tmp_path / "r20.pth")
    model = ghostnet.create_model("resnet20_cifar", num_classes=4)
    assert load_initial_weights(model, tmp_path / "r20.pth") == ["fc.weight", "fc.bias"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert model.fc.out_features == 4 and model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    other = ghostnet.create_model("resnet32_cifar", num_classes=4)  # more blocks: the file does not fit
    with pytest.raises(ghostnet.CheckpointError, match="missing keys"):
        load_initial_weights(other, tmp_path / "r20.pth")


def test_a_file_written_by_ghostnet_train_brings_its_data_config(tmp_path):
    from ghostnet.train import export_weights
    from ghostnet.train.state import model_info

    config = {"preset": "imagenet", "img_size": 20, "crop_pct": 0.9, "interpolation": "bilinear",
              "mean": [0.1, 0.2, 0.3], "std": [0.3, 0.2, 0.1]}
    export = export_weights(ghostnet.create_model(SMALL, num_classes=3).state_dict(), tmp_path / "best.safetensors",
                            model_info(SMALL, {"num_classes": 3}, ["a", "b", "c"], config))
    resolved = initial_weights(SMALL, str(export)).data_config
    assert resolved["input_size"] == (3, 20, 20) and resolved["mean"] == (0.1, 0.2, 0.3)
    assert (resolved["crop_pct"], resolved["interpolation"]) == (0.9, "bilinear")
    assert initial_weights(SMALL, None).data_config["interpolation"] == "bicubic"  # the model's own


# ----------------------------------------------------------------------------------------------- the recipe
def test_the_finetune_recipe_runs_from_the_published_weights(server, tmp_path, built):
    from safetensors.torch import save

    recipe = load_recipe("finetune_ghostnet")
    imagenet = load_recipe("imagenet_ghostnet")
    assert recipe.pretrained == "true" and recipe.schedule == "cosine" and recipe.epochs <= 20
    assert recipe.lr / recipe.batch_size < imagenet.lr / imagenet.batch_size and recipe.warmup_epochs <= 1
    assert recipe.label_smoothing > 0 and recipe.img_size is None and recipe.mean is None
    state = random_state("ghostnet_100", 5)
    weights_data = {**WEIGHTS_DATA, "input_size": (3, 32, 32)}  # the smallest input GhostNet's ImageNet stem takes
    serve_published(server, "ghostnet_100", "/ghostnet_100.safetensors", save(state), data_config=weights_data)
    data = write_npz_data(tmp_path / "d", n_train=(8,), n_val=4, size=32, num_classes=CLASSES)
    cfg = load_recipe("finetune_ghostnet", dict(data=str(data), output=str(tmp_path / "run"), epochs=1,
                                                batch_size=4, workers=0, progress=False, plots=False))
    train(cfg)
    assert_backbone(built[0], state)
    assert_weights_data_config(stored_data_config(tmp_path / "run"), img_size=32)


# ----------------------------------------------------------------------------------------------- learning rates
def group_lrs(model: torch.nn.Module, **values) -> dict[str, float]:
    """Each parameter's lr after `set_lr(optimizer, 0.2)` with the optimizer `values` configure."""
    optimizer = build_optimizer(model, make_config({"lr": 0.2, "weight_decay": 1e-4, **values}))
    set_lr(optimizer, 0.2)
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    wd_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, p in model.named_parameters():  # the weight-decay grouping is kept
        assert wd_of[id(p)] == (0.0 if p.ndim <= 1 else 1e-4), name
    return {name: lr_of[id(p)] for name, p in model.named_parameters()}


def ghostnet_stage(name: str) -> int:
    """GhostNet's stages as the paper draws them: stem 0, blocks.0..9 -> 1..10, conv_head and classifier 11."""
    if name.startswith(("conv_stem.", "bn1.")):
        return 0
    return int(name.split(".")[1]) + 1 if name.startswith("blocks.") else 11


def test_backbone_lr_scale_and_layer_decay_give_each_group_its_lr():
    model = ghostnet.create_model(SMALL, num_classes=CLASSES)
    lrs = group_lrs(model, backbone_lr_scale=0.1)
    assert {lr for n, lr in lrs.items() if n.startswith("classifier.")} == {0.2}
    assert [lr for n, lr in lrs.items() if not n.startswith("classifier.")] == pytest.approx([0.02] * (len(lrs) - 2))
    lrs = group_lrs(model, layer_decay=0.5)
    for name, lr in lrs.items():
        assert lr == pytest.approx(0.2 * 0.5 ** (11 - ghostnet_stage(name))), name
    assert lrs["conv_stem.weight"] == pytest.approx(0.2 / 2 ** 11) and lrs["blocks.9.0.conv.weight"] == 0.1
    lrs = group_lrs(model, layer_decay=0.5, backbone_lr_scale=0.1)
    assert lrs["classifier.weight"] == 0.2 and lrs["conv_head.weight"] == pytest.approx(0.02)
    assert lrs["blocks.0.0.ghost1.primary_conv.0.weight"] == pytest.approx(0.2 * 0.1 * 0.5 ** 10)
    # The CIFAR ResNets' stages are layer1..3: conv1 is the stem, fc the head.
    scales = lr_scales(ghostnet.create_model("resnet20_cifar"), layer_decay=0.5)
    assert (scales["conv1.weight"], scales["layer1.0.conv1.weight"], scales["layer3.2.bn2.bias"], scales["fc.weight"]) \
        == (0.5 ** 4, 0.5 ** 3, 0.5, 1.0)
    # The stages are read from the model's group_matcher: a foreign model without one is a clear error.
    with pytest.raises(ValueError, match=r"layer_decay needs a model with a group_matcher\(\)"):
        lr_scales(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.Linear(4, 2)),
                  layer_decay=0.5)
    # Without either, the groups are what they always were (no lr_scale key).
    assert all("lr_scale" not in g for g in build_optimizer(model, make_config({})).param_groups)


class _Matched(nn.Sequential):
    """Conv, BN, conv, Linear, with a group_matcher given as a dict or as a function."""

    def __init__(self, matcher) -> None:
        super().__init__(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3), nn.Linear(4, 2))
        self.matcher = matcher

    def group_matcher(self, coarse: bool = False):
        return self.matcher


def test_layer_groups_follow_timms_group_matcher_reading():
    # timm's conventions: ordinals per key in order, regex groups then suffixes sort within it, a key ending in
    # 99999 joins the group before it, unmatched names come last.
    model = _Matched(dict(stem=r"^0\.", blocks=[(r"^(1)\.", None), (r"^2\.", (99999,))]))
    assert group_ids(model)[0] == {"0.weight": 0, "0.bias": 0, "1.weight": 1, "1.bias": 1, "2.weight": 1,
                                   "2.bias": 1, "3.weight": 2, "3.bias": 2}
    model = _Matched(lambda name: {"0": 2, "1": 0, "2": 1}.get(name.split(".")[0], 3))
    ids, last = group_ids(model)
    assert (ids["1.weight"], ids["2.weight"], ids["0.weight"], ids["3.weight"], last) == (0, 1, 2, 3, 3)
    # Every registered family: the coarse groups are the stem, its stages in order and the head.
    for name, stages in (("g_ghost_regnetx_032", 4), ("vgg16_cifar", 5), ("resnet50", 4), ("repghostnet_050", 10)):
        model = ghostnet.create_model(name)
        ids, last = group_ids(model)
        assert last == stages + 1 and sorted(set(ids.values())) == list(range(stages + 2)), name
        assert {ids[n] for n, _ in model.named_parameters() if n.startswith(model.classifier_name)} == {last}
    # timm's own models read the same way (timm's ghostnet puts conv_head with the last stage).
    timm = pytest.importorskip("timm")
    ids, last = group_ids(timm.create_model("ghostnet_050"))
    assert (ids["conv_stem.weight"], ids["blocks.9.0.conv.weight"], ids["conv_head.weight"],
            ids["classifier.weight"]) == (0, 10, 10, 11) and last == 11


def test_no_weight_decay_names_are_kept_out_of_weight_decay():
    model = _Matched({})
    model.no_weight_decay = lambda: {"2.weight"}
    decay, no_decay = (group["params"] for group in param_groups(model, 1e-4))
    assert [p.shape for p in decay] == [model[0].weight.shape, model[3].weight.shape]
    assert any(p is model[2].weight for p in no_decay)
    groups = param_groups(model, 1e-4, wd_norm_bias=True, scales={"0.weight": 0.5})
    assert {id(p): g["weight_decay"] for g in groups for p in g["params"]}[id(model[2].weight)] == 0.0


@pytest.mark.slow
def test_a_resumed_run_keeps_its_fine_tuning_settings_and_lrs(data, tmp_path):
    values = dict(model=SMALL, model_kwargs={"stem_stride": 1}, preset="cifar", img_size=16, batch_size=8,
                  epochs=1, workers=0, progress=False, plots=False, data=str(data), output=str(tmp_path / "run"),
                  backbone_lr_scale=0.5, layer_decay=0.8, lr=0.05)
    train(make_config(values))
    assert not RESUME_MUTABLE & set(NEW_FIELDS)
    for key, value in (("layer_decay", 0.9), ("backbone_lr_scale", 1.0), ("linear_probe", True),
                       ("pretrained", "x.pth")):
        with pytest.raises(ValueError, match=f"cannot change {key} when resuming"):
            run_config(None, {key: value, "output": values["output"]}, resume="")
    cfg, resume = run_config(None, {"epochs": 2, "output": values["output"]}, resume="")
    assert (cfg.backbone_lr_scale, cfg.layer_decay) == (0.5, 0.8)
    train(cfg, resume=resume)
    saved = read_training_state(tmp_path / "run" / "last.pt")
    steps = saved["progress"]["global_step"]
    last_lr = lr_at(cfg, steps - 1, steps // cfg.epochs)  # the lr set for the last step
    model = ghostnet.create_model(SMALL, num_classes=CLASSES, stem_stride=1)
    expected = sorted({round(s, 12) for s in lr_scales(model, 0.5, 0.8).values()})
    assert sorted({round(g["lr_scale"], 12) for g in saved["optimizer"]["param_groups"]}) == expected
    for group in saved["optimizer"]["param_groups"]:
        assert group["lr"] == pytest.approx(last_lr * group["lr_scale"])


# ----------------------------------------------------------------------------------------------- settings
@pytest.mark.parametrize("values, field, message", [
    ({"backbone_lr_scale": 0}, "backbone_lr_scale", "backbone_lr_scale must be > 0"),
    ({"layer_decay": 0}, "layer_decay", r"layer_decay must be in \(0, 1\]"),
    ({"layer_decay": 1.5}, "layer_decay", r"layer_decay must be in \(0, 1\]"),
    ({"linear_probe": True, "layer_decay": 0.7}, "linear_probe", "linear_probe freezes the backbone"),
    ({"pretrained": "nosuchtag"}, "pretrained", "'ghostnet_100' has no weights tagged 'nosuchtag'"),
    ({"model": "ghostnetv3_050", "pretrained": "true"}, "pretrained", "no published weights are registered"),
    ({"model": "timm:ghostnet_050", "pretrained": "official"}, "pretrained", "weights tags are for ghostnet models"),
    ({"linear_probe": "yes"}, "linear_probe", "linear_probe must be bool"),
])
def test_fine_tuning_settings_are_checked_and_name_their_field(values, field, message):
    with pytest.raises(ConfigError, match=message) as err:
        make_config(values)
    assert err.value.field == field


def test_pretrained_spellings(data, tmp_path, capsys):
    from ghostnet.cli import build_parser
    from ghostnet.commands.train import build_train_config

    assert make_config({"pretrained": True}).pretrained == "true"  # a YAML `pretrained: true`
    assert make_config({"pretrained": "False"}).pretrained is None  # unsets a recipe's
    assert ghostnet.train.TrainConfig(pretrained=True).pretrained == "true"
    args = build_parser().parse_args(["train", "--pretrained", "--epochs", "2"])  # a bare flag means true
    assert build_train_config(args)[0].pretrained == "true"
    assert main(cli_args(data, tmp_path / "run", "--layer-decay", "2")) == 2
    assert "--layer-decay 2" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="no-such.pth: no such checkpoint file"):
        train(make_config({"model": SMALL, "pretrained": str(tmp_path / "no-such.pth"), "data": str(data),
                           "output": str(tmp_path / "run2"), "workers": 0, "progress": False}))


def test_num_classes_of_reads_the_attribute_else_the_classifier():
    import torchvision

    from ghostnet.models.registry import num_classes_of

    assert num_classes_of(ghostnet.create_model("ghostnet_050", num_classes=7)) == 7
    assert num_classes_of(torchvision.models.mobilenet_v3_small(num_classes=5)) == 5  # no attribute: classifier.3
    conv_head = nn.Sequential(nn.Conv2d(3, 3, 1))  # a model that says, with no Linear layer to ask
    conv_head.num_classes = 3
    assert num_classes_of(conv_head) == 3
    with pytest.raises(ValueError, match="no classifier"):
        num_classes_of(nn.Sequential(nn.Conv2d(3, 4, 3)))
