"""The one downloader: every file fetched from a URL (published weights, a checkpoint URL given by the user) goes
through `download_to_cache`, with one cache, one offline switch and the same checks.

Files are cached in `$GHOSTNET_CACHE` or, by default, torch.hub's checkpoint folder (`torch.hub.get_dir()/checkpoints`,
i.e. `$TORCH_HOME/hub/checkpoints`). A cached file is used without contacting the network; `GHOSTNET_OFFLINE=1`
forbids downloads altogether. A download goes to a temporary file beside the target and is renamed only after its
length matches the server's Content-Length and its sha256 (when one is known) matches, so a cut or corrupt download
never sits in the cache.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import urllib.request
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from ._version import __version__
from .errors import CheckpointError, OutputError, WeightsUnavailableError
from .utils import atomic_write

CACHE_ENV = "GHOSTNET_CACHE"
OFFLINE_ENV = "GHOSTNET_OFFLINE"
DOWNLOAD_TIMEOUT_S = 60.0
CHUNK_BYTES = 1 << 20


def cache_dir() -> Path:
    """Where downloaded files are kept: $GHOSTNET_CACHE, else torch.hub's checkpoint folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline() -> bool:
    """True when $GHOSTNET_OFFLINE asks for no network access."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def file_name_of(url: str) -> str:
    """The cache name of a URL's file: the last part of its path."""
    name = os.path.basename(urlparse(url).path)
    if not name or name.startswith("."):
        raise ValueError(f"{url}: cannot tell the file name from the URL")
    return name


def place_by_hand(url: str, target: Path) -> str:
    """How to put a file into the cache without this downloader."""
    return (f"download {url} yourself and save it as {target} (or set ${CACHE_ENV} to the folder that holds "
            f"{target.name})")


def download_to_cache(url: str, file_name: Optional[str] = None, sha256: Optional[str] = None,
                      progress: bool = True, timeout: float = DOWNLOAD_TIMEOUT_S,
                      what: Optional[str] = None) -> tuple[Path, bool]:
    """The cached file of `url`: (path, True if it was downloaded now).

    `sha256` is a full hex digest or a prefix of one; `what` names the file in messages (default: the URL).
    Raises WeightsUnavailableError when the file is not cached and cannot be downloaded, CheckpointError when a
    download is cut short or its checksum is wrong (nothing is cached then).
    """
    what = what or url
    target = cache_dir() / (file_name or file_name_of(url))
    if target.is_file():
        return target, False
    if is_offline():
        raise WeightsUnavailableError(f"{what}: not in the cache and ${OFFLINE_ENV} forbids downloading; "
                                      + place_by_hand(url, target))
    try:
        _download(url, target, sha256, progress, timeout, what)
    except (OSError, http.client.HTTPException) as exc:  # refused, DNS, timeout, HTTP error: "not reachable"
        if isinstance(exc, OutputError):
            raise  # the cache folder is not writable: not a network failure
        code = getattr(exc, "code", None)  # urllib.error.HTTPError
        reason = f"HTTP {code} {exc.reason}" if code else getattr(exc, "reason", None) or exc
        raise WeightsUnavailableError(f"{what}: could not download {url} ({reason}); to work offline, "
                                      + place_by_hand(url, target)) from None
    return target, True


def _download(url: str, target: Path, sha256: Optional[str], progress: bool, timeout: float, what: str) -> None:
    # Written by hand rather than torch.hub.download_url_to_file: that one cannot notice a connection closed early
    # when no hash is known, and leaves its error messages to RuntimeError.
    from tqdm import tqdm

    request = urllib.request.Request(url, headers={"User-Agent": f"ghostnet-torch/{__version__}"})
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        with atomic_write(target) as tmp, open(tmp, "wb") as out, tqdm(
                total=expected, unit="B", unit_scale=True, unit_divisor=1024, desc=target.name,
                disable=not progress) as bar:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            out.flush()
            if expected is not None and received != expected:
                raise CheckpointError(f"{what}: download of {url} was cut short ({received} of {expected} bytes); "
                                      "nothing was cached, try again")
            if sha256 and not digest.hexdigest().startswith(sha256):
                raise CheckpointError(f"{what}: checksum mismatch for {url}: sha256 {digest.hexdigest()} does not "
                                      f"start with the published {sha256}; the file was not cached")
