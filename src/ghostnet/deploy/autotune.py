"""`ghostnet export NAME --format auto`: the fastest exact file of a model on this machine, chosen by measuring.

Which form of a GhostNet runs fastest depends on the runtime and on the CPU: channel alignment, single-path modules,
the DFC's deploy form and a dynamic batch won in onnxruntime on an AMD EPYC and lost in OpenVINO on an Intel Xeon
(docs/deployment.md). So instead of a fixed choice, `export_fastest`:

1. lists candidates: every installed runtime that `--format auto` may use (`Runtime.tunable`), times every exact
   structure of the model (`candidate_structures`: plain fused, split, aligned to 8 and 16, single-path, the DFC's
   training form) at the runtime's preferred batch form;
2. exports each one, loads it with the requested thread count and checks it against the model's float64 output
   (`exactness`): a candidate whose output is wrong, or that fails to export or load, is recorded and never chosen;
3. times the survivors interleaved (each round every candidate in turn, so load from other processes hits all
   alike) and keeps the fastest; then varies the winner's batch form and runtime options the same way;
4. writes the winner as STEM.<suffix> and a record STEM.json (runtime, file, latency, threads, machine, every
   candidate with its latency or why it lost), and caches the choice per CPU model, runtime versions, model, image
   size and threads (`ghostnet.tuning`), so a second call exports the chosen form without measuring again
   (`retune=True` measures anyway). A cached form is checked like any other before it is written.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from .. import tuning
from ..hardware import cpu_isa, cpu_name
from ..utils import PathLike, atomic_write
from .align import can_align, nchwc_block_size
from .bench_timing import median_ms, time_interleaved
from .exactness import eager_and_reference, float32_parity
from .forms import Form, build_form, has_dfc
from .fusion import example_input_for, fuse
from .machine import load_average
from .runtimes import Runtime, get_runtime, list_runtimes

CACHE_KIND = "export"

__all__ = ["AutoExport", "Candidate", "candidate_structures", "export_fastest", "tunable_runtimes"]


@dataclass
class Candidate:
    """One (runtime, form) tried: its latency, or why it could not win."""

    runtime: str
    form: Form
    stage: int = 1
    latency_ms: Optional[float] = None
    parity: Optional[str] = None
    error: Optional[str] = None
    cpu_ms: Optional[float] = None  # the process's CPU time per call

    @property
    def ok(self) -> bool:
        """Exported, loaded, exact and timed."""
        return self.error is None and self.latency_ms is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the record."""
        return {"runtime": self.runtime, "form": self.form.to_dict(), "describe": self.form.describe(),
                "stage": self.stage, "latency_ms": self.latency_ms, "cpu_ms": self.cpu_ms, "parity": self.parity,
                "error": self.error}


@dataclass
class AutoExport:
    """What `export_fastest` wrote: the file, its record (also at `record_path`) and whether the choice came from
    the cache."""

    path: Path
    record_path: Path
    record: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


def tunable_runtimes(names: Optional[Sequence[str]] = None) -> list[Runtime]:
    """The runtimes `--format auto` tries: the named ones (they must be installed), or every installed one that is
    a CPU file runtime marked tunable."""
    if names:
        runtimes = [get_runtime(name) for name in names]
        for runtime in runtimes:
            runtime.require()
            if runtime.in_process:
                raise ValueError(f"{runtime.name} runs in this process and writes no file; --format auto picks a file")
        return runtimes
    return [r for r in list_runtimes(available=True, files=True) if r.tunable and "cpu" in r.devices]


