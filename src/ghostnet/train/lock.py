"""One run per output folder: `OUT/.lock`, created with O_CREAT|O_EXCL before the run writes anything.

The file holds JSON: the holder's pid, host, start time and a random token. A second run on the folder (fresh or
resumed) is refused with the holder's pid and host. A lock left by a run that died without releasing it (killed,
power cut) is taken over when it names this host and a pid that is no longer running; a lock from another host is
never taken over, since its process cannot be checked from here (the message says how to remove it). The lock is
released (the file removed) when the run ends: normally, on an error, on Ctrl-C. Under torchrun only rank 0 takes it,
and the other ranks wait for its answer, so no rank goes on while another was refused.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..utils import PathLike, print_error
from .distributed import DistInfo, all_gather_objects

LOCK_NAME = ".lock"


class RunLockedError(ValueError):
    """The output folder is in use by another run (the message names its pid and host)."""


@dataclass
class RunLock:
    """A held lock: the file and the token that proves it is still ours."""

    path: Path
    token: str
    created_folder: bool = False  # the folder was made for this lock (removed on release if left empty)

    def release(self) -> None:
        """Remove the lock file, if it is still ours (a lock taken over from us is left to its new holder)."""
        holder = read_holder(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        if self.created_folder:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only when empty: a run refused before writing leaves nothing behind


def acquire_run_lock(folder: PathLike, log: Callable[[str], None] = print_error) -> RunLock:
    """Take `folder`'s lock (making the folder if needed); RunLockedError if another live run holds it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    token = uuid.uuid4().hex
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "token": token}
    for _ in range(3):  # a take-over that loses a race to another starting run tries again, and then is refused
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = read_holder(path)
            if holder is None or not _is_stale(holder):
                raise RunLockedError(_held_message(path, holder)) from None
            if _take_over(path, holder):
                log(f"taking over {path}: its run ({_who(holder)}) is no longer running")
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(record))
        return RunLock(path, token, created)
    raise RunLockedError(_held_message(path, read_holder(path)))


def read_holder(path: Path) -> Optional[dict[str, Any]]:
    """The lock's JSON record, or None when it is missing, empty (being written) or unreadable."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (os.kill with signal 0 checks without signalling)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _is_stale(holder: dict[str, Any]) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


def _take_over(path: Path, holder: dict[str, Any]) -> bool:
    """Move the stale lock aside and check it is the one judged stale; put back a live one moved by mistake (another
    run took the lock between our read and the move). True when the stale lock is gone."""
    aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False  # another starting run moved it first; the next try sees its lock, or none
    if read_holder(aside) != holder:
        with contextlib.suppress(OSError):
            os.link(aside, path)  # fails if yet another run holds the lock now: that one stays the holder
        aside.unlink(missing_ok=True)
        return False
    aside.unlink(missing_ok=True)
    return True


def _who(holder: Optional[dict[str, Any]]) -> str:
    if holder is None:
        return "an unknown process"
    return f"pid {holder.get('pid')} on host {holder.get('host')}, started {holder.get('started')}"


def _held_message(path: Path, holder: Optional[dict[str, Any]]) -> str:
    folder = path.parent
    if holder is None:
        return (f"{folder} is in use: {path} exists but names no run (one starting right now?); if no run uses the "
                f"folder, remove {path}")
    here = holder.get("host") == socket.gethostname()
    how = (f"wait for it, stop it, or use another --output (if pid {holder.get('pid')} is not a ghostnet run, "
           f"remove {path})") if here else \
        (f"it cannot be checked from {socket.gethostname()}: if that run is no longer running, remove {path}")
    return f"{folder} is in use by another run ({_who(holder)}): {how}"


@contextlib.contextmanager
def hold_run_lock(folder: PathLike, dist: DistInfo, log: Callable[[str], None] = print_error
                  ) -> Iterator[Optional[RunLock]]:
    """Hold `folder`'s lock for the block: rank 0 takes it, every rank learns whether it got it (a refused run stops
    on every rank at once), rank 0 releases it at the end, on an error and on Ctrl-C."""
    lock, error, refused = None, None, None
    if dist.is_main:
        try:
            lock = acquire_run_lock(folder, log)
        except (ValueError, OSError) as exc:  # an unwritable folder too: the other ranks must not wait for rank 0
            error, refused = exc, str(exc)
    if dist.distributed:
        refused = all_gather_objects(refused)[0]
    if error is not None:
        raise error
    if refused is not None:
        raise RunLockedError(refused)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
