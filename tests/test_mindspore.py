"""MindSpore checkpoints (mindcv's GhostNet weights): decoded without MindSpore, renamed, equal to mindcv's network.

The fixture is mindcv's GhostNet (width 0.1, 10 classes) saved by `mindspore.save_checkpoint`, with its eval-mode
logits on a seeded batch (tests/data/make_mindcv_reference.py; mindspore is not needed here).
"""
from __future__ import annotations

import re
from typing import Optional
from pathlib import Path

import numpy as np
import pytest
import torch

from ghostnet import create_model
from ghostnet.convert.checkpoints import checkpoint_format, load_checkpoint
from ghostnet.convert.mindspore import read_mindspore_checkpoint
from ghostnet.errors import CheckpointError
from ghostnet.models.ghostnet import GhostNet
# The local weights server, and the autouse fixture that gives each test a private cache and weights table and no
# network beyond 127.0.0.1.
from support.weights_server import assert_state_equal, isolated, random_state, serve_published, server  # noqa: F401

from support.common import randomize_bn
from support.numerics import assert_float32_parity, corrupt_one_weight, float32_parity, stored_logits_outputs

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "mindcv_ghostnet_w0_1.ckpt"
REFERENCE = np.load(DATA / "mindcv_ghostnet_w0_1_io.npz")
TYPE_NAMES = {torch.float32: "Float32", torch.float16: "Float16", torch.int32: "Int32"}


def fixture_model(**kwargs) -> GhostNet:
    return GhostNet(width=0.1, num_classes=10, **kwargs).eval()


