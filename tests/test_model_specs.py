"""One model-spec grammar (ghostnet.models.spec) in every command: NAME, timm:NAME, torchvision:NAME and
package.module:callable each work in `profile`, `bench`, `train` and `eval`, and bad specs are one clear error."""
from __future__ import annotations

import json

import pytest
import torch

from ghostnet.cli import main
from ghostnet.models.spec import create_from_spec, data_config_of, parse_model_spec
from support.training import write_image_folder, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

#: One small model per spelling.
SPECS = ("ghostnet_050", "timm:ghostnet_050", "torchvision:mobilenet_v3_small",
         "torchvision.models:mobilenet_v3_small")
#: ImageNet WordNet ids: a folder of these is scored as an ImageNet subset by a 1000-class model.
WNIDS = ("n02086240", "n02087394")


def test_parse_model_spec():
    assert [parse_model_spec(s).source for s in SPECS] == ["ghostnet", "timm", "torchvision", "import"]
    assert parse_model_spec("ghostnet:ghostnet_100").name == "ghostnet_100"
    assert [parse_model_spec(s).label for s in SPECS[1:3]] == ["timm/ghostnet_050", "torchvision/mobilenet_v3_small"]
    for bad, message in (("", "empty model spec"), ("timm:", "names no model"), ("a b:c", "unknown model source")):
        with pytest.raises(ValueError, match=message):
            parse_model_spec(bad)


@pytest.mark.parametrize("spec", SPECS)
def test_every_spelling_builds_with_kwargs_and_a_data_config(spec):
    model = create_from_spec(spec, num_classes=3)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3) and model.model_name == spec
    assert data_config_of(spec)["input_size"][1:] == (224, 224)


@pytest.mark.parametrize("spec", SPECS)
def test_profile_takes_every_spelling(spec, capsys):
    assert main(["profile", spec, "--no-measure", "--input-size", "64", "64"]) == 0
    assert "MACs" in capsys.readouterr().out


def test_bench_takes_every_spelling_as_model_and_peer(tmp_path, capsys):
    args = ["bench", "ghostnet_050", SPECS[3], "--peers", ",".join(SPECS[1:3]), "--backends", "eager",
            "--threads", "1", "--rounds", "1", "--reps", "1", "--warmup", "0", "--image-size", "64", "--no-plot",
            "--out-dir", str(tmp_path), "--name", "specs", "--reference", "ghostnet_050/eager"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "specs.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"ghostnet_050", "timm/ghostnet_050", "torchvision/mobilenet_v3_small",
                                          "torchvision.models:mobilenet_v3_small"}


@pytest.mark.parametrize("spec", SPECS)
def test_train_takes_every_spelling(spec, tmp_path):
    data = write_npz_data(tmp_path / "data", n_train=(8,), n_val=4, size=32)
    args = ["train", "--data", str(data), "--model", spec, "--preset", "cifar", "--img-size", "32", "--batch-size",
            "4", "--epochs", "1", "--workers", "0", "--no-progress", "--no-plots", "--output", str(tmp_path / "run")]
    assert main(args) == 0
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])["epoch"] == 1


@pytest.mark.parametrize("spec", SPECS)
def test_eval_takes_every_spelling(spec, tmp_path, capsys):
    """A checkpoint that does not name its model is evaluated as the --model spec says (here: 1000-class models on
    an ImageNet subset)."""
    data = write_image_folder(tmp_path / "data", classes=WNIDS, per_class=2, size=40)
    checkpoint = tmp_path / "weights.pth"
    torch.save(create_from_spec(spec).state_dict(), checkpoint)
    assert main(["eval", "--checkpoint", str(checkpoint), "--model", spec, "--data", str(data), "--workers",
                 "0", "--img-size", "64"]) == 0
    assert "top-1" in capsys.readouterr().out


def test_a_bad_spec_is_one_error_in_every_command(tmp_path, capsys):
    data = write_npz_data(tmp_path / "data")
    for args in (["profile", "nosuchpackage_xyz:model"], ["train", "--data", str(data), "--model", "timm:no_such_net",
                                                           "--output", str(tmp_path / "run")]):
        assert main(args) == 2
        assert capsys.readouterr().err.count("\n") == 1
