"""What the runtime benchmarks (bench_ncnn.py, bench_litert.py) share: timm's models as timm users deploy them,
and writing a table as OUT.md and OUT.json."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ghostnet.utils import atomic_write


def timm_model(name: str) -> torch.nn.Module:
    """timm's model as its users deploy it: random weights (latency does not depend on them), re-parameterized."""
    import timm
    from timm.utils.model import reparameterize_model

    return reparameterize_model(timm.create_model(name).eval())


def write(out: Path, lines: list[str], data: dict) -> None:
    """OUT.md (the tables) and OUT.json (everything)."""
    print("\n".join(lines))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    with atomic_write(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.json')}")
