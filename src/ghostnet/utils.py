"""Small utilities used across the package: atomic, umask-respecting file writes and early writability checks."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Union

from .errors import OutputError

PathLike = Union[str, os.PathLike]


def print_error(line: str) -> None:
    """`line` on stderr in one write. print() writes the text and its newline separately, and Python's stderr
    passes each write straight through, so two processes sharing stderr (torchrun's ranks, each reporting the same
    stop) could run their lines together."""
    sys.stderr.write(line + "\n")


def current_umask() -> int:
    """The process's umask (os.umask can only be read by setting it, so it is set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def ensure_writable(path: PathLike, what: str = "output") -> Path:
    """Check, before any long work, that the file `path` can be created (its folder is made if missing).

    `what` names the setting in the message (e.g. "--json"). Raises OutputError naming the path and the reason.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path}: is a folder, not a file name")
    check_folder_writable(path.parent, what, shown=path)
    return path


def check_folder_writable(folder: PathLike, what: str = "output", shown: PathLike | None = None) -> Path:
    """Make `folder` (with parents) and check a file can be created in it; OutputError otherwise."""
    folder = Path(folder)
    shown = folder if shown is None else shown
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise OutputError(f"{what} {shown}: cannot write there ({existing} is a file, not a folder)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".ghostnet-write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} {shown}: cannot write in {folder} ({_reason(exc)})") from None
    return folder


@contextlib.contextmanager
def atomic_write(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed.

    A reader never sees a half-written file, and a killed writer leaves the old file intact. The file gets the
    mode a plain `open(path, "w")` would (0o666 less the umask: 0644 under umask 022), not mkstemp's private 0600,
    so a checkpoint saved to a shared folder can be read by teammates and serving processes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
    tmp = Path(tmp_name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise  # the caller's own error (a failed download, a bad model), not a write error: passed on as it is
    try:
        # Set after the writer is done: some writers (safetensors) replace the file and its mode with their own.
        os.chmod(tmp, 0o666 & ~current_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None
