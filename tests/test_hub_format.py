"""Models in the Hugging Face Hub's timm layout (config.json, model.safetensors, README.md), all offline: folders we
write load in timm with the same logits, folders timm writes load in ours, `hf-hub:ORG/NAME` resolves through a
huggingface_hub cache built in the test, the model card states measured figures, and push_to_hub hands the folder to
a recording stand-in for `HfApi`.

No test reaches the network: HF_HUB_OFFLINE is set, the Hugging Face cache is a folder under tmp_path, and every
socket connection other than to 127.0.0.1 fails the test.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import ghostnet
from ghostnet.cli import main as cli_main
from ghostnet.deploy.bench_config import BenchConfig
from ghostnet.errors import CheckpointError, WeightsUnavailableError
from ghostnet.hub_format import TIMM_ARCHITECTURES
from ghostnet.models.spec import create_from_spec, data_config_of
from support.common import randomize_bn
from support.numerics import GroupedConvAsEinsum, assert_float64_close

timm = pytest.importorskip("timm", reason="the Hub-layout tests compare with timm (pip install -e '.[dev]')")
hf = pytest.importorskip("huggingface_hub", reason="hf-hub: names need huggingface_hub (pip install -e '.[dev]')")

pytestmark = pytest.mark.usefixtures("one_thread")
X = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch) -> SimpleNamespace:
    """HF_HUB_OFFLINE=1 and a private Hugging Face cache (`.path`); socket connections beyond 127.0.0.1 are
    recorded (`.attempts`) and refused."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("GHOSTNET_OFFLINE", raising=False)
    # huggingface_hub reads both variables once, when it is imported.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    attempts: list = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    local = ("127.0.0.1", "::1", "localhost")

    def local_only(self, address):
        if not (isinstance(address, tuple) and address[0] in local):
            attempts.append(address)
            raise OSError(f"a test tried to reach {address}")
        return real_connect(self, address)

    def resolve_local_only(host, *args, **kwargs):  # a name lookup is the first step of any request
        if host not in local:
            attempts.append(host)
            raise socket.gaierror(f"a test tried to look up {host}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", local_only)
    monkeypatch.setattr(socket, "getaddrinfo", resolve_local_only)
    cache.mkdir()
    return SimpleNamespace(path=cache, attempts=attempts)


