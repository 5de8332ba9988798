"""What the latency harness measures and what it reports: the settings, the backends, the result rows, and the models
it times (any model spec) with their cost."""
from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..constants import DTYPES

from .runtimes import RuntimeUnavailable, list_runtimes

#: Backends that are a form of our models run in the eager runtime (peers have no Ghost-aware fusion).
FORM_BACKENDS = {"fused": "eager", "single-path": "eager"}
OWN_ONLY_BACKENDS = tuple(FORM_BACKENDS)
#: A runtime's int8 file: "onnxruntime-int8", "executorch-int8".
INT8_SUFFIX = "-int8"
#: Each model in its fastest exact form and runtime here (ours: `--format auto`; peers: plain export, every runtime).
BEST = "best"
MODES = ("infer", "train")
DEFAULT_PEERS = ("timm:ghostnet_100", "timm:mobilenetv3_large_100", "torchvision:mobilenet_v3_large")

__all__ = ["BEST", "DEFAULT_PEERS", "FORM_BACKENDS", "INT8_SUFFIX", "MODES", "OWN_ONLY_BACKENDS",
           "BenchConfig", "BenchResult", "BenchRow", "PreparedModel", "RuntimeUnavailable", "build_model",
           "known_backends"]


def known_backends() -> tuple[str, ...]:
    """Every backend name: each registered runtime, its int8 form where it has one, the form aliases and "best"."""
    names = [r.name for r in list_runtimes()]
    names += [r.name + INT8_SUFFIX for r in list_runtimes() if r.export_int8 is not None]
    return tuple(names) + OWN_ONLY_BACKENDS + (BEST,)


@dataclass
class BenchConfig:
    """What to measure. `models` are registry names; `peers` are "timm:NAME" or "torchvision:NAME"."""

    models: Sequence[str] = ("ghostnet_100",)
    peers: Sequence[str] = DEFAULT_PEERS
    backends: Sequence[str] = ("eager", "fused", "onnxruntime")
    threads: Sequence[int] = (1, 2)
    batch_size: int = 1
    image_size: int = 224
    rounds: int = 5
    reps: int = 20
    warmup: int = 5
    device: str = "cpu"
    dtype: str = "float32"
    # None: channels-last for inference; in train mode what `ghostnet train --channels-last auto` would choose
    channels_last: Optional[bool] = None
    cuda_graphs: bool = False
    mode: str = "infer"
    # onnxruntime and executorch backends, our GhostNets: "auto" (or None) = the CPU's NCHWc block, 0 = off
    align_channels: Union[int, str, None] = "auto"
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError for settings the harness cannot run."""
        unknown = [b for b in self.backends if b not in known_backends()]
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; expected some of {known_backends()}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "train" and set(self.backends) - {"eager", "compile"}:
            raise ValueError("train mode measures the 'eager' and 'compile' backends only")
        if self.mode == "train" and (self.cuda_graphs or self.dtype == "float16"):
            raise ValueError("train mode runs float32 or bfloat16 autocast, without CUDA graphs")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.device == "cpu" and self.dtype != "float32":
            raise ValueError("on CPU only float32 is measured (use the int8 backend for reduced precision)")
        if self.cuda_graphs and self.device != "cuda":
            raise ValueError("cuda_graphs needs device='cuda'")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        for name, value in (("batch_size", self.batch_size), ("image_size", self.image_size),
                            ("rounds", self.rounds), ("reps", self.reps)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not self.threads or min(self.threads) < 1:
            raise ValueError(f"threads must be positive integers, got {list(self.threads)}")
        auto = self.align_channels is None or self.align_channels == "auto"
        if not auto and not (isinstance(self.align_channels, int) and self.align_channels >= 0):
            raise ValueError(f"align_channels must be an integer >= 0 or 'auto', got {self.align_channels!r}")
        if not self.models and not self.peers:
            raise ValueError("nothing to measure: give at least one model or peer")


@dataclass
class BenchRow:
    """One candidate's measurements (times in milliseconds per call)."""

    model: str
    source: str
    backend: str
    threads: int
    batch_size: int
    image_size: int
    device: str
    dtype: str
    mode: str
    median_ms: float
    p25_ms: float
    p75_ms: float
    best_round_ms: float
    cpu_ms: float
    images_per_s: float
    macs: int
    params: int
    calls: int
    runtime: str = ""  # the runtime the backend ran in, where that is not its name ("best": the one chosen)


@dataclass
class BenchResult:
    """Rows plus what produced them: config, machine, versions, load average before and after, skipped candidates."""

    config: dict[str, Any]
    environment: dict[str, Any]
    rows: list[BenchRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, ready for JSON."""
        return {"config": self.config, "environment": self.environment, "rows": [asdict(r) for r in self.rows],
                "skipped": self.skipped}


@dataclass
class PreparedModel:
    """A model to time, with its label, source, cost and the files exported from it (kept for every thread count)."""

    label: str
    source: str
    model: nn.Module
    macs: int
    params: int
    export_files: dict[str, Path] = field(default_factory=dict)


def build_model(spec: str, num_classes: Optional[int] = None) -> tuple[str, str, nn.Module]:
    """(label, source, model in eval mode) for any model spec (ghostnet.models.spec: NAME, timm:NAME,
    torchvision:NAME, package.module:callable); source is ghostnet, timm, torchvision or import."""
    from ..models.spec import create_from_spec, parse_model_spec

    parsed = parse_model_spec(spec)
    if parsed.source == "timm" and importlib.util.find_spec("timm") is None:
        raise RuntimeUnavailable("timm is not installed")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return parsed.label, parsed.source, create_from_spec(parsed, **kwargs).eval()
