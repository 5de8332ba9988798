"""ncnn's int8 form of a model: what ncnn's own tools `ncnn2table` (calibration table) and `ncnn2int8` (int8 model)
write, done here because neither ships in the ncnn or pnnx wheels (they are built from ncnn's source tree).

1. The float32 model written by pnnx (staged by `ncnn.export_ncnn_int8`) runs in ncnn on real calibration images;
   for every Convolution, ConvolutionDepthWise and InnerProduct the input blob's scale is chosen as `ncnn2table`
   does (method "kl", its default: the clipping threshold minimising the KL divergence of a 2048-bin histogram of
   |x| quantized to 128 levels; or "minmax": the largest |x| seen), and the weight scales are 127 / max|w| per
   output channel (per group for ConvolutionDepthWise; 31 / max|w| for dense 3x3 stride-1 convolutions, which ncnn
   runs with int8 Winograd F(4,3) on 6-bit weights).
2. The model is rewritten as `ncnn2int8` does: those layers get `8=` (int8_scale_term: 2, or 1 for
   ConvolutionDepthWise), their weights become int8 (round half away from zero, clamped to +-127; tag 0x000D4B38),
   and the weight scales and input scale follow the bias in the .bin. Other layers keep float32 weights
   (`ncnn2int8` stores them as float16). ncnn quantizes the input of each such layer, runs its int8 kernel and
   dequantizes the output (the requantize fusion of consecutive int8 convolutions is not applied). Depthwise
   convolutions are left in float32 unless asked for (`ncnn.export_ncnn_int8`: on ncnn's x86 build they ran slower
   in int8).
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

QUANTIZED = ("Convolution", "ConvolutionDepthWise", "InnerProduct")
#: Layer types whose weights this rewriter cannot size; any other layer type in pnnx's output carries none.
UNSIZED = ("MemoryData", "BatchNorm", "Scale", "PReLU", "Bias", "Deconvolution", "DeconvolutionDepthWise",
           "Embed", "LayerNorm", "GroupNorm", "InstanceNorm", "Gemm", "MultiHeadAttention", "RNN", "LSTM", "GRU",
           "Convolution1D", "Convolution3D", "ConvolutionDepthWise1D", "ConvolutionDepthWise3D", "Normalize", "RMSNorm")
METHODS = ("kl", "minmax")
BINS = 2048
FP32_TAG, INT8_TAG = 0, 0x000D4B38

__all__ = ["METHODS", "calibration_images", "kl_threshold", "quantize_ncnn"]


class _Layer:
    """One line of a .param file: type, name, blobs and its `key=value` parameters (values kept as text)."""

    def __init__(self, line: str) -> None:
        fields = line.split()
        self.type, self.name = fields[0], fields[1]
        n_bottom, n_top = int(fields[2]), int(fields[3])
        self.bottoms = fields[4:4 + n_bottom]
        self.tops = fields[4 + n_bottom:4 + n_bottom + n_top]
        self.params = dict(f.split("=", 1) for f in fields[4 + n_bottom + n_top:])

    def get(self, key: int, default: int = 0) -> int:
        return int(self.params.get(str(key), default))

    def line(self) -> str:
        params = " ".join(f"{k}={v}" for k, v in self.params.items())
        return (f"{self.type:<24} {self.name:<24} {len(self.bottoms)} {len(self.tops)} "
                f"{' '.join(self.bottoms + self.tops)} {params}").rstrip()


def _read_param(path: Path) -> tuple[list[str], list[_Layer]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return lines[:2], [_Layer(line) for line in lines[2:]]


def _weight_shape(layer: _Layer) -> tuple[int, int]:
    """(rows, row length) of a quantized layer's weights: per output channel, or per group for depthwise ones."""
    rows = layer.get(7, 1) if layer.type == "ConvolutionDepthWise" else layer.get(0)
    size = layer.get(2 if layer.type == "InnerProduct" else 6)
    return rows, size // rows


def _take(data: bytes, offset: int, count: int, dtype: str) -> tuple[np.ndarray, int]:
    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return array, offset + array.nbytes


