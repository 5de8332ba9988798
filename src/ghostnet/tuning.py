"""The cache of choices made by measuring (the export form and runtime, the training layout), one JSON file per kind.

A choice holds on the machine and software it was measured with, so callers key it by the CPU model, the versions
of what ran and the workload (model, threads, sizes); a key that changes simply misses. The file lives in
`$GHOSTNET_TUNING_CACHE` or `$XDG_CACHE_HOME/ghostnet` (default ~/.cache/ghostnet) and is written atomically. A
cache that cannot be read or written is only a missed speed-up: it is reported as a warning, never an error.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional

from .utils import atomic_write

CACHE_ENV = "GHOSTNET_TUNING_CACHE"

__all__ = ["CACHE_ENV", "cache_key", "load_choice", "store_choice", "tuning_cache_dir"]


def tuning_cache_dir() -> Path:
    """Where measured choices are cached."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ghostnet"


def cache_key(fields: Mapping[str, Any]) -> str:
    """A stable text key of the fields a choice depends on."""
    return json.dumps(dict(fields), sort_keys=True, default=str)


def _path(kind: str) -> Path:
    return tuning_cache_dir() / f"{kind}.json"


def _entries(kind: str) -> dict[str, Any]:
    path = _path(kind)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        warnings.warn(f"ignoring the tuning cache {path}: {exc}", stacklevel=3)
        return {}
    return data if isinstance(data, dict) else {}


def load_choice(kind: str, key: str) -> Optional[Any]:
    """The cached choice of `kind` ("export", "train-layout") for `key`, or None."""
    return _entries(kind).get(key)


def store_choice(kind: str, key: str, choice: Any) -> None:
    """Cache `choice` (plain JSON data) for `key`, keeping every other entry."""
    entries = _entries(kind)
    entries[key] = choice
    try:
        with atomic_write(_path(kind)) as tmp:
            tmp.write_text(json.dumps(entries, indent=1, sort_keys=True))
    except OSError as exc:
        warnings.warn(f"could not write the tuning cache {_path(kind)}: {exc}", stacklevel=2)
