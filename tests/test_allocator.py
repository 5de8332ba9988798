"""The allocator setting the trainer makes (ghostnet.allocator): on glibc it stops the page faults that a training
step's free-then-allocate pattern costs, once per process; elsewhere, or opted out, it changes nothing."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from ghostnet import allocator

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A step's pattern: maps of 4-16 MB kept through the forward, each freed in the backward while a gradient of
# another size takes its place; the page faults of ten such steps after two to warm up.
_STEPS = textwrap.dedent("""
    import resource, sys, torch
    from ghostnet.allocator import tune_allocator
    print(tune_allocator()["applied"])
    def steps(n):
        for _ in range(n):
            saved = [torch.empty(s).fill_(1) for s in [1 << 20, 2 << 20, 1 << 20, 4 << 20] * 6]
            while saved:
                grad = torch.empty(saved.pop().numel() // 2 + 4096).fill_(1)
                del grad
    steps(2)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps(10)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults(tuning: str) -> tuple[str, int]:
    env = dict(os.environ, **{allocator.ENV: tuning})
    out = subprocess.run([sys.executable, "-c", _STEPS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_tuned_steps_take_no_fresh_pages():
    applied, tuned = _faults("1")
    not_applied, plain = _faults("0")
    assert (applied, not_applied) == ("True", "False")
    # 24 maps of 4-16 MB a step: glibc's defaults hand most of them back and fault them in again every step.
    assert plain > 20_000 and tuned < plain / 20, (tuned, plain)


class _FakeLibc:
    def __init__(self, accept=True):
        self.calls, self.accept = [], accept

    @property
    def mallopt(self):
        def call(param, value):
            self.calls.append((param, value))
            return int(self.accept)
        return call


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator.platform, "system", lambda: "Linux")
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv(allocator.ENV, raising=False)
    libc = _FakeLibc()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    return libc


def test_applied_once_per_process(fresh):
    first = allocator.tune_allocator()
    assert first["applied"] and first["mmap_threshold"] == allocator.MMAP_THRESHOLD
    assert allocator.tune_allocator() == first
    assert fresh.calls == [(-3, allocator.MMAP_THRESHOLD), (-1, allocator.TRIM_THRESHOLD)]


@pytest.mark.parametrize("case", ["opted out", "not glibc", "refused"])
def test_nothing_changes_where_it_does_not_apply(fresh, monkeypatch, case):
    if case == "opted out":
        monkeypatch.setenv(allocator.ENV, "0")
    elif case == "not glibc":
        monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    else:
        fresh.accept = False
    result = allocator.tune_allocator()
    assert not result["applied"] and "mmap_threshold" not in result
    assert {"opted out": "GHOSTNET_MALLOC_TUNING=0", "not glibc": "not glibc",
            "refused": "mallopt refused the thresholds"}[case] == result["reason"]
    if case != "refused":
        assert fresh.calls == []
