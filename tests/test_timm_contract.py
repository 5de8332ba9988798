"""timm's model contract on every registered model: what a timm user's next line after `create_model(name)` needs.

Adapted from timm's tests/test_models.py (Apache-2.0): forward, forward_features / forward_head(pre_logits),
reset_classifier(0 / n / global_pool=''), num_classes=0 with global_pool='', in_chans=1, features_only with
out_indices and feature_info's channels() / reduction() against the maps, forward_intermediates against
feature_info, prune_intermediate_layers, group_matcher (read by timm's own group_parameters) and no_weight_decay,
torch.fx symbolic tracing and torchvision's create_feature_extractor equal to eager in eval and train mode, backward.
The models come from the registry, so a new model cannot ship without passing it; every model but the fast subset
is marked slow. Inputs are the models' smallest (32 x 32), batch 2 (training-mode batch norms need two samples).
"""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.fx
from torchvision.models.feature_extraction import create_feature_extractor

import ghostnet
from ghostnet.layers import GhostModule
from ghostnet.layers.folded_conv import first_conv_maybe_folded, foldable
from ghostnet.train.optim import group_ids

FAST = ("ghostnet_050",)  # unmarked: the contract on one model in every quick run
#: `features_only` maps equal create_feature_extractor's at feature_info's module names (docs/models.md).
FEATURE_EXTRACTOR_MODELS = ("ghostnet_100", "ghostnetv2_100", "ghostnetv3_100", "repghostnet_100")
SIZE, BATCH = 32, 2

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=[pytest.param(n, marks=() if n in FAST else pytest.mark.slow)
                                        for n in ghostnet.list_models()])
