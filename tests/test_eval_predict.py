"""`ghostnet eval` and `ghostnet predict` on a checkpoint trained in the test, checked against a direct computation."""
from __future__ import annotations

import io
import json

import pytest
import torch

from ghostnet.cli import main
from ghostnet.data import TransformConfig, eval_transform, load_rgb
from ghostnet.train import load_trained
from support.common import single_thread
from support.weights_server import isolated, serve_published, server  # noqa: F401  (private cache and table, local server)
from support.training import write_image_folder

pytestmark = pytest.mark.usefixtures("one_thread")
CLASSES = ("cat", "dog", "fox")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch ImageFolder run with EMA, made through the command line."""
    root = write_image_folder(tmp_path_factory.mktemp("images"), classes=CLASSES, per_class=6)
    out = tmp_path_factory.mktemp("run")
    with single_thread():
        code = main(["train", "--data", str(root), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}",
                     "--preset", "cifar", "--img-size", "16", "--epochs", "1", "--batch-size", "6", "--workers", "0",
                     "--ema-decay", "0.5", "--no-progress", "--no-plots", "--output", str(out)])
    assert code == 0
    return root, out


def direct_logits(checkpoint, files, use_ema=False):
    model = load_trained(checkpoint, use_ema=use_ema).model
    # What the run was told (cifar preset, 16 px) plus the model's defaults (bicubic, ImageNet mean/std).
    transform = eval_transform(TransformConfig(preset="cifar", img_size=16, interpolation="bicubic",
                                               mean=model.pretrained_cfg["mean"], std=model.pretrained_cfg["std"]))
    with torch.no_grad():  # one image at a time, as predict runs (batch size changes the conv kernels' rounding)
        return torch.cat([model(transform(load_rgb(f)).unsqueeze(0)) for f in files])


@pytest.mark.slow
@pytest.mark.parametrize("ema", [False, True])
def test_eval_matches_a_direct_computation(trained, tmp_path, ema, capsys):
    root, out = trained
    files = sorted((root / "val").rglob("*.png"))
    labels = torch.tensor([CLASSES.index(f.parent.name) for f in files])
    logits = direct_logits(out / "last.pt", files, use_ema=ema)
    pred = logits.argmax(1)
    args = ["eval", "--checkpoint", str(out / "last.pt"), "--data", str(root), "--workers", "0",
            "--json", str(tmp_path / "m.json"), "--confusion", str(tmp_path / "c.png")] + (["--ema"] if ema else [])
    assert main(args) == 0
    assert "top-1" in capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["count"] == len(files) and report["ema"] is ema
    assert report["top1"] == pytest.approx(100.0 * (pred == labels).float().mean().item())
    assert report["top5"] == 100.0  # three classes: the label is always in the top 5
    for c, name in enumerate(CLASSES):
        mine = (pred[labels == c] == c).float().mean().item()
        assert report["per_class"][name] == pytest.approx(mine)
        assert report["confusion"][c] == [int(((labels == c) & (pred == j)).sum()) for j in range(3)]
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_eval_of_a_safetensors_export_and_class_count_check(trained, tmp_path, capsys):
    root, out = trained
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(root), "--workers", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["count"] == 9
    other = write_image_folder(tmp_path / "two", classes=("a", "b"), per_class=2)
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", str(other), "--workers", "0"]) == 2
    assert "has 2 classes but the model predicts 3" in capsys.readouterr().err


def test_predict_top_k_with_names(trained, tmp_path, capsys):
    root, out = trained
    files = sorted((root / "val").rglob("*.png"))[:2]
    args = ["predict", "--checkpoint", str(out / "last.pt"), "--topk", "2", "--json"]
    assert main(args + [str(f) for f in files]) == 0
    results = json.loads(capsys.readouterr().out)
    probs = direct_logits(out / "last.pt", files).softmax(-1)
    for item, p in zip(results, probs):
        top = p.topk(2)
        assert [t["class"] for t in item["top"]] == [CLASSES[i] for i in top.indices.tolist()]
        assert [t["prob"] for t in item["top"]] == pytest.approx(top.values.tolist(), abs=1e-6)
    labels = tmp_path / "labels.txt"
    labels.write_text("Felis\nCanis\nVulpes\n")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--labels", str(labels), str(files[0])]) == 0
    assert any(name in capsys.readouterr().out for name in ("Felis", "Canis", "Vulpes"))
    labels.write_text("one\ntwo\n")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), "--labels", str(labels), str(files[0])]) == 2
    assert "has 2 names but the model predicts 3 classes" in capsys.readouterr().err


def test_predict_names_an_unreadable_file(trained, tmp_path, capsys):
    _, out = trained
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(bad)]) == 2
    assert f"{bad}: cannot read image" in capsys.readouterr().err
    assert main(["predict", "--checkpoint", str(out / "last.pt"), str(tmp_path / "absent.jpg")]) == 2
    assert "no such image file" in capsys.readouterr().err


WNIDS = ("n02086240", "n02099601", "n02115641")  # Shih-Tzu, golden retriever, dingo (Imagewoof classes)


def biased_imagenet_state(favourites: dict[int, float]) -> dict[str, torch.Tensor]:
    """ghostnet_050 weights whose logits are the classifier bias: ImageNet class i scores favourites.get(i, 0)."""
    from ghostnet import create_model

    state = create_model("ghostnet_050").state_dict()
    state["classifier.weight"] = torch.zeros_like(state["classifier.weight"])
    state["classifier.bias"] = torch.zeros(1000)
    for index, score in favourites.items():
        state["classifier.bias"][index] = score
    return state


def test_an_imagenet_model_is_evaluated_on_the_imagenet_classes_of_the_data(tmp_path, capsys):
    """Folders named by WordNet id (Imagewoof, Imagenette): the logits at those ImageNet indices decide."""
    from ghostnet.hub import imagenet_classes, imagenet_synsets

    synsets = imagenet_synsets()
    assert len(synsets) == len(set(synsets)) == 1000 and synsets == sorted(synsets)
    assert imagenet_classes()[synsets.index("n02099601")] == "golden retriever"
    root = write_image_folder(tmp_path / "woof", classes=WNIDS, per_class=4)
    names = ("Shih-Tzu", "golden retriever", "dingo")  # Imagewoof's classes.txt names the folders
    (root / "classes.txt").write_text("".join(f"{w}\t{n}\n" for w, n in zip(WNIDS, names)))
    indices = [synsets.index(w) for w in WNIDS]
    # Tench (index 0) wins over all 1000 classes; among the data's classes, the dingo does.
    path = tmp_path / "biased.pth"
    torch.save(biased_imagenet_state({0: 9.0, indices[2]: 5.0, indices[1]: 1.0}), path)
    assert main(["eval", "--model", "ghostnet_050", "--checkpoint", str(path), "--data", str(root), "--workers", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    assert "ImageNet-1k model on 3 of its classes" in capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["imagenet_indices"] == indices
    assert report["top1"] == pytest.approx(100 / 3)
    assert report["per_class"] == {names[0]: 0.0, names[1]: 0.0, names[2]: 1.0}
    # Folders that are not ImageNet ids still need a model with that many classes.
    other = write_image_folder(tmp_path / "pets", classes=("n02099601", "cat"), per_class=2)
    assert main(["eval", "--model", "ghostnet_050", "--checkpoint", str(path), "--data", str(other),
                 "--workers", "0"]) == 2
    assert "has 2 classes but the model predicts 1000" in capsys.readouterr().err


def test_eval_and_predict_with_published_weights(server, tmp_path, capsys):  # noqa: F811
    """--pretrained: the model's published weights (served from 127.0.0.1) instead of a checkpoint file."""
    from ghostnet.hub import imagenet_synsets

    root = write_image_folder(tmp_path / "woof", classes=WNIDS, per_class=2)
    body = io.BytesIO()
    torch.save(biased_imagenet_state({imagenet_synsets().index(WNIDS[1]): 3.0}), body)
    # ghostnet_050's default file is mindcv's .ckpt; a torch file under that name is still read by torch.
    serve_published(server, "ghostnet_050", "/ghostnet_050-85b91860.ckpt", body.getvalue())
    assert main(["eval", "--model", "ghostnet_050", "--pretrained", "--data", str(root), "--workers", "0",
                 "--json", str(tmp_path / "m.json")]) == 0
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["pretrained"] is True and report["checkpoint"] is None
    assert report["per_class"] == {WNIDS[0]: 0.0, WNIDS[1]: 1.0, WNIDS[2]: 0.0}
    image = sorted((root / "val").rglob("*.png"))[0]
    capsys.readouterr()
    assert main(["predict", str(image), "--model", "ghostnet_050", "--pretrained", "mindcv", "--topk", "1"]) == 0
    assert "1. golden retriever" in capsys.readouterr().out
    assert server.hits == ["/ghostnet_050-85b91860.ckpt"]  # downloaded once, then cached
    with pytest.raises(SystemExit):
        main(["eval", "--model", "ghostnet_050", "--pretrained", "--checkpoint", "x.pt", "--data", str(root)])
    assert "not allowed with argument" in capsys.readouterr().err
