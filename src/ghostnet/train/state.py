"""What a run writes: its training state (`last.pt`, `best.pt`: exactly resumable) and weight exports (safetensors
with the model's config). (The readers and writers of weight files of every format are in convert/checkpoints.py.)

A training checkpoint (`last.pt`, `best.pt`) is a dict of tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: model and EMA weights, optimizer and grad-scaler state, the position in training
(epoch, step within it, global step), the running sums of the current epoch, RNG states of every process, and the
config. The learning rate is a function of the global step, so no scheduler state is needed.

An export (`*.safetensors`) holds one set of weights and, in its metadata, the model name and keyword arguments,
class names and data config (JSON strings): `load_trained(path)` rebuilds the model from the file alone, and
`ghostnet.create_model(name, pretrained=path)` loads it into a model built by hand.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np
import torch
import torch.nn as nn

from ..convert.checkpoints import extract_state_dict, read_checkpoint, save_checkpoint
from ..errors import CheckpointError
from ..utils import PathLike, atomic_write

FORMAT_VERSION = 1
META_PREFIX = "ghostnet."


# ----------------------------------------------------------------------------------------------- RNG states
def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy) as tensors and plain values."""
    np_state = np.random.get_state(legacy=True)
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------- training state
@dataclass
class Progress:
    """Where a run is: the next epoch/step to run, and the best result so far."""

    epoch: int = 0            # the epoch in progress (0-based)
    step_in_epoch: int = 0    # optimizer steps already taken in that epoch
    global_step: int = 0      # optimizer steps taken in total
    best_top1: float = -1.0
    best_epoch: int = -1
    skipped_steps: int = 0    # steps left unapplied because their loss or gradient norm was NaN/inf
    reference_loss: float = 0.0  # what the loss-growth warning compares with (0: not set yet; see guard.py)
    loss_warned: bool = False  # the loss-growth warning was given (once per run)


def save_training_state(path: PathLike, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                        progress: Progress, config: Mapping[str, Any], model_info: Mapping[str, Any],
                        ranks: list[dict[str, Any]], history: list[dict[str, Any]], ema: Optional[nn.Module] = None,
                        scaler: Optional[torch.amp.GradScaler] = None,
                        layout: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a resumable checkpoint atomically.

    `ranks` holds each process's RNG state and running sums (in rank order); `history` the metrics rows so far;
    `layout` the run's training layout and how it was chosen (a resumed run keeps it).
    """
    state = {
        "format": FORMAT_VERSION,
        "model": _cpu_state(model.state_dict()),
        "ema": _cpu_state(ema.module.state_dict()) if ema is not None else None,
        "ema_n_averaged": ema.n_averaged.cpu() if ema is not None else None,
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "progress": vars(progress).copy(),
        "config": dict(config),
        "model_info": dict(model_info),
        "ranks": list(ranks),
        "history": list(history),
        "layout": dict(layout) if layout is not None else None,
    }
    path = Path(path)
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    return path


def _cpu_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def read_training_state(path: PathLike) -> dict[str, Any]:
    """Read a checkpoint written by `save_training_state` (as data: weights_only=True)."""
    obj, _ = read_checkpoint(path)
    if obj.get("format") != FORMAT_VERSION or "progress" not in obj:
        raise CheckpointError(f"{path}: not a ghostnet training checkpoint (no progress/optimizer state); only "
                              "files written by `ghostnet train` (last.pt, best.pt) can be resumed")
    return obj


# ----------------------------------------------------------------------------------------------- exports
def model_info(model_name: str, model_kwargs: Mapping[str, Any], classes: list[str],
               data_config: Mapping[str, Any]) -> dict[str, Any]:
    """What is needed to rebuild a trained model and feed it: name, kwargs, class names, data config."""
    return {"model": model_name, "model_kwargs": dict(model_kwargs), "classes": list(classes),
            "data_config": dict(data_config)}


def export_weights(state: Mapping[str, torch.Tensor], path: PathLike, info: Mapping[str, Any],
                   extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write weights as safetensors with the model's config (`info`) and `extra` values as JSON metadata."""
    metadata = {META_PREFIX + k: json.dumps(v) for k, v in {**info, **(extra or {})}.items()}
    metadata["format"] = "pt"
    return save_checkpoint(dict(state), path, metadata)


def export_checkpoint(checkpoint: PathLike, path: PathLike, use_ema: bool = False) -> Path:
    """Export the raw (or EMA) weights of a training checkpoint as safetensors with its model config."""
    obj = read_training_state(checkpoint)
    state = extract_state_dict(obj, use_ema=use_ema, source=str(checkpoint))
    progress = obj["progress"]
    return export_weights(state, path, obj["model_info"], {"ema": use_ema, "epoch": progress["epoch"]})


@dataclass
class TrainedModel:
    """A model rebuilt from a checkpoint or export, with what is needed to feed it and name its outputs."""

    model: nn.Module
    classes: list[str]
    data_config: dict[str, Any]
    info: dict[str, Any]


def read_model_info(path: PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """(checkpoint object, model info) of a training checkpoint or a safetensors export."""
    obj, metadata = read_checkpoint(path)
    if metadata:
        info = {k[len(META_PREFIX):]: json.loads(v) for k, v in metadata.items() if k.startswith(META_PREFIX)}
    else:
        info = dict(obj.get("model_info") or {})
    if "model" not in info or not isinstance(info["model"], str):
        raise CheckpointError(f"{path}: no model name stored (not written by ghostnet train / export_weights); build "
                              "the model yourself and use ghostnet.load_checkpoint")
    return obj, info


def load_trained(path: PathLike, use_ema: bool = False) -> TrainedModel:
    """Rebuild a trained model (in eval mode) from a training checkpoint or safetensors export, name and all."""
    from ..convert.checkpoints import adapt_keys, check_fit
    from ..models.spec import create_from_spec as create

    obj, info = read_model_info(path)
    model = create(info["model"], **info.get("model_kwargs", {}))
    state = adapt_keys(extract_state_dict(obj, use_ema=use_ema, source=str(path)), model.state_dict())
    check_fit(state, model.state_dict(), str(path))
    model.load_state_dict(state)
    model.eval()
    classes = list(info.get("classes") or [])
    return TrainedModel(model, classes, dict(info.get("data_config") or {}), info)
