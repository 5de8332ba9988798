"""Post-training static int8 quantization with onnxruntime: per-channel weights, calibration on real images.

Naive int8 is reported to collapse on GhostNet (facts §5 item 10, "don't quantize the depthwise conv": after BN
folding a depthwise filter's weight range varies widely from channel to channel). `quantize_onnx` therefore
quantizes weights per output channel and, as a precaution, keeps depthwise convolutions in float by default
(`keep_depthwise_float`). On a CIFAR-10 GhostNet no setting collapsed, onnxruntime's naive defaults included
(docs/benchmarks.md), and the depthwise-int8 graph is the faster one.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional, Sequence

import torch

from ..utils import PathLike, atomic_write

if TYPE_CHECKING:
    from ..data import TransformConfig

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
ACTIVATION_TYPES = ("uint8", "int8")
#: Ops quantized by default. Elementwise ops (Add, Mul, Concat, Sigmoid, Resize) stay float: quantizing them saves
#: little time on CPU and each one adds a requantization error.
DEFAULT_OP_TYPES = ("Conv", "Gemm", "MatMul")

__all__ = ["ACTIVATION_TYPES", "CALIBRATION_METHODS", "DEFAULT_OP_TYPES", "batches_of_input_shape",
           "calibration_batches", "depthwise_conv_nodes", "load_calibration_images", "load_images", "onnx_accuracy",
           "quantize_onnx"]


def depthwise_conv_nodes(model) -> list[str]:
    """Names of the Conv nodes of an onnx.ModelProto whose group count is > 1 (depthwise and grouped convs)."""
    import onnx

    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "group"), 1)
        if group > 1:
            names.append(node.name)
    return names


class _TensorReader:
    """onnxruntime CalibrationDataReader over an iterable of float batches."""

    def __init__(self, input_name: str, batches: Iterable[torch.Tensor]) -> None:
        self.input_name = input_name
        self._iter: Iterator[torch.Tensor] = iter(batches)

    def get_next(self) -> Optional[dict]:
        batch = next(self._iter, None)
        return None if batch is None else {self.input_name: batch.detach().cpu().float().numpy()}

    def rewind(self) -> None:  # pragma: no cover - only used by ORT's multi-pass calibrators
        raise RuntimeError("calibration data can be read once")


def _calibrate_method(name: str):
    from onnxruntime.quantization import CalibrationMethod

    if name not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {name!r}; expected one of {CALIBRATION_METHODS}")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def quantize_onnx(
    fp32_path: PathLike,
    int8_path: PathLike,
    calibration: Iterable[torch.Tensor],
    per_channel: bool = True,
    keep_depthwise_float: bool = True,
    method: str = "minmax",
    op_types: Optional[Sequence[str]] = DEFAULT_OP_TYPES,
    exclude_nodes: Sequence[str] = (),
    activations: str = "uint8",
) -> Path:
    """Quantize an fp32 ONNX file to int8 (QDQ format, int8 weights, uint8 activations).

    Activations are unsigned ("U8S8"): onnxruntime's x86 kernels multiply u8 by s8 (VPMADDUBSW / VNNI), and with
    signed activations it fuses far fewer convolutions into QLinearConv (22 of 95 for ghostnet_100, against 54 with
    uint8 activations; 12.4 against 11.5 ms at batch 1, one thread).

    Args:
        fp32_path: the model (e.g. from `export_onnx` of a fused model).
        int8_path: where the quantized model goes (written atomically).
        calibration: batches of preprocessed real images; their activation ranges set the scales.
        per_channel: one weight scale per output channel (one per tensor otherwise).
        keep_depthwise_float: leave Conv nodes with group > 1 in float.
        method: "minmax", "entropy" or "percentile" (99.999%) calibration of activation ranges.
        op_types: which op types to quantize (None: every op onnxruntime can quantize); exclude_nodes: further node
            names to leave in float.
        activations: "uint8" (default) or "int8".
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path = Path(fp32_path)
    if not fp32_path.exists():
        raise FileNotFoundError(f"no ONNX model at {fp32_path}")
    calibrate_method = _calibrate_method(method)
    if activations not in ACTIVATION_TYPES:
        raise ValueError(f"activations must be one of {ACTIVATION_TYPES}, got {activations!r}")
    activation_type = QuantType.QUInt8 if activations == "uint8" else QuantType.QInt8
    with tempfile.TemporaryDirectory() as tmp_dir:
        # Shape inference and ORT's own graph cleanup first, as onnxruntime recommends before quantize_static.
        prepared = Path(tmp_dir) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        model = onnx.load(str(prepared))
        excluded = list(exclude_nodes) + (depthwise_conv_nodes(model) if keep_depthwise_float else [])
        reader = _TensorReader(model.graph.input[0].name, calibration)
        with atomic_write(int8_path) as tmp:
            quantize_static(str(prepared), str(tmp), reader, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=None if op_types is None else list(op_types),
                            per_channel=per_channel, activation_type=activation_type, weight_type=QuantType.QInt8,
                            nodes_to_exclude=excluded, calibrate_method=calibrate_method,
                            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    return Path(int8_path)


def calibration_batches(images: torch.Tensor, batch_size: int = 32) -> list[torch.Tensor]:
    """Split a tensor of preprocessed images (N, C, H, W) into calibration batches."""
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, C, H, W) tensor, got shape {tuple(images.shape)}")
    return list(images.split(batch_size))


def batches_of_input_shape(calibration: Iterable[torch.Tensor], example_input: torch.Tensor) -> Iterator[torch.Tensor]:
    """The calibration batches split to a static export's batch size, those of its input shape; ValueError (after
    the last) where none has it. For int8 exports that take one input shape (ExecuTorch, LiteRT)."""
    seen = 0
    for batch in calibration:
        for images in batch.split(example_input.shape[0]):
            if images.shape == example_input.shape:
                seen += 1
                yield images
    if not seen:
        raise ValueError(f"no calibration batch of shape {tuple(example_input.shape)} (the export's input shape)")


def load_calibration_images(data: PathLike, data_config: dict, num_images: int = 512, split: str = "train",
                            seed: int = 0) -> torch.Tensor:
    """`num_images` real images (a fixed pseudo-random selection) of a data set, preprocessed as the model expects.

    `data` is anything `ghostnet.data.open_split` opens (ImageFolder root, folder of .npz shards, ...);
    `data_config` is a model's `pretrained_cfg` (input_size, mean, std, crop_pct, interpolation). Images are
    preprocessed with the evaluation transform: calibration must see what inference will see.
    """
    from ..data import TransformConfig

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    return load_images(data, TransformConfig.from_model_cfg(data_config), split, num_images, seed)[0]


def load_images(data: PathLike, transform_config: TransformConfig, split: str = "val", num_images: Optional[int] = None,
                seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a split as tensors, through its evaluation transform; all of it, or a fixed
    pseudo-random selection of `num_images` (the same for every call with the same seed)."""
    from ..data import eval_transform, open_split, subset

    dataset = subset(open_split(data, split, eval_transform(transform_config)), num_images, seed)
    if len(dataset) == 0:
        raise ValueError(f"{data}: the {split} split holds no images")
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images), torch.tensor(labels)


def onnx_accuracy(session, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy (percent) of an onnxruntime session on preprocessed images and integer labels."""
    from .onnx_io import run_onnx

    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many labels as images (got {len(images)} images, {len(labels)} labels)")
    correct = 0
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        correct += int((run_onnx(session, x).argmax(1) == y).sum())
    return 100.0 * correct / len(images)
