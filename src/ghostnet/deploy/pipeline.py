"""The export pipeline behind `ghostnet export`: build a registered model, put it in its deployment form (fused,
channels aligned, single-path Ghost modules, int8-calibrated), write it in one of the export formats, and check the
written file against the eager model.

It lives beside `export.py` rather than in it because it calibrates with `quantize.py`, which itself runs ONNX files
through `export.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..utils import PathLike
from .align import AUTO, resolve_alignment
from .export import DEFAULT_OPSET, export_model, load_exported
from .fusion import example_input_for, fuse, single_path_ghost_modules
from .machine import cpu_isa

#: `--single-path` choices: where a Ghost module drops its concat (see `align.align_channels`).
SINGLE_PATH_CHOICES = ("auto", "all", "none")
#: Check of a float export: largest output difference allowed against the eager model.
FLOAT_CHECK_ABSOLUTE = 1e-4
#: Check of an int8 program: largest output difference allowed, relative to the largest float output.
INT8_CHECK_RELATIVE = 0.25

__all__ = ["FLOAT_CHECK_ABSOLUTE", "INT8_CHECK_RELATIVE", "SINGLE_PATH_CHOICES", "DeploymentExport", "ExportCheck",
           "export_for_deployment"]


@dataclass
class ExportCheck:
    """The written file against the eager model on one batch: largest absolute difference and the limit it keeps."""

    difference: float
    batch_size: int
    limit: float

    @property
    def passed(self) -> bool:
        """Whether the difference stays within the limit."""
        return not self.difference > self.limit

    def raise_if_failed(self) -> None:
        """Raise ValueError when the difference is over the limit."""
        if not self.passed:
            raise ValueError(f"exported model differs from the eager model by {self.difference:.3g} "
                             f"(> {self.limit:.3g})")


@dataclass
class DeploymentExport:
    """What `export_for_deployment` wrote (`path`), its form ("onnx, fused, channels aligned to 16"), and what
    `check` compares the file with."""

    path: Path
    form: str
    model: nn.Module  # the eager model the file was made from
    example_input: torch.Tensor  # the batch it was exported with
    dynamic_batch: bool
    calibration_images: Optional[torch.Tensor] = None  # int8 programs: the images their ranges were calibrated on

    def check(self) -> ExportCheck:
        """Run the written file and the eager model on one batch and compare their outputs."""
        exported = load_exported(self.path)
        x = self.example_input
        batch = torch.cat([x, x[:1]]) if self.dynamic_batch else x  # a batch size the export did not see
        if self.calibration_images is not None:
            batch = self.calibration_images[:1]  # a real image: int8 ranges are calibrated for those, not for noise
        with torch.no_grad():
            reference = self.model(batch)
            difference = (exported(batch) - reference).abs().max().item()
        # int8 is judged on data (accuracy); the check only catches a broken quantization.
        limit = (INT8_CHECK_RELATIVE * reference.abs().max().item() if self.calibration_images is not None
                 else FLOAT_CHECK_ABSOLUTE)
        return ExportCheck(difference, len(batch), limit)


def _deployment_form(model: nn.Module, x: torch.Tensor, fused: bool, align_channels: int,
                     single_path: str) -> nn.Module:
    """`model` fused, channel-aligned and with single-path Ghost modules as asked (a copy where anything changes)."""
    export_form = fuse(model, example_input=x) if fused else model
    if (align_channels or single_path == "all") and not fused:
        raise ValueError("--align-channels and --single-path all need the fused model (drop --no-fuse)")
    if align_channels:
        from .align import align_channels as align  # the function; the argument shadows its name here

        return align(export_form, align_channels, {"auto": None, "all": True, "none": False}[single_path])
    if single_path == "all":
        single_path_ghost_modules(export_form)
    return export_form


def _describe(fmt: str, int8: bool, fused: bool, align_channels: int, export_form: nn.Module,
              auto: bool = False) -> str:
    """The form of a written file as `ghostnet export` reports it: "onnx, fused, channels aligned to 16, ..."."""
    form = [fmt] + (["int8"] if int8 else []) + (["fused"] if fused else [])
    chosen = f" (auto: {cpu_isa()} CPU)" if auto else ""
    if align_channels:
        form.append(f"channels aligned to {align_channels}{chosen}")
    elif auto:
        form.append(f"no channel alignment{chosen}")
    single_path = sum(getattr(m, "single_path", False) for m in export_form.modules())
    if single_path:
        form.append(f"{single_path} single-path Ghost modules")
    return ", ".join(form)


def export_for_deployment(model_name: str, output: PathLike, fmt: str = "onnx", *, weights: Optional[str] = None,
                          num_classes: Optional[int] = None, image_size: Optional[int] = None, fused: bool = True,
                          opset: int = DEFAULT_OPSET, exporter: str = "torchscript", dynamic_batch: bool = True,
                          align_channels: Union[int, str] = 0, single_path: str = "auto",
                          int8_calibration_data: Optional[PathLike] = None,
                          num_images: int = 256) -> DeploymentExport:
    """Build a registered model (random weights, or `weights`), put it in its deployment form and write it to
    `output` in `fmt` (one of `export.EXPORT_FORMATS`); `.check()` on the result compares the file with the model.

    `align_channels`: pad channels to multiples of this many (0: not at all), or "auto": the NCHWc block of the CPU
    this runs on (`align.nchwc_block_size`: 16 with AVX-512, 8 on other x86-64 CPUs, 0 elsewhere).
    `single_path`: "auto" (where it pays, with `align_channels` only), "all" or "none". ExecuTorch programs, and ONNX
    or torch.export files without `dynamic_batch`, take batch 1. With `int8_calibration_data` (an ImageFolder root or
    folder of .npz shards) ExecuTorch programs are quantized to int8, calibrated on `num_images` real images of its
    train split.
    """
    if single_path not in SINGLE_PATH_CHOICES:
        raise ValueError(f"single_path must be one of {SINGLE_PATH_CHOICES}, got {single_path!r}")
    from ..models import create_model

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(model_name, pretrained=weights, **kwargs).eval()
    x = example_input_for(model, batch_size=2, image_size=image_size)
    requested = align_channels
    align_channels = resolve_alignment(align_channels)
    export_form = _deployment_form(model, x, fused, align_channels, single_path)
    # A static shape (ExecuTorch, or a file without a dynamic batch): batch 1, as a phone or a server's single
    # request runs it.
    static = fmt == "executorch" or (not dynamic_batch and fmt in ("onnx", "torch.export"))
    if static:
        x = x[:1]
    extra: dict[str, Any] = {} if fmt in ("torchscript", "executorch") else {"dynamic_batch": dynamic_batch}
    if fmt == "onnx":
        extra.update(opset=opset, exporter=exporter)
    images = None
    if int8_calibration_data:
        if not static:
            raise ValueError("--int8-calibration-data is for --format executorch (ONNX files: ghostnet quantize)")
        from .quantize import calibration_batches, load_calibration_images

        cfg = dict(model.pretrained_cfg, input_size=tuple(x.shape[1:]))
        images = load_calibration_images(int8_calibration_data, cfg, num_images)
        extra["calibration"] = calibration_batches(images)
    path = export_model(export_form, output, x, fmt, **extra)
    form = _describe(fmt, images is not None, fused, align_channels, export_form, auto=requested == AUTO)
    return DeploymentExport(path, form, model, x, dynamic_batch and not static, images)