def candidate_structures(model: nn.Module, example_input: torch.Tensor) -> list[Form]:
    """The exact structures worth timing for `model`: plain fused; split where it has splittable bottlenecks;
    channels aligned to 8 and to 16 (single-path where it pays), split or not, where it can be aligned; every module
    single-path; the DFC's training form where it has DFC gates."""
    from .split import split_ghost_concats

    fused = fuse(model, example_input=example_input[:1])
    forms = [Form()]
    splits = split_ghost_concats(fuse(model, example_input=example_input[:1])) > 0
    if splits:
        forms.append(Form(split=True))
    if can_align(fused):
        blocks = sorted({8, 16, nchwc_block_size()} - {0})
        forms += [Form(align=block, split=split) for block in blocks for split in sorted({False, splits})]
    if any(getattr(m, "can_be_single_path", lambda: False)() for m in fused.modules()):
        forms.append(Form(single_path="all"))
    if has_dfc(fused):
        # the split form computes its gates in a form of its own (SplitDFC), so it has no training-form variant
        forms += [dataclasses.replace(f, dfc="training") for f in forms if not f.align and not f.split]
    return forms


def _batch_forms(runtime: Runtime, dynamic_batch: Optional[bool]) -> list[bool]:
    """The batch forms to try in `runtime`, preferred first: static (batch 1) where allowed, then dynamic."""
    allowed = [mode == "dynamic" for mode in ("static", "dynamic") if mode in runtime.batch_modes]
    return [d for d in allowed if dynamic_batch is None or d == dynamic_batch]  # empty: the runtime sits out


class _Trial:
    """The model, its float64 truth on a check batch, and a work folder: exports, checks and times candidates."""

    def __init__(self, model: nn.Module, example: torch.Tensor, threads: int, workdir: Path) -> None:
        self.model, self.example, self.threads, self.workdir = model, example, threads, workdir
        self.check_batch = torch.cat([example, example, example])  # 3 rows: a size no dynamic export saw
        self.eager, self.truth = eager_and_reference(model, self.check_batch)
        self.count = 0

    def export(self, candidate: Candidate, path: Path) -> Path:
        """Write `candidate`'s file at `path`."""
        runtime, form = get_runtime(candidate.runtime), candidate.form
        module = build_form(self.model, form, self.example)
        example = torch.cat([self.example, self.example]) if form.dynamic_batch else self.example
        return runtime.export(module, path, example, dynamic_batch=form.dynamic_batch, **dict(form.options))

    def load_checked(self, candidate: Candidate, path: Path) -> Callable[[], Any]:
        """Load `path` and check it; a zero-argument timed call, or candidate.error set (and None returned)."""
        runtime = get_runtime(candidate.runtime)
        session = runtime.load(path, threads=self.threads)
        rows = len(self.check_batch) if candidate.form.dynamic_batch else 1
        got = session(self.check_batch[:rows])
        parity = float32_parity(got, self.eager[:rows], self.truth[:rows])
        candidate.parity = str(parity)
        if not parity.ok:
            raise ValueError(f"output is not the model's: {parity}")
        return session.bind(self.example)

    def prepare(self, candidate: Candidate) -> Optional[Callable[[], Any]]:
        """Export, load and check `candidate`; its timed call, or None with `candidate.error` saying why."""
        self.count += 1
        runtime = get_runtime(candidate.runtime)
        path = self.workdir / f"candidate{self.count}{runtime.suffix}"
        try:
            return self.load_checked(candidate, self.export(candidate, path))
        except Exception as exc:  # noqa: BLE001 - any failure disqualifies the candidate, and is recorded
            candidate.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
            return None


def _time_stage(trial: _Trial, candidates: list[Candidate], rounds: int, reps: int,
                progress: Optional[Callable[[str], None]]) -> None:
    """Prepare every candidate, then time the ones that passed, interleaved; latencies set in place."""
    ready = []
    for candidate in candidates:
        call = trial.prepare(candidate)
        if progress:
            state = "ok" if call else f"rejected ({candidate.error})"
            progress(f"  {candidate.runtime:12s} {candidate.form.describe()}: {state}")
        if call is not None:
            ready.append((candidate, call))
    samples = time_interleaved([call for _, call in ready], rounds, reps, warmup=3)
    for (candidate, _), (per_round, cpu) in zip(ready, samples):
        candidate.latency_ms = median_ms(per_round)
        candidate.cpu_ms = statistics.median(cpu)


