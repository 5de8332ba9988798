"""MindSpore checkpoints (`.ckpt`, as mindcv publishes GhostNet 0.5x/1.0x/1.3x): read as data, renamed to our keys.

mindcv's GhostNet is the official network with the official (and timm's, and our) module names, so its weights load
into `ghostnet_050`, `ghostnet_100` and `ghostnet_130` unchanged apart from MindSpore's names for batch-norm
tensors (`gamma`, `beta`, `moving_mean`, `moving_variance`) and the final 1x1 conv's container (`features.0/1` where
we have `conv`/`bn1`). They are the only published 0.5x and 1.3x weights in the official form.

A MindSpore `.ckpt` is a protocol-buffer message (mindspore/ccsrc/utils/checkpoint.proto): a repeated `Value`
{1: tag (name), 2: TensorProto {1: dims, 2: tensor_type, 3: tensor_content (raw little-endian bytes)}}. It is
decoded here by a small wire-format reader, so MindSpore is not needed and nothing in the file can run. A file saved
with `crc_check=True` ends in b"crc_num" and a 10-byte big-endian CRC-32 of the message, which is verified.
"""
from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Iterator, Mapping, Union

import torch

from ..errors import CheckpointError
from ..utils import PathLike

_DTYPES = {"Float32": torch.float32, "Float16": torch.float16, "Float64": torch.float64, "BFloat16": torch.bfloat16,
           "Int8": torch.int8, "UInt8": torch.uint8, "Int16": torch.int16, "Int32": torch.int32,
           "Int64": torch.int64, "Bool": torch.bool}
_BN_NAMES = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
# What a MindSpore training loop stores beside the weights (optimizer, loss scaler and step counters).
CRC_MARKER = b"crc_num"
_TRAINING_STATE = re.compile(r"^(moments|accum|adam_m|adam_v|ema)\.|^(global_step|learning_rate|momentum|"
                             r"scale_sense|current_iterator_step|last_overflow_iterator_step|epoch_num|step_num|"
                             r"beta1_power|beta2_power)$")


class MindSporeFormatError(CheckpointError):
    """A file that is not a MindSpore checkpoint."""


def looks_like_mindspore(path: PathLike) -> bool:
    """A MindSpore .ckpt starts with field 1, length-delimited (0x0A); torch files start with a zip or pickle header."""
    with open(path, "rb") as f:
        return f.read(1) == b"\x0a"


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> Iterator[tuple[int, Union[int, bytes]]]:
    """(field number, value) of a protobuf message: ints for varints, bytes for length-delimited fields."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field")
            yield number, data[pos:pos + length]
            pos += length
        elif wire in (1, 5):  # fixed 64 / 32 bit: not used by checkpoint.proto, skipped
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")


def _tensor(message: bytes) -> tuple[list[int], str, bytes]:
    dims: list[int] = []
    dtype, content = "", b""
    for number, value in _fields(message):
        if number == 1:
            if isinstance(value, bytes):  # packed encoding
                pos = 0
                while pos < len(value):
                    dim, pos = _varint(value, pos)
                    dims.append(dim)
            else:
                dims.append(value)
        elif number == 2:
            dtype = value.decode()
        elif number == 3:
            content += value
    return dims, dtype, content


def read_mindspore_checkpoint(path: PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a MindSpore `.ckpt`, keyed as stored (a tensor saved in slices under one name is joined)."""
    path = Path(path)
    raw: dict[str, list] = {}
    try:
        data = path.read_bytes()
        if data[-17:-10] == CRC_MARKER:
            data, stored = data[:-17], int.from_bytes(data[-10:], "big")
            if zlib.crc32(data) != stored:
                raise MindSporeFormatError(f"{path}: the CRC-32 stored in the file does not match its contents "
                                           "(the file is damaged)")
        for number, value in _fields(data):
            if number != 1 or not isinstance(value, bytes):
                raise ValueError(f"unexpected top-level field {number}")
            name, tensor = None, None
            for inner, item in _fields(value):
                if inner == 1:
                    name = item.decode()
                elif inner == 2:
                    tensor = _tensor(item)
            if name is None or tensor is None:
                continue  # map tensors (embedding tables) have no plain tensor: not part of a GhostNet
            dims, dtype, content = tensor
            if name in raw:
                raw[name][2] += content
            else:
                raw[name] = [dims, dtype, content]
    except FileNotFoundError:
        raise MindSporeFormatError(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise MindSporeFormatError(f"{path}: not a readable MindSpore checkpoint ({exc})") from None
    if not raw:
        raise MindSporeFormatError(f"{path}: not a readable MindSpore checkpoint (no tensors)")
    out = {}
    for name, (dims, dtype, content) in raw.items():
        if dtype not in _DTYPES:
            raise MindSporeFormatError(f"{path}: {name} has tensor type {dtype!r}, which is not supported")
        tensor = torch.frombuffer(bytearray(content), dtype=_DTYPES[dtype]) if content else torch.empty(0)
        count = 1
        for d in dims:
            count *= d
        if tensor.numel() != count:
            raise MindSporeFormatError(f"{path}: {name} holds {tensor.numel()} values for shape {tuple(dims)}")
        out[name] = tensor.reshape(dims)
    return out


def mindspore_to_ghostnet(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a mindcv GhostNet state dict to our keys; optimizer and step counters are dropped."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if _TRAINING_STATE.search(key):
            continue
        key = re.sub(r"^(blocks\.\d+)\.features\.0\.", r"\1.0.conv.", key)
        key = re.sub(r"^(blocks\.\d+)\.features\.1\.", r"\1.0.bn1.", key)
        prefix, _, last = key.rpartition(".")
        if last in _BN_NAMES:
            key = f"{prefix}.{_BN_NAMES[last]}"
            if last == "moving_variance":
                out[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
        out[key] = value.float() if value.is_floating_point() else value
    return out
