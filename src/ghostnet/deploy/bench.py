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

import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..allocator import tune_allocator
from ..analysis.macs import count_macs as _count_macs
from ..models.registry import input_size_of
from .bench_backends import _alignment, best_candidates, make_runner
from .bench_config import (BEST, DEFAULT_PEERS, FORM_BACKENDS, INT8_SUFFIX, OWN_ONLY_BACKENDS, BenchConfig,
                           BenchResult, BenchRow, PreparedModel, RuntimeUnavailable, build_model, known_backends)
from .bench_report import plot_latency_vs_macs, to_markdown, write_report
from .bench_timing import Runner, measure_interleaved
from .machine import environment, load_average
from .runtimes import list_runtimes

__all__ = ["BenchConfig", "BenchResult", "BenchRow", "DEFAULT_PEERS", "build_model", "count_macs",
           "environment", "known_backends", "plot_latency_vs_macs", "run_benchmark", "to_markdown", "write_report"]


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates per image of one forward: `ghostnet.analysis.macs.count_macs` on the first image of `x`."""
    return _count_macs(model, x[:1])


def _reparameterized(model: nn.Module) -> nn.Module:
    """A timm model in the inference form timm offers (`reparameterize_model`: GhostNetV3's and RepGhostNet's
    branches merged), as a timm user deploys it; models without re-parameterizable blocks come back unchanged."""
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model)


def _prepare(cfg: BenchConfig, generator: torch.Generator, skipped: list[str]) -> list[PreparedModel]:
    """Every model and peer that can be built here, with its MACs and parameters; the others noted in `skipped`."""
    prepared = []
    for spec in list(cfg.models) + list(cfg.peers):
        try:
            label, source, model = build_model(spec)
        except RuntimeUnavailable as exc:
            skipped.append(f"{spec}: {exc}")
            continue
        if source == "timm" and cfg.mode == "infer":
            model = _reparameterized(model)
        chans = input_size_of(model)[0]
        x1 = torch.randn(1, chans, cfg.image_size, cfg.image_size, generator=generator)
        prepared.append(PreparedModel(label, source, model, _count_macs(model, x1),
                                      sum(p.numel() for p in model.parameters())))
    return prepared


def _candidates(prep: PreparedModel, backend: str, x: torch.Tensor, cfg: BenchConfig, threads: int,
                workdir: Path) -> list[Runner]:
    """The runners of one model and backend: one, or for "best" one per runtime it is tried in."""
    if backend == BEST:
        return [(prep, BEST, call, runtime) for runtime, call in best_candidates(prep, x, cfg, threads, workdir)]
    runtime = FORM_BACKENDS.get(backend, backend.removesuffix(INT8_SUFFIX))
    return [(prep, backend, make_runner(backend, prep, x, cfg, threads, workdir), runtime)]


def _runners(prepared: list[PreparedModel], x: torch.Tensor, cfg: BenchConfig, threads: int, workdir: Path,
             skipped: list[str]) -> list[Runner]:
    """The candidates at one thread count: every applicable backend of every model; unavailable ones in `skipped`."""
    runners = []
    for prep in prepared:
        for backend in cfg.backends:
            if backend in OWN_ONLY_BACKENDS and prep.source != "ghostnet":
                continue
            try:
                runners += _candidates(prep, backend, x, cfg, threads, workdir)
            except RuntimeUnavailable as exc:
                note = f"{prep.label} / {backend}: {exc}"
                if note not in skipped:
                    skipped.append(note)
    return runners


def _keep_best(rows: list[BenchRow]) -> None:
    """Of each model's "best" rows at one thread count (one per runtime tried), the fastest stays "best"; the others
    are relabelled "best-candidate" (kept in the report: the peers' time in every runtime)."""
    fastest: dict[tuple[str, int], BenchRow] = {}
    for row in rows:
        key = (row.model, row.threads)
        if row.backend == BEST and (key not in fastest or row.median_ms < fastest[key].median_ms):
            fastest[key] = row
    for row in rows:
        if row.backend == BEST and fastest[(row.model, row.threads)] is not row:
            row.backend = BEST + "-candidate"


def _size_thread_pools(cfg: BenchConfig, threads: int) -> None:
    """Size the process-wide pools of the runtimes this run uses, once per thread count before anything loads (a
    resize strands ExecuTorch programs loaded before it)."""
    torch.set_num_threads(threads)
    names = {FORM_BACKENDS.get(b, b.removesuffix(INT8_SUFFIX)) for b in cfg.backends if b != BEST}
    if BEST in cfg.backends:
        names |= {r.name for r in list_runtimes(files=True) if r.tunable}
    for runtime in list_runtimes(available=True):
        if runtime.name in names and runtime.set_threads is not None:
            runtime.set_threads(threads)


def run_benchmark(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> BenchResult:
    """Measure every model and peer with every applicable backend, interleaved, at each thread count."""
    cfg.validate()
    if cfg.device == "cuda":
        torch.backends.cudnn.benchmark = True
    result = BenchResult(config=asdict(cfg), environment=environment(cfg.device))
    if cfg.mode == "train":  # as the trainer runs: freed step memory kept for the next step (ghostnet.allocator)
        result.environment["allocator"] = tune_allocator()
    # What "auto" (or a number) came to on this CPU: the alignment every export of our GhostNets used.
    result.config["align_channels_used"] = _alignment(cfg)
    generator = torch.Generator().manual_seed(cfg.seed)
    prepared = _prepare(cfg, generator, result.skipped)
    x = torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, generator=generator)
    previous_threads = torch.get_num_threads()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for threads in cfg.threads:
                _size_thread_pools(cfg, threads)
                runners = _runners(prepared, x, cfg, threads, Path(tmp), result.skipped)
                if progress:
                    progress(f"threads={threads}: timing {len(runners)} candidates")
                result.rows.extend(measure_interleaved(runners, cfg, threads, progress))
            _keep_best(result.rows)
    finally:
        torch.set_num_threads(previous_threads)
    result.environment["load_average_after"] = load_average()
    return result
