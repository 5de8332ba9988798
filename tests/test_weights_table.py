"""The table of published weights is consistent data: registered models, loadable file names, checksums that can be
checked, reported accuracies that agree with the facts file, and a model zoo page that lists all of it."""
from __future__ import annotations

from pathlib import Path

import pytest

from ghostnet import list_models
from ghostnet import weights as weights_table
from ghostnet.models.registry import get_model_entry
from ghostnet.weights import (FILE_FORMATS, PretrainedWeights, default_tag, get_weights, list_weights,
                              models_with_weights, register_weights, unregister_weights)

REPO = Path(__file__).resolve().parents[1]
ENTRIES = list_weights()

#: Top-1 of each file, from shared/reference/ghostnet-facts.md: §1.2 (official v1 checkpoint 73.98), §2 (GhostNetV2
#: 75.3 / 76.9 / 77.8 and timm's 73.958 / 75.186 / 76.746 / 77.836), §1.5 (v3: state_dict 76.930, the weights timm
#: ships; state_dict_ema 77.134); PaddleClas's files from its docs/zh_CN/models/Mobile.md table (0.668 / 0.740 /
#: 0.757, and 0.794 for the distilled 1.3x); mindcv's files from its configs/ghostnet/README.md; RepGhostNet from §9
#: (the official eval.log values, which the README table rounds to one decimal: 66.946 -> 66.9, ...).
FACTS_TOP1 = {
    "ghostnet_050.mindcv": 66.03, "ghostnet_100.mindcv": 73.78, "ghostnet_130.mindcv": 75.50,
    "ghostnet_050_paddle.paddle": 66.8, "ghostnet_100_paddle.paddle": 74.0, "ghostnet_130_paddle.paddle": 75.7,
    "ghostnet_130_paddle.ssld": 79.4,
    "ghostnet_100.official": 73.98, "ghostnet_100.timm": 73.958,
    "ghostnetv2_100.official": 75.3, "ghostnetv2_100.timm": 75.186,
    "ghostnetv2_130.official": 76.9, "ghostnetv2_130.timm": 76.746,
    "ghostnetv2_160.official": 77.8, "ghostnetv2_160.timm": 77.836,
    "ghostnetv3_100.ema": 77.134, "ghostnetv3_100.raw": 76.930, "ghostnetv3_100.timm": 76.930,
    "repghostnet_050.timm": 66.946, "repghostnet_058.timm": 68.944, "repghostnet_080.timm": 72.238,
    "repghostnet_100.timm": 74.218, "repghostnet_111.timm": 75.066, "repghostnet_130.timm": 76.374,
    "repghostnet_150.timm": 77.454, "repghostnet_200.timm": 78.806,
    # G-Ghost RegNetX: the official README's table (ghostnet-facts.md section 9).
    "g_ghost_regnetx_032.official": 77.8, "g_ghost_regnetx_040.official": 78.6,
    "g_ghost_regnetx_080.official": 79.0, "g_ghost_regnetx_160.official": 79.9,
}


@pytest.fixture
def private_table(monkeypatch):
    monkeypatch.setattr(weights_table, "_TABLE", {k: dict(v) for k, v in weights_table._TABLE.items()})
    monkeypatch.setattr(weights_table, "_DEFAULT_TAG", dict(weights_table._DEFAULT_TAG))


def test_every_published_file_is_in_the_table_with_the_facts_accuracy():
    assert {e.key: e.top1 for e in ENTRIES} == FACTS_TOP1


