"""Latency / throughput harness: our models and timm / torchvision peers, several backends, measured interleaved.

Every candidate (model x backend) runs on the same input tensor. Within one thread count the candidates take turns
(`bench_timing`): each round times `reps` calls of every candidate in a rotating order, so a burst of load from other
processes hits all of them alike. Reported per candidate: the median over all calls, the spread (25th-75th
percentile), the best round's median, the CPU time per call and images/s.

On CUDA, calls are timed with CUDA events, models run channels-last in the requested dtype (bf16 by default for
throughput), and `cuda_graphs=True` replays a captured graph instead of launching kernels one by one.

The harness is split by concern: `bench_config` (settings, rows, the models timed), `bench_backends` (one measured
call per backend), `bench_timing` (the interleaved rounds), `machine` (CPU, versions, load) and `bench_report`
(markdown, plot, files). This module runs them together.
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..analysis.macs import count_macs as _count_macs
from ..models.registry import input_size_of
from .bench_backends import _alignment, make_runner
from .bench_config import (BACKENDS, DEFAULT_PEERS, EXECUTORCH_BACKENDS, OWN_ONLY_BACKENDS, BackendUnavailable,
                           BenchConfig, BenchResult, BenchRow, PreparedModel, build_model)
from .bench_report import plot_latency_vs_macs, to_markdown, write_report
from .bench_timing import Runner, measure_interleaved
from .machine import environment, load_average

__all__ = ["BACKENDS", "BenchConfig", "BenchResult", "BenchRow", "DEFAULT_PEERS", "build_model", "count_macs",
           "environment", "plot_latency_vs_macs", "run_benchmark", "to_markdown", "write_report"]


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per image of one forward: `ghostnet.analysis.macs.count_macs` on the first image of `x`."""
    return _count_macs(model, x[:1])


def _prepare(cfg: BenchConfig, generator: torch.Generator, skipped: list[str]) -> list[PreparedModel]:
    """Every model and peer that can be built here, with its MACs and parameters; the others noted in `skipped`."""
    prepared = []
    for spec in list(cfg.models) + list(cfg.peers):
        try:
            label, source, model = build_model(spec)
        except BackendUnavailable as exc:
            skipped.append(f"{spec}: {exc}")
            continue
        chans = input_size_of(model)[0]
        x1 = torch.randn(1, chans, cfg.image_size, cfg.image_size, generator=generator)
        prepared.append(PreparedModel(label, source, model, _count_macs(model, x1),
                                      sum(p.numel() for p in model.parameters())))
    return prepared


def _runners(prepared: list[PreparedModel], x: torch.Tensor, cfg: BenchConfig, threads: int, workdir: Path,
             skipped: list[str]) -> list[Runner]:
    """The candidates at one thread count: every applicable backend of every model; unavailable ones in `skipped`."""
    runners = []
    for prep in prepared:
        for backend in cfg.backends:
            if backend in OWN_ONLY_BACKENDS and prep.source != "ghostnet":
                continue
            try:
                runners.append((prep, backend, make_runner(backend, prep, x, cfg, threads, workdir)))
            except BackendUnavailable as exc:
                note = f"{prep.label} / {backend}: {exc}"
                if note not in skipped:
                    skipped.append(note)
    return runners


def run_benchmark(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> BenchResult:
    """Measure every model and peer with every applicable backend, interleaved, at each thread count."""
    cfg.validate()
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True
    result = BenchResult(config=asdict(cfg), environment=environment(cfg.device))
    # What "auto" (or a number) came to on this CPU: the alignment every export of our GhostNets used.
    result.config["align_channels_used"] = _alignment(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    prepared = _prepare(cfg, generator, result.skipped)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
    previous_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for threads in cfg.threads:
                torch.set_num_threads(threads)
                if set(EXECUTORCH_BACKENDS) & set(cfg.backends) and importlib.util.find_spec("executorch"):
                    from .export import set_executorch_threads

                    set_executorch_threads(threads)  # once per count: a resize strands programs loaded before it
                runners = _runners(prepared, x, cfg, threads, Path(tmp), result.skipped)
                if progress:
                    progress(f"threads={threads}: timing {len(runners)} candidates")
                result.rows.extend(measure_interleaved(runners, cfg, threads, progress))
    finally:
        torch.set_num_threads(previous_threads)
    result.environment["load_average_after"] = load_average()
    return result
