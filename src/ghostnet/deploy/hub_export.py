"""`ghostnet.save_pretrained` and `ghostnet.push_to_hub`: a model as a folder in the Hugging Face Hub's timm layout
(config.json, model.safetensors and a README.md model card), and `ghostnet export --format hf`.

The folder itself is `hub_format`'s (timm's keys, atomic writes, no pickle); this module adds the card, which states
what the model costs as measured here (parameters and multiply-accumulates from `ghostnet.analysis.profile`, the
counter behind `ghostnet profile`; latency from the bench harness when asked, as that takes a while) and where the
weights come from with their licence: the published-weights table's entry when the model carries one
(`create_model(name, pretrained=True)`), else "trained by the user" and the licence given.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch.nn as nn

from .._version import __version__
from ..analysis import profile
from ..hub_format import HUB_EXTRA, TIMM_ARCHITECTURES, architecture_of, hf_config, license_id, write_hf_folder
from ..models.registry import get_model_entry, input_size_of, num_classes_of
from ..utils import PathLike
from ..weights import PretrainedWeights, list_weights
from .bench_config import BenchConfig, BenchRow

#: `ghostnet export --format` value that writes a Hub folder.
HF_FORMAT = "hf"
#: What `latency=True` measures: the bench harness's default backends at one thread, batch 1.
DEFAULT_LATENCY = BenchConfig(peers=(), backends=("eager", "fused", "onnxruntime"), threads=(1,))
#: Metadata prefix of the weights `ghostnet train` exports (train.state.META_PREFIX; deploy imports no trainer).
TRAINED_META_PREFIX = "ghostnet."
DATA_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std", "crop_mode")

__all__ = ["DEFAULT_LATENCY", "HF_FORMAT", "Provenance", "export_hf", "push_to_hub", "render_model_card",
           "save_pretrained", "weights_provenance"]


@dataclass(frozen=True)
class Provenance:
    """Where a model's weights come from, as the card states it."""

    source: str
    license_text: str  # as shown in the card
    license: Optional[str]  # the Hub's licence id, for config.json and the card's metadata
    dataset: Optional[str] = None
    top1: Optional[float] = None
    accuracy_source: str = ""


