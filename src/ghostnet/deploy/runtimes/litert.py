"""LiteRT (formerly TensorFlow Lite), the runtime Android ships, through litert-torch (the optional `litert` extra).

Export: the model is captured with torch.export at the example's shape (static: batch 1), its size-based nearest
resizes made exact (`exact_nearest_resizes`), and `litert_torch.convert` lowers the graph to TFLite ops in NHWC: a
.tflite flatbuffer whose interface keeps the model's NCHW input (the converter adds a transpose after it). Run:
ai_edge_litert's `Interpreter`, whose default op resolver hands the graph to the XNNPACK delegate (the CPU kernels
ExecuTorch runs too) with `num_threads` threads. The same file runs on Android and iOS; timed here it is a proxy
for a phone, never a phone figure.

int8 (`export_litert_int8`), two ways, both calibrated on real images and run by XNNPACK's int8 kernels:
PyTorch 2 export quantization with litert-torch's quantizer (`method="pt2e"`, the default: symmetric per-channel
int8 weights, int8 activations whose ranges a histogram observer picks; convs, linear layers, adds and pooling in
int8, the SE products in float between quantize/dequantize pairs), or ai-edge-quantizer on the float file
(`method="ai-edge-quantizer"`: every op int8 from min/max ranges; depthwise convs optionally float). On a CIFAR-10
GhostNet the PT2E file lost 0.15 points of top-1 at 0.67x the float latency, ai-edge-quantizer's 0.93 (0.76 with
depthwise convs in float) at 0.69x (benchmarks/bench_litert.py, docs/benchmarks.md).
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn

from ...utils import PathLike, atomic_write
from ..dfc import nearest_source_indices
from ..graph_capture import batch_capture, check_eval
from ..quantize import batches_of_input_shape
from .base import MissingRuntime, Output, Runtime, Session, as_output, register_runtime

__all__ = ["INT8_METHODS", "LiteRtConversionError", "LiteRtSession", "exact_nearest_resizes", "export_litert",
           "export_litert_int8", "quantize_tflite", "quantize_with_pt2e"]

_PROGRESS_ENV = "LITERT_TORCH_SHOW_PROGRESS"  # litert_torch.config.show_progress reads it on every conversion


class LiteRtConversionError(ValueError):
    """litert-torch cannot convert the model (an op or pattern it does not lower); the message names it."""


def _require_litert(*packages: str) -> None:
    for package in packages or ("litert_torch", "ai_edge_litert"):
        if importlib.util.find_spec(package) is None:
            raise MissingRuntime("litert is not installed: pip install 'ghostnet-torch[litert]'")


@contextlib.contextmanager
def _quiet_conversion() -> Iterator[None]:
    """No progress lines on stdout and no converter warnings while converting; the environment restored after."""
    previous = os.environ.get(_PROGRESS_ENV)
    os.environ[_PROGRESS_ENV] = "n"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        if previous is None:
            os.environ.pop(_PROGRESS_ENV, None)
        else:
            os.environ[_PROGRESS_ENV] = previous


def _check_path(path: PathLike) -> Path:
    path = Path(path)
    if path.suffix != ".tflite":
        raise ValueError(f"a LiteRT model is written as NAME.tflite, got {path}")
    return path


_NEAREST = (torch.ops.aten.upsample_nearest2d.vec, torch.ops.aten.upsample_nearest2d.default)


def exact_nearest_resizes(graph: torch.fx.GraphModule) -> int:
    """Rewrite, in a torch.export graph, each size-based nearest resize to a size that is no integer multiple as
    index_selects of the rows and columns PyTorch reads; return how many.

    litert-torch lowers PyTorch's nearest resize to TFLite's with half-pixel centres, which reads other rows where
    the ratio is not an integer (3 -> 7: rows 0,0,1,1,1,2,2 for PyTorch's 0,0,0,1,1,2,2): GhostNetV2/V3's DFC gate
    at 224x224 (3x3 gates on 7x7 maps) came out 5e-3 of the output's scale off. Integer factors agree."""
    count = 0
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or node.target not in _NEAREST:
            continue
        by_scale = node.args[1] is None if node.target is _NEAREST[0] else any(a is not None for a in node.args[2:])
        sizes = list(zip(node.args[0].meta["val"].shape[-2:], node.meta["val"].shape[-2:]))
        if by_scale or all(out % size == 0 for size, out in sizes):
            continue
        result = node.args[0]
        with graph.graph.inserting_before(node):
            for dim, (size, out) in zip((2, 3), sizes):
                if size != out:
                    name = f"_exact_nearest_{count}_{dim}"
                    graph.register_buffer(name, nearest_source_indices(size, out))
                    result = graph.graph.call_function(torch.ops.aten.index_select.default,
                                                       (result, dim, graph.graph.get_attr(name)))
        node.replace_all_uses_with(result)
        graph.graph.erase_node(node)
        count += 1
    if count:
        graph.recompile()
    return count


def _captured(model: nn.Module, example_input: torch.Tensor) -> torch.fx.GraphModule:
    """torch.export's graph of `model` at the example's shape, nearest resizes made exact (`exact_nearest_resizes`).
    batch_capture: the file serves one batch size, so ParameterNet's dynamic convs keep their one-kernel form."""
    with torch.no_grad(), batch_capture(False):
        graph = torch.export.export(model, (example_input,)).module()
    exact_nearest_resizes(graph)
    return graph


def _convert(model: nn.Module, example_input: torch.Tensor, **kwargs: Any) -> bytes:
    """The .tflite flatbuffer of `model` at `example_input`'s shape; LiteRtConversionError where litert-torch
    cannot lower it. The model runs once first, so that its own errors pass through as they are."""
    import litert_torch

    with torch.no_grad():
        model(example_input)
    with _quiet_conversion(), torch.no_grad(), batch_capture(False):
        try:
            graph = model if isinstance(model, torch.fx.GraphModule) else _captured(model, example_input)
            edge_model = litert_torch.convert(graph, (example_input,), **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the converter raises, the user gets one line
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise LiteRtConversionError(f"litert-torch cannot convert {type(model).__name__}: "
                                        f"{type(exc).__name__}: {first[:300]}") from exc
        return edge_model.model_content()


def _write(content: bytes, path: Path) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(content)
    return path


def export_litert(model: nn.Module, path: PathLike, example_input: torch.Tensor, *,
                  dynamic_batch: bool = False) -> Path:
    """Write `model` as a LiteRT flatbuffer (NAME.tflite) for inputs shaped like `example_input` (NCHW)."""
    check_eval(model)
    if dynamic_batch:
        raise ValueError("LiteRT files here take a static input shape (export with a fixed batch)")
    _require_litert()
    path = _check_path(path)
    return _write(_convert(model, example_input), path)


def quantize_tflite(content: bytes, calibration: Iterable[torch.Tensor], example_input: torch.Tensor, *,
                    quantize_depthwise: bool = True) -> bytes:
    """A float .tflite flatbuffer quantized by ai-edge-quantizer: every op it supports in int8 (per-channel
    symmetric weights, asymmetric activations whose ranges it observes running the float model on `calibration`
    batches), input and output included; depthwise convs left in float with `quantize_depthwise=False`."""
    from ai_edge_quantizer import algorithm_manager, qtyping, quantizer, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                              activation_num_bits=8, weight_num_bits=8)
    if not quantize_depthwise:
        manager.add_quantization_config(regex=".*", operation_name=qtyping.TFLOperationName.DEPTHWISE_CONV_2D,
                                        algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
    engine = quantizer.Quantizer(bytearray(content))
    engine.load_quantization_recipe(manager.get_quantization_recipe())
    key, name = _signature_input(content)
    samples = [{name: images.float().numpy()} for images in batches_of_input_shape(calibration, example_input)]
    with _quiet_conversion():
        result = engine.calibrate({key: samples}, num_threads=os.cpu_count() or 1)
        return bytes(engine.quantize(result, enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _signature_input(content: bytes) -> tuple[str, str]:
    """(signature key, input name) of a one-input flatbuffer."""
    from ai_edge_litert.interpreter import Interpreter

    key, signature = next(iter(Interpreter(model_content=content).get_signature_list().items()))
    return key, signature["inputs"][0]


def quantize_with_pt2e(model: nn.Module, example_input: torch.Tensor,
                       calibration: Iterable[torch.Tensor]) -> tuple[nn.Module, Any]:
    """(the model with int8 quantize/dequantize pairs, its litert-torch QuantConfig): PyTorch 2 export quantization
    with litert-torch's quantizer (per-channel symmetric int8 weights; int8 activations, ranges observed on
    `calibration`), for `litert_torch.convert(..., quant_config=...)`. It quantizes convs, linear layers, adds and
    pooling; the rest (SE products, hard-sigmoid) stays float between quantize/dequantize pairs."""
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad(), _quiet_conversion(), batch_capture(False):
        prepared = prepare_pt2e(_captured(model, example_input), quantizer)
        for images in batches_of_input_shape(calibration, example_input):
            prepared(images)
        return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


INT8_METHODS = ("pt2e", "ai-edge-quantizer")


def export_litert_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                       calibration: Iterable[torch.Tensor], *, method: str = "pt2e",
                       quantize_depthwise: bool = True) -> Path:
    """Write an int8 LiteRT model at batch 1 (int8 input and output: `LiteRtSession` quantizes and dequantizes):
    the model quantized before conversion (`quantize_with_pt2e`, depthwise convs always int8), or the float file
    quantized by ai-edge-quantizer (`method="ai-edge-quantizer"`: `quantize_tflite`)."""
    check_eval(model)
    if method not in INT8_METHODS:
        raise ValueError(f"LiteRT int8 method must be one of {INT8_METHODS}, got {method!r}")
    if method == "pt2e" and not quantize_depthwise:
        raise ValueError("litert-torch's converter quantizes depthwise convs between int8 tensors whatever the "
                         "PT2E annotations say: use the ai-edge-quantizer method to keep them float")
    _require_litert()
    path = _check_path(path)
    example = example_input[:1]
    if method == "pt2e":
        quantized, config = quantize_with_pt2e(model, example, calibration)
        return _write(_convert(quantized, example, quant_config=config), path)
    content = quantize_tflite(_convert(model, example), calibration, example, quantize_depthwise=quantize_depthwise)
    return _write(content, path)


class LiteRtSession(Session):
    """A .tflite model in ai_edge_litert's interpreter (XNNPACK delegate, `threads` threads or its default). A batch
    larger than the file's static one runs in slices of that size."""

    def __init__(self, path: PathLike, threads: Optional[int] = None) -> None:
        _require_litert("ai_edge_litert")  # running needs the interpreter only
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        # the signature lists outputs in the model's order (output_0, output_1, ...); tensor indices need not
        signature = next(iter(self.interpreter.get_signature_list().values()))
        by_name = self.interpreter.get_signature_runner().get_output_details()
        self.outputs = [(by_name[name]["index"], by_name[name]["quantization"]) for name in signature["outputs"]]
        self.input = self.interpreter.get_input_details()[0]
        self.batch = int(self.input["shape"][0])

    def _feed(self, x: torch.Tensor) -> np.ndarray:
        """`x` as the input tensor wants it: float32, or for an int8 interface quantized with its scale."""
        x = x.detach().cpu().float()
        dtype = self.input["dtype"]
        if dtype == np.float32:
            return x.contiguous().numpy()
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return torch.round(x / scale + zero_point).clamp(info.min, info.max).numpy().astype(dtype)

    def _fetch(self, index: int, quantization: tuple[float, int]) -> torch.Tensor:
        value = torch.from_numpy(self.interpreter.get_tensor(index).copy())
        if value.is_floating_point():
            return value
        scale, zero_point = quantization
        return (value.float() - zero_point) * scale

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.interpreter.set_tensor(self.input["index"], self._feed(x))
        self.interpreter.invoke()
        return [self._fetch(i, q) for i, q in self.outputs]

    def __call__(self, x: torch.Tensor) -> Output:
        if x.shape[0] == self.batch:
            return as_output(self._run(x))
        if x.shape[0] % self.batch:
            raise ValueError(f"this LiteRT file takes batches of {self.batch}, got {x.shape[0]}")
        parts = [self._run(chunk) for chunk in x.split(self.batch)]
        return as_output([torch.cat([p[i] for p in parts]) for i in range(len(self.outputs))])

    def bind(self, x: torch.Tensor) -> Callable[[], Any]:
        self.interpreter.set_tensor(self.input["index"], self._feed(x))
        return self.interpreter.invoke


def _export_int8(model: nn.Module, path: PathLike, example_input: torch.Tensor,
                 calibration: Iterable[torch.Tensor]) -> Path:
    return export_litert_int8(model, path, example_input, calibration)


RUNTIME = register_runtime(Runtime(
    name="litert", summary="LiteRT (TFLite) flatbuffer in ai_edge_litert's interpreter, XNNPACK delegate (phones)",
    format="litert", suffix=".tflite", export=export_litert, export_int8=_export_int8,
    load=lambda path, threads=None: LiteRtSession(path, threads), package="litert_torch", extra="litert",
    # Not a --format auto candidate unless named (--runtimes litert): a phone runtime, whose x86 timings here are a
    # proxy, and a conversion takes 8-22 s at 224x224 on a 2-core machine (seven forms a model) where ONNX takes one.
    batch_modes=("static",), tunable=False))
