"""The runtime registry: every inference runtime is one `Runtime` record, registered by its own module.

A runtime says what it is called, which file it reads (format name and suffix; none for runtimes that run the
PyTorch module in this process), how to write that file from a model (`export`, and `export_int8` where it has an
int8 form), how to load and run it (`load`, returning a `Session`), which batch forms its files can take, which
export options `--format auto` may vary, which Python package it needs and which extra installs it. Export, the
bench harness, the front and the commands look runtimes up here; none of them names one in a branch.

Adding a runtime is one module in this folder that calls `register_runtime` (plus its import in `__init__`), or,
outside the package, a call to `register_runtime` before use.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from ...utils import PathLike

__all__ = ["MissingRuntime", "Runtime", "RuntimeUnavailable", "Session", "TorchSession", "as_output", "get_runtime",
           "list_runtimes", "register_runtime", "runtime_for_file", "runtime_for_format", "unregister_runtime"]

Output = Union[torch.Tensor, list[torch.Tensor]]


class RuntimeUnavailable(RuntimeError):
    """A runtime that cannot run here (package missing, device or mode it does not serve)."""


class MissingRuntime(RuntimeUnavailable, ImportError):
    """The runtime's Python package is not installed (the message says which extra installs it)."""


def as_output(outputs: Sequence[Any]) -> Output:
    """Outputs as torch tensors: one output as a tensor, several as a list (copies: runtimes reuse their buffers)."""
    tensors = [torch.as_tensor(o).clone() for o in outputs]
    return tensors[0] if len(tensors) == 1 else tensors


class Session:
    """A loaded model. Call it on a float tensor for its output(s); `bind(x)` gives a zero-argument call that runs
    `x` with the input already in the runtime's own form (what the bench harness times)."""

    def __call__(self, x: torch.Tensor) -> Output:
        raise NotImplementedError

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        """A zero-argument call running `x`; sessions override it to convert `x` once rather than per call."""
        return lambda: self(x)


class TorchSession(Session):
    """A PyTorch callable (module, ScriptModule, compiled module) run under inference mode."""

    def __init__(self, module: Callable[[torch.Tensor], Any]) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> Output:
        with torch.inference_mode():
            return self.module(x)


#: (model in eval mode, path, example input, *, dynamic_batch, **options) -> the path written
ExportFn = Callable[..., Path]
#: (model, path, example input, calibration batches) -> the path written
Int8ExportFn = Callable[[nn.Module, PathLike, torch.Tensor, Iterable[torch.Tensor]], Path]
#: (a file, or for in-process runtimes the module; threads or None for the runtime's default) -> Session
LoadFn = Callable[..., Session]


@dataclass(frozen=True)
class Runtime:
    """One inference runtime (see the module docstring)."""

    name: str
    load: LoadFn
    summary: str = ""
    format: Optional[str] = None  # `ghostnet export --format` name of its file; None: runs the module in-process
    suffix: Optional[str] = None  # the file's suffix
    export: Optional[ExportFn] = None
    export_int8: Optional[Int8ExportFn] = None
    package: Optional[str] = None  # the importable package it needs (None: PyTorch alone)
    extra: Optional[str] = None  # the ghostnet-torch extra that installs it
    batch_modes: tuple[str, ...] = ("static", "dynamic")  # batch forms its files take ("static": batch 1)
    options: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)  # export options --format auto may vary
    accepts_options: tuple[str, ...] = ()  # every export option `export` takes (those in `options` included)
    devices: tuple[str, ...] = ("cpu",)
    tunable: bool = True  # a candidate of `--format auto`
    set_threads: Optional[Callable[[int], None]] = None  # a process-wide thread pool, sized before loading
    # runs blocked (NCHWc) CPU kernels, for which our exports are channel-aligned by default (`align.py`)
    blocked_layout: bool = False

    @property
    def in_process(self) -> bool:
        """Runs the PyTorch module itself: no file to export."""
        return self.suffix is None

    def available(self) -> bool:
        """Whether its package is installed."""
        return self.package is None or importlib.util.find_spec(self.package) is not None

    def require(self) -> None:
        """MissingRuntime unless it is installed."""
        if not self.available():
            hint = f": pip install 'ghostnet-torch[{self.extra}]'" if self.extra else ""
            raise MissingRuntime(f"{self.name} is not installed{hint}")

    def version(self) -> Optional[str]:
        """The installed version of its package (PyTorch's for in-process runtimes), or None."""
        if self.package is None:
            return torch.__version__
        if not self.available():
            return None
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version(self.package)
        except PackageNotFoundError:
            return getattr(__import__(self.package), "__version__", None)


_REGISTRY: dict[str, Runtime] = {}


def register_runtime(runtime: Runtime, replace: bool = False) -> Runtime:
    """Add `runtime` to the registry (ValueError if its name or format is taken, unless `replace`)."""
    if not replace:
        if runtime.name in _REGISTRY:
            raise ValueError(f"a runtime named {runtime.name!r} is already registered")
        if runtime.format and any(r.format == runtime.format for r in _REGISTRY.values()):
            raise ValueError(f"format {runtime.format!r} already belongs to another runtime")
    if (runtime.format is None) != (runtime.suffix is None) or (runtime.format and runtime.export is None):
        raise ValueError(f"runtime {runtime.name!r}: a file runtime needs a format, a suffix and an export function")
    _REGISTRY[runtime.name] = runtime
    return runtime


def unregister_runtime(name: str) -> Runtime:
    """Remove a registered runtime (a plug-in's tests, a replaced runtime); KeyError if there is none of that name."""
    return _REGISTRY.pop(name)


def list_runtimes(*, available: Optional[bool] = None, files: Optional[bool] = None) -> list[Runtime]:
    """Registered runtimes, optionally only the installed ones and/or only those with (or without) a file."""
    return [r for r in _REGISTRY.values()
            if (available is None or r.available() == available) and (files is None or (not r.in_process) == files)]


def get_runtime(name: str) -> Runtime:
    """The runtime called `name` (ValueError naming the known ones otherwise)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown runtime {name!r}; expected one of {sorted(_REGISTRY)}")
    return _REGISTRY[name]


def runtime_for_format(fmt: str) -> Runtime:
    """The runtime whose file format is `fmt` ("onnx", "openvino", ...)."""
    for runtime in _REGISTRY.values():
        if runtime.format == fmt:
            return runtime
    known = sorted(r.format for r in _REGISTRY.values() if r.format)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {known}")


def runtime_for_file(path: PathLike) -> Runtime:
    """The runtime that reads `path`, by its suffix."""
    name = Path(path).name
    matches = [r for r in _REGISTRY.values() if r.suffix and name.endswith(r.suffix)]
    if not matches:
        known = ", ".join(sorted(r.suffix for r in _REGISTRY.values() if r.suffix))
        raise ValueError(f"cannot tell the format of {path}: expected a file ending in one of {known}")
    return max(matches, key=lambda r: len(r.suffix or ""))  # ".int8.onnx" style suffixes: the longest match
