"""Published weights: download (verified, atomic, cached), load into a model, and the ImageNet-1k class names.

`create_model(name, pretrained=True | tag)` calls `load_pretrained`. Files are cached in `$GHOSTNET_CACHE` or, by
default, torch.hub's checkpoint folder (`torch.hub.get_dir()/checkpoints`, i.e. `$TORCH_HOME/hub/checkpoints`). A
cached file is used without contacting the network; `GHOSTNET_OFFLINE=1` forbids downloads altogether.
"""
from __future__ import annotations

import functools
import hashlib
import http.client
import os
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .convert.checkpoints import CheckpointError, load_checkpoint, read_checkpoint
from .utils import atomic_write
from .weights import PretrainedWeights, get_weights

CACHE_ENV = "GHOSTNET_CACHE"
OFFLINE_ENV = "GHOSTNET_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


class WeightsUnavailableError(FileNotFoundError):
    """The weights file is not in the cache and cannot be downloaded (offline, or the server failed)."""


def cache_dir() -> Path:
    """Where downloaded weights are kept: $GHOSTNET_CACHE, else torch.hub's checkpoint folder."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(entry: PretrainedWeights) -> Path:
    """The path `entry` has (or will have) in the cache."""
    return cache_dir() / entry.file_name


def is_offline() -> bool:
    """True when $GHOSTNET_OFFLINE asks for no network access."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _place_by_hand(entry: PretrainedWeights, target: Path) -> str:
    return (f"download {entry.url} yourself and save it as {target} (or set ${CACHE_ENV} to the folder that "
            f"holds {entry.file_name}), or pass pretrained=PATH to create_model")


def fetch_weights(entry: PretrainedWeights, progress: bool = True,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[Path, bool]:
    """The local file of `entry`: (path, True if it was downloaded now); downloads and verifies it when not cached.

    The download goes to a temporary file beside the target and is renamed only after its length matches the
    server's Content-Length and its sha256 matches the table, so a cut or corrupt download never sits in the cache.
    """
    target = cached_file(entry)
    if target.is_file():
        return target, False
    if is_offline():
        raise WeightsUnavailableError(f"{entry.key}: not in the cache and ${OFFLINE_ENV} forbids downloading; "
                                      + _place_by_hand(entry, target))
    try:
        _download(entry, target, progress, timeout)
    except (OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, HTTP error: "not reachable"
        code = getattr(exc, "code", None)  # urllib.error.HTTPError
        reason = f"HTTP {code} {exc.reason}" if code else getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(f"{entry.key}: could not download {entry.url} ({reason}); to work offline, "
                                      + _place_by_hand(entry, target)) from None
    return target, True


def _download(entry: PretrainedWeights, target: Path, progress: bool, timeout: float) -> None:
    # Written by hand rather than torch.hub.download_url_to_file: that one cannot notice a connection closed early
    # when no hash is known, and leaves its error messages to RuntimeError.
    from tqdm import tqdm

    from . import __version__

    request = urllib.request.Request(entry.url, headers={"User-Agent": f"ghostnet-torch/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with atomic_write(target) as tmp, open(tmp, "wb") as out, tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.file_name,
                disable=not progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            if expected is not None and received != expected:
                raise CheckpointError(f"{entry.key}: download of {entry.url} was cut short ({received} of "
                                      f"{expected} bytes); nothing was cached, try again")
            if entry.sha256 and not digest.hexdigest().startswith(entry.sha256):
                raise CheckpointError(f"{entry.key}: checksum mismatch for {entry.url}: sha256 "
                                      f"{digest.hexdigest()} does not start with the published {entry.sha256}; "
                                      "the file was not cached")


def load_pretrained(model: nn.Module, name: str, tag: Optional[str] = None, progress: bool = True) -> nn.Module:
    """Load the published weights of `name` (those tagged `tag`, default: the model's default tag) into `model`.

    A model built with another `num_classes` gets the pretrained body and a freshly initialised classifier.
    """
    entry = get_weights(name, tag)
    wanted_classes = getattr(model, "num_classes", None)
    ckpt_classes = entry.data_config["num_classes"]
    swap_head = (wanted_classes is not None and wanted_classes != ckpt_classes and hasattr(model, "reset_classifier")
                 and not getattr(model, "features_only", False))
    path, fresh = fetch_weights(entry, progress=progress)
    if fresh:
        try:
            read_checkpoint(path)  # once per download: junk that had no length or checksum to catch it
        except CheckpointError as exc:
            path.unlink(missing_ok=True)
            raise CheckpointError(f"{entry.key}: the file downloaded from {entry.url} is not a readable checkpoint "
                                  f"and was removed from the cache ({exc})") from None
    if swap_head:
        model.reset_classifier(ckpt_classes)  # load the full checkpoint, then give the model its own head back
    try:
        load_checkpoint(model, path, use_ema=entry.use_ema)
    finally:
        if swap_head:
            model.reset_classifier(wanted_classes)
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    cfg.update({k: v for k, v in entry.data_config.items() if k != "num_classes"})
    cfg.update(tag=entry.tag, url=entry.url, license=entry.license)
    model.pretrained_cfg = cfg
    return model


@functools.lru_cache(maxsize=1)
def _imagenet_classes() -> tuple[str, ...]:
    text = resources.files("ghostnet").joinpath("assets/imagenet_classes.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line)


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the standard index order (index 0 "tench")."""
    return list(_imagenet_classes())


@functools.lru_cache(maxsize=1)
def _imagenet_synsets() -> tuple[str, ...]:
    text = resources.files("ghostnet").joinpath("assets/imagenet_synsets.txt").read_text(encoding="utf-8")
    return tuple(text.split())


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids in index order (sorted; index 0 "n01440764", tench), as folder names are."""
    return list(_imagenet_synsets())
