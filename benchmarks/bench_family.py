"""The rest of the Ghost family against the models users compare them with, side by side in one process each:

1. RepGhostNet 1.0x / 1.11x against GhostNet 1.0x and timm's mobilenetv3_large_100: batch 1, 224x224, 1 and 2
   threads, eager, the eager fused form and onnxruntime (latency; ratio to MobileNetV3-Large on the same backend,
   its eager form for our fused rows);
2. G-Ghost RegNetX-3.2GF against timm's regnetx_032, torchvision's resnet50 and, when its file is given, the
   official network (its structure: the Stage that concatenates full-size maps before pooling): batch 16, 2 threads,
   eager (images/s; ratio to timm's regnetx_032).

    python benchmarks/bench_family.py --out results/family \
        --official-g-ghost /path/to/Efficient-AI-Backbones/g_ghost_pytorch   # folder holding g_ghost_regnet.py

The official file is not part of this project; it is imported through the model-spec grammar
(`g_ghost_regnet:g_ghost_regnetx_032`) when its folder is given. Results: OUT_repghost.{json,md},
OUT_g_ghost.{json,md}, and the ratio tables printed at the end (for docs/benchmarks.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ghostnet.deploy.bench import BenchConfig, run_benchmark, to_markdown, write_report

REPGHOST_MODELS = ["repghostnet_100", "repghostnet_111", "ghostnet_100"]
REPGHOST_PEERS = ["timm:mobilenetv3_large_100"]
G_GHOST_PEERS = ["timm:regnetx_032", "torchvision:resnet50"]
OFFICIAL_G_GHOST = "g_ghost_regnet:g_ghost_regnetx_032"


def ratio_table(result, reference_model: str, field: str, title: str) -> str:
    """Markdown: each row's `field` over the reference model's on the same backend and thread count."""
    rows = sorted(result.rows, key=lambda r: (r.backend, r.threads, r.model))
    ref = {(r.backend, r.threads): getattr(r, field) for r in rows if r.model == reference_model}
    lines = [f"| model | backend | threads | {field} | {title} |", "|---|---|---|---|---|"]
    for r in rows:
        # Peers have no fused form: the fused rows of ours are compared with the reference's eager row.
        base = ref.get((r.backend, r.threads)) or ref.get(("eager", r.threads))
        value = getattr(r, field)
        shown = f"{value / base:.2f}" if base else "-"
        lines.append(f"| {r.model} | {r.backend} | {r.threads} | {value:.2f} | {shown} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("results/family"), help="output prefix")
    parser.add_argument("--official-g-ghost", type=Path, help="folder holding the official g_ghost_regnet.py")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--only", choices=("repghost", "g_ghost"), help="run one of the two comparisons")
    args = parser.parse_args()
    progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    tables = []
    if args.only in (None, "repghost"):
        cfg = BenchConfig(models=REPGHOST_MODELS, peers=REPGHOST_PEERS, backends=["eager", "fused", "onnxruntime"],
                          threads=[1, 2], batch_size=1, rounds=args.rounds, reps=args.reps)
        result = run_benchmark(cfg, progress=progress)
        write_report(result, args.out.parent, f"{args.out.name}_repghost", plot=False,
                     reference="timm/mobilenetv3_large_100/onnxruntime")
        print(to_markdown(result, "timm/mobilenetv3_large_100/onnxruntime"))
        tables.append(ratio_table(result, "timm/mobilenetv3_large_100", "best_round_ms",
                                  "latency / mobilenetv3_large_100 (same backend)"))
    if args.only in (None, "g_ghost"):
        peers = list(G_GHOST_PEERS)
        if args.official_g_ghost:
            sys.path.insert(0, str(args.official_g_ghost.resolve()))
            peers.append(OFFICIAL_G_GHOST)
        cfg = BenchConfig(models=["g_ghost_regnetx_032"], peers=peers, backends=["eager", "fused"], threads=[2],
                          batch_size=16, rounds=max(3, args.rounds // 2), reps=max(3, args.reps // 4))
        result = run_benchmark(cfg, progress=progress)
        write_report(result, args.out.parent, f"{args.out.name}_g_ghost", plot=False,
                     reference="timm/regnetx_032/eager")
        print(to_markdown(result, "timm/regnetx_032/eager"))
        tables.append(ratio_table(result, "timm/regnetx_032", "images_per_s", "images/s / timm regnetx_032"))
    print("\n\n".join(tables))
    print(f"command: python {' '.join(sys.argv)}")


if __name__ == "__main__":
    main()
