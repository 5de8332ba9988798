"""Accuracy per millisecond: published ImageNet top-1 against latency measured here, with the Pareto front.

`run_front` times every model of the weights table that has a published top-1 (ours: the weights `pretrained=True`
loads) and the peers of `FRONT_PEERS` (timm models, each with the top-1 timm publishes for one of its weights), all
in one interleaved run of the latency harness (`bench.run_benchmark`), each on its fastest backend measured here:
with several backends given, every one is timed and the fastest kept per model; by default "best" on CPUs (ours in
the form and runtime `--format auto` chooses, peers plainly exported in every installed runtime) and the fused
(ours) or eager (peers) PyTorch model elsewhere.
Several accuracy entries may share one architecture (timm's newer training recipes): the architecture is timed
once and each entry becomes a point.

A point is on the Pareto front when no other point is at least as fast and at least as accurate, and strictly
better in one. Reports: a markdown table per thread count, a PNG (top-1 against latency, the front drawn, the
machine in the caption) and JSON. `ghostnet bench --front` is the command.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from ..utils import PathLike, atomic_write
from ..viz.figure import new_figure, save_png
from ..viz.labels import place_labels
from .bench import run_benchmark
from .bench_config import BEST, BenchConfig, BenchResult
from .bench_report import _fmt_load
from .runtimes import list_runtimes

__all__ = ["FRONT_PEERS", "FrontPoint", "FrontResult", "PublishedAccuracy", "default_front_backends",
           "front_entries", "front_markdown", "front_points", "our_published", "pareto_front", "peers_published",
           "draw_front", "plot_front", "run_front", "write_front"]


@dataclass(frozen=True)
class PublishedAccuracy:
    """A published ImageNet-1k top-1 of one model spec with one set of weights, and where it was published."""

    spec: str
    top1: float
    weights: str
    source: str


#: timm's own evaluations: results/results-imagenet.csv (commit 4e5207c, 2025-10-30), the row at 224x224 of each
#: weights tag. The first entry of each architecture is the tag `timm.create_model(NAME, pretrained=True)` loads in
#: timm 1.0.31 (for mobilenetv4_conv_medium, whose default is a 256-pixel model, the 224-pixel e500_r224 weights);
#: the ra4_e3600 entries are timm's newer recipe for the same architectures.
_TIMM_CSV = "timm results/results-imagenet.csv (commit 4e5207c, 2025-10-30), 224x224 row"
FRONT_PEERS: tuple[PublishedAccuracy, ...] = (
    PublishedAccuracy("timm:mobilenetv3_large_100", 75.784, "ra_in1k", _TIMM_CSV),
    PublishedAccuracy("timm:mobilenetv3_large_100", 76.310, "ra4_e3600_r224_in1k", _TIMM_CSV + ", crop 0.95"),
    PublishedAccuracy("timm:mobilenetv3_small_100", 67.636, "lamb_in1k", _TIMM_CSV),
    PublishedAccuracy("timm:efficientnet_b0", 77.698, "ra_in1k", _TIMM_CSV),
    PublishedAccuracy("timm:efficientnet_b0", 78.568, "ra4_e3600_r224_in1k", _TIMM_CSV + ", crop 0.9"),
    PublishedAccuracy("timm:efficientnet_lite0", 75.488, "ra_in1k", _TIMM_CSV),
    PublishedAccuracy("timm:mobilenetv4_conv_small", 73.756, "e2400_r224_in1k", _TIMM_CSV),
    PublishedAccuracy("timm:mobilenetv4_conv_medium", 79.092, "e500_r224_in1k", _TIMM_CSV),
)


def our_published(models: Optional[Sequence[str]] = None) -> list[PublishedAccuracy]:
    """Our models with a published top-1 in the weights table (`ghostnet.weights`), each with the weights
    `pretrained=True` loads (its default tag); `models` restricts the list (ValueError for one without a top-1)."""
    from ..weights import default_tag, get_weights, models_with_weights

    entries = {}
    for name in models_with_weights():
        weights = get_weights(name, default_tag(name))
        if weights.top1 is not None:
            entries[name] = PublishedAccuracy(name, weights.top1, weights.tag, weights.accuracy_source)
    if models is None:
        return list(entries.values())
    missing = [name for name in models if name not in entries]
    if missing:
        raise ValueError(f"no published top-1 for {missing} in the weights table; models with one: "
                         f"{', '.join(entries)}")
    return [entries[name] for name in models]


def peers_published(specs: Optional[Sequence[str]] = None) -> list[PublishedAccuracy]:
    """The entries of `FRONT_PEERS` (all, or those of the given specs: ValueError for a spec without one)."""
    if specs is None:
        return list(FRONT_PEERS)
    known = {entry.spec for entry in FRONT_PEERS}
    missing = [spec for spec in specs if spec not in known]
    if missing:
        raise ValueError(f"no published top-1 is listed for peer(s) {missing} (deploy.front.FRONT_PEERS); "
                         f"listed: {', '.join(sorted(known))}")
    return [entry for entry in FRONT_PEERS if entry.spec in specs]


def front_entries(models: Optional[Sequence[str]] = None,
                  peers: Optional[Sequence[str]] = None) -> list[PublishedAccuracy]:
    """What a front measures: our models with a published top-1 (all, or `models`) and the listed peers (all, or
    those of `peers`)."""
    return our_published(models) + peers_published(peers)


def default_front_backends(device: str = "cpu") -> list[str]:
    """Each model at its fastest here: "best" (its fastest exact form and runtime) on a CPU with a file runtime
    installed, else fused/eager PyTorch."""
    if device == "cpu" and any(r.tunable for r in list_runtimes(available=True, files=True)):
        return [BEST]
    return ["fused", "eager"]


@dataclass
class FrontPoint:
    """One published accuracy at the latency measured for its architecture (milliseconds per call)."""

    label: str
    source: str
    weights: str
    top1: float
    top1_source: str
    backend: str
    threads: int
    latency_ms: float  # the harness's best-round median
    median_ms: float
    cpu_ms: float
    macs: int
    params: int
    on_front: bool = False
    runtime: str = ""  # the runtime the backend ran in ("best": the one chosen for this model)


@dataclass
class FrontResult:
    """The points and the benchmark run they were measured in (config, machine, every row)."""

    points: list[FrontPoint]
    bench: BenchResult
    entries: list[PublishedAccuracy] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {"points": [asdict(p) for p in self.points], "entries": [asdict(e) for e in self.entries],
                "bench": self.bench.to_dict()}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points that no other point dominates (one at most as slow and at least as
    accurate, and strictly better in one of the two), fastest first. Equal points do not dominate each other."""
    def dominated(latency: float, accuracy: float) -> bool:
        return any(other_latency <= latency and other_accuracy >= accuracy
                   and (other_latency < latency or other_accuracy > accuracy)
                   for other_latency, other_accuracy in points)

    kept = [i for i, (latency, accuracy) in enumerate(points) if not dominated(latency, accuracy)]
    return sorted(kept, key=lambda i: (points[i][0], -points[i][1]))


