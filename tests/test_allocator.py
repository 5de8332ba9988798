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

# A step's pattern: maps kept through the forward, each freed in the backward while a gradient of another size
# takes its place; the page faults of ten such steps after two to warm up. Maps over 32 MB, which glibc's defaults
# always map afresh (below that, its adaptive threshold keeps some of them, depending on the heap's layout).
_STEPS = textwrap.dedent("""
    import resource, sys, torch
    from ghostnet.allocator import tune_allocator
    print(tune_allocator()["applied"])
    def steps(n):
        for _ in range(n):
            saved = [torch.empty(s).fill_(1) for s in [10 << 20, 12 << 20] * 2]
            while saved:
                grad = torch.empty(saved.pop().numel() - (1 << 20)).fill_(1)
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
    # 4 maps and 4 gradients of 36-48 MB a step: glibc's defaults map each afresh, 83 thousand pages a step.
    assert plain > 10 * 50_000 and tuned < plain / 20, (tuned, plain)


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
