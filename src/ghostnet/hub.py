"""Published weights: fetch (through the one downloader, `ghostnet.download`), load into a model, and the
ImageNet-1k class names.

`create_model(name, pretrained=True | tag)` calls `load_pretrained` (this module registers it with the model
registry, which knows no downloads). Files are cached in `$GHOSTNET_CACHE` or torch.hub's checkpoint folder;
`GHOSTNET_OFFLINE=1` forbids downloads altogether (see `ghostnet.download`).
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path
from typing import Optional

import torch.nn as nn

from .convert.checkpoints import load_checkpoint, looks_like_location, read_checkpoint
from .download import DOWNLOAD_TIMEOUT_S, cache_dir, download_to_cache
from .errors import CheckpointError, WeightsUnavailableError
from .models.registry import set_pretrained_loader
from .weights import PretrainedWeights, get_weights

__all__ = ["cached_file", "fetch_weights", "imagenet_classes", "imagenet_synsets", "load_pretrained"]


def cached_file(entry: PretrainedWeights) -> Path:
    """The path `entry` has (or will have) in the cache."""
    return cache_dir() / entry.file_name


def fetch_weights(entry: PretrainedWeights, progress: bool = True,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> tuple[Path, bool]:
    """The local file of `entry`: (path, True if it was downloaded now); downloaded and verified when not cached."""
    try:
        return download_to_cache(entry.url, entry.file_name, entry.sha256, progress, timeout, what=entry.key)
    except WeightsUnavailableError as exc:
        raise WeightsUnavailableError(f"{exc}, or pass pretrained=PATH to create_model") from None


def load_weights(model: nn.Module, name: str, pretrained: object) -> nn.Module:
    """What `create_model(name, pretrained=...)` does after building: a checkpoint path or URL is loaded as it is;
    True or a weights tag loads the published weights."""
    if isinstance(pretrained, str) and looks_like_location(pretrained):
        load_checkpoint(model, pretrained)
        return model
    return load_pretrained(model, name, None if pretrained is True else str(pretrained))


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


set_pretrained_loader(load_weights)
# The Hub's timm layout ("hf-hub:ORG/NAME", "local-dir:PATH" names) registers its readers with the registry too.
from . import hub_format  # noqa: E402,F401