def front_points(bench: BenchResult, entries: Sequence[PublishedAccuracy]) -> list[FrontPoint]:
    """One point per entry and thread count, at the fastest backend measured for its model; fronts marked."""
    from ..models.spec import parse_model_spec

    points = []
    for threads in sorted({row.threads for row in bench.rows}):
        rows = [row for row in bench.rows if row.threads == threads]
        group = []
        for entry in entries:
            label = parse_model_spec(entry.spec).label
            measured = [row for row in rows if row.model == label]
            if not measured:
                continue  # skipped: its backend or package is not available here (see bench.skipped)
            row = min(measured, key=lambda r: r.best_round_ms)
            group.append(FrontPoint(label, row.source, entry.weights, entry.top1, entry.source, row.backend, threads,
                                    row.best_round_ms, row.median_ms, row.cpu_ms, row.macs, row.params,
                                    runtime=row.runtime or row.backend))
        for i in pareto_front([(p.latency_ms, p.top1) for p in group]):
            group[i].on_front = True
        points += sorted(group, key=lambda p: (p.latency_ms, -p.top1))
    return points


def run_front(cfg: BenchConfig, entries: Sequence[PublishedAccuracy],
              progress: Optional[Callable[[str], None]] = None) -> FrontResult:
    """Time every entry's architecture once (ours from `cfg.models`, peers from `cfg.peers`, taken from
    `entries`), interleaved at each of `cfg.threads`, and put each published top-1 at its measured latency."""
    ours = [e.spec for e in entries if ":" not in e.spec]
    peers = [e.spec for e in entries if ":" in e.spec]
    cfg = replace(cfg, models=list(dict.fromkeys(ours)), peers=list(dict.fromkeys(peers)))
    bench = run_benchmark(cfg, progress)
    return FrontResult(front_points(bench, entries), bench, list(entries))