def fill_hf_cache(cache: Path, repo_id: str, folder: Path, revision: str = REVISION) -> None:
    """Put `folder`'s files into huggingface_hub's cache layout as a download leaves them:
    models--ORG--NAME/blobs/<sha256>, snapshots/<revision>/<file> (links to the blobs) and refs/main."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        digest = hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, repo / "blobs" / digest)
        os.symlink(Path("..", "..", "blobs", digest), snapshot / file.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)


def logits64(model: torch.nn.Module, x: torch.Tensor = X) -> torch.Tensor:
    """Float64 logits (float32 weights, float64 arithmetic): two copies of one function agree to rounding."""
    with torch.no_grad(), GroupedConvAsEinsum():
        return model.eval().double()(x.double())


def random_model(name: str, seed: int = 0, **kwargs) -> torch.nn.Module:
    torch.manual_seed(seed)
    return randomize_bn(ghostnet.create_model(name, **kwargs), seed=seed).eval()


# -- folders we write, read by timm ----------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnet_050", "ghostnetv2_100", "ghostnetv3_050", "repghostnet_050",
                                  "ghostnet_100"])
def test_our_folder_loads_in_timm_with_equal_logits(name, tmp_path):
    ours = random_model(name)
    folder = ghostnet.save_pretrained(ours, tmp_path / name, model_card=False)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    expected = logits64(ours)
    # timm's own model with our file, and timm reading the whole folder (architecture and all) by itself.
    overlay = dict(file=str(folder / "model.safetensors"))
    by_file = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay)
    assert_float64_close(logits64(by_file), expected, what=f"our {name} file in timm")
    by_folder = timm.create_model(f"local-dir:{folder}", pretrained=True)
    assert type(by_folder).__module__.startswith("timm.")
    assert_float64_close(logits64(by_folder), expected, what=f"our {name} folder in timm")


def test_our_config_has_timms_keys_and_values(tmp_path):
    from timm.models._hub import save_for_hf

    name = "ghostnet_050"
    save_for_hf(timm.create_model(name), tmp_path / "timm", safe_serialization=True)
    theirs = json.loads((tmp_path / "timm" / "config.json").read_text())
    ghostnet.save_pretrained(ghostnet.create_model(name), tmp_path / "ours", model_card=False)
    ours = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert list(ours) == list(theirs)
    other_keys = [k for k in ours if k != "pretrained_cfg"]
    assert {k: ours[k] for k in other_keys} == {k: theirs[k] for k in other_keys}
    # timm's pretrained_cfg adds what its published copy states (tag, licence, pool size); the rest is the same.
    shared = set(ours["pretrained_cfg"]) & set(theirs["pretrained_cfg"])
    assert shared >= {"input_size", "crop_pct", "crop_mode", "mean", "std", "num_classes", "first_conv", "classifier",
                      "custom_load", "fixed_input_size"}
    assert {k: ours["pretrained_cfg"][k] for k in shared if k != "interpolation"} == \
        {k: theirs["pretrained_cfg"][k] for k in shared if k != "interpolation"}


def test_timm_architectures_are_those_timm_shares_with_us():
    assert sorted(TIMM_ARCHITECTURES) == sorted(set(ghostnet.list_models()) & set(timm.list_models()))


@pytest.mark.slow
def test_resnet50_baseline_folder_loads_in_timm(tmp_path):
    ours = random_model("resnet50")
    ghostnet.save_pretrained(ours, tmp_path, model_card=False)
    x = X[:1, :, :64, :64]
    assert_float64_close(logits64(timm.create_model(f"local-dir:{tmp_path}", pretrained=True), x), logits64(ours, x))


# -- folders timm writes, read by ours ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["ghostnet_100", "ghostnetv2_100", "repghostnet_100"])
def test_timm_folder_loads_in_ours_with_equal_logits(name, tmp_path):
    from timm.models._hub import save_for_hf

    torch.manual_seed(0)
    theirs = randomize_bn(timm.create_model(name)).eval()
    save_for_hf(theirs, tmp_path, safe_serialization=True)
    ours = ghostnet.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert isinstance(ours, ghostnet.GhostNet) or type(ours).__module__.startswith("ghostnet.")
    assert ours.model_name == f"local-dir:{tmp_path}" and ours.pretrained_cfg["architecture"] == name
    assert ours.pretrained_cfg["license"] == ("mit" if name.startswith("rep") else "apache-2.0")
    assert_float64_close(logits64(ours), logits64(theirs), what=f"timm's {name} folder in ours")


def test_pretrained_false_builds_the_config_with_random_weights(tmp_path):
    saved = random_model("ghostnet_050", num_classes=7)
    ghostnet.save_pretrained(saved, tmp_path, model_card=False)
    fresh = ghostnet.create_model(f"local-dir:{tmp_path}")
    assert fresh.classifier.out_features == 7 and fresh.pretrained_cfg["num_classes"] == 7
    assert not torch.equal(fresh.conv_stem.weight, saved.conv_stem.weight)
    # Another head: the folder's body, a fresh classifier of the size asked for.
    retargeted = ghostnet.create_model(f"local-dir:{tmp_path}", pretrained=True, num_classes=3)
    assert retargeted.classifier.out_features == 3 and retargeted.pretrained_cfg["num_classes"] == 3
    assert torch.equal(retargeted.conv_stem.weight, saved.conv_stem.weight)


def test_labels_travel_with_the_folder(tmp_path):
    model = random_model("resnet20_cifar")
    names = [f"class {i}" for i in range(10)]
    ghostnet.save_pretrained(model, tmp_path / "a", label_names=names, model_card=False)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["label_names"] == names
    loaded = ghostnet.create_model(f"local-dir:{tmp_path / 'a'}", pretrained=True)
    assert loaded.pretrained_cfg["label_names"] == names
    ghostnet.save_pretrained(loaded, tmp_path / "b", model_card=False)  # kept on a second save
    assert json.loads((tmp_path / "b" / "config.json").read_text())["label_names"] == names
    with pytest.raises(ValueError, match="label_names has 3 names for a classifier of 10"):
        ghostnet.save_pretrained(model, tmp_path / "c", label_names=["a", "b", "c"])


# -- hf-hub: names through huggingface_hub's cache ----------------------------------------------------------------
@pytest.mark.slow
def test_hf_hub_name_resolves_from_the_cache_offline(hf_cache, tmp_path):
    saved = random_model("ghostnetv2_100", num_classes=5)
    classifier = saved.classifier.weight.detach().clone()
    ghostnet.save_pretrained(saved, tmp_path / "folder", model_card=False)
    fill_hf_cache(hf_cache.path, "someone/ghostnetv2-pets", tmp_path / "folder")

    for name in ("hf-hub:someone/ghostnetv2-pets", f"hf-hub:someone/ghostnetv2-pets@{REVISION}"):
        loaded = ghostnet.create_model(name, pretrained=True)
        assert loaded.model_name == name and loaded.pretrained_cfg["hf_hub_id"] == name.removeprefix("hf-hub:")
        assert_float64_close(logits64(loaded), logits64(saved), what=name)
    # Every command takes the name through the model-spec grammar.
    spec_model = create_from_spec("hf-hub:someone/ghostnetv2-pets", pretrained=True)
    assert torch.equal(spec_model.classifier.weight, classifier)
    assert data_config_of("hf-hub:someone/ghostnetv2-pets")["num_classes"] == 5
    # timm reads the same cache.
    assert_float64_close(logits64(timm.create_model("hf-hub:someone/ghostnetv2-pets", pretrained=True)),
                         logits64(saved))
    assert hf_cache.attempts == []


def test_ghostnet_offline_keeps_hf_hub_off_the_network(hf_cache, tmp_path, monkeypatch):
    from huggingface_hub import constants

    ghostnet.save_pretrained(random_model("ghostnet_050"), tmp_path / "folder", model_card=False)
    fill_hf_cache(hf_cache.path, "someone/g050", tmp_path / "folder")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("GHOSTNET_OFFLINE", "1")
    ghostnet.create_model("hf-hub:someone/g050", pretrained=True)
    assert hf_cache.attempts == [], "GHOSTNET_OFFLINE=1 must not let huggingface_hub ask the Hub for the revision"


def test_hf_hub_name_not_in_the_cache_is_a_one_line_error(hf_cache):
    with pytest.raises(WeightsUnavailableError) as info:
        ghostnet.create_model("hf-hub:someone/not-downloaded")
    assert "HF_HUB_OFFLINE" in str(info.value) and "\n" not in str(info.value)


# -- bad folders -------------------------------------------------------------------------------------------------
def test_unknown_architecture_is_a_one_line_value_error(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_base_patch16_224", "num_classes": 1000,
                                                      "pretrained_cfg": {}}))
    with pytest.raises(ValueError, match="architecture 'vit_base_patch16_224' is not a ghostnet model"):
        ghostnet.create_model(f"local-dir:{tmp_path}")
    assert cli_main(["profile", f"local-dir:{tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not a ghostnet model" in err and "\n" not in err


def test_missing_config_or_weights_and_pretrained_tags_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        ghostnet.create_model(f"local-dir:{tmp_path}")
    ghostnet.save_pretrained(ghostnet.create_model("resnet20_cifar"), tmp_path, model_card=False)
    (tmp_path / "model.safetensors").unlink()
    ghostnet.create_model(f"local-dir:{tmp_path}")  # random weights need no file
    with pytest.raises(CheckpointError, match="no weights file"):
        ghostnet.create_model(f"local-dir:{tmp_path}", pretrained=True)
    with pytest.raises(ValueError, match="pretrained must be True or False"):
        ghostnet.create_model(f"local-dir:{tmp_path}", pretrained="timm")


def test_a_fused_model_is_refused_and_nothing_is_written(tmp_path):
    from ghostnet.deploy import fuse

    model = random_model("ghostnet_050")
    with pytest.raises(CheckpointError, match="fused or re-parameterized"):
        ghostnet.save_pretrained(fuse(model), tmp_path / "out", model_card=False)
    assert not any((tmp_path / "out").iterdir())


# -- the model card ----------------------------------------------------------------------------------------------
def test_model_card_states_measured_params_and_macs(tmp_path):
    model = random_model("ghostnet_050")
    folder = ghostnet.save_pretrained(model, tmp_path / "g", license="mit", repo_id="someone/g050")
    card = (folder / "README.md").read_text()
    measured = ghostnet.profile(model, measure_memory=False)
    assert f"Params (M): {measured.params / 1e6:.2f} ({measured.params:,})" in card
    assert f"GMACs: {measured.macs / 1e9:.3f} ({measured.macs:,} multiply-accumulates" in card
    front = card.split("---")[1]
    assert "library_name: timm" in front and "license: mit" in front and "pipeline_tag: image-classification" in front
    assert "**Weights:** trained by the user" in card and "## Latency" not in card
    assert 'timm.create_model("hf-hub:someone/g050", pretrained=True)' in card
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["license"] == "mit"
    # An architecture timm does not have: no timm usage, our library.
    card = (ghostnet.save_pretrained(random_model("resnet20_cifar"), tmp_path / "r") / "README.md").read_text()
    assert "library_name: ghostnet-torch" in card and "import timm" not in card and "license:" not in card


@pytest.mark.slow
def test_model_card_latency_comes_from_the_bench_harness(tmp_path, monkeypatch):
    from ghostnet.deploy import bench

    calls = []
    real = bench.run_benchmark
    monkeypatch.setattr(bench, "run_benchmark", lambda cfg, *a, **k: calls.append(cfg) or real(cfg, *a, **k))
    settings = BenchConfig(backends=["eager", "fused"], threads=[1], rounds=1, reps=2, warmup=1)
    folder = ghostnet.save_pretrained(random_model("ghostnet_050"), tmp_path, latency=settings)
    card = (folder / "README.md").read_text()
    assert [(list(c.models), list(c.peers), c.image_size) for c in calls] == [(["ghostnet_050"], [], 224)]
    assert "## Latency" in card and "| eager | 1 |" in card and "| fused | 1 |" in card


def test_published_weights_card_names_their_source_and_licence(tmp_path, monkeypatch):
    from safetensors.torch import save as safetensors_bytes

    from support.weights_server import WeightServer, isolate, random_state, serve_published

    isolate(tmp_path, monkeypatch)
    server = WeightServer()
    try:
        entry = serve_published(server, "repghostnet_050", "/r050.safetensors",
                                safetensors_bytes(random_state("repghostnet_050", 0)))
        model = ghostnet.create_model("repghostnet_050", pretrained=True)
    finally:
        server.stop()
    folder = ghostnet.save_pretrained(model, tmp_path / "r")
    card = (folder / "README.md").read_text()
    assert entry.license.startswith("MIT") and f"**Licence:** {entry.license}" in card
    assert entry.url in card and entry.source in card
    assert "license: mit" in card and "- imagenet-1k" in card and f"Published top-1:** {entry.top1:g}%" in card
    assert json.loads((folder / "config.json").read_text())["pretrained_cfg"]["tag"] == entry.tag


# -- push_to_hub with a stand-in for HfApi ---------------------------------------------------------------------
class RecordingHfApi:
    """Records what push_to_hub asks of the Hub; keeps a copy of the uploaded folder (a temporary one)."""

    instances: list["RecordingHfApi"] = []

    def __init__(self, has_readme: bool, upload_copy: Path, **kwargs) -> None:
        self.kwargs, self.has_readme, self.upload_copy, self.uploads = kwargs, has_readme, upload_copy, []
        RecordingHfApi.instances.append(self)

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        self.created = (repo_id, private, exist_ok)
        return SimpleNamespace(repo_id=repo_id)

    def file_exists(self, repo_id, filename, revision=None, **kwargs):
        return self.has_readme and filename == "README.md"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        shutil.copytree(folder_path, self.upload_copy)
        self.uploads.append(dict(repo_id=repo_id, **kwargs))
        return "commit-info"


@pytest.mark.parametrize("has_readme", [False, True])
def test_push_to_hub_uploads_the_folder(has_readme, tmp_path, monkeypatch, hf_cache):
    RecordingHfApi.instances = []
    monkeypatch.setattr(hf, "HfApi", lambda **kw: RecordingHfApi(has_readme, tmp_path / "uploaded", **kw))
    model = random_model("ghostnet_050")
    result = ghostnet.push_to_hub(model, "someone/g050", private=True, commit_message="first", license="mit")
    (api,) = RecordingHfApi.instances
    assert result == "commit-info" and api.created == ("someone/g050", True, True)
    assert api.kwargs["library_name"] == "ghostnet"
    assert api.uploads == [dict(repo_id="someone/g050", revision=None, create_pr=False, commit_message="first")]
    uploaded = sorted(p.name for p in (tmp_path / "uploaded").iterdir())
    # A repository with a card keeps it, as timm's push_to_hub does.
    assert uploaded == ([] if has_readme else ["README.md"]) + ["config.json", "model.safetensors"]
    if not has_readme:
        assert 'ghostnet.create_model("hf-hub:someone/g050", pretrained=True)' in \
            (tmp_path / "uploaded" / "README.md").read_text()
    loaded = ghostnet.create_model(f"local-dir:{tmp_path / 'uploaded'}", pretrained=True)
    assert torch.equal(logits64(loaded), logits64(model))
    assert hf_cache.attempts == []


# -- ghostnet export --format hf ---------------------------------------------------------------------------------
def test_cli_exports_a_folder(tmp_path, capsys):
    out = tmp_path / "g050"
    assert cli_main(["export", "ghostnet_050", "--format", "hf", "-o", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((out / "config.json").read_text())["architecture"] == "ghostnet_050"
    assert "random initialisation" in (out / "README.md").read_text()
    ghostnet.create_model(f"local-dir:{out}", pretrained=True)
    assert cli_main(["export", "ghostnet_050", "--format", "hf", "--check", "-o", str(out)]) == 2
    assert "not for --format hf" in capsys.readouterr().err


def test_cli_exports_a_trained_checkpoint_with_its_classes_and_data_config(tmp_path):
    from ghostnet.train.state import export_weights, model_info

    trained = random_model("ghostnet_050", num_classes=3)
    data_config = {"input_size": [3, 64, 64], "crop_pct": 1.0, "interpolation": "bilinear",
                   "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    info = model_info("ghostnet_050", {"num_classes": 3}, ["cat", "dog", "fox"], data_config)
    weights = export_weights(trained.state_dict(), tmp_path / "best.safetensors", info)
    out = tmp_path / "hf"
    assert cli_main(["export", "ghostnet_050", "--weights", str(weights), "--format", "hf", "--license", "mit",
                     "-o", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 3 and config["label_names"] == ["cat", "dog", "fox"]
    assert config["pretrained_cfg"]["input_size"] == [3, 64, 64] and config["pretrained_cfg"]["mean"] == [0.5] * 3
    card = (out / "README.md").read_text()
    assert "trained by the user" in card and "Image size: 64 x 64" in card
    loaded = ghostnet.create_model(f"local-dir:{out}", pretrained=True)
    assert torch.equal(logits64(loaded), logits64(trained))
