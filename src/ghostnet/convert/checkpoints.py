"""Read the checkpoints people actually have and load them into our models, with errors that say what is wrong.

Accepted: a bare state_dict or one wrapped under `state_dict`, `state_dict_ema`, `model`, `model_ema`, `ema`
(`use_ema` picks the EMA copy); `module.` (DDP) and `_orig_mod.` (torch.compile) prefixes; thop's
`total_ops`/`total_params` buffers; the official v3's `bn.` naming where timm (and we) use `bn1.`;
`.pth`, `.pth.tar`, `.pt`, `.ckpt` and `.safetensors`; PaddleClas's `.pdparams` (renamed by `convert.paddle`) and
MindSpore's `.ckpt` (mindcv; renamed by `convert.mindspore`). Files are read as data only (`weights_only=True`,
safetensors, an arrays-only unpickler for `.pdparams`, a protobuf reader for MindSpore).
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping, Optional

import torch
import torch.nn as nn

from ..errors import CheckpointError
from ..utils import PathLike, ensure_writable

RAW_KEYS = ("state_dict", "model", "module", "net", "weights")
EMA_KEYS = ("state_dict_ema", "model_ema", "ema", "ema_state_dict")
IGNORED_KEY_SUFFIXES = ("total_ops", "total_params")
MAX_LISTED_KEYS = 10


def looks_like_location(value: str) -> bool:
    """True for a URL or something that looks like a checkpoint path (not a weight tag)."""
    return "://" in value or os.sep in value or "/" in value or Path(value).suffix in (
        ".pth", ".pt", ".tar", ".bin", ".safetensors", ".ckpt", ".pdparams") or Path(value).exists()


def download_checkpoint(url: str, progress: bool = True) -> Path:
    """The local copy of a checkpoint URL, through the one downloader (its cache, `GHOSTNET_OFFLINE`)."""
    from ..download import download_to_cache

    return download_to_cache(url, progress=progress)[0]


def checkpoint_format(path: PathLike) -> str:
    """"safetensors", "pdparams" (PaddleClas), "mindspore" (a .ckpt that is not a torch file) or "torch"."""
    path = Path(path)
    if path.suffix in (".safetensors", ".pdparams"):
        return path.suffix[1:]
    if path.suffix == ".ckpt":
        from .mindspore import looks_like_mindspore

        return "mindspore" if looks_like_mindspore(path) else "torch"
    return "torch"


def read_checkpoint(path: PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Read a checkpoint file as data: (the stored object as a dict, safetensors metadata or {})."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    file_format = checkpoint_format(path)
    try:
        if file_format == "pdparams":
            from .paddle import read_pdparams

            return read_pdparams(path), {}
        if file_format == "mindspore":
            from .mindspore import read_mindspore_checkpoint

            return read_mindspore_checkpoint(path), {}
        if file_format == "safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                metadata = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as exc:  # torch/safetensors raise many types for a bad file; all mean the same to a user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {reason[:200]})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state_dict (a mapping of names to tensors), "
                              f"got {type(obj).__name__}")
    return dict(obj), {}


def extract_state_dict(obj: Mapping[str, Any], use_ema: bool = False, source: str = "checkpoint"
                       ) -> dict[str, torch.Tensor]:
    """Unwrap a training checkpoint to a flat state_dict and normalise foreign key names."""
    wrappers = EMA_KEYS if use_ema else RAW_KEYS
    state = None
    for key in wrappers:
        if isinstance(obj.get(key), Mapping):
            state = obj[key]
            break
    if state is None:
        if use_ema:
            raise CheckpointError(f"{source}: use_ema=True but there is no EMA copy (looked for {', '.join(EMA_KEYS)}; "
                                  f"top-level keys: {', '.join(list(obj)[:8])})")
        state = obj
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{source}: holds no tensors (top-level keys: {', '.join(list(obj)[:8])})")
    return {_strip_prefixes(k): v for k, v in tensors.items() if not k.endswith(IGNORED_KEY_SUFFIXES)}


def _strip_prefixes(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):
        while key.startswith(prefix):
            key = key[len(prefix):]
    return key.replace("._orig_mod.", ".")


_OFFICIAL_V3_BN = re.compile(r"\.bn\.")


def adapt_keys(state: dict[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename keys the official v3 code spells `...rpr_conv.N.bn.` where we (and timm) have `bn1.`."""
    out = {}
    for key, value in state.items():
        if key not in expected and (".ghost" in key or ".dw_rpr_" in key):
            renamed = _OFFICIAL_V3_BN.sub(".bn1.", key)
            if renamed in expected:
                key = renamed
        out[key] = value
    return out


def _listing(keys: list[str]) -> str:
    head = ", ".join(keys[:MAX_LISTED_KEYS])
    return head + (f", ... ({len(keys) - MAX_LISTED_KEYS} more)" if len(keys) > MAX_LISTED_KEYS else "")


