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

#: A candidate: the model, the backend's name, and one measured call.
Runner = tuple[PreparedModel, str, Callable[[], Any]]

__all__ = ["Runner", "measure_interleaved"]


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
         threads: int) -> BenchRow:
    """The row of one candidate from its per-round call times and per-round CPU milliseconds per call."""
    every = [t for round_times in rounds for t in round_times]
    median = statistics.median(every)
    return BenchRow(
        model=prep.label, source=prep.source, backend=backend, threads=threads, batch_size=cfg.batch_size,
        image_size=cfg.image_size, device=cfg.device, dtype=cfg.dtype, mode=cfg.mode, median_ms=median,
        p25_ms=_quantile(every, 0.25), p75_ms=_quantile(every, 0.75),
        best_round_ms=min(statistics.median(t) for t in rounds), cpu_ms=statistics.median(cpu),
        images_per_s=cfg.batch_size * 1e3 / median, macs=prep.macs, params=prep.params, calls=len(every))


def measure_interleaved(runners: list[Runner], cfg: BenchConfig, threads: int,
                        progress: Optional[Callable[[str], None]]) -> list[BenchRow]:
    """Warm every candidate up, then time them in `cfg.rounds` rounds, rotating who goes first; one row each."""
    for _, _, fn in runners:
        for _ in range(cfg.warmup):
            fn()
    samples: dict[int, list[list[float]]] = {i: [] for i in range(len(runners))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(runners))}
    for r in range(cfg.rounds):
        order = list(range(len(runners)))
        order = order[r % len(order):] + order[: r % len(order)]  # rotate who goes first each round
        for i in order:
            times, cpu_ms = _time_calls(runners[i][2], cfg.reps, cfg.device)
            samples[i].append(times)
            cpu[i].append(cpu_ms)
        if progress:
            progress(f"threads={threads} round {r + 1}/{cfg.rounds} done")
    return [_row(prep, backend, samples[i], cpu[i], cfg, threads) for i, (prep, backend, _) in enumerate(runners)]
