"""Published weights end to end, against a weights server on 127.0.0.1 made in the test: download, cache hit,
checksum and truncation refused with nothing cached, offline behaviour, tag choice, and torch.hub entry points.

No test reaches the internet: every download is checked to go to 127.0.0.1.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ghostnet import create_model, list_models
from ghostnet.download import cache_dir
from ghostnet.errors import CheckpointError, WeightsUnavailableError
from ghostnet.hub import cached_file, load_pretrained
from ghostnet.weights import get_weights
from support.weights_server import (assert_state_equal, cache_listing, isolated, random_state,  # noqa: F401
                                    serve_entry, server, torch_bytes)

REPO = Path(__file__).resolve().parents[1]
SMALL = "ghostnet_050"  # the smallest v1: a 10 MB file


def test_download_verify_cache_and_hit_without_network(server):
    state = random_state(SMALL, 0)
    entry = serve_entry(server, SMALL, "test", torch_bytes(state), default=True)

    model = create_model(SMALL, pretrained=True)
    assert_state_equal(model, state)
    assert server.hits == ["/ghostnet_050-test.pth"]
    assert cache_listing() == [entry.file_name] and cached_file(entry).is_file()
    # The weights' own data config travels with the model (predict and eval read it).
    assert model.pretrained_cfg["interpolation"] == "bilinear" and model.pretrained_cfg["tag"] == "test"

    again = create_model(SMALL, pretrained=True)
    assert server.hits == ["/ghostnet_050-test.pth"], "a cached file must not be downloaded again"
    assert_state_equal(again, state)


def test_a_published_sha256_prefix_is_enough(server):
    state = random_state(SMALL, 1)
    serve_entry(server, SMALL, "test", torch_bytes(state), sha256="prefix", default=True)
    assert_state_equal(create_model(SMALL, pretrained="test"), state)


def test_wrong_checksum_is_refused_and_nothing_is_cached(server):
    serve_entry(server, SMALL, "test", torch_bytes(random_state(SMALL, 2)), sha256="0" * 64, default=True)
    with pytest.raises(CheckpointError, match=r"checksum mismatch .* does not start with the published 0{64}"):
        create_model(SMALL, pretrained=True)
    assert cache_listing() == []


def test_truncated_download_is_refused_and_nothing_is_cached(server):
    entry = serve_entry(server, SMALL, "test", torch_bytes(random_state(SMALL, 3)), sha256=None, default=True)
    server.truncate.add("/ghostnet_050-test.pth")
    with pytest.raises(CheckpointError, match=r"cut short \(\d+ of \d+ bytes\); nothing was cached"):
        create_model(SMALL, pretrained=True)
    assert cache_listing() == []
    # The next try downloads again and succeeds once the server is healthy.
    server.truncate.clear()
    create_model(SMALL, pretrained=True)
    assert cache_listing() == [entry.file_name] and len(server.hits) == 2


def test_unreadable_download_without_length_or_checksum_is_removed(server):
    serve_entry(server, SMALL, "test", torch_bytes(random_state(SMALL, 4)), sha256=None, default=True)
    server.no_length.add("/ghostnet_050-test.pth")
    with pytest.raises(CheckpointError, match="not a readable checkpoint and was removed from the cache"):
        create_model(SMALL, pretrained=True)
    assert cache_listing() == []


def test_offline_with_a_cached_file_works(server, monkeypatch):
    state = random_state(SMALL, 5)
    serve_entry(server, SMALL, "test", torch_bytes(state), default=True)
    create_model(SMALL, pretrained=True)
    server.stop()
    assert_state_equal(create_model(SMALL, pretrained=True), state)
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    assert_state_equal(create_model(SMALL, pretrained=True), state)


def test_offline_without_a_cached_file_says_where_to_put_it(server, monkeypatch):
    entry = serve_entry(server, SMALL, "test", torch_bytes(random_state(SMALL, 6)), default=True)
    server.stop()
    with pytest.raises(WeightsUnavailableError, match="could not download") as err:
        create_model(SMALL, pretrained=True)
    assert str(cached_file(entry)) in str(err.value) and entry.url in str(err.value)
    assert isinstance(err.value, FileNotFoundError)  # the CLI turns it into a one-line error
    assert cache_listing() == []


def test_missing_file_on_the_server_is_a_clear_error(server):
    entry = serve_entry(server, SMALL, "test", b"", default=True)
    del server.files["/ghostnet_050-test.pth"]
    message = r"could not download .* \(HTTP 404 no such file\); to work offline"
    with pytest.raises(WeightsUnavailableError, match=message):
        create_model(SMALL, pretrained=True)
    assert not cached_file(entry).exists()


def test_offline_switch_never_contacts_the_server(server, monkeypatch):
    entry = serve_entry(server, SMALL, "test", torch_bytes(random_state(SMALL, 7)), default=True)
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="GHOSTNET_OFFLINE forbids downloading") as err:
        create_model(SMALL, pretrained=True)
    assert str(cached_file(entry)) in str(err.value)
    assert server.hits == []


def test_builtin_entry_offline_names_the_published_url_and_the_cache_path(monkeypatch):
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    entry = get_weights("ghostnet_100")
    with pytest.raises(WeightsUnavailableError) as err:
        create_model("ghostnet_100", pretrained=True)
    assert entry.url in str(err.value) and str(cache_dir() / entry.file_name) in str(err.value)


def test_a_file_put_in_the_cache_by_hand_is_used(monkeypatch):
    """The offline recipe the error message gives: save the published file under its cache name."""
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    entry = get_weights("ghostnet_100", "official")
    state = random_state("ghostnet_100", 8)
    cached_file(entry).parent.mkdir(parents=True)
    torch.save(state, cached_file(entry))
    assert_state_equal(create_model("ghostnet_100", pretrained="official"), state)


def test_tag_choice(server):
    state_a, state_b = random_state(SMALL, 10), random_state(SMALL, 11)
    serve_entry(server, SMALL, "a", torch_bytes(state_a), default=True)
    serve_entry(server, SMALL, "b", torch_bytes(state_b))
    assert_state_equal(create_model(SMALL, pretrained=True), state_a)
    assert_state_equal(create_model(SMALL, pretrained="b"), state_b)
    with pytest.raises(ValueError, match=r"no weights tagged 'c'; available tags: a, b, mindcv \(default 'a'\)"):
        create_model(SMALL, pretrained="c")


@pytest.mark.slow
def test_v3_ema_and_raw_tags_share_one_download(server):
    """The official v3 release: one file holding state_dict and state_dict_ema, with the official `bn.` names."""
    raw, ema = random_state("ghostnetv3_050", 12), random_state("ghostnetv3_050", 13)

    def official_names(state):
        return {k.replace(".bn1.", ".bn.") if (".ghost" in k or ".dw_rpr_" in k) else k: v for k, v in state.items()}

    body = torch_bytes({"state_dict": official_names(raw), "state_dict_ema": official_names(ema), "epoch": 599})
    shared = dict(path="/ghostnetv3-0.5.pth.tar", file_name="ghostnetv3_050-official.pth")
    serve_entry(server, "ghostnetv3_050", "ema", body, use_ema=True, default=True, **shared)
    serve_entry(server, "ghostnetv3_050", "raw", body, use_ema=False, **shared)
    assert_state_equal(create_model("ghostnetv3_050", pretrained=True), ema)
    assert_state_equal(create_model("ghostnetv3_050", pretrained="raw"), raw)
    assert server.hits == ["/ghostnetv3-0.5.pth.tar"]


def test_other_num_classes_gets_the_body_and_a_new_head(server):
    state = random_state(SMALL, 14)
    serve_entry(server, SMALL, "test", torch_bytes(state), default=True)
    model = create_model(SMALL, pretrained=True, num_classes=10)
    assert_state_equal(model, state, skip=("classifier.",))
    assert model.classifier.out_features == 10 and model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_model_without_published_weights_is_a_clear_error():
    with pytest.raises(ValueError, match=r"no published weights are registered for 'ghostnetv3_050' \(models with "
                                         r"weights: .*ghostnet_100.*\); pass pretrained=PATH_OR_URL"):
        create_model("ghostnetv3_050", pretrained=True)
    with pytest.raises(ValueError, match="no published weights"):
        load_pretrained(create_model("ghostnetv3_050"), "ghostnetv3_050")


def test_default_cache_is_torch_hub_checkpoints(tmp_path, monkeypatch):
    monkeypatch.delenv("GHOSTNET_CACHE")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    assert cache_dir() == tmp_path / "torch_home" / "hub" / "checkpoints"


def _hubconf():
    spec = importlib.util.spec_from_file_location("ghostnet_test_hubconf", REPO / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hubconf_offers_exactly_the_registry():
    hubconf = _hubconf()
    # torch.hub.list() shows the public callables of hubconf: they must be the registry's names, nothing else.
    public = sorted(n for n in dir(hubconf) if callable(getattr(hubconf, n)) and not n.startswith("_"))
    assert public == list_models()
    assert "pretrained" in hubconf.ghostnet_100.__doc__ and hubconf.ghostnet_100.__name__ == "ghostnet_100"


def test_torch_hub_load_with_pretrained_weights(server):
    state = random_state(SMALL, 15)
    serve_entry(server, SMALL, "test", torch_bytes(state), default=True)
    model = torch.hub.load(str(REPO), SMALL, source="local", pretrained=True)
    assert_state_equal(model, state)
    assert torch.hub.load(str(REPO), SMALL, source="local", num_classes=7).classifier.out_features == 7


@pytest.mark.slow
def test_torch_hub_load_from_an_uninstalled_checkout():
    """With the installed copy hidden, hubconf imports the package from src/ beside it."""
    src = str(REPO / "src")
    script = (
        "import sys\n"
        f"sys.path[:] = [p for p in sys.path if p.rstrip('/') != {src!r}]\n"
        "import torch\n"
        f"model = torch.hub.load({str(REPO)!r}, 'ghostnet_050', source='local', num_classes=3)\n"
        "import ghostnet\n"
        "print(ghostnet.__file__, model.eval()(torch.randn(1, 3, 32, 32)).shape[-1])\n")
    env = {**os.environ, "PYTHONNOUSERSITE": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    path, classes = out.stdout.split()
    assert Path(path).resolve() == REPO / "src" / "ghostnet" / "__init__.py" and classes == "3"


# ---------------------------------------------------------------------------------------------- one downloader


@pytest.mark.slow
def test_a_checkpoint_url_goes_through_the_same_cache_and_offline_switch(server, monkeypatch):
    """`create_model(pretrained=URL)` and `load_checkpoint(model, URL)` use the downloader of the published weights:
    the file lands in $GHOSTNET_CACHE, a second load does not contact the server, and GHOSTNET_OFFLINE forbids an
    uncached download with a message that says where to put the file."""
    state = random_state(SMALL, seed=7)
    server.files["/mine/run-best.pth"] = torch_bytes(state)
    url = server.url("/mine/run-best.pth")
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=r"GHOSTNET_OFFLINE.*run-best\.pth"):
        create_model(SMALL, pretrained=url)
    assert server.hits == []
    monkeypatch.delenv("GHOSTNET_OFFLINE")
    model = create_model(SMALL, pretrained=url)
    assert (cache_dir() / "run-best.pth").is_file() and server.hits == ["/mine/run-best.pth"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")  # cached now: offline works and the server is not asked again
    create_model(SMALL, pretrained=url)
    assert server.hits == ["/mine/run-best.pth"]


def test_a_cut_checkpoint_url_download_is_not_cached(server):
    server.files["/cut.pth"] = torch_bytes(random_state(SMALL, seed=8))
    server.truncate.add("/cut.pth")
    with pytest.raises(CheckpointError, match="cut short"):
        create_model(SMALL, pretrained=server.url("/cut.pth"))
    assert not (cache_dir() / "cut.pth").exists()