def _weight_scales(layer: _Layer, weights: np.ndarray) -> np.ndarray:
    """ncnn2table's weight scales: 127 / max|w| per row (31 for dense 3x3 stride-1 convs: int8 Winograd F(4,3))."""
    dense3x3 = (layer.type == "Convolution" and layer.get(1) == 3 and layer.get(11, layer.get(1)) == 3
                and layer.get(3, 1) == 1 and layer.get(13, layer.get(3, 1)) == 1 and layer.get(2, 1) == 1
                and layer.get(12, layer.get(2, 1)) == 1)
    absmax = np.abs(weights.reshape(_weight_shape(layer))).max(axis=1)
    return np.where(absmax > 0, (31.0 if dense3x3 else 127.0) / np.where(absmax > 0, absmax, 1), 1).astype(np.float32)


def _to_int8(weights: np.ndarray, scales: np.ndarray, rows: int) -> np.ndarray:
    scaled = weights.reshape(rows, -1).astype(np.float32) * scales[:, None]
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)  # C's round(): half away from zero, as ncnn does
    return np.clip(rounded, -127, 127).astype(np.int8).ravel()


def _pad4(blob: bytes) -> bytes:
    return blob + b"\0" * (-len(blob) % 4)


def _rewrite(layers: list[_Layer], data: bytes, blob_scales: dict[str, float]) -> Iterator[bytes]:
    """The int8 .bin, chunk by chunk; quantized layers get their `8=` parameter set in place."""
    offset = 0
    for layer in layers:
        if layer.type in UNSIZED:
            raise ValueError(f"ncnn int8: layer {layer.name} ({layer.type}) carries weights this quantizer cannot "
                             "rewrite")
        if layer.type not in QUANTIZED or layer.get(19):  # weightless, or weights fed as a blob
            continue
        if layer.get(8):
            raise ValueError(f"ncnn int8: layer {layer.name} is quantized already")
        rows, length = _weight_shape(layer)
        (tag,), offset = struct.unpack_from("<I", data, offset), offset + 4
        if tag != FP32_TAG:
            raise ValueError(f"ncnn int8: layer {layer.name} has weights stored with tag {tag:#x}, not float32")
        weights, offset = _take(data, offset, rows * length, "<f4")
        bias_size = (layer.get(1) if layer.type == "InnerProduct" else layer.get(5)) and layer.get(0)
        bias, offset = _take(data, offset, bias_size, "<f4")
        scale = blob_scales.get(layer.name)
        if scale is None:  # left in float32
            yield struct.pack("<I", FP32_TAG) + weights.tobytes() + bias.tobytes()
            continue
        weight_scales = _weight_scales(layer, weights)
        layer.params["8"] = "1" if layer.type == "ConvolutionDepthWise" else "2"
        yield _pad4(struct.pack("<I", INT8_TAG) + _to_int8(weights, weight_scales, rows).tobytes())
        yield bias.tobytes() + weight_scales.tobytes() + np.float32(scale).tobytes()
    if offset != len(data):
        raise ValueError(f"ncnn int8: {len(data) - offset} bytes of weights left over (an unknown layer with weights)")