def mindcv_outputs(model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MindSpore's stored logits, our float32 logits, our float64 logits) on the fixture's batch."""
    return stored_logits_outputs(model, REFERENCE)


def assert_same_logits_as_mindcv(model: torch.nn.Module) -> None:
    assert_float32_parity(*mindcv_outputs(model), what="mindcv's logits")


# -- a minimal writer of MindSpore's checkpoint message, for files the fixture does not cover ------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _value(name: str, shape: tuple, type_name: str, content: bytes, packed: bool) -> bytes:
    if packed:
        dims = _field(1, b"".join(_varint(d) for d in shape))
    else:  # what MindSpore writes (proto2, unpacked)
        dims = b"".join(_varint(1 << 3) + _varint(d) for d in shape)
    tensor = dims + _field(2, type_name.encode()) + _field(3, content)
    return _field(1, _field(1, name.encode()) + _field(2, tensor))


def write_ckpt(path: Path, tensors: dict[str, torch.Tensor], split: tuple[str, ...] = (), packed: bool = False,
               type_names: Optional[dict[str, str]] = None) -> Path:
    """`tensors` as MindSpore writes them; names in `split` are stored as two values under one tag."""
    body = b""
    for name, tensor in tensors.items():
        content = tensor.contiguous().numpy().tobytes()
        chunks = [content[: len(content) // 2], content[len(content) // 2:]] if name in split else [content]
        type_name = (type_names or {}).get(name, TYPE_NAMES[tensor.dtype])
        body += b"".join(_value(name, tuple(tensor.shape), type_name, chunk, packed) for chunk in chunks)
    path.write_bytes(body)
    return path


MS_BN_NAMES = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}


def to_mindspore_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict under mindcv's parameter names (the inverse of the reader's renaming)."""
    norms = {k.rsplit(".", 1)[0] for k in state if k.endswith(".running_mean")}
    out = {}
    for key, value in state.items():
        prefix, last = key.rsplit(".", 1)
        if last == "num_batches_tracked":
            continue
        name = f"{prefix}.{MS_BN_NAMES[last] if prefix in norms else last}"
        name = re.sub(r"^(blocks\.\d+)\.0\.conv\.", r"\1.features.0.", name)
        out[re.sub(r"^(blocks\.\d+)\.0\.bn1\.", r"\1.features.1.", name)] = value
    return out


def test_mindcv_network_and_ours_give_the_same_logits():
    assert checkpoint_format(FIXTURE) == "mindspore"
    assert_same_logits_as_mindcv(load_checkpoint(fixture_model(), FIXTURE))


def test_the_logits_check_fails_for_one_corrupted_weight():
    """The bound above can fail: 1e-3 added to one converted weight is caught (over 10x the bound).

    Not a stem weight: this random width-0.1 network passes little of its early layers' signal on (1e-3 in the
    stem moves the logits by 2.5e-7, a few float32 ulps of the stored logits); a depthwise conv of the last
    Ghost stage reaches them.
    """
    model = load_checkpoint(fixture_model(), FIXTURE)
    weight = corrupt_one_weight(model, conv="blocks.8.0.ghost2.cheap_operation.0")
    parity = float32_parity(*mindcv_outputs(model))
    assert not parity.ok, f"{weight} + 1e-3 went unnoticed: {parity}"


def test_mindcv_names_are_ours_with_mindspore_batch_norm_names():
    stored = read_mindspore_checkpoint(FIXTURE)
    assert set(to_mindspore_names(fixture_model().state_dict())) == set(stored)
    assert all(v.dtype == torch.float32 for v in stored.values())


def test_sliced_tensors_packed_dims_and_training_state(tmp_path):
    tensors = dict(read_mindspore_checkpoint(FIXTURE))
    tensors.update({"moments.conv_stem.weight": torch.zeros(3), "global_step": torch.tensor([7], dtype=torch.int32),
                    "learning_rate": torch.tensor(0.1)})
    path = write_ckpt(tmp_path / "train.ckpt", tensors, split=("conv_head.weight", "blocks.9.features.1.gamma"),
                      packed=True)
    assert_same_logits_as_mindcv(load_checkpoint(fixture_model(), path))


def test_a_crc_protected_file_is_checked(tmp_path):
    """mindspore.save_checkpoint(..., crc_check=True) appends b"crc_num" and a 10-byte CRC-32 of the message."""
    import zlib

    body = FIXTURE.read_bytes()
    protected = tmp_path / "crc.ckpt"
    protected.write_bytes(body + b"crc_num" + zlib.crc32(body).to_bytes(10, "big"))
    assert_same_logits_as_mindcv(load_checkpoint(fixture_model(), protected))
    damaged = tmp_path / "damaged.ckpt"
    flipped = bytearray(protected.read_bytes())
    flipped[len(body) // 2] ^= 0x01
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"damaged.ckpt: the CRC-32 stored in the file does not match"):
        load_checkpoint(fixture_model(), damaged)


def test_half_precision_files_load(tmp_path):
    tensors = {k: v.half() for k, v in read_mindspore_checkpoint(FIXTURE).items()}
    model = load_checkpoint(fixture_model(), write_ckpt(tmp_path / "fp16.ckpt", tensors))
    assert model.conv_stem.weight.dtype == torch.float32
    assert torch.equal(model.conv_stem.weight, tensors["conv_stem.weight"].float())


def test_bad_files_are_clear_errors(tmp_path):
    data = FIXTURE.read_bytes()
    truncated = tmp_path / "cut.ckpt"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.ckpt: not a readable MindSpore checkpoint \(truncated"):
        load_checkpoint(fixture_model(), truncated)
    odd = write_ckpt(tmp_path / "odd.ckpt", {"x": torch.zeros(2)}, type_names={"x": "Complex64"})
    with pytest.raises(CheckpointError, match="x has tensor type 'Complex64', which is not supported"):
        load_checkpoint(fixture_model(), odd)
    tensors = dict(read_mindspore_checkpoint(FIXTURE))
    tensors["classifier.bias"] = tensors["classifier.bias"][:9]
    short = tmp_path / "short.ckpt"
    short.write_bytes(write_ckpt(tmp_path / "tmp.ckpt", tensors).read_bytes().replace(
        _varint(1 << 3) + _varint(9) + _field(2, b"Float32"), _varint(1 << 3) + _varint(10) + _field(2, b"Float32")))
    with pytest.raises(CheckpointError, match=r"classifier.bias holds 9 values for shape \(10,\)"):
        load_checkpoint(fixture_model(), short)
    tensors = dict(read_mindspore_checkpoint(FIXTURE), **{"resnet.fc.weight": torch.zeros(2)})
    with pytest.raises(CheckpointError, match=r"\(a MindSpore checkpoint, renamed from MindSpore's names\) does not "
                                              r"fit the model: unexpected keys \(1\): resnet.fc.weight"):
        load_checkpoint(fixture_model(), write_ckpt(tmp_path / "extra.ckpt", tensors))


def test_a_torch_file_named_ckpt_is_still_read_by_torch(tmp_path):
    model = fixture_model()
    path = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    assert checkpoint_format(path) == "torch"
    loaded = load_checkpoint(fixture_model(), path)
    assert_state_equal(loaded, model.state_dict())


def test_pretrained_mindcv_weights_download_and_convert(server, tmp_path):  # noqa: F811
    """create_model("ghostnet_050", pretrained=True): mindcv's file through the weights table, from 127.0.0.1."""
    state = random_state("ghostnet_050", 5)
    body = write_ckpt(tmp_path / "body.ckpt", to_mindspore_names(state)).read_bytes()
    assert serve_published(server, "ghostnet_050", "/ghostnet_050-85b91860.ckpt", body).tag == "mindcv"
    model = create_model("ghostnet_050", pretrained=True)
    assert_state_equal(model, state, skip=("num_batches_tracked",))
    assert server.hits == ["/ghostnet_050-85b91860.ckpt"]


def test_convert_cli_turns_a_mindcv_file_into_safetensors_that_timm_loads(tmp_path, capsys):
    """`ghostnet convert`: mindcv's 0.5x in our (= timm's) names, so timm's ghostnet_050 gets pretrained weights."""
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    from ghostnet.cli import main

    state = randomize_bn(create_model("ghostnet_050")).state_dict()  # valid variances: the logits are compared
    source = write_ckpt(tmp_path / "ghostnet_050-85b91860.ckpt", to_mindspore_names(state))
    output = tmp_path / "ghostnet_050.safetensors"
    assert main(["convert", str(source), "--model", "ghostnet_050", "-o", str(output)]) == 0
    assert f"wrote {output} (ghostnet_050, 2.59M parameters" in capsys.readouterr().out
    converted = load_file(output)
    theirs = timm.create_model("ghostnet_050")
    theirs.load_state_dict(converted)  # strict: every key of timm's model, nothing else
    ours = load_checkpoint(create_model("ghostnet_050"), source)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(theirs.eval()(x), ours.eval()(x), rtol=0, atol=0)
    assert main(["convert", str(source), "--model", "ghostnet_050", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "output must end in .safetensors, .pth or .pt" in capsys.readouterr().err