def _published_entry(model: nn.Module, architecture: str) -> Optional[PretrainedWeights]:
    """The table entry whose weights `model` was loaded with (its pretrained_cfg's tag and url), if any."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    for entry in list_weights(architecture):
        if (entry.tag, entry.url) == (cfg.get("tag"), cfg.get("url")):
            return entry
    return None


def weights_provenance(model: nn.Module, architecture: str, *, source: Optional[str] = None,
                       license: Optional[str] = None, dataset: Optional[str] = None) -> Provenance:
    """The published entry's source, licence and accuracy for a model loaded with published weights (unless
    `source` says otherwise); else `source` (default "trained by the user") and `license` (a Hub licence id)."""
    if license is not None and license_id(license) != license:
        raise ValueError(f"license must be a Hugging Face licence id (apache-2.0, mit, other, ...), got {license!r}")
    entry = None if source is not None else _published_entry(model, architecture)
    if entry is not None:
        text = license or entry.license
        imagenet = entry.data_config.get("num_classes") == 1000
        return Provenance(f"published weights {entry.key}: {entry.url} ({entry.source})", text, license_id(text),
                          dataset or ("ImageNet-1k" if imagenet else None), entry.top1, entry.accuracy_source)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if source is None and cfg.get("source") in ("hf-hub", "local-dir"):
        source = f"{cfg['source']}:{cfg.get('hf_hub_id') or cfg.get('file')} (as loaded from there)"
        license = license or license_id(cfg.get("license"))
    return Provenance(source or "trained by the user", license or "not stated", license, dataset)


def _stats(model: nn.Module) -> dict[str, Any]:
    size = input_size_of(model)
    result = profile(model, size, measure_memory=False)
    return {"params": result.params, "macs": result.macs, "input_size": tuple(size)}


def _latency(architecture: str, input_size: Sequence[int], settings: BenchConfig) -> tuple[list[BenchRow], dict]:
    """Bench-harness rows for a model of `architecture` (latency does not depend on the weights' values)."""
    from .bench import run_benchmark

    cfg = replace(settings, models=[architecture], peers=[], image_size=int(input_size[-1]))
    result = run_benchmark(cfg)
    return result.rows, result.environment


def _front_matter(arch: str, prov: Provenance) -> str:
    timm = arch in TIMM_ARCHITECTURES
    tags = ["image-classification"] + (["timm", "transformers"] if timm else []) + ["ghostnet"]
    lines = ["---", "tags:"] + [f"- {t}" for t in tags]
    lines += ["pipeline_tag: image-classification", f"library_name: {'timm' if timm else 'ghostnet-torch'}"]
    if prov.license:
        lines.append(f"license: {prov.license}")
    if prov.dataset:
        lines += ["datasets:", f"- {prov.dataset.lower()}"]
    return "\n".join(lines + ["---"])


def _latency_section(rows: Sequence[BenchRow], env: Mapping[str, Any]) -> list[str]:
    if not rows:
        return []
    first = rows[0]
    lines = ["", "## Latency", "",
             f"Measured by ghostnet's bench harness (`ghostnet bench`) on {env.get('cpu', 'this machine')}, torch "
             f"{env.get('torch', '?')}, batch {first.batch_size}, {first.image_size}x{first.image_size} input, "
             f"{first.dtype}, {env.get('date', '')}: median over {first.calls} calls, interleaved with the other "
             "backends.", "",
             "| Backend | Threads | Median (ms) | 25th-75th percentile (ms) |", "|---|---|---|---|"]
    lines += [f"| {r.backend} | {r.threads} | {r.median_ms:.2f} | {r.p25_ms:.2f}-{r.p75_ms:.2f} |" for r in rows]
    return lines


def render_model_card(config: Mapping[str, Any], stats: Mapping[str, Any], prov: Provenance, *, name: str,
               repo_id: Optional[str] = None, latency: Sequence[BenchRow] = (),
               environment: Optional[Mapping[str, Any]] = None) -> str:
    """README.md of a folder: timm's card layout (metadata, details, usage) with our measured figures."""
    arch = config["architecture"]
    c, h, w = stats["input_size"]
    where = f"hf-hub:{repo_id}" if repo_id else "hf-hub:ORG/NAME"
    details = [f"- **Model Type:** Image classification ({config['num_classes']} classes)",
               f"- **Architecture:** {arch}: {get_model_entry(arch).description}",
               f"- **Model Stats** (counted by ghostnet's cost analysis, `ghostnet profile {arch}`):",
               f"  - Params (M): {stats['params'] / 1e6:.2f} ({stats['params']:,})",
               f"  - GMACs: {stats['macs'] / 1e9:.3f} ({stats['macs']:,} multiply-accumulates per image)",
               f"  - Image size: {h} x {w} ({c} channels)",
               f"- **Weights:** {prov.source}",
               f"- **Licence:** {prov.license_text}",
               f"- **Dataset:** {prov.dataset or 'not stated'}"]
    if prov.top1 is not None:
        details.append(f"- **Published top-1:** {prov.top1:g}% ({prov.accuracy_source})")
    usage = ["", "## Model Usage", "", "```python"]
    if arch in TIMM_ARCHITECTURES:
        usage += ["import timm", "", f'model = timm.create_model("{where}", pretrained=True).eval()', "```", "",
                  "or with ghostnet (`pip install ghostnet-torch[hub]`):", "", "```python"]
    usage += ["import ghostnet", "", f'model = ghostnet.create_model("{where}", pretrained=True).eval()', "```"]
    lines = [_front_matter(arch, prov), f"# Model card for {name}", "",
             f"A {arch} image classifier in timm's Hugging Face Hub layout, written by ghostnet-torch {__version__}.",
             "", "## Model Details"] + details
    lines += _latency_section(latency, environment or {}) + usage
    return "\n".join(lines) + "\n"


def save_pretrained(model: nn.Module, directory: PathLike, *, label_names: Optional[Sequence[str]] = None,
                    label_descriptions: Optional[Mapping[str, str]] = None, model_card: bool = True,
                    latency: Union[bool, BenchConfig] = False, license: Optional[str] = None,
                    source: Optional[str] = None, dataset: Optional[str] = None,
                    architecture: Optional[str] = None, repo_id: Optional[str] = None) -> Path:
    """Write `model` into `directory` as timm's `save_for_hf` / `push_to_hub` lay it out: config.json,
    model.safetensors and (with `model_card`) a README.md with its measured parameters and MACs.

    `latency`: True (or bench settings) adds latency measured by the bench harness. `license` (a Hub licence id),
    `source` and `dataset` describe weights the model was not loaded with from our published table (default:
    "trained by the user"). `architecture`: the registered name, when the model does not carry it. `repo_id`:
    the Hub repository the card's usage names.
    """
    arch = architecture_of(model, architecture)
    prov = weights_provenance(model, arch, source=source, license=license, dataset=dataset)
    config = hf_config(model, architecture=arch, label_names=label_names, label_descriptions=label_descriptions,
                       license=prov.license)
    card = None
    if model_card:
        stats = _stats(model)
        rows, env = [], {}
        if latency:
            rows, env = _latency(arch, stats["input_size"], DEFAULT_LATENCY if latency is True else latency)
        name = repo_id.split("/")[-1] if repo_id else Path(directory).resolve().name
        card = render_model_card(config, stats, prov, name=name, repo_id=repo_id, latency=rows, environment=env)
    return write_hf_folder(model, directory, config, card)


def push_to_hub(model: nn.Module, repo_id: str, *, commit_message: str = "Add model", token: Optional[str] = None,
                revision: Optional[str] = None, private: bool = False, create_pr: bool = False,
                **save_options: Any) -> Any:
    """Write `model`'s folder (`save_pretrained` with `save_options`) and upload it to the Hub repository `repo_id`
    (created if missing) with `HfApi.upload_folder`; returns its commit info. Needs the hub extra.

    As timm's `push_to_hub` does, a repository that already has a README.md keeps it.
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(f"push_to_hub needs huggingface_hub ({HUB_EXTRA})") from None
    api = HfApi(token=token, library_name="ghostnet", library_version=__version__)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    has_card = api.file_exists(repo_id=repo_id, filename="README.md", revision=revision)
    save_options.setdefault("model_card", not has_card)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, repo_id=repo_id, **save_options)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, revision=revision, create_pr=create_pr,
                                 commit_message=commit_message)


def _trained_export_info(weights: Optional[str]) -> dict[str, Any]:
    """Model kwargs, class names and data config stored in a `ghostnet train` safetensors export ({} otherwise)."""
    if not weights or not str(weights).endswith(".safetensors") or not Path(weights).is_file():
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        return {k[len(TRAINED_META_PREFIX):]: json.loads(v) for k, v in metadata.items()
                if k.startswith(TRAINED_META_PREFIX)}
    except (OSError, ValueError):  # not readable: loading it reports why
        return {}


def export_hf(model_name: str, output: PathLike, *, weights: Optional[str] = None, num_classes: Optional[int] = None,
              latency: Union[bool, BenchConfig] = False, license: Optional[str] = None,
              source: Optional[str] = None, dataset: Optional[str] = None) -> Path:
    """`ghostnet export NAME --format hf`: build a model (random weights, a checkpoint file, or a weights tag) and
    write its folder with `save_pretrained`. A `ghostnet train` export brings its class count, class names and
    data config along."""
    info = _trained_export_info(weights)
    kwargs = {k: v for k, v in (info.get("model_kwargs") or {}).items() if k in ("num_classes", "in_chans")}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    from ..models.registry import create_model

    model = create_model(model_name, pretrained=weights, **kwargs).eval()
    data = {k: v for k, v in (info.get("data_config") or {}).items() if k in DATA_KEYS}
    model.pretrained_cfg = {**model.pretrained_cfg, **data}
    if weights is None and source is None:
        source = "random initialisation (exported without weights: not a trained model)"
    classes = info.get("classes") or None
    if classes is not None and len(classes) != num_classes_of(model):
        classes = None
    return save_pretrained(model, output, label_names=classes, latency=latency, license=license, source=source,
                           dataset=dataset)