def test_entries_belong_to_registered_models_and_each_model_has_a_default():
    registered = set(list_models())
    for model in models_with_weights():
        assert model in registered
        assert default_tag(model) in {e.tag for e in list_weights(model)}
        assert list_weights(model)[0].tag == default_tag(model)
    # The defaults documented in docs/model-zoo.md.
    assert {m: default_tag(m) for m in models_with_weights()} == {
        "ghostnet_100": "timm", "ghostnetv2_100": "timm", "ghostnetv2_130": "timm", "ghostnetv2_160": "timm",
        "ghostnetv3_100": "ema", "ghostnet_050": "mindcv", "ghostnet_130": "mindcv", "ghostnet_050_paddle": "paddle",
        "ghostnet_100_paddle": "paddle",
        "ghostnet_130_paddle": "ssld",
        **{f"repghostnet_{w}": "timm" for w in ("050", "058", "080", "100", "111", "130", "150", "200")},
        **{f"g_ghost_regnetx_{v}": "official" for v in ("032", "040", "080", "160")}}


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.key)
def test_entry_is_well_formed(entry: PretrainedWeights):
    assert entry.url.startswith("https://")
    # The cache name keeps the format's suffix: read_checkpoint picks safetensors or torch.load by suffix.
    suffix = "." + entry.file_format
    assert entry.url.endswith(suffix) and entry.file_name.endswith(suffix)
    assert entry.file_format in FILE_FORMATS
    model_cfg = get_model_entry(entry.model).default_cfg
    assert entry.data_config["input_size"] == model_cfg["input_size"]
    assert entry.data_config["num_classes"] == 1000
    assert entry.data_config["interpolation"] in ("bilinear", "bicubic")
    assert entry.license and entry.source and entry.accuracy_source
    assert entry.top5 is None or entry.top1 < entry.top5 < 100


def test_one_cache_file_per_url():
    by_name: dict[str, PretrainedWeights] = {}
    for entry in ENTRIES:
        other = by_name.setdefault(entry.file_name, entry)
        assert (other.url, other.sha256, other.file_format) == (entry.url, entry.sha256, entry.file_format)
    assert len({e.url for e in ENTRIES}) == len(by_name)


def test_ema_and_raw_v3_tags_are_the_two_copies_of_one_release():
    ema, raw = get_weights("ghostnetv3_100", "ema"), get_weights("ghostnetv3_100", "raw")
    assert ema.url == raw.url and ema.use_ema and not raw.use_ema


def test_a_wrong_checksum_or_format_in_an_entry_is_rejected():
    base = get_weights("ghostnet_100", "timm")
    fields = {k: getattr(base, k) for k in base.__dataclass_fields__}
    with pytest.raises(ValueError, match=r"sha256 must be 8 to 64 lowercase hex digits, got 'abc'"):
        PretrainedWeights(**{**fields, "sha256": "abc"})
    with pytest.raises(ValueError, match=r"file_format must be one of \('pth', 'pth.tar', 'safetensors', 'pdparams', "
                                         r"'ckpt'\)"):
        PretrainedWeights(**{**fields, "file_format": "zip"})
    with pytest.raises(ValueError, match="file_name must be a plain file name"):
        PretrainedWeights(**{**fields, "file_name": "../escape.pth"})


def test_register_replace_and_unregister(private_table):
    entry = get_weights("ghostnet_100", "official")
    with pytest.raises(ValueError, match=r"weights 'ghostnet_100.official' are already registered"):
        register_weights(entry)
    mine = PretrainedWeights(**{**{k: getattr(entry, k) for k in entry.__dataclass_fields__},
                                "model": "ghostnetv3_050", "tag": "mine"})
    register_weights(mine)
    assert default_tag("ghostnetv3_050") == "mine" and get_weights("ghostnetv3_050") is mine
    unregister_weights("ghostnetv3_050")
    assert "ghostnetv3_050" not in models_with_weights()
    unregister_weights("ghostnet_100", "timm")
    assert default_tag("ghostnet_100") == "official"


def test_unknown_model_or_tag_names_what_exists():
    with pytest.raises(ValueError, match=r"no published weights are registered for 'ghostnetv3_050' \(models with "
                                         r"weights: (g_ghost_regnetx_\d{3}, )*ghostnet_050, ghostnet_050_paddle, "
                                         r"ghostnet_100, .*\); pass "
                                         r"pretrained=PATH_OR_URL to load a checkpoint file$"):
        get_weights("ghostnetv3_050")
    with pytest.raises(ValueError, match=r"'ghostnetv3_100' has no weights tagged 'x'; available tags: ema, raw, "
                                         r"timm \(default 'ema'\)"):
        get_weights("ghostnetv3_100", "x")


def test_model_zoo_page_lists_every_model_and_every_weights_file():
    page = (REPO / "docs" / "model-zoo.md").read_text()
    missing = [m for m in list_models() if f"`{m}`" not in page]
    assert not missing, f"docs/model-zoo.md lacks {missing}: run python docs/tools/gen_model_zoo.py --write"
    for entry in ENTRIES:
        assert entry.url in page and f'pretrained="{entry.tag}"' in page, entry.key