def name(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def base(name: str) -> torch.nn.Module:
    """The model as timm's tests build it (default arguments), in eval mode; tests change deep copies."""
    torch.manual_seed(0)
    return ghostnet.create_model(name).eval()


def images(in_chans: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn(BATCH, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_forward_features_head_and_classifier_resets(name, base):
    x = images()
    assert base.num_classes > 0 and base.num_features > 0 and base.head_hidden_size > 0
    out = base(x)
    assert out.shape == (BATCH, base.num_classes) and not out.isnan().any()
    features = base.forward_features(x)
    assert features.ndim == 4 and features.shape[1] == base.num_features
    pre_logits = base.forward_head(features, pre_logits=True)
    assert pre_logits.shape == (BATCH, base.head_hidden_size)
    assert torch.equal(base.forward_head(features), out)
    cfg = base.pretrained_cfg
    assert base.get_classifier() is base.get_submodule(cfg["classifier"]) and base.get_submodule(cfg["first_conv"])
    model = copy.deepcopy(base)
    model.reset_classifier(0)
    assert model.num_classes == 0 and torch.equal(model(x), pre_logits)
    model.reset_classifier(7)
    assert model(x).shape == (BATCH, 7)
    model.reset_classifier(0, "")  # no pool, no classifier: the head's map (timm's early-pool models: every pixel)
    unpooled = model(x)
    assert unpooled.shape == (BATCH, model.head_hidden_size, *features.shape[2:])
    for pool in model.pool_types[1:] + ("fast",):
        model.reset_classifier(3, pool)
        assert model(x).shape == (BATCH, 3), pool
    with pytest.raises(ValueError, match="global_pool='' leaves the features unpooled"):
        model.reset_classifier(3, "")


def test_constructor_options_and_grad_checkpointing(name, base):
    # timm: create_model(name, num_classes=0, global_pool='') returns unpooled maps; in_chans=1; drop_rate.
    model = ghostnet.create_model(name, num_classes=0, global_pool="", in_chans=1, drop_rate=0.1).eval()
    assert model.pretrained_cfg["input_size"][0] == 1 and model.num_classes == 0
    with torch.no_grad():
        out = model(images(1))
    assert out.ndim == 4 and out.shape[1] == model.head_hidden_size
    with pytest.raises(ValueError, match="global_pool"):
        ghostnet.create_model(name, global_pool="sum")
    # timm's test_model_forward: checkpointing changes nothing.
    x = images()
    expected = base(x)
    checkpointed = copy.deepcopy(base)
    checkpointed.set_grad_checkpointing()
    assert torch.equal(checkpointed(x), expected)


def test_backward_reaches_every_parameter(name, base):
    model = copy.deepcopy(base).train()
    model.reset_classifier(42)
    out = model(images())
    assert out.shape == (BATCH, 42)
    out.mean().backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


def test_features_only_taps_are_the_classifiers_maps(name, base):
    model = ghostnet.create_model(name, features_only=True, out_indices=(1, 2)).eval()
    info = model.feature_info
    assert info.out_indices == (1, 2) and len(info) == 2 and info.channels() == [f.num_chs for f in info]
    assert info.channels(0) == base.feature_info.channels()[0]  # an int indexes every tap, as in timm
    keys = model.state_dict().keys()
    model.load_state_dict({k: v for k, v in base.state_dict().items() if k in keys})
    x = images()
    with torch.no_grad():
        maps = model(x)
        expected = base.forward_intermediates(x, indices=(1, 2), intermediates_only=True)
    assert len(maps) == 2 and all(torch.equal(a, b) for a, b in zip(maps, expected))
    for channels, reduction, module, tap in zip(info.channels(), info.reduction(), info.module_name(), maps):
        assert tap.shape[:2] == (BATCH, channels)
        assert SIZE // reduction <= tap.shape[-1] <= math.ceil(SIZE / reduction) + 1
        model.get_submodule(module)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())
    with pytest.raises(ValueError, match="a features_only model has no classifier"):
        model.reset_classifier(0)


@torch.no_grad()
def test_forward_intermediates_follow_feature_info(name, base):
    timm = pytest.importorskip("timm")
    info = base.feature_info
    assert len(info) >= 3 and info.reduction() == sorted(info.reduction())
    # timm's own FeatureInfo takes the entries (dicts), as its feature wrappers do.
    assert timm.models.FeatureInfo(copy.deepcopy(list(info)), len(info)).channels() == info.channels()
    x = images()
    final, intermediates = base.forward_intermediates(x)
    assert torch.equal(final, base.forward_features(x)) and len(intermediates) == len(info)
    for channels, reduction, tap in zip(info.channels(), info.reduction(), intermediates):
        assert tap.shape[:2] == (BATCH, channels)
        assert SIZE // reduction <= tap.shape[-1] <= math.ceil(SIZE / reduction) + 1
    last_two = base.forward_intermediates(x, indices=2, intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(last_two, intermediates[-2:]))
    early, (tap,) = base.forward_intermediates(x, indices=[-len(info) + 1], stop_early=True)
    assert torch.equal(early, tap) and torch.equal(tap, intermediates[1])
    with pytest.raises(ValueError, match="indices"):
        base.forward_intermediates(x, indices=[len(info)])


@torch.no_grad()
def test_prune_intermediate_layers_keeps_the_taps(name, base):
    model = copy.deepcopy(base)
    assert model.prune_intermediate_layers((0, 2)) == [0, 2]
    x = images()
    expected = base.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
    got = model.forward_intermediates(x, indices=(0, 2), intermediates_only=True)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert torch.equal(model(x), expected[1])  # the head is gone: the last kept tap, unpooled
    assert model.num_features == model.head_hidden_size == base.feature_info.channels(2)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in base.parameters())
    with pytest.raises(ValueError, match="not built"):
        model.forward_intermediates(x, indices=(3,))


def _patterns(matcher: dict) -> list[str]:
    specs = [s for s in matcher.values() if s is not None]
    return [p for s in specs for p in ([r for r, _ in s] if isinstance(s, (list, tuple)) else [s])]


def test_group_matcher_covers_every_parameter_as_timm_reads_it(name, base):
    timm = pytest.importorskip("timm")
    names = [n for n, _ in base.named_parameters()]
    head = {n for n in names if n.startswith(base.classifier_name + ".")}
    for coarse in (True, False):
        matcher = base.group_matcher(coarse=coarse)
        patterns = _patterns(matcher)
        assert [n for n in names if not any(re.match(p, n) for p in patterns)] == [], coarse
        ids, last = group_ids(base, coarse=coarse)
        # timm's optimizer factory reads the matcher the same way.
        assert timm.models.group_parameters(base, matcher, reverse=True) == ids
        assert ids[names[0]] == 0 and {ids[n] for n in head} == {last}
        assert sorted(set(ids.values())) == list(range(last + 1))
    ids, _ = group_ids(base, coarse=True)
    assert [ids[n] for n in names] == sorted(ids[n] for n in names)  # stem, stages, head in forward order
    assert base.no_weight_decay() <= set(names)


def _folds(model: torch.nn.Module) -> bool:
    """Whether training the model on the CPU batch-folds a convolution (a Ghost module's, under 16 channels)."""
    return any(isinstance(m, GhostModule) and (foldable(m.primary_conv[0]) or foldable(m.cheap_operation[0]))
               for m in model.modules())


def _fx_equal(model: torch.nn.Module, extractor: torch.nn.Module, train: bool) -> None:
    """A symbolic trace computes exactly what the model computes, and the feature extractor its taps."""
    model, extractor = model.train(train), extractor.train(train)  # the extractor swaps in that mode's graph
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    x = images()
    torch.manual_seed(1)  # the same dropout masks
    expected = model(x)
    torch.manual_seed(1)
    assert torch.equal(traced(x), expected)
    if train and _folds(model):  # the traced training graph keeps the CPU batch fold (its speed)
        assert any(node.target is first_conv_maybe_folded for node in traced.graph.nodes)
    maps = extractor(x)
    expected_maps = model.forward_intermediates(x, intermediates_only=True)
    assert all(torch.equal(maps[str(i)], m) for i, m in enumerate(expected_maps))


def test_fx_trace_and_feature_extractor_equal_eager(name, base):
    model = copy.deepcopy(base)
    taps = {module: str(i) for i, module in enumerate(model.feature_info.module_name())}
    extractor = create_feature_extractor(copy.deepcopy(model), return_nodes=taps)  # traces train and eval mode
    with torch.no_grad():
        _fx_equal(model, extractor, train=False)
    # Training mode (BN batch statistics, dropout, the CPU batch fold), with gradients as in a training step.
    _fx_equal(model, extractor, train=True)


@pytest.mark.slow
@pytest.mark.parametrize("model_name", FEATURE_EXTRACTOR_MODELS)
def test_create_feature_extractor_gives_the_features_only_maps(model_name):
    torch.manual_seed(0)
    body = ghostnet.create_model(model_name, features_only=True).eval()
    full = ghostnet.create_model(model_name).eval()
    full.load_state_dict(body.state_dict(), strict=False)
    nodes = {module: str(i) for i, module in enumerate(body.feature_info.module_name())}
    assert list(nodes) == [f"blocks.{stage}" for stage in (0, 2, 4, 6, 9)]
    extractor = create_feature_extractor(full, return_nodes=nodes)
    x = images()
    with torch.no_grad():
        maps, expected = extractor(x), body(x)
    assert [maps[str(i)].shape for i in range(5)] == [m.shape for m in expected]
    assert all(torch.equal(maps[str(i)], m) for i, m in enumerate(expected))


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["ghostnet_050", "ghostnetv2_100"])
def test_trace_based_exports_work(model_name):
    """TorchScript scripting is not supported (docs/models.md); torch.jit.trace and torch.export are."""
    model = ghostnet.create_model(model_name).eval()
    x = images()
    with torch.no_grad():
        expected = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.equal(traced(x), expected)
        exported = torch.export.export(model, (x,)).module()
        assert torch.equal(exported(x), expected)