def _search(trial: _Trial, structures: list[Form], runtimes: list[Runtime], dynamic_batch: Optional[bool],
            rounds: int, reps: int, progress: Optional[Callable[[str], None]]) -> list[Candidate]:
    """Stage 1: every runtime x structure at the runtime's preferred batch form and default options. Stage 2: the
    winner with its other batch forms and each other value of its runtime's options."""
    stage1 = []
    for runtime in runtimes:
        batch_forms = _batch_forms(runtime, dynamic_batch)
        if not batch_forms:
            if progress:
                progress(f"  {runtime.name}: its files take no {'dynamic' if dynamic_batch else 'static'} batch")
            continue
        preferred = batch_forms[0]
        defaults = tuple(sorted((key, values[0]) for key, values in runtime.options.items()))
        stage1 += [Candidate(runtime.name, dataclasses.replace(s, dynamic_batch=preferred, options=defaults))
                   for s in structures]
    if progress:
        progress(f"stage 1: {len(stage1)} candidates ({', '.join(r.name for r in runtimes)})")
    _time_stage(trial, stage1, rounds, reps, progress)
    best = _fastest(stage1, trial.threads)
    if best is None:
        return stage1
    runtime = get_runtime(best.runtime)
    variants = [dataclasses.replace(best.form, dynamic_batch=d) for d in _batch_forms(runtime, dynamic_batch)]
    for key, values in runtime.options.items():
        variants += [dataclasses.replace(best.form, options=tuple(sorted({**dict(best.form.options), key: v}.items())))
                     for v in values]
    stage2 = [Candidate(best.runtime, form, stage=2) for form in dict.fromkeys(variants) if form != best.form]
    if stage2:
        # the incumbent is timed again beside its variants, so that stage 2 compares like with like
        stage2.insert(0, Candidate(best.runtime, best.form, stage=2))
        if progress:
            progress(f"stage 2: {best.runtime} with {len(stage2) - 1} variants of its batch form and options")
        _time_stage(trial, stage2, rounds, reps, progress)
    return stage1 + stage2


def _fastest(candidates: list[Candidate], threads: int = 1) -> Optional[Candidate]:
    """The fastest that passed. At one thread by CPU time per call: on a shared machine it does not count time spent
    descheduled, so it ranks candidates the same whatever else runs (wall time is what more threads are for)."""
    passed = [c for c in candidates if c.ok]
    if not passed:
        return None
    use_cpu = threads == 1 and all(c.cpu_ms is not None for c in passed)
    return min(passed, key=lambda c: c.cpu_ms if use_cpu else c.latency_ms)


def _winner(candidates: list[Candidate], threads: int) -> Optional[Candidate]:
    """The fastest of the last stage that ran (whose timings were taken side by side)."""
    last = max(c.stage for c in candidates)
    return _fastest([c for c in candidates if c.stage == last], threads) or _fastest(candidates, threads)


def _machine(runtimes: list[Runtime]) -> dict[str, Any]:
    return {"cpu": cpu_name(), "isa": cpu_isa(), "torch": torch.__version__,
            "runtimes": {r.name: r.version() for r in runtimes}}


def _cache_key(model_name: str, image_size: int, threads: int, dynamic_batch: Optional[bool],
               machine: dict[str, Any], structures: list[Form]) -> str:
    # the candidate forms belong to the key: a release that adds a form must not reuse a choice made without it
    return tuning.cache_key({"model": model_name, "image_size": image_size, "threads": threads,
                             "dynamic_batch": dynamic_batch, **machine,
                             "structures": sorted(f.describe() for f in structures)})


