"""One run per output folder: OUT/.lock is taken before the run writes, refuses a second run naming the holder, is
taken over when its process is gone, never when it is on another host, and is released however the run ends."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from ghostnet.cli import main
from ghostnet.train import make_config, train
from ghostnet.train.distributed import DistInfo
from ghostnet.train.lock import LOCK_NAME, RunLockedError, _take_over, acquire_run_lock, hold_run_lock, read_holder
from support.training import tiny_config, write_npz_data

pytestmark = pytest.mark.usefixtures("one_thread")

HOLD = """
import sys
from ghostnet.train.lock import acquire_run_lock
lock = acquire_run_lock(sys.argv[1])
print("held", flush=True)
if sys.argv[2] == "release":
    sys.stdin.read()  # hold until the test closes our stdin
    lock.release()
# "die": exit without releasing, as a killed run would
"""
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_npz_data(tmp_path_factory.mktemp("npz"))


def cli_args(data, out) -> list[str]:
    return ["train", "--data", str(data), "--model", "ghostnet_050", "--model-kwargs", "{stem_stride: 1}", "--preset",
            "cifar", "--img-size", "16", "--epochs", "1", "--batch-size", "20", "--workers", "0", "--no-progress",
            "--no-plots", "--output", str(out)]


def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(data, tmp_path, capsys):
    out = tmp_path / "run"
    lock = acquire_run_lock(out)
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["started"]
    assert main(cli_args(data, out)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"is in use by another run (pid {os.getpid()} on host {socket.gethostname()}" in err
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused run wrote nothing
    with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
        train(make_config(tiny_config(data, out, epochs=1)))
    lock.release()
    assert not (out / LOCK_NAME).exists()
    assert main(cli_args(data, out)) == 0
    assert not (out / LOCK_NAME).exists()  # released at the end of the run


@pytest.mark.slow
def test_two_concurrent_processes_one_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out), "release"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"  # the other process holds the lock from here on
        assert main(cli_args(data, out)) == 2
        err = capsys.readouterr().err
        assert f"in use by another run (pid {holder.pid} on host {socket.gethostname()}" in err
        assert main(["train", "--resume", "--output", str(out)]) == 2  # resuming is no way around it
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0 and not (out / LOCK_NAME).exists()
    assert main(cli_args(data, out)) == 0


@pytest.mark.slow
def test_a_stale_lock_of_a_dead_process_is_taken_over(data, tmp_path, capsys):
    out = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", HOLD, str(out), "die"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    assert dead.stdout.strip() == "held"
    pid = json.loads((out / LOCK_NAME).read_text())["pid"]
    assert main(cli_args(data, out)) == 0
    err = capsys.readouterr().err
    assert f"taking over {out / LOCK_NAME}: its run (pid {pid} on host {socket.gethostname()}" in err
    assert "is no longer running" in err
    assert not (out / LOCK_NAME).exists() and (out / "last.pt").is_file()


def test_a_lock_from_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    gone = 2 ** 22 + 1  # above Linux's largest pid: no such process here, which says nothing of the other host
    (out / LOCK_NAME).write_text(json.dumps({"pid": gone, "host": "another-host", "started": "then", "token": "x"}))
    with pytest.raises(RunLockedError, match=f"pid {gone} on host another-host.*if that run is no longer running, "
                                             f"remove {out / LOCK_NAME}"):
        acquire_run_lock(out)
    (out / LOCK_NAME).write_text("")  # a lock being written, or garbled: not taken over either
    with pytest.raises(RunLockedError, match="names no run"):
        acquire_run_lock(out)
    assert (out / LOCK_NAME).read_text() == ""


def test_a_take_over_that_lost_a_race_puts_the_live_lock_back(tmp_path):
    path = tmp_path / LOCK_NAME
    stale = {"pid": 2 ** 22 + 1, "host": socket.gethostname(), "started": "then", "token": "old"}
    live = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now", "token": "new"}
    path.write_text(json.dumps(live))  # another run took the lock after we read the stale one
    assert not _take_over(path, stale)
    assert read_holder(path) == live and [p.name for p in tmp_path.iterdir()] == [LOCK_NAME]
    path.write_text(json.dumps(stale))
    assert _take_over(path, stale) and not any(tmp_path.iterdir())


def test_the_lock_is_released_after_an_error_and_a_refused_setting(data, tmp_path):
    class Killed(Exception):
        pass

    def kill(progress):
        raise Killed

    out = tmp_path / "run"
    with pytest.raises(Killed):
        train(make_config(tiny_config(data, out, epochs=1)), on_step=kill)
    assert (out / "config.yaml").is_file() and not (out / LOCK_NAME).exists()
    with pytest.raises(ValueError, match="larger than the training set"):
        train(make_config(tiny_config(data, tmp_path / "new", batch_size=64)))
    assert not (tmp_path / "new").exists()  # the folder made for the lock is removed with it when left empty


def test_only_rank_0_takes_the_lock(tmp_path):
    with hold_run_lock(tmp_path / "a", DistInfo(rank=1, world_size=1)) as lock:
        assert lock is None and not (tmp_path / "a").exists()
    with hold_run_lock(tmp_path / "b", DistInfo()) as lock:
        assert lock is not None and (tmp_path / "b" / LOCK_NAME).is_file()
    assert not (tmp_path / "b" / LOCK_NAME).exists()


@pytest.mark.slow
def test_under_torchrun_a_refused_run_stops_on_every_rank(data, tmp_path):
    out = tmp_path / "run"
    lock = acquire_run_lock(out)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ghostnet",
               *cli_args(data, out)[:-2], "--batch-size", "8", "--output", str(out)]
    try:
        done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=240)  # no rank left waiting
        assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # the refused ranks wrote nothing
    finally:
        lock.release()
    refusals = [line for line in done.stderr.splitlines() if f"in use by another run (pid {os.getpid()}" in line]
    # Every rank gets rank 0's answer, but torchrun ends the others as soon as one rank fails, so whether the second
    # one's line is printed first is a race: at least one, and the run ended (within the timeout) without writing.
    assert done.returncode != 0 and 1 <= len(refusals) <= 2, done.stderr[-3000:]