def machine_caption(front: FrontResult) -> str:
    """CPU model, ISA, thread counts, batch, image size and versions (of every runtime a point ran in): written
    beside every figure."""
    env, cfg = front.bench.environment, front.bench.config
    threads = ", ".join(str(t) for t in cfg["threads"])
    runtimes = sorted({p.runtime for p in front.points if p.runtime} - {"eager"}) or ["onnxruntime"]
    versions = "".join(f", {runtime} {env.get(runtime, 'n/a')}" for runtime in runtimes)
    return (f"{env['cpu']} ({env.get('isa', 'n/a')}), {threads} thread(s), batch {cfg['batch_size']}, "
            f"{cfg['image_size']}x{cfg['image_size']}; torch {env['torch']}{versions}, timm {env['timm']}; "
            f"{env['date']}")


def front_markdown(front: FrontResult) -> str:
    """A table per thread count, fastest first; front points in bold."""
    env = front.bench.environment
    lines = [f"Machine: {machine_caption(front)}; load average before {_fmt_load(env.get('load_average'))}, after "
             f"{_fmt_load(env.get('load_average_after'))}.", ""]
    for threads in sorted({p.threads for p in front.points}):
        lines += [f"**{threads} thread(s)**: published ImageNet top-1 against latency (best-round median); "
                  "on the Pareto front: no other model is as fast and as accurate.", "",
                  "| model | weights | top-1 | latency ms | CPU ms/call | backend | MACs (M) | params (M) | front |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for p in (p for p in front.points if p.threads == threads):
            name = f"**{p.label}**" if p.on_front else p.label
            backend = p.backend if p.runtime in (p.backend, "") else f"{p.backend} ({p.runtime})"
            lines.append(f"| {name} | {p.weights} | {p.top1:.2f} | {p.latency_ms:.2f} | {p.cpu_ms:.2f} | "
                         f"{backend} | {p.macs / 1e6:.0f} | {p.params / 1e6:.2f} | {'yes' if p.on_front else ''} |")
        lines.append("")
    if front.bench.skipped:
        lines += ["Skipped: " + "; ".join(front.bench.skipped), ""]
    return "\n".join(lines)


#: Marker of each runtime in the front's plot (the runtime each point ran in; others get a diamond).
RUNTIME_MARKERS = {"onnxruntime": "o", "openvino": "s", "ncnn": "^", "litert": "v", "executorch": "P",
                   "eager": "X", "compile": "*"}


def draw_front(front: FrontResult):
    """The figure of published top-1 against measured latency, one panel per thread count, the front as a step line,
    ours blue and peers orange, each runtime its marker, every point numbered (no label over another or over a
    point) and named in a key beside the axes."""
    thread_counts = sorted({p.threads for p in front.points})
    fig = new_figure(figsize=(11 * len(thread_counts), 8))
    from matplotlib.lines import Line2D  # after new_figure, which says how to install matplotlib
    from matplotlib.ticker import FormatStrFormatter

    axes = fig.subplots(1, len(thread_counts), squeeze=False)[0]
    colors = {"ghostnet": "tab:blue"}
    groups = []
    for ax, threads in zip(axes, thread_counts):
        group = [p for p in front.points if p.threads == threads]
        # Numbers in latency order, so that the key reads as the table does.
        numbered = sorted(group, key=lambda p: (p.latency_ms, -p.top1))
        groups.append((group, numbered))
        for p in group:
            ax.scatter(p.latency_ms, p.top1, color=colors.get(p.source, "tab:orange"), s=24, zorder=3,
                       marker=RUNTIME_MARKERS.get(p.runtime, "D"), edgecolors="black" if p.on_front else "none")
        front_line = sorted((p for p in group if p.on_front), key=lambda p: p.latency_ms)
        xs = [p.latency_ms for p in front_line] + [max(p.latency_ms for p in group) * 1.05]
        ys = [p.top1 for p in front_line] + [front_line[-1].top1]
        ax.step(xs, ys, where="post", color="tab:red", linewidth=1)
        ax.set_xscale("log")
        for axis_format in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis_format(FormatStrFormatter("%.3g"))  # plain milliseconds, not powers of ten
        ax.tick_params(axis="x", which="both", labelsize=7)
        ax.set_xlabel("latency, best-round median (ms, log scale)")
        ax.set_ylabel("published ImageNet top-1 (%)")
        ax.set_title(f"{threads} thread(s): ours (blue) and timm peers (orange), each in its runtime", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        runtimes = sorted({p.runtime for p in group})
        ax.legend([Line2D([], [], color="tab:red", linewidth=1)]
                  + [Line2D([], [], linestyle="", marker=RUNTIME_MARKERS.get(r, "D"), color="gray") for r in runtimes],
                  ["Pareto front"] + runtimes, fontsize=7, loc="lower right")
        ax.margins(x=0.08, y=0.08)
        # Each point is numbered (short labels find room even in the crowd between 2 and 12 ms) and the key beside
        # the axes names it.
        key = [f"{n:>2}{'*' if p.on_front else ' '} {p.label.removeprefix('timm/')} ({p.weights}, {p.runtime})"
               for n, p in enumerate(numbered, 1)]
        ax.text(1.01, 1.0, "\n".join(["* on the front", *key]), transform=ax.transAxes, va="top", ha="left",
                fontsize=6.5, family="monospace")
    fig.text(0.01, 0.005, machine_caption(front), fontsize=6.5)
    # Labels last, in display pixels: the layout and the axes' limits must be final first (tight_layout moves the
    # axes, and autoscaled limits are only computed when asked for), so fix both, then place.
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    for ax, (group, numbered) in zip(axes, groups):
        ax.set_xlim(ax.get_xlim())
        ax.set_ylim(ax.get_ylim())
        numbers = {id(p): n for n, p in enumerate(numbered, 1)}
        labelled = sorted(group, key=lambda p: (not p.on_front, p.latency_ms))  # front labels matter most
        place_labels(ax, [(p.latency_ms, p.top1, str(numbers[id(p)])) for p in labelled], fontsize=7)
    return fig


def plot_front(front: FrontResult, path: PathLike) -> Path:
    """`draw_front` saved as a PNG at `path`."""
    return save_png(draw_front(front), path)


def write_front(front: FrontResult, out_dir: PathLike, name: str = "front", plot: bool = True) -> list[Path]:
    """Write NAME.json, NAME.md and (with matplotlib) NAME.png into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"{name}.json", out_dir / f"{name}.md"]
    with atomic_write(paths[0]) as tmp:
        tmp.write_text(json.dumps(front.to_dict(), indent=2))
    with atomic_write(paths[1]) as tmp:
        tmp.write_text(front_markdown(front))
    if plot and front.points:
        paths.append(plot_front(front, out_dir / f"{name}.png"))
    return paths