def _write_checked(trial: _Trial, winner: Candidate, stem: Path) -> tuple[Path, Candidate]:
    """Write `winner`'s form as STEM.<suffix> and check the written file like every candidate."""
    path = stem.with_name(stem.name + get_runtime(winner.runtime).suffix)
    final = Candidate(winner.runtime, winner.form)
    trial.load_checked(final, trial.export(final, path))
    return path, final


def export_fastest(model_name: str, stem: PathLike, *, threads: int = 1, weights: Optional[str] = None,
                   num_classes: Optional[int] = None, image_size: Optional[int] = None,
                   runtimes: Optional[Sequence[str]] = None, dynamic_batch: Optional[bool] = None,
                   retune: bool = False, rounds: int = 5, reps: int = 10,
                   progress: Optional[Callable[[str], None]] = None) -> AutoExport:
    """Write the fastest exact file of a registered model on this machine as STEM.<suffix>, with STEM.json (see
    the module docstring). `dynamic_batch`: None tries both batch forms, True/False insists on one."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    from ..models import create_model

    chosen_runtimes = tunable_runtimes(runtimes)
    if not chosen_runtimes:
        raise ValueError("no runtime to choose from: install onnxruntime or openvino (pip install "
                         "'ghostnet-torch[onnxruntime,openvino]')")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(model_name, pretrained=weights, **kwargs).eval()
    example = example_input_for(model, batch_size=1, image_size=image_size)
    machine = _machine(chosen_runtimes)
    structures = candidate_structures(model, example)
    key = _cache_key(model_name, example.shape[-1], threads, dynamic_batch, machine, structures)
    stem = Path(stem)
    cached = None if retune else tuning.load_choice(CACHE_KIND, key)
    with tempfile.TemporaryDirectory() as tmp:
        trial = _Trial(model, example, threads, Path(tmp))
        if cached is not None:
            winner = Candidate(cached["runtime"], Form.from_dict(cached["form"]), latency_ms=cached["latency_ms"])
            candidates = [Candidate(c["runtime"], Form.from_dict(c["form"]), c["stage"], c["latency_ms"],
                                    c["parity"], c["error"], c.get("cpu_ms")) for c in cached["candidates"]]
            if progress:
                progress(f"cached choice for this CPU and these versions: {winner.runtime}, {winner.form.describe()}")
            try:
                written = _write_checked(trial, winner, stem)
            except Exception as exc:  # noqa: BLE001 - what passed when cached may fail now: measure again
                if progress:
                    first_line = (str(exc).splitlines() or [""])[0]
                    progress(f"the cached choice failed here ({type(exc).__name__}: {first_line}); measuring again")
                cached = None
        if cached is None:
            candidates = _search(trial, structures, chosen_runtimes, dynamic_batch, rounds, reps, progress)
            winner = _winner(candidates, threads)
            if winner is None:
                reasons = "; ".join(f"{c.runtime} {c.form.describe()}: {c.error}" for c in candidates[:4])
                raise ValueError(f"no candidate form of {model_name} exported and passed its check here ({reasons})")
            written = _write_checked(trial, winner, stem)
        path, final = written
    record = {"model": model_name, "runtime": winner.runtime, "format": get_runtime(winner.runtime).format,
              "file": str(path), "latency_ms": winner.latency_ms, "threads": threads,
              "image_size": int(example.shape[-1]), "form": winner.form.to_dict(), "describe": winner.form.describe(),
              "parity": final.parity, "machine": machine, "cached": cached is not None,
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_average": load_average(),
              "candidates": [c.to_dict() for c in candidates]}
    if cached is None:
        tuning.store_choice(CACHE_KIND, key, {k: record[k] for k in ("runtime", "form", "latency_ms", "candidates")})
    record_path = stem.with_name(stem.name + ".json")
    with atomic_write(record_path) as tmp_record:
        tmp_record.write_text(json.dumps(record, indent=1))
    return AutoExport(path, record_path, record, cached is not None)
