"""Interleaved timing: candidates take turns, so a burst of load from other processes hits all of them alike.

Each round times `reps` calls of every candidate in a rotating order. Reported per candidate: the median over all
calls, the spread (25th-75th percentile), the best round's median (the figure least disturbed by other processes),
the CPU time per call (the process's CPU time: insensitive to being descheduled, so it is the steadiest number on a
shared machine at one thread) and images/s. On CUDA, calls are timed with CUDA events.
"""
from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch

from .bench_config import BenchConfig, BenchRow, PreparedModel

#: A candidate: the model, the backend's name, one measured call, and the runtime it runs in.
Runner = tuple[PreparedModel, str, Callable[[], Any], str]

__all__ = ["Runner", "measure_interleaved", "median_ms", "time_interleaved"]


def _time_calls(fn: Callable[[], Any], reps: int, device: str) -> tuple[list[float], float]:
    """(per-call wall milliseconds, CPU milliseconds per call) for `reps` calls."""
    times = []
    cpu_start = time.process_time()
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        for _ in range(reps):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times, (time.process_time() - cpu_start) * 1e3 / reps


def _quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1] if len(values) > 1 else values[0]


def _row(prep: PreparedModel, backend: str, rounds: list[list[float]], cpu: list[float], cfg: BenchConfig,
         threads: int, runtime: str = "") -> BenchRow:
    """The row of one candidate from its per-round call times and per-round CPU milliseconds per call."""
    every = [t for round_times in rounds for t in round_times]
    median = statistics.median(every)
    return BenchRow(
        model=prep.label, source=prep.source, backend=backend, threads=threads, batch_size=cfg.batch_size,
        image_size=cfg.image_size, device=cfg.device, dtype=cfg.dtype, mode=cfg.mode, median_ms=median,
        p25_ms=_quantile(every, 0.25), p75_ms=_quantile(every, 0.75),
        best_round_ms=min(statistics.median(t) for t in rounds), cpu_ms=statistics.median(cpu),
        images_per_s=cfg.batch_size * 1e3 / median, macs=prep.macs, params=prep.params, calls=len(every),
        runtime=runtime)


#: One call's timings: per-round lists of call milliseconds, and per-round CPU milliseconds per call.
Samples = tuple[list[list[float]], list[float]]


def time_interleaved(calls: Sequence[Callable[[], Any]], rounds: int, reps: int, warmup: int, device: str = "cpu",
                     after_round: Optional[Callable[[int], None]] = None) -> list[Samples]:
    """Warm every call up, then time them in `rounds` rounds of `reps` calls each, rotating who goes first; per call:
    (per-round lists of call milliseconds, per-round CPU milliseconds per call). No calls: nothing to time, []."""
    if not calls:
        return []
    for fn in calls:
        for _ in range(warmup):
            fn()
    samples: list[Samples] = [([], []) for _ in calls]
    for r in range(rounds):
        order = list(range(len(calls)))
        order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first each round
        for i in order:
            times, cpu_ms = _time_calls(calls[i], reps, device)
            samples[i][0].append(times)
            samples[i][1].append(cpu_ms)
        if after_round:
            after_round(r)
    return samples


def median_ms(per_round: list[list[float]]) -> float:
    """The median call time over every round."""
    return statistics.median(t for round_times in per_round for t in round_times)


def measure_interleaved(runners: list[Runner], cfg: BenchConfig, threads: int,
                        progress: Optional[Callable[[str], None]]) -> list[BenchRow]:
    """Time the candidates in `cfg.rounds` interleaved rounds (`time_interleaved`); one row each."""
    def report(r: int) -> None:
        if progress:
            progress(f"threads={threads} round {r + 1}/{cfg.rounds} done")

    samples = time_interleaved([runner[2] for runner in runners], cfg.rounds, cfg.reps, cfg.warmup, cfg.device,
                               report)
    return [_row(prep, backend, rounds, cpu, cfg, threads, runtime)
            for (prep, backend, _, runtime), (rounds, cpu) in zip(runners, samples)]