def _kl_divergences(h: np.ndarray, counts: np.ndarray, target_bins: int, eps: float) -> np.ndarray:
    """ncnn2table's KL divergence for keeping each of `counts` bins of the normalised histogram `h`: the kept bins
    (the rest clipped into the last) against their quantization to `target_bins` levels expanded back. One row per
    count; the levels' edges fall between bins, whose mass is shared in proportion, as ncnn does."""
    width = int(counts.max())
    cumulative = np.concatenate([[0.0], np.cumsum(h)])
    t = counts[:, None]
    per_level = t / target_bins
    edges = np.arange(target_bins + 1)[None, :] * per_level
    whole = np.minimum(np.floor(edges).astype(int), len(h) - 1)
    mass = cumulative[whole] + (edges - whole) * h[whole]  # piecewise-linear cumulative at the edges
    levels = np.diff(mass, axis=1) / per_level
    offsets = mass[:, :-1] - levels * edges[:, :-1]  # the expanded cumulative is offsets[j] + levels[j] * x in level j
    points = np.arange(width + 1)[None, :]
    level = np.minimum(points * target_bins // t, target_bins - 1)
    rows = np.arange(len(counts))[:, None]
    below = offsets[rows, level] + levels[rows, level] * points
    bins = np.arange(width)[None, :]
    kept = bins < t
    expanded = np.where(kept, np.diff(below, axis=1), 1.0) + eps
    clipped = h[None, :width] + eps + np.where(bins == t - 1, cumulative[-1] - cumulative[t], 0.0)
    return np.where(kept, clipped * np.log(clipped / expanded), 0.0).sum(axis=1)


def kl_threshold(histogram: np.ndarray, target_bins: int = 128, eps: float = 1e-4, chunk: int = 16) -> int:
    """ncnn2table's KL method: the number of histogram bins to keep (of `target_bins` to all) whose quantized
    distribution is closest to the original (`_kl_divergences`), `chunk` candidate counts at a time."""
    h = histogram.astype(np.float64) / max(histogram.sum(), 1)
    counts = np.arange(target_bins, len(h))
    kls = np.concatenate([_kl_divergences(h, counts[i:i + chunk], target_bins, eps)
                          for i in range(0, len(counts), chunk)])
    return int(counts[np.argmin(kls)])


def _blob_scales(net, layers: list[_Layer], images: list[np.ndarray], method: str,
                 skip: set[str]) -> dict[str, float]:
    """Input scale of every quantized layer (but those in `skip`), from the float model `net` run on `images`."""
    import ncnn

    targets = {layer.name: layer.bottoms[0] for layer in layers
               if layer.type in QUANTIZED and not layer.get(19) and layer.name not in skip}

    def activations() -> Iterator[dict[str, np.ndarray]]:
        for image in images:
            with net.create_extractor() as extractor:
                extractor.input(net.input_names()[0], ncnn.Mat(image).clone())
                yield {name: np.abs(np.array(extractor.extract(blob)[1])) for name, blob in targets.items()}

    absmax = {name: 0.0 for name in targets}
    for seen in activations():
        absmax = {name: max(absmax[name], float(seen[name].max(initial=0.0))) for name in targets}
    if method == "minmax":
        return {name: 127.0 / m for name, m in absmax.items() if m > 0}
    histograms = {name: np.zeros(BINS, np.int64) for name in targets}
    for seen in activations():  # a second pass, as ncnn2table's: the histograms' range is the absmax
        for name, values in seen.items():
            if absmax[name] > 0:
                nonzero = values[values != 0]
                index = np.minimum((nonzero / absmax[name] * BINS).astype(np.int64), BINS - 1)
                histograms[name] += np.bincount(index, minlength=BINS)
    return {name: 127.0 / ((kl_threshold(histograms[name]) + 0.5) * absmax[name] / BINS)
            for name in targets if absmax[name] > 0}


def calibration_images(calibration: Iterable[torch.Tensor], shape: torch.Size) -> list[np.ndarray]:
    """The images (C, H, W arrays) of `calibration`'s batches that have the export's input `shape`."""
    images = [np.ascontiguousarray(image.detach().cpu().float().numpy())
              for batch in calibration for image in batch if image.shape == shape]
    if not images:
        raise ValueError(f"no calibration image of shape {tuple(shape)} (the export's input shape)")
    return images


def quantize_ncnn(param: Path, weights: Path, net, images: list[np.ndarray], *, method: str = "kl",
                  quantize_depthwise: bool = False, skip: Optional[Iterable[str]] = None) -> tuple[str, bytes]:
    """The int8 .param text and .bin bytes of the float32 ncnn model `param` + `weights` (loaded as `net`, a float32
    ncnn.Net that keeps every blob), calibrated on `images` (see the module docstring). Depthwise convolutions are
    quantized only with `quantize_depthwise`; `skip` names further layers to keep in float32."""
    if method not in METHODS:
        raise ValueError(f"ncnn int8 calibration method must be one of {METHODS}, got {method!r}")
    head, layers = _read_param(param)
    skipped = set(skip or ()) | {layer.name for layer in layers if not quantize_depthwise
                                 and layer.type == "ConvolutionDepthWise" and layer.get(7, 1) == layer.get(0)}
    scales = _blob_scales(net, layers, images, method, skipped)
    data = b"".join(_rewrite(layers, weights.read_bytes(), scales))
    return "\n".join(head + [layer.line() for layer in layers]) + "\n", data