def check_fit(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], source: str,
              ignore_missing: tuple[str, ...] = (), ignore_unexpected: tuple[str, ...] = ()) -> None:
    """Raise a CheckpointError listing missing keys, unexpected keys and shape mismatches."""
    missing = [k for k in expected if k not in state and not k.startswith(ignore_missing)]
    unexpected = [k for k in state if k not in expected and not k.startswith(ignore_unexpected)]
    mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatches ({len(mismatched)}): {_listing(mismatched)}")
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(parts))


def in_our_names(state: dict[str, torch.Tensor], path: PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """A PaddleClas or MindSpore state dict renamed to our (= timm's) keys, and a hint for error messages about
    where it came from; torch and safetensors files are returned as they are."""
    file_format = checkpoint_format(path)
    if file_format == "pdparams":
        from .paddle import paddle_models, paddle_to_ghostnet

        return paddle_to_ghostnet(state, source=str(path)), (
            f" (a PaddleClas GhostNet checkpoint: it fits {', '.join(paddle_models())}, whose SE blocks and head "
            "are PaddleClas's)")
    if file_format == "mindspore":
        from .mindspore import mindspore_to_ghostnet

        return mindspore_to_ghostnet(state), " (a MindSpore checkpoint, renamed from MindSpore's names)"
    return state, ""


def load_checkpoint(model: nn.Module, path_or_url: PathLike, use_ema: bool = False, strict: bool = True,
                    progress: bool = True) -> nn.Module:
    """Load a checkpoint file (or URL, downloaded into torch.hub's cache) into `model` and return it.

    With `strict=False`, keys the model lacks or has extra (e.g. another classifier size) are skipped instead of
    raising; shape mismatches of shared keys still raise. A `features_only` model ignores the checkpoint's head.
    """
    location = str(path_or_url)
    path = download_checkpoint(location, progress) if "://" in location else Path(location)
    obj, _ = read_checkpoint(path)
    state, hint = in_our_names(extract_state_dict(obj, use_ema=use_ema, source=str(path)), path)
    expected = model.state_dict()
    state = adapt_keys(state, expected)
    ignore_unexpected: tuple[str, ...] = ()
    if hasattr(model, "unbuilt_prefixes"):
        # A model that names the checkpoint keys it does not build (G-Ghost RegNet's features_only head and stages).
        ignore_unexpected = tuple(model.unbuilt_prefixes)
    elif getattr(model, "features_only", False):
        # The head, and the stages after the last requested tap, are not built in a features_only model.
        kept = len(getattr(model, "blocks", ()))
        head = ("conv_head.", "norm_head.", "classifier.")
        ignore_unexpected = head + tuple(f"blocks.{i}." for i in range(kept, 64))
    if strict:
        check_fit(state, expected, str(path) + hint, ignore_unexpected=ignore_unexpected)
    else:
        shared = {k for k in state if k in expected}
        check_fit({k: state[k] for k in shared}, {k: expected[k] for k in shared}, str(path) + hint)
    state = {k: v for k, v in state.items() if k in expected}
    model.load_state_dict(state, strict=strict)
    return model


def save_checkpoint(state: Mapping[str, torch.Tensor], path: PathLike,
                    metadata: Optional[Mapping[str, str]] = None) -> Path:
    """Write a state_dict atomically, as safetensors (with string metadata) or torch's format by suffix."""
    from ..utils import atomic_write

    path = Path(path)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    with atomic_write(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata=dict(metadata or {}))
        else:
            torch.save(tensors, tmp)
    return path


#: The files `convert_checkpoint` writes, by suffix.
CONVERTED_SUFFIXES = (".safetensors", ".pth", ".pt")


def convert_checkpoint(source: str, model_name: str, output: PathLike, use_ema: bool = False) -> nn.Module:
    """Load `source` (a checkpoint file or URL in any format we read, or a published weights tag of `model_name`)
    into the registered model and save its state_dict at `output` with our (= timm's) key names; returns the model.

    The output path is checked (suffix, writable) before anything is loaded or downloaded."""
    from ..models.registry import create_model

    output = Path(output)
    if output.suffix not in CONVERTED_SUFFIXES:
        raise ValueError(f"output must end in {', '.join(CONVERTED_SUFFIXES[:-1])} or {CONVERTED_SUFFIXES[-1]}, "
                         f"got {output.name!r}")
    ensure_writable(output, "output")
    if looks_like_location(source):
        model = load_checkpoint(create_model(model_name), source, use_ema=use_ema)
    elif use_ema:
        raise ValueError("use_ema applies to a checkpoint file; a weights tag already says which copy it is")
    else:
        model = create_model(model_name, pretrained=source)
    save_checkpoint(model.state_dict(), output, metadata={"model": model_name, "source": str(source), "format": "pt"})
    return model
