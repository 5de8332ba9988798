"""PaddleClas GhostNet checkpoints (`.pdparams`): read them as data and rename them to our keys.

PaddleClas publishes GhostNet at 0.5x, 1.0x and 1.3x (and a distilled 1.3x), the only public weights at 0.5x and
1.3x. Its network is the official one except for three details its weights depend on (the `*_paddle` models build
them: see `ghostnet.models.zoo`): the SE gate clips to [0, 1], the SE reduction is `channels // 4`, and the head's
1x1 conv has a batch norm instead of a bias.

A `.pdparams` file is a pickle (what `paddle.save` writes): a dict of numpy arrays keyed by PaddleClas's structured
names (`_ghostbottleneck_3.ghost_module_1.primary_conv._conv.weight`), plus a `StructuredToParameterName@@` table.
It is read with an unpickler that builds numpy arrays, dicts and nothing else, so a file cannot run code. Files
keyed by parameter names (`_ghostbottleneck_3_ghost_module_1_primary_conv_weights`) are accepted too.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ..models.ghostnet import GHOSTNET_STAGES
from ..errors import CheckpointError
from ..utils import PathLike

NAME_TABLE_KEY = "StructuredToParameterName@@"
# What numpy arrays and Paddle's dicts pickle to (numpy >= 2 spells its core module numpy._core).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 (Paddle 2.0's files) pickles bytes as _codecs.encode(str, "latin1")
}


class PaddleFormatError(CheckpointError):
    """A file that is not a PaddleClas GhostNet `.pdparams` state dict."""


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a .pdparams file holds only arrays")


def read_pdparams(path: PathLike) -> dict[str, torch.Tensor]:
    """The arrays of a `.pdparams` file as float tensors, keyed as stored (the name table is dropped)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f).load()
    except FileNotFoundError:
        raise PaddleFormatError(f"{path}: no such file") from None
    except Exception as exc:  # pickle raises many types for a bad or hostile file; all mean the same to a user
        raise PaddleFormatError(f"{path}: not a readable .pdparams file ({type(exc).__name__}: "
                                f"{str(exc)[:200]})") from None
    if not isinstance(obj, Mapping):
        raise PaddleFormatError(f"{path}: expected a dict of arrays, got {type(obj).__name__}")
    arrays = {k: v for k, v in obj.items() if k != NAME_TABLE_KEY}
    bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise PaddleFormatError(f"{path}: entries that are not arrays: {', '.join(map(str, bad[:5]))}")
    return {k: torch.from_numpy(np.array(v, copy=True)) for k, v in arrays.items()}


def _conv_bn(conv: str, bn: str, structured: str, param: str) -> list[tuple[str, str, str]]:
    """(our key, PaddleClas structured key, PaddleClas parameter name) of a ConvBNLayer (our conv and BN)."""
    return [(f"{conv}.weight", f"{structured}._conv.weight", f"{param}_weights"),
            (f"{bn}.weight", f"{structured}._batch_norm.weight", f"{param}_bn_scale"),
            (f"{bn}.bias", f"{structured}._batch_norm.bias", f"{param}_bn_offset"),
            (f"{bn}.running_mean", f"{structured}._batch_norm._mean", f"{param}_bn_mean"),
            (f"{bn}.running_var", f"{structured}._batch_norm._variance", f"{param}_bn_variance")]


def _linear(ours: str, structured: str, param: str) -> list[tuple[str, str, str]]:
    return [(f"{ours}.weight", f"{structured}.weight", f"{param}_weights"),
            (f"{ours}.bias", f"{structured}.bias", f"{param}_offset")]


def key_table() -> list[tuple[str, str, str]]:
    """Every key of PaddleClas's GhostNet: (our key, structured name, parameter name), in PaddleClas's order.

    Blocks that a model lacks (no strided depthwise conv, no SE, an identity shortcut) simply have no keys in the
    file; the table lists every possible one.
    """
    rows = _conv_bn("conv_stem", "bn1", "conv1", "conv1")
    flat = [(stage, j) for stage, cfgs in enumerate(GHOSTNET_STAGES) for j in range(len(cfgs))]
    for i, (stage, j) in enumerate(flat):
        ours, pd = f"blocks.{stage}.{j}", f"_ghostbottleneck_{i}"
        for g in (1, 2):
            for part in ("primary_conv", "cheap_operation"):
                seq = f"{ours}.ghost{g}.{part}"  # Sequential(conv, BN, act)
                rows += _conv_bn(f"{seq}.0", f"{seq}.1", f"{pd}.ghost_module_{g}.{part}",
                                 f"{pd}_ghost_module_{g}_{part}")
        rows += _conv_bn(f"{ours}.conv_dw", f"{ours}.bn_dw", f"{pd}.depthwise_conv", f"{pd}_depthwise_depthwise")
        rows += _linear(f"{ours}.se.conv_reduce", f"{pd}.se_block.squeeze", f"{pd}_se_1")
        rows += _linear(f"{ours}.se.conv_expand", f"{pd}.se_block.excitation", f"{pd}_se_2")
        rows += _conv_bn(f"{ours}.shortcut.0", f"{ours}.shortcut.1", f"{pd}.shortcut_depthwise",
                         f"{pd}_shortcut_depthwise_depthwise")
        rows += _conv_bn(f"{ours}.shortcut.2", f"{ours}.shortcut.3", f"{pd}.shortcut_conv", f"{pd}_shortcut_conv")
    last = len(GHOSTNET_STAGES)
    rows += _conv_bn(f"blocks.{last}.0.conv", f"blocks.{last}.0.bn1", "conv_last", "conv_last")
    rows += _conv_bn("conv_head", "norm_head", "fc_0", "fc_0")
    rows += _linear("classifier", "fc_1", "fc_1")
    return rows


def paddle_models() -> list[str]:
    """The registered models in PaddleClas's form (the ones its checkpoints fit)."""
    from ..models.registry import list_models

    return list_models("*_paddle")


def paddle_to_ghostnet(state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Rename a PaddleClas GhostNet state dict to our keys and layouts.

    Paddle's Linear stores its weight as (in, out): transposed here for the classifier, and reshaped to a 1x1
    conv for the SE layers (ours are convs, as in the official code). Batch norms get `num_batches_tracked` = 0.
    Keys that match no GhostNet parameter are an error (the file is some other network).
    """
    out: dict[str, torch.Tensor] = {}
    used = set()
    for ours, structured, param in key_table():
        key = structured if structured in state else param if param in state else None
        if key is None:
            continue
        value = state[key].float()
        used.add(key)
        if ours.startswith("classifier."):
            value = value.t() if value.ndim == 2 else value
        elif ".se.conv_" in ours and ours.endswith(".weight"):
            value = value.t()[:, :, None, None]
        out[ours] = value.contiguous()
        if ours.endswith(".running_var"):
            out[ours[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(0)
    unknown = [k for k in state if k not in used]
    if unknown:
        raise PaddleFormatError(f"{source}: keys that are not PaddleClas GhostNet parameters ({len(unknown)}): "
                                f"{', '.join(unknown[:10])}")
    return out
