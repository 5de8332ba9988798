"""load_checkpoint: the checkpoint shapes people actually have, and clear errors for the ones that do not fit."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import ghostnet
from ghostnet import CheckpointError, load_checkpoint

from support.common import randomize_bn


@pytest.fixture(scope="module")
def source():
    return randomize_bn(ghostnet.create_model("ghostnet_050", num_classes=10)).eval()


def fresh():
    return ghostnet.create_model("ghostnet_050", num_classes=10).eval()


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.slow
@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
@pytest.mark.parametrize("suffix", [".pth", ".pth.tar", ".pt"])
def test_wrapped_and_bare_state_dicts(source, tmp_path, wrap, suffix):
    state = source.state_dict()
    obj = {wrap: state, "epoch": 3, "arch": "ghostnet_050"} if wrap else state
    path = tmp_path / f"ckpt{suffix}"
    torch.save(obj, path)
    assert same_weights(load_checkpoint(fresh(), path), source)


def test_ema_is_picked_on_request(source, tmp_path):
    raw = fresh().state_dict()
    path = tmp_path / "v3.pth.tar"
    torch.save({"state_dict": raw, "state_dict_ema": source.state_dict()}, path)
    assert same_weights(load_checkpoint(fresh(), path, use_ema=True), source)
    assert not same_weights(load_checkpoint(fresh(), path, use_ema=False), source)
    torch.save({"state_dict": raw}, path)
    with pytest.raises(CheckpointError, match="use_ema=True but there is no EMA copy"):
        load_checkpoint(fresh(), path, use_ema=True)


def test_ddp_prefix_and_thop_buffers(source, tmp_path):
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.blocks.0.0.total_ops"] = torch.zeros(1)
    state["total_params"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "ddp.pth")
    assert same_weights(load_checkpoint(fresh(), tmp_path / "ddp.pth"), source)


def test_official_v3_bn_naming(tmp_path):
    src = randomize_bn(ghostnet.create_model("ghostnetv3_050", num_classes=10))
    official = {}
    for k, v in src.state_dict().items():
        if (".ghost" in k or ".dw_rpr_" in k) and ".bn1." in k:
            k = k.replace(".bn1.", ".bn.")
        official[k] = v
    assert any(".primary_rpr_conv.0.bn.weight" in k for k in official)
    torch.save({"state_dict": official}, tmp_path / "ghostnetv3-1.0.pth.tar")
    dst = load_checkpoint(ghostnet.create_model("ghostnetv3_050", num_classes=10), tmp_path / "ghostnetv3-1.0.pth.tar")
    assert same_weights(dst, src)


def test_safetensors(source, tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    assert same_weights(load_checkpoint(fresh(), path), source)
    assert same_weights(ghostnet.create_model("ghostnet_050", num_classes=10, pretrained=str(path)), source)


def test_mismatch_lists_missing_unexpected_and_shapes(source, tmp_path):
    state = dict(source.state_dict())
    del state["conv_stem.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ghostnet.create_model("ghostnet_050", num_classes=20), tmp_path / "bad.pth")
    message = str(err.value)
    assert "bad.pth does not fit the model" in message
    assert "missing keys (1): conv_stem.weight" in message
    assert "unexpected keys (1): extra.weight" in message
    assert "classifier.weight: checkpoint (10, 1280) vs model (20, 1280)" in message


def test_non_strict_skips_absent_keys_but_not_shape_mismatches(source, tmp_path):
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("classifier.")}
    torch.save(state, tmp_path / "backbone.pth")
    model = load_checkpoint(ghostnet.create_model("ghostnet_050", num_classes=3), tmp_path / "backbone.pth",
                            strict=False)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)
    torch.save(source.state_dict(), tmp_path / "full.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint(ghostnet.create_model("ghostnet_050", num_classes=3), tmp_path / "full.pth", strict=False)


def test_features_only_model_loads_a_classifier_checkpoint(source, tmp_path):
    torch.save(source.state_dict(), tmp_path / "full.pth")
    backbone = ghostnet.create_model("ghostnet_050", features_only=True, out_indices=(0, 1))
    load_checkpoint(backbone, tmp_path / "full.pth")
    assert torch.equal(backbone.blocks[2][0].ghost1.primary_conv[0].weight,
                       source.blocks[2][0].ghost1.primary_conv[0].weight)


def test_truncated_file_gives_one_line_error(source, tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(source.state_dict(), path)
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(fresh(), path)
    assert str(err.value).startswith(f"{path}: not a readable checkpoint") and "\n" not in str(err.value)


@pytest.mark.parametrize("content,name", [(b"hello, not a checkpoint", "notes.pth"),
                                          (b"\x00\x01garbage", "w.safetensors")])
def test_non_checkpoint_files(tmp_path, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=f"{name}: not a readable checkpoint"):
        load_checkpoint(fresh(), path)


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_checkpoint(fresh(), tmp_path / "nope.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a state_dict .* got list"):
        load_checkpoint(fresh(), tmp_path / "list.pth")


def test_pickled_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"state_dict": Payload()}))
    with pytest.raises(CheckpointError, match="evil.pth: not a readable checkpoint"):
        load_checkpoint(fresh(), tmp_path / "evil.pth")


def test_convert_checkpoint_writes_our_names_with_their_source(tmp_path):
    from safetensors import safe_open

    from ghostnet.convert.checkpoints import convert_checkpoint

    source = randomize_bn(ghostnet.create_model("ghostnet_050"))  # the registered model as it is: 1000 classes
    official = tmp_path / "official.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, official)
    output = tmp_path / "out" / "g.safetensors"
    model = convert_checkpoint(str(official), "ghostnet_050", output)
    with safe_open(output, "pt") as f:
        assert f.metadata() == {"model": "ghostnet_050", "source": str(official), "format": "pt"}
        assert set(f.keys()) == set(source.state_dict())  # the DataParallel prefix is gone
    assert same_weights(load_checkpoint(ghostnet.create_model("ghostnet_050"), output), source)
    assert same_weights(model, source)
    with pytest.raises(ValueError, match="output must end in .safetensors, .pth or .pt, got 'g.onnx'"):
        convert_checkpoint(str(official), "ghostnet_050", tmp_path / "g.onnx")
    with pytest.raises(ValueError, match="use_ema applies to a checkpoint file"):
        convert_checkpoint("mindcv", "ghostnet_050", tmp_path / "h.pth", use_ema=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["official.pth", "out"]
