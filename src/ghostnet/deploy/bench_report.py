"""Reports of a benchmark result: a markdown table per thread count and batch size, a latency-vs-MACs plot, and
the JSON / markdown / PNG files written together."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ..utils import PathLike, atomic_write
from ..viz.figure import new_figure, save_png
from .bench_config import BenchResult, BenchRow, known_backends
from .runtimes import list_runtimes

#: The candidate ("model/backend") the ratio column divides by: the official GhostNet as timm runs it.
DEFAULT_REFERENCE = "timm/ghostnet_100/eager"

__all__ = ["DEFAULT_REFERENCE", "plot_latency_vs_macs", "to_markdown", "write_report"]


def _reference(rows: list[BenchRow], reference: Optional[str]) -> dict[tuple[int, int], float]:
    """best_round_ms of the reference candidate ("model/backend") per (threads, batch)."""
    refs = {}
    if reference:
        model, _, backend = reference.rpartition("/")
        for row in rows:
            if row.model == model and row.backend == backend:
                refs[(row.threads, row.batch_size)] = row.best_round_ms
    return refs


def to_markdown(result: BenchResult, reference: Optional[str] = DEFAULT_REFERENCE) -> str:
    """A markdown table per (threads, batch size); `reference` ("model/backend") gives the ratio column."""
    env = result.environment
    lines = [f"Machine: {env['cpu']} ({env['cpu_count']} CPUs{', GPU ' + env['gpu'] if 'gpu' in env else ''}); "
             f"torch {env['torch']}, torchvision {env['torchvision']}, timm {env['timm']}"
             # every installed file runtime's version (machine.environment records them under their names)
             + "".join(f", {r.name} {env[r.name]}" for r in list_runtimes(files=True) if env.get(r.name))
             + f"; {env['date']}; load average before "
             f"{_fmt_load(env.get('load_average'))}, after {_fmt_load(env.get('load_average_after'))}.",
             _isa_line(result), ""]
    if env.get("allocator"):  # train mode: the allocator as the trainer sets it (ghostnet.allocator)
        allocator = env["allocator"]
        lines[-1:-1] = [f"Allocator: {'glibc thresholds raised' if allocator['applied'] else 'unchanged'} "
                        f"({allocator['reason']})."]
    refs = _reference(result.rows, reference)
    groups: dict[tuple[int, int], list[BenchRow]] = {}
    for row in result.rows:
        groups.setdefault((row.threads, row.batch_size), []).append(row)
    for (threads, batch), rows in groups.items():
        first = rows[0]
        lines.append(f"**{first.mode}, {threads} thread(s), batch {batch}, {first.image_size}x{first.image_size}, "
                     f"{first.device} {first.dtype}**")
        lines.append("")
        ratio_head = f" | ratio vs {reference}" if (threads, batch) in refs else ""
        lines.append("| model | backend | MACs (M) | best-round median ms | median ms (p25-p75) | CPU ms/call | "
                     f"images/s{ratio_head} |")
        lines.append("|---|---|---|---|---|---|---" + ("|---|" if ratio_head else "|"))
        for row in sorted(rows, key=lambda r: r.best_round_ms):
            ratio = f" | {row.best_round_ms / refs[(threads, batch)]:.2f}" if ratio_head else ""
            lines.append(f"| {row.model} | {row.backend} | {row.macs / 1e6:.1f} | {row.best_round_ms:.2f} | "
                         f"{row.median_ms:.2f} ({row.p25_ms:.2f}-{row.p75_ms:.2f}) | {row.cpu_ms:.2f} | "
                         f"{row.images_per_s:.1f}{ratio} |")
        lines.append("")
    if result.skipped:
        lines.append("Skipped: " + "; ".join(result.skipped))
        lines.append("")
    return "\n".join(lines)


def _isa_line(result: BenchResult) -> str:
    """The CPU's instruction set, any cap put on PyTorch's, and the channel alignment of our exported files."""
    env = result.environment
    line = f"ISA: {env.get('isa', 'n/a')} (PyTorch's ATen kernels: {env.get('aten_cpu_capability', 'n/a')}"
    overrides = env.get("isa_overrides") or {}
    line += "".join(f", {name}={value}" for name, value in overrides.items()) + ")"
    if "align_channels_used" in result.config:
        requested = result.config.get("align_channels")
        how = " (auto: the CPU's NCHWc block)" if requested in (None, "auto") else ""
        line += f"; our GhostNet exports aligned to {result.config['align_channels_used']} channels{how}"
    return line + "."


def _fmt_load(load: Optional[Sequence[float]]) -> str:
    return "n/a" if not load else "/".join(f"{v:.1f}" for v in load)


def plot_latency_vs_macs(result: BenchResult, path: PathLike) -> Path:
    """PNG of best-round latency against MACs, one panel per thread count, one marker per backend."""
    colors = {"ghostnet": "tab:blue", "timm": "tab:orange", "torchvision": "tab:green"}
    markers = dict(zip(known_backends(), "osXD^vP*hd<>p"))
    thread_counts = sorted({r.threads for r in result.rows})
    fig = new_figure(figsize=(6 * len(thread_counts), 4.5))
    from matplotlib.lines import Line2D  # after new_figure, which says how to install matplotlib
    from matplotlib.ticker import ScalarFormatter

    axes = fig.subplots(1, len(thread_counts), squeeze=False)[0]
    for ax, threads in zip(axes, thread_counts):
        for row in (r for r in result.rows if r.threads == threads):
            ax.scatter(row.macs / 1e6, row.best_round_ms, marker=markers.get(row.backend, "."),
                       color=colors[row.source])
            ax.annotate(f"{row.model} {row.backend}", (row.macs / 1e6, row.best_round_ms),
                        fontsize=6, xytext=(3, 3), textcoords="offset points")
        first = result.rows[0]
        ax.set_xlabel("MACs per image (M)")
        ax.set_ylabel("latency, best-round median (ms)")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set_title(f"{threads} thread(s), batch {first.batch_size}, {first.device}")
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], marker=m, linestyle="", color="gray", label=b) for b, m in markers.items()
               if any(r.backend == b for r in result.rows)]
    handles += [Line2D([], [], marker="o", linestyle="", color=c, label=s) for s, c in colors.items()
                if any(r.source == s for r in result.rows)]
    axes[-1].legend(handles=handles, fontsize=7, loc="best")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def write_report(result: BenchResult, out_dir: PathLike, name: str = "bench", plot: bool = True,
                 reference: Optional[str] = DEFAULT_REFERENCE) -> list[Path]:
    """Write NAME.json, NAME.md and (with matplotlib) NAME.png into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    paths = []
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result.to_dict(), indent=2))
    paths.append(out_dir / f"{name}.json")
    with atomic_write(out_dir / f"{name}.md") as tmp:
        tmp.write_text(to_markdown(result, reference))
    paths.append(out_dir / f"{name}.md")
    if plot and result.rows:
        paths.append(plot_latency_vs_macs(result, out_dir / f"{name}.png"))
    return paths
