"""Render `Profile`s as text tables, JSON and CSV (files written atomically)."""
from __future__ import annotations

import csv
import json
from typing import TYPE_CHECKING, Optional, Sequence

from ..utils import PathLike, atomic_write
from .cost import LayerRow, Profile
from .g_ghost_cost import g_ghost_summary

if TYPE_CHECKING:
    from .training_memory import TrainingMemory

CSV_COLUMNS = ("model", "path", "type", "stage", "ops", "output_shape", "params", "macs", "flops",
               "bytes_written", "bytes_allocated")


def fmt_count(n: Optional[float]) -> str:
    """5182508 -> '5.18M' (SI prefixes, as the paper's tables)."""
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def fmt_bytes(n: Optional[float]) -> str:
    """6422528 -> '6.13 MiB'."""
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def fmt_shape(shape: Optional[Sequence[int]]) -> str:
    return "x".join(str(v) for v in shape) if shape else "-"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str) -> str:
    """Plain-text table; `align` has one 'l' or 'r' per column."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def _header(p: Profile) -> str:
    return (f"{p.model}: input {p.batch_size}x{fmt_shape(p.input_size)}, {p.dtype}, {p.memory.device}; "
            f"{fmt_count(p.params)} parameters, {fmt_count(p.macs)} MACs ({fmt_count(p.flops)} FLOPs)")


def stage_table(p: Profile) -> str:
    """One row per stage, then the total."""
    rows = [[s.name, fmt_shape(s.output_shape), fmt_count(s.params), fmt_count(s.macs), fmt_count(s.flops),
             fmt_bytes(s.bytes_written), fmt_bytes(s.peak_live_bytes)] for s in p.stages]
    rows.append(["total", "", fmt_count(p.params), fmt_count(p.macs), fmt_count(p.flops),
                 fmt_bytes(sum(s.bytes_written for s in p.stages)), fmt_bytes(p.memory.peak_estimated_bytes)])
    return _table(["stage", "output", "params", "MACs", "FLOPs", "written", "peak live"], rows, "llrrrrr")


def layer_table(layers: Sequence[LayerRow]) -> str:
    """One row per leaf module (and per container's own ops)."""
    rows = [[r.path, r.type, r.ops, fmt_shape(r.output_shape), fmt_count(r.params), fmt_count(r.macs),
             fmt_bytes(r.bytes_written), fmt_bytes(r.bytes_allocated)] for r in layers]
    return _table(["layer", "type", "ops", "output", "params", "MACs", "written", "allocated"], rows, "llllrrrr")


def ghost_table(p: Profile) -> str:
    """Every Ghost module: the paper's formula next to the count, the ordinary conv it replaces, r_s and r_c."""
    rows = [[g.path, g.in_chs, g.out_chs, g.ratio, "x".join(map(str, g.kernel_size)), "x".join(map(str, g.dw_size)),
             fmt_shape(g.out_hw), fmt_count(g.formula_macs), fmt_count(g.counted_macs), fmt_count(g.ordinary_macs),
             f"{g.speedup:.3f}", f"{g.compression:.3f}", "-" if g.paper_ratio is None else f"{g.paper_ratio:.3f}",
             fmt_bytes(g.concat_eager_bytes), fmt_bytes(g.concat_fused_bytes)] for g in p.ghost_modules]
    return _table(["ghost module", "c", "n", "s", "k", "d", "h'w'", "formula", "counted", "ordinary", "r_s", "r_c",
                   "paper r", "concat eager", "fused"], rows, "lrrrrrrrrrrrrrr")


def memory_lines(p: Profile) -> list[str]:
    m = p.memory
    lines = [f"weights {fmt_bytes(m.param_bytes)} (+ {fmt_bytes(m.buffer_bytes)} buffers); input "
             f"{fmt_bytes(m.input_bytes)}; peak activations estimated {fmt_bytes(m.peak_estimated_bytes)} "
             f"(at {m.peak_op})"]
    if m.peak_measured_bytes is not None:
        diff = m.peak_measured_bytes / m.peak_estimated_bytes - 1 if m.peak_estimated_bytes else 0.0
        lines.append(f"measured {fmt_bytes(m.peak_measured_bytes)} ({diff:+.1%} vs estimate; {m.measure_method}); "
                     f"allocator peak with kernel scratch {fmt_bytes(m.peak_allocator_bytes)}")
    return lines


def ghost_lines(p: Profile) -> list[str]:
    if not p.ghost_modules:
        return []
    s = p.ghost_summary()
    ratio = s["ordinary_macs"] / s["counted_macs"] if s["counted_macs"] else float("nan")
    return [
        f"{s['count']} Ghost modules: formula {fmt_count(s['formula_macs'])} MACs, counted "
        f"{fmt_count(s['counted_macs'])}; ordinary convolutions in their place {fmt_count(s['ordinary_macs'])} "
        f"({ratio:.2f}x); whole model without Ghost modules {fmt_count(s['model_macs_without_ghost'])} MACs",
        f"largest eager concat holds {fmt_bytes(s['concat_eager_bytes'])} (intrinsic + ghost + concatenated maps)",
    ]


def g_ghost_lines(p: Profile) -> list[str]:
    """The G-Ghost stages' parts and the ordinary stages they replace (`g_ghost_cost`)."""
    if not p.g_ghost_stages:
        return []
    s = g_ghost_summary(p.g_ghost_stages, p.macs)
    stages = ", ".join(f"{r.path} ({r.raw_chs} of {r.out_chs} channels through {r.depth - 2} inner blocks)"
                       for r in p.g_ghost_stages)
    return [
        f"{s['count']} G-Ghost stages, {stages}: {fmt_count(s['macs'])} MACs = full-width first and last blocks "
        f"{fmt_count(s['full_blocks_macs'])} + inner blocks {fmt_count(s['inner_blocks_macs'])} + cheap features "
        f"and mix {fmt_count(s['cheap_macs'])}; ordinary stages in their place {fmt_count(s['plain_macs'])} "
        f"({s['plain_macs'] / s['macs']:.2f}x); whole model without G-Ghost stages "
        f"{fmt_count(s['model_macs_without_g_ghost'])} MACs",
    ]


def render_text(p: Profile, layers: bool = False, ghost: bool = False) -> str:
    """The report `ghostnet profile` prints: header, stage table, memory and Ghost-module summaries."""
    parts = [_header(p), "", stage_table(p), ""] + memory_lines(p) + ghost_lines(p) + g_ghost_lines(p)
    if layers:
        parts += ["", layer_table(p.layers)]
    if ghost and p.ghost_modules:
        parts += ["", ghost_table(p)]
    return "\n".join(parts)


def render_comparison(profiles: Sequence[Profile]) -> str:
    """Totals of several models side by side, ratios against the first."""
    metrics = [
        ("params", lambda p: p.params, fmt_count),
        ("MACs", lambda p: p.macs, fmt_count),
        ("weight bytes", lambda p: p.memory.param_bytes, fmt_bytes),
        ("peak activations (est.)", lambda p: p.memory.peak_estimated_bytes, fmt_bytes),
        ("peak activations (measured)", lambda p: p.memory.peak_measured_bytes, fmt_bytes),
    ]
    headers = ["", *[p.model for p in profiles]] + [f"ratio {i + 2}:1" for i in range(len(profiles) - 1)]
    rows = []
    for label, get, fmt in metrics:
        values = [get(p) for p in profiles]
        ratios = [f"{v / values[0]:.2f}" if v is not None and values[0] else "-" for v in values[1:]]
        rows.append([label, *[fmt(v) for v in values], *ratios])
    rows.append(["Ghost modules", *[str(len(p.ghost_modules)) for p in profiles], *["" for _ in profiles[1:]]])
    return _table(headers, rows, "l" + "r" * (len(headers) - 1))


def render_training_memory(name: str, tm: TrainingMemory) -> str:
    """What one training step keeps for backward, per module, and its measured totals."""
    total = tm.saved_bytes or 1
    rows = [[module, fmt_bytes(n), f"{100 * n / total:.1f}%"] for module, n in tm.saved_by_module.items() if n]
    mode = "with gradient checkpointing" if tm.grad_checkpointing else "no checkpointing"
    mode += f", {tm.autocast} autocast" if tm.autocast else ", float32"
    size = "x".join(str(d) for d in tm.input_size)
    lines = [f"{name}: one training step, batch {tm.batch_size}, {size}, {mode}",
             _table(["module", "saved for backward", "share"], rows, "lrr"),
             f"saved for backward {fmt_bytes(tm.saved_bytes)} (autograd's saved tensors, parameters left out); "
             f"measured: {fmt_bytes(tm.retained_bytes)} alive when backward starts, step peak "
             f"{fmt_bytes(tm.peak_bytes)} above the start ({tm.method})",
             f"weights {fmt_bytes(tm.weights_bytes)}, gradients {fmt_bytes(tm.gradient_bytes)}, "
             f"SGD momentum {fmt_bytes(tm.momentum_bytes)}"]
    if tm.grad_checkpointing:
        lines.append("checkpointed stages save nothing of their own; the inputs they keep are counted under "
                     "(model), and their recomputation is in the peak")
    return "\n".join(lines)


def profiles_json(profiles: Sequence[Profile], training: Sequence[TrainingMemory] = ()) -> str:
    """{"profiles": [...]} with every row and total, and {"training": [...]} when training steps were measured."""
    data: dict = {"profiles": [p.to_dict() for p in profiles]}
    if training:
        data["training"] = [t.to_dict() for t in training]
    return json.dumps(data, indent=2)


def write_json(profiles: Sequence[Profile], path: PathLike,
               training: Sequence[TrainingMemory] = ()) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(profiles_json(profiles, training) + "\n")


def write_csv(profiles: Sequence[Profile], path: PathLike) -> None:
    """One row per layer of each profile (columns: CSV_COLUMNS)."""
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for p in profiles:
                for r in p.layers:
                    writer.writerow([p.model, r.path, r.type, r.stage, r.ops, fmt_shape(r.output_shape), r.params,
                                     r.macs, r.flops, r.bytes_written, r.bytes_allocated])
