"""Every shipped recipe parses, keeps its published settings, and runs a training step on tiny data."""
from __future__ import annotations

import pytest
import torch

from ghostnet.cli import main
from ghostnet.train import list_recipes, load_recipe, read_recipe, read_training_state, train
from support.training import write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

RECIPES = sorted(list_recipes())


def test_the_issue_s_recipes_are_shipped():
    assert {"cifar10_ghostnet", "cifar10_ghost_resnet56", "cifar10_ghost_vgg16", "imagenet_ghostnet",
            "imagenet_ghostnetv2", "imagenet_ghostnetv3", "imagewoof_ghostnet"} <= set(RECIPES)


def test_published_hyperparameters():
    """The values of ../shared/reference/ghostnet-facts.md section 3."""
    r = load_recipe("cifar10_ghost_resnet56")
    assert (r.epochs, r.lr, r.milestones, r.gamma, r.weight_decay) == (400, 0.1, [200, 300, 375], 0.1, 1e-4)
    v1 = load_recipe("imagenet_ghostnet")
    assert (v1.optimizer, v1.nesterov, v1.lr, v1.warmup_epochs, v1.schedule, v1.weight_decay) == \
           ("sgd", True, 0.4, 5, "cosine", 4e-5)
    assert (v1.label_smoothing, v1.model_kwargs["drop_rate"], v1.epochs, v1.batch_size) == (0.1, 0.2, 400, 1024)
    v2 = load_recipe("imagenet_ghostnetv2")
    assert (v2.optimizer, v2.opt_eps, v2.lr, v2.decay_epochs, v2.gamma, v2.warmup_epochs) == \
           ("rmsproptf", 1e-3, 0.064, 2.4, 0.973, 3)
    assert (v2.weight_decay, v2.ema_decay, v2.randaugment, v2.random_erasing, v2.epochs) == (1e-5, 0.9999, 9, 0.2, 450)
    v3 = load_recipe("imagenet_ghostnetv3")
    assert (v3.lr, v3.weight_decay, v3.ema_decay, v3.model_kwargs["drop_rate"], v3.kd_weight) == \
           (0.05, 2e-5, 0.9998, 0.0, 1.0)
    assert v3.teacher == "timm:beitv2_large_patch16_224"


def test_unknown_recipe_and_unknown_key(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown recipe 'imagenet_ghostnet_v9'.*did you mean"):
        load_recipe("imagenet_ghostnet_v9")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: ghostnet_100\nlabel_smoothnig: 0.1\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown key\(s\) 'label_smoothnig' \(did you mean "
                                         r"'label_smoothing'\?\)"):
        load_recipe(str(bad))
    assert main(["train", "--recipe", str(bad), "--data", str(tmp_path)]) == 2
    assert "label_smoothnig" in capsys.readouterr().err
    assert main(["train", "--list-recipes"]) == 0
    assert "imagenet_ghostnetv2" in capsys.readouterr().out


def test_cli_flags_override_the_recipe():
    from ghostnet.commands.train import build_train_config
    from ghostnet.cli import build_parser

    args = build_parser().parse_args(["train", "--recipe", "imagenet_ghostnetv2", "--lr", "0.01", "--epochs", "3",
                                      "--model-kwargs", "{drop_rate: 0.1}", "--no-channels-last",
                                      "--milestones", "1,2"])
    cfg, resume = build_train_config(args)
    assert resume is None and (cfg.lr, cfg.epochs, cfg.model_kwargs, cfg.channels_last) == (0.01, 3, {"drop_rate": 0.1},
                                                                                           "false")
    assert cfg.optimizer == "rmsproptf" and cfg.milestones == [1, 2]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"), n_train=(8,), n_val=4, size=32)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_recipe_runs_a_step(name, tiny_data, tmp_path):
    recipe = read_recipe(name)
    overrides = dict(data=str(tiny_data), output=str(tmp_path), epochs=1, batch_size=4, subset=4, val_subset=4,
                     img_size=32, workers=0, progress=False, plots=False, warmup_epochs=0)
    if recipe.get("teacher"):
        overrides.update(teacher="ghostnet_050", teacher_pretrained=None)  # the real teacher needs a download
    if recipe.get("pretrained"):
        overrides.update(pretrained=None)  # so do published weights (test_finetune.py serves them locally)
    cfg = load_recipe(name, overrides)
    before = None

    def remember(progress):
        nonlocal before
        before = progress.global_step

    train(cfg, on_step=remember)
    state = read_training_state(tmp_path / "last.pt")
    assert before == 1 and state["progress"]["global_step"] == 1
    assert state["config"]["optimizer"] == recipe["optimizer"] and state["config"]["model"] == recipe["model"]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
