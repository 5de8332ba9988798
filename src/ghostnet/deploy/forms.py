"""Deployment forms: the exact rewrites of a model a runtime may run faster, as data (`Form`) and as the module they
give (`build_form`).

Every form computes the model's function; they differ in graph shape only:

- `fused`: re-parameterized, batch norms folded, lean Ghost blocks (`fusion.fuse`);
- `align`: channels padded with zeros to multiples of N for blocked CPU kernels (`align.align_channels`), with
  `single_path` choosing where Ghost modules drop their concat ("auto": where it pays, "all", "none");
- `split`: no concat between a bottleneck's two Ghost modules; each consumer takes the halves separately
  (`split.split_ghost_concats`; with `align`, in the blocks whose first module alignment left with its concat);
- `dfc`: GhostNetV2's attention gate in its deploy form (constant sizes) or its training form;
- `dynamic_batch`: a file for any batch size, or for batch 1 only;
- `options`: the runtime's own export options (OpenVINO's converter source, ...).

Which form is fastest depends on the runtime and the CPU (docs/deployment.md); `autotune` measures.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import torch
import torch.nn as nn

from .fusion import fuse, single_path_ghost_modules

SINGLE_PATH_CHOICES = ("auto", "all", "none")
DFC_FORMS = ("deploy", "training")

__all__ = ["DFC_FORMS", "SINGLE_PATH_CHOICES", "Form", "build_form", "has_dfc"]


@dataclass(frozen=True)
class Form:
    """One exact deployment form of a model (see the module docstring)."""

    fused: bool = True
    align: int = 0
    single_path: str = "auto"
    split: bool = False
    dfc: str = "deploy"
    dynamic_batch: bool = True
    options: tuple[tuple[str, Any], ...] = field(default_factory=tuple)

    def validate(self) -> None:
        """ValueError for combinations no rewrite provides."""
        if self.single_path not in SINGLE_PATH_CHOICES:
            raise ValueError(f"single_path must be one of {SINGLE_PATH_CHOICES}, got {self.single_path!r}")
        if self.dfc not in DFC_FORMS:
            raise ValueError(f"dfc must be one of {DFC_FORMS}, got {self.dfc!r}")
        if self.align < 0:
            raise ValueError(f"channel alignment must be >= 0, got {self.align}")
        if not self.fused and (self.align or self.single_path == "all" or self.split or self.dfc != "deploy"):
            raise ValueError("--align-channels, --single-path all, --split and the DFC's training form need the fused "
                             "model (drop --no-fuse)")
        if self.dfc == "training" and self.align:
            raise ValueError("channel alignment rewrites the DFC gate in its deploy form")

    def describe(self) -> str:
        """"fused, split, static batch, source=pytorch" and the like."""
        parts = ["fused" if self.fused else "unfused"]
        if self.align:
            parts.append(f"channels aligned to {self.align} (single-path {self.single_path})")
        elif self.single_path == "all":
            parts.append("single-path Ghost modules")
        if self.split:
            parts.append("split")
        if self.dfc != "deploy":
            parts.append(f"DFC {self.dfc} form")
        parts.append("dynamic batch" if self.dynamic_batch else "static batch")
        parts.extend(f"{key}={value}" for key, value in self.options)
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a JSON record (options as a mapping)."""
        data = asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Form":
        """The form a `to_dict` record describes."""
        data = dict(data)
        data["options"] = tuple(sorted(dict(data.get("options") or {}).items()))
        return cls(**data)


def has_dfc(model: nn.Module) -> bool:
    """Whether a fused model has GhostNetV2 DFC gates (so the DFC form is a choice)."""
    from .dfc import DeployDFC

    return any(isinstance(m, DeployDFC) for m in model.modules())


def build_form(model: nn.Module, form: Form, example_input: Optional[torch.Tensor] = None) -> nn.Module:
    """`model` (eval mode) in `form`: a rewritten copy where anything changes, the model itself otherwise."""
    form.validate()
    if not form.fused:
        return model
    built = fuse(model, example_input=None if example_input is None else example_input[:1])
    if form.align:
        from .align import align_channels

        built = align_channels(built, form.align, {"auto": None, "all": True, "none": False}[form.single_path])
    elif form.single_path == "all":
        single_path_ghost_modules(built)
    if form.split:  # after alignment: the blocks whose first module kept its concat split (can_split)
        from .split import split_ghost_concats

        split_ghost_concats(built)
    if form.dfc == "training":
        from .dfc import use_training_form_dfc

        use_training_form_dfc(built)
    return built
