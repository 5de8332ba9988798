"""The export pipeline behind `ghostnet export`: build a registered model, put it in its deployment form (`forms`:
fused, channels aligned, single-path or split Ghost modules, int8-calibrated), write it with the runtime the format
names (`runtimes`), and check the written file against the model.

It lives beside `export.py` rather than in it because it calibrates with `quantize.py`, which itself runs ONNX files.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn as nn

from ..hardware import cpu_isa
from ..utils import PathLike
from .align import AUTO, resolve_alignment
from .exactness import eager_and_reference, float32_parity, max_error
from .export import load_exported
from .forms import SINGLE_PATH_CHOICES, Form, build_form
from .fusion import example_input_for
from .runtimes import runtime_for_format

#: Check of an int8 program: largest output difference allowed, relative to the largest float output.
INT8_CHECK_RELATIVE = 0.25

__all__ = ["INT8_CHECK_RELATIVE", "SINGLE_PATH_CHOICES", "DeploymentExport", "ExportCheck", "check_file",
           "export_for_deployment"]


@dataclass
class ExportCheck:
    """The written file against the model on one batch: its largest absolute difference from the model's float64
    output, the batch size, and the limit it keeps (what float32 rounding explains; for int8, a fraction of the
    output's scale)."""

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
            raise ValueError(f"exported model differs from the model by {self.difference:.3g} "
                             f"(> {self.limit:.3g}, what float32 rounding explains)")


def check_file(path: PathLike, model: nn.Module, batch: torch.Tensor, threads: Optional[int] = None,
               int8: bool = False) -> ExportCheck:
    """Run the file at `path` and `model` on `batch` and compare: a float file against the model's float64 output
    within what float32 rounding explains (`exactness`), an int8 one within INT8_CHECK_RELATIVE of the scale."""
    got = load_exported(path, threads=threads)(batch)
    eager, reference = eager_and_reference(model, batch)
    if int8:
        return ExportCheck(max_error(got, eager), len(batch), INT8_CHECK_RELATIVE * eager.abs().max().item())
    parity = float32_parity(got, eager, reference)
    return ExportCheck(parity.error, len(batch), parity.bound)


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
        """Run the written file and the model on one batch and compare their outputs."""
        x = self.example_input
        batch = torch.cat([x, x[:1]]) if self.dynamic_batch else x  # a batch size the export did not see
        if self.calibration_images is not None:
            batch = self.calibration_images[:1]  # a real image: int8 ranges are calibrated for those, not for noise
        return check_file(self.path, self.model, batch, int8=self.calibration_images is not None)


def _describe(fmt: str, int8: bool, form: Form, export_form: nn.Module, auto: bool = False) -> str:
    """The form of a written file as `ghostnet export` reports it: "onnx, fused, channels aligned to 16, ..."."""
    parts = [fmt] + (["int8"] if int8 else []) + (["fused"] if form.fused else [])
    chosen = f" (auto: {cpu_isa()} CPU)" if auto else ""
    if form.align:
        parts.append(f"channels aligned to {form.align}{chosen}")
    elif auto:
        parts.append(f"no channel alignment{chosen}")
    single_path = sum(getattr(m, "single_path", False) for m in export_form.modules())
    if single_path:
        parts.append(f"{single_path} single-path Ghost modules")
    if form.split:
        parts.append("split Ghost bottlenecks")
    parts.extend(f"{key}={value}" for key, value in form.options)
    return ", ".join(parts)


def export_for_deployment(model_name: str, output: PathLike, fmt: str = "onnx", *, weights: Optional[str] = None,
                          num_classes: Optional[int] = None, image_size: Optional[int] = None, fused: bool = True,
                          dynamic_batch: bool = True, align_channels: Union[int, str] = 0, single_path: str = "auto",
                          split: bool = False, int8_calibration_data: Optional[PathLike] = None,
                          num_images: int = 256, **options: Any) -> DeploymentExport:
    """Build a registered model (random weights, or `weights`), put it in its deployment form and write it to
    `output` in `fmt` (any registered runtime's format: `export.export_formats()`); `.check()` on the result
    compares the file with the model.

    `align_channels`: pad channels to multiples of this many (0: not at all), or "auto": the NCHWc block of the CPU
    this runs on (`align.nchwc_block_size`: 16 with AVX-512, 8 on other x86-64 CPUs, 0 elsewhere).
    `single_path`: "auto" (where it pays, with `align_channels` only), "all" or "none". `split`: no concat between a
    bottleneck's Ghost modules. Runtimes whose files take one shape (ExecuTorch), and any file without
    `dynamic_batch`, take batch 1. With `int8_calibration_data` (an ImageFolder root or folder of .npz shards) the
    file is quantized to int8 by the runtime's int8 exporter, calibrated on `num_images` real images of its train
    split. `options` are the runtime's own export options (ONNX: opset, exporter; OpenVINO: source).
    """
    runtime = runtime_for_format(fmt)
    runtime.require()
    unknown = sorted(set(options) - set(runtime.accepts_options))
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: not an export option of {fmt} (it takes {runtime.accepts_options})")
    from ..models import create_model

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    model = create_model(model_name, pretrained=weights, **kwargs).eval()
    x = example_input_for(model, batch_size=2, image_size=image_size)
    dynamic = dynamic_batch and "dynamic" in runtime.batch_modes
    form = Form(fused=fused, align=resolve_alignment(align_channels), single_path=single_path, split=split,
                dynamic_batch=dynamic, options=tuple(sorted(options.items())))
    export_form = build_form(model, form, x)
    if not dynamic:
        x = x[:1]  # batch 1, as a phone or a server's single request runs it
    images = None
    if int8_calibration_data:
        if runtime.export_int8 is None:
            raise ValueError(f"--int8-calibration-data: {fmt} has no int8 export here (ONNX files: ghostnet quantize)")
        from .quantize import calibration_batches, load_calibration_images

        cfg = dict(model.pretrained_cfg, input_size=tuple(x.shape[1:]))
        images = load_calibration_images(int8_calibration_data, cfg, num_images)
        path = runtime.export_int8(export_form, output, x[:1], calibration_batches(images))
    else:
        path = runtime.export(export_form, output, x, dynamic_batch=dynamic, **options)
    described = _describe(fmt, images is not None, form, export_form, auto=align_channels == AUTO)
    return DeploymentExport(path, described, model, x, dynamic, images)
