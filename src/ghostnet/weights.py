"""The table of published ImageNet weights, as data: where each file lives, how to check it, how it was evaluated.

Every URL below was read from a public source (cited per entry in `source`, and in docs/model-zoo.md); entries
whose exact file name at that address could not be confirmed carry `url_confirmed=False`. A `sha256` is given only
where a digest of the file was found published; it may be a full digest or, as in torch.hub's file names, a prefix.

`register_weights` adds or replaces entries (tests point entries at a local server through it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .models.registry import default_data_config

FILE_FORMATS = ("pth", "pth.tar", "safetensors", "pdparams", "ckpt")
_HEX = re.compile(r"[0-9a-f]{8,64}")
MIN_SHA256_PREFIX = 8


def imagenet_data_config(interpolation: str = "bicubic", crop_pct: float = 0.875) -> dict[str, Any]:
    """The evaluation data config of an ImageNet-1k checkpoint at 224x224 (timm's `pretrained_cfg` keys)."""
    cfg = default_data_config(interpolation=interpolation, crop_pct=crop_pct)
    return {key: cfg[key] for key in ("input_size", "crop_pct", "interpolation", "mean", "std", "num_classes")}


@dataclass(frozen=True)
class PretrainedWeights:
    """One published weights file for one registered model, selected by `tag`."""

    model: str
    tag: str
    url: str
    file_name: str  # name in the cache; entries that share a URL share the file
    file_format: str  # one of FILE_FORMATS
    sha256: Optional[str]  # full hex digest or a prefix of at least 8 digits; None when no digest is published
    use_ema: bool  # load the EMA copy stored in the file (state_dict_ema)
    top1: Optional[float]
    top5: Optional[float]
    accuracy_source: str
    license: str
    source: str
    url_confirmed: bool = True
    data_config: dict = field(default_factory=imagenet_data_config)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.file_format not in FILE_FORMATS:
            raise ValueError(f"{self.model}.{self.tag}: file_format must be one of {FILE_FORMATS}, "
                             f"got {self.file_format!r}")
        if self.sha256 is not None and not _HEX.fullmatch(self.sha256):
            raise ValueError(f"{self.model}.{self.tag}: sha256 must be {MIN_SHA256_PREFIX} to 64 lowercase hex "
                             f"digits, got {self.sha256!r}")
        if not self.file_name or "/" in self.file_name or self.file_name.startswith("."):
            raise ValueError(f"{self.model}.{self.tag}: file_name must be a plain file name, got {self.file_name!r}")

    @property
    def key(self) -> str:
        """`model.tag`, as timm names its weights."""
        return f"{self.model}.{self.tag}"


# -- sources (full citations in docs/model-zoo.md) --------------------------------------------------------------
_EAB = "https://github.com/huawei-noah/Efficient-AI-Backbones"
_SRC_V1_HUBCONF = "huawei-noah/Efficient-AI-Backbones hubconf.py (2022-09-16 revision), state_dict_url"
_SRC_V1_README = "huawei-noah/Efficient-AI-Backbones ghostnet_pytorch/readme.md: top-1 0.7398, top-5 0.9146"
_SRC_V1_SHA = ("sha256 prefix from a third-party torch.hub hubconf that loads this URL with check_hash=True as "
               "ghostnet_1x_state_dict_73.98-965143b0.pth.tar (not published by Huawei)")
_SRC_V2_README = "huawei-noah/Efficient-AI-Backbones ghostnetv2_pytorch/README.md, 'Trained Models' links"
_SRC_V2_ACC = "GhostNetV2 paper / timm PR #1916 description (75.3 / 76.9 / 77.8 top-1; no top-5 given)"
_SRC_V3_URL = "timm/models/ghostnet.py default_cfgs comment for ghostnetv3_100.in1k (timm 1.0.31)"
_SRC_V3_ACC = "PaddleClas PR #3413: evaluation of the official release on ImageNet-1k val"
_SRC_TIMM_URL = ("timm default_cfgs hf_hub_id='timm/' + huggingface_hub URL template "
                 "https://huggingface.co/{repo_id}/resolve/{revision}/{filename} + timm's model.safetensors")
_SRC_TIMM_CSV = "timm results/results-imagenet.csv (commit 0173a13): evaluated at crop 0.875, bilinear"
_SRC_TIMM_FACTS = "timm results as quoted in shared/reference/ghostnet-facts.md §2 (top-1 only)"
_SRC_PADDLE_URL = ("PaddleClas ppcls/arch/backbone/model_zoo/ghostnet.py MODEL_URLS (paddleclas 2.6.0); the ssld file "
                   "by load_dygraph_pretrain's use_ssld renaming (_pretrained -> _ssld_pretrained)")
_SRC_PADDLE_ACC = "PaddleClas docs/zh_CN/models/Mobile.md, accuracy table (Top1 / Top5 of the released weights)"
_LIC_PADDLE = "Apache-2.0 (PaddleClas LICENSE)"
_SRC_MINDCV_URL = "mindcv mindcv/models/ghostnet.py default_cfgs (mindcv 0.3.0) and configs/ghostnet/README.md"
_SRC_MINDCV_ACC = ("mindcv configs/ghostnet/README.md (trained by mindcv on 8 Ascend 910, 600 epochs; evaluated at "
                   "224, crop 0.875, bilinear)")
_LIC_MINDCV = "Apache-2.0 (mindcv LICENSE)"
_LIC_V1 = "Apache-2.0 (ghostnet_pytorch/License.txt of the official repository)"
_LIC_EAB = "not stated: no licence file beside ghostnetv2_pytorch/ or ghostnetv3_pytorch/ in the official repository"
_LIC_TIMM = "apache-2.0 (Hugging Face model card of the timm copy)"
_LIC_G_GHOST = "Apache-2.0 (g_ghost_pytorch/License.txt of the official repository)"
_LIC_REPGHOST = "MIT (Hugging Face model card of the timm copy; LICENSE of ChengpengChen/RepGhost)"
_SRC_REPGHOST_ACC = ("ChengpengChen/RepGhost work_dirs/train/<run>/eval.log: validate.py --model-ema on the released "
                     "checkpoint (the README rounds to one decimal); not re-measured on timm's copy")


def _timm_url(name: str) -> str:
    return f"https://huggingface.co/timm/{name}.in1k/resolve/main/model.safetensors"


def _builtin_table() -> list[tuple[PretrainedWeights, bool]]:
    """(entry, is_default) for every published file we know of."""
    return (_ghostnet_v1_table() + _ghostnet_v2_v3_table() + _paddle_table() + _mindcv_table() + _repghost_table()
            + _g_ghost_table())


def _ghostnet_v1_table() -> list[tuple[PretrainedWeights, bool]]:
    """The official GhostNet 1.0x release and timm's copy of it."""
    v1_official = PretrainedWeights(
        model="ghostnet_100", tag="official",
        url="https://github.com/huawei-noah/ghostnet/raw/master/ghostnet_pytorch/models/state_dict_73.98.pth",
        file_name="ghostnet_100-official-state_dict_73.98.pth", file_format="pth", sha256="965143b0",
        use_ema=False, top1=73.98, top5=91.46, accuracy_source=_SRC_V1_README, license=_LIC_V1,
        source=f"{_SRC_V1_HUBCONF}; {_SRC_V1_SHA}",
        # validate.py: Resize(256) -> CenterCrop(224) with torchvision's default (bilinear) interpolation.
        data_config=imagenet_data_config("bilinear"),
        notes="bare state_dict; the repository was renamed (ghostnet -> CV-Backbones -> Efficient-AI-Backbones) "
              "and GitHub redirects the old address")
    v1_timm = PretrainedWeights(
        model="ghostnet_100", tag="timm", url=_timm_url("ghostnet_100"),
        file_name="ghostnet_100-timm-in1k.safetensors", file_format="safetensors",
        sha256="8efbcf55d97872c828768b096d4ebebc51f8b7e29623fd3b3933d78cc230e2e2",
        use_ema=False, top1=73.958, top5=None, accuracy_source=_SRC_TIMM_FACTS, license=_LIC_TIMM,
        source=f"{_SRC_TIMM_URL}; sha256 from huggingface.co/timm/ghostnet_100.in1k/blob/d461b85/model.safetensors",
        notes="the official weights re-saved by timm, evaluated with timm's bicubic config; an older timm results "
              f"row measured bilinear gives 73.982 / 91.466 ({_SRC_TIMM_CSV})")
    return [(v1_official, False), (v1_timm, True)]


def _ghostnet_v2_v3_table() -> list[tuple[PretrainedWeights, bool]]:
    """The official GhostNetV2 (1.0x/1.3x/1.6x) and V3 (1.0x, EMA and raw) releases, and timm's copies."""
    table = []
    for width, v2_top1, timm_top1, confirmed in (("100", 75.3, 75.186, True), ("130", 76.9, 76.746, False),
                                                 ("160", 77.8, 77.836, True)):
        name = f"ghostnetv2_{width}"
        ck = f"ck_ghostnetv2_{width[:2]}.pth.tar"
        table.append((PretrainedWeights(
            model=name, tag="official", url=f"{_EAB}/releases/download/GhostNetV2/{ck}",
            file_name=f"{name}-official-{ck}", file_format="pth.tar", sha256=None, use_ema=False,
            top1=v2_top1, top5=None, accuracy_source=_SRC_V2_ACC, license=_LIC_EAB, source=_SRC_V2_README,
            notes="training checkpoint: the 'state_dict' copy is loaded (as timm does); carries thop "
                  "total_ops/total_params buffers, which are dropped"), False))
        table.append((PretrainedWeights(
            model=name, tag="timm", url=_timm_url(name), file_name=f"{name}-timm-in1k.safetensors",
            file_format="safetensors", sha256=None, use_ema=False, top1=timm_top1, top5=None,
            accuracy_source=_SRC_TIMM_FACTS, license=_LIC_TIMM, source=_SRC_TIMM_URL, url_confirmed=confirmed,
            notes="the official checkpoint re-saved by timm" + (
                "" if confirmed else "; model.safetensors seen listed for the 1.0x and 1.6x repositories only")),
            True))
    v3_url = f"{_EAB}/releases/download/GhostNetV3/ghostnetv3-1.0.pth.tar"
    v3_common = dict(model="ghostnetv3_100", url=v3_url, file_name="ghostnetv3_100-official-ghostnetv3-1.0.pth.tar",
                     file_format="pth.tar", sha256=None, accuracy_source=_SRC_V3_ACC, license=_LIC_EAB,
                     source=_SRC_V3_URL)
    table.append((PretrainedWeights(
        tag="ema", use_ema=True, top1=77.134, top5=93.236, **v3_common,
        notes="the EMA copy (state_dict_ema) of the official release: the paper's 77.1; training-form weights, "
              "call reparameterize() for the deploy form"), True))
    table.append((PretrainedWeights(
        tag="raw", use_ema=False, top1=76.930, top5=93.132, **v3_common,
        notes="the non-EMA copy (state_dict) of the official release, the one timm ships"), False))
    table.append((PretrainedWeights(
        model="ghostnetv3_100", tag="timm", url=_timm_url("ghostnetv3_100"),
        file_name="ghostnetv3_100-timm-in1k.safetensors", file_format="safetensors", sha256=None, use_ema=False,
        top1=76.930, top5=93.132, accuracy_source="PaddleClas PR #3413: timm/ghostnetv3_100.in1k evaluated",
        license=_LIC_TIMM, source=_SRC_TIMM_URL, url_confirmed=False,
        notes="the raw (non-EMA) official weights re-saved by timm (76.936 top-1 in timm's own results)"), False))
    return table


def _paddle_table() -> list[tuple[PretrainedWeights, bool]]:
    """PaddleClas's GhostNet 0.5x/1.0x/1.3x and the SSLD-distilled 1.3x (PaddleClas's form of the network)."""
    table = []
    for width, scale, tag, top1, top5, default in (("050", "0_5", "paddle", 66.8, 86.9, True),
                                                   ("100", "1_0", "paddle", 74.0, 91.6, True),
                                                   ("130", "1_3", "paddle", 75.7, 92.5, False),
                                                   ("130", "1_3", "ssld", 79.4, 94.5, True)):
        stem = f"GhostNet_x{scale}_{'ssld_' if tag == 'ssld' else ''}pretrained"
        table.append((PretrainedWeights(
            model=f"ghostnet_{width}_paddle", tag=tag,
            url=f"https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/{stem}.pdparams",
            file_name=f"ghostnet_{width}_paddle-{stem}.pdparams", file_format="pdparams", sha256=None,
            use_ema=False, top1=top1, top5=top5, accuracy_source=_SRC_PADDLE_ACC, license=_LIC_PADDLE,
            source=_SRC_PADDLE_URL, data_config=imagenet_data_config("bilinear"),
            notes="PaddleClas's weights, read as data and renamed on load (ghostnet.convert.paddle)" + (
                "; trained by SSLD distillation from a larger teacher" if tag == "ssld" else "")), default))
    return table


def _mindcv_table() -> list[tuple[PretrainedWeights, bool]]:
    """mindcv's MindSpore training of the official GhostNet at 0.5x/1.0x/1.3x."""
    table = []
    for width, digits, top1, top5, default in (("050", "85b91860", 66.03, 86.64, True),
                                               ("100", "bef8025a", 73.78, 91.66, False),
                                               ("130", "cf4c235c", 75.50, 92.56, True)):
        file = f"ghostnet_{width}-{digits}.ckpt"
        table.append((PretrainedWeights(
            model=f"ghostnet_{width}", tag="mindcv", url=f"https://download.mindspore.cn/toolkits/mindcv/ghostnet/{file}",
            file_name=f"ghostnet_{width}-mindcv-{file}", file_format="ckpt", sha256=None, use_ema=False, top1=top1,
            top5=top5, accuracy_source=_SRC_MINDCV_ACC, license=_LIC_MINDCV, source=_SRC_MINDCV_URL,
            data_config=imagenet_data_config("bilinear"),
            notes="mindcv's own training of the official network (MindSpore checkpoint, read as data and renamed on "
                  "load by ghostnet.convert.mindspore); the 8 hex digits in the file name are not documented as a "
                  "digest, so none is checked"), default))
    return table


def _repghost_table() -> list[tuple[PretrainedWeights, bool]]:
    """RepGhostNet: timm's copies of the official release (the only hosted files; the README links Google Drive)."""
    # (width, official file stem, top-1, top-5, sha256 where the Hugging Face file page shows it, file seen listed)
    rows = (("050", "0_5x_43M_66.95", 66.946, 86.928,
             "1113b67dd8459afa557de736b0aeab9bc07d6f6867b945fdb517608a207165d4", True),
            ("058", "0_58x_60M_68.94", 68.944, 88.422,
             "f4c02da20947575e1e7751001ea6abd35a846fd2ddf2f726a053e07629ba1406", True),
            ("080", "0_8x_96M_72.24", 72.238, 90.486, None, True),
            ("100", "1_0x_142M_74.22", 74.218, 91.548, None, False),
            ("111", "1_11x_170M_75.07", 75.066, 92.186, None, False),
            ("130", "1_3x_231M_76.37", 76.374, 92.898, None, True),
            ("150", "1_5x_301M_77.45", 77.454, 93.5, None, False),
            ("200", "2_0x_516M_78.81", 78.806, 94.326, None, False))
    table = []
    for width, stem, top1, top5, sha256, confirmed in rows:
        name = f"repghostnet_{width}"
        sha_src = f"; sha256 from huggingface.co/timm/{name}.in1k/blob/main/model.safetensors" if sha256 else ""
        table.append((PretrainedWeights(
            model=name, tag="timm", url=_timm_url(name), file_name=f"{name}-timm-in1k.safetensors",
            file_format="safetensors", sha256=sha256, use_ema=False, top1=top1, top5=top5,
            accuracy_source=_SRC_REPGHOST_ACC, license=_LIC_REPGHOST, source=_SRC_TIMM_URL + sha_src,
            url_confirmed=confirmed,
            notes=f"the official release repghostnet_{stem}.pth.tar (named in timm's repghost.py default_cfgs) "
                  "re-saved by timm; training-form weights: reparameterize() or ghostnet.deploy.fuse() gives the "
                  "deploy form" + ("" if confirmed else "; model.safetensors seen listed for the 0.5x, 0.58x, 0.8x "
                                                         "and 1.3x repositories only")), True))
    return table


def _g_ghost_table() -> list[tuple[PretrainedWeights, bool]]:
    """G-Ghost RegNetX: the official release (tag `g_ghost_regnet` of Efficient-AI-Backbones)."""
    readme = "huawei-noah/Efficient-AI-Backbones g_ghost_pytorch/readme.md"
    table = []
    for variant, gflops, top1 in (("032", "3.2", 77.8), ("040", "4.0", 78.6), ("080", "8.0", 79.0),
                                  ("160", "16.0", 79.9)):
        name, file = f"g_ghost_regnetx_{variant}", f"g_ghost_regnet_{gflops}g_{top1}.pth"
        table.append((PretrainedWeights(
            model=name, tag="official", url=f"{_EAB}/releases/download/g_ghost_regnet/{file}",
            file_name=f"{name}-official-{file}", file_format="pth", sha256=None, use_ema=False, top1=top1,
            top5=None, accuracy_source=f"{readme}, 'Pretrained models' table", license=_LIC_G_GHOST,
            source=f"{readme}: links the release page releases/tag/g_ghost_regnet and names the file; the address is "
                   "GitHub's releases/download/<tag>/<file> pattern",
            url_confirmed=False,
            # The PyTorch ImageNet example the README points to: Resize(256) -> CenterCrop(224), bilinear.
            data_config=imagenet_data_config("bilinear"),
            notes="file contents not inspected here; a bare state_dict or the PyTorch ImageNet example's "
                  "{'state_dict': ...} with DataParallel 'module.' prefixes both load"), True))
    return table


_TABLE: dict[str, dict[str, PretrainedWeights]] = {}
_DEFAULT_TAG: dict[str, str] = {}


def register_weights(entry: PretrainedWeights, default: bool = False, replace: bool = False) -> PretrainedWeights:
    """Add `entry` to the table (the model's default if `default` or if it is the model's first entry)."""
    tags = _TABLE.setdefault(entry.model, {})
    if entry.tag in tags and not replace:
        raise ValueError(f"weights {entry.key!r} are already registered (pass replace=True to override)")
    tags[entry.tag] = entry
    if default or entry.model not in _DEFAULT_TAG:
        _DEFAULT_TAG[entry.model] = entry.tag
    return entry


def unregister_weights(model: str, tag: Optional[str] = None) -> None:
    """Remove one entry of `model` (or all of them when `tag` is None)."""
    tags = _TABLE.get(model, {})
    for t in [tag] if tag is not None else list(tags):
        tags.pop(t, None)
    if not tags:
        _TABLE.pop(model, None)
        _DEFAULT_TAG.pop(model, None)
    elif _DEFAULT_TAG.get(model) not in tags:
        _DEFAULT_TAG[model] = next(iter(tags))


def models_with_weights() -> list[str]:
    """Names of the models that have at least one published weights file, sorted."""
    return sorted(_TABLE)


def list_weights(model: Optional[str] = None) -> list[PretrainedWeights]:
    """All entries (or those of `model`), the default tag of each model first."""
    out = []
    for name in sorted(_TABLE) if model is None else [model]:
        tags = _TABLE.get(name, {})
        default = _DEFAULT_TAG.get(name)
        out += [tags[t] for t in sorted(tags, key=lambda t: (t != default, t))]
    return out


def default_tag(model: str) -> Optional[str]:
    """The tag that `pretrained=True` selects for `model` (None when it has no weights)."""
    return _DEFAULT_TAG.get(model)


def get_weights(model: str, tag: Optional[str] = None) -> PretrainedWeights:
    """The entry of `model` tagged `tag` (default: the model's default); ValueError naming what exists."""
    tags = _TABLE.get(model)
    if not tags:
        have = ", ".join(models_with_weights())
        raise ValueError(f"no published weights are registered for {model!r} (models with weights: {have}); "
                         "pass pretrained=PATH_OR_URL to load a checkpoint file")
    tag = tag or _DEFAULT_TAG[model]
    if tag not in tags:
        raise ValueError(f"{model!r} has no weights tagged {tag!r}; available tags: {', '.join(sorted(tags))} "
                         f"(default {_DEFAULT_TAG[model]!r})")
    return tags[tag]


for _entry, _is_default in _builtin_table():
    register_weights(_entry, default=_is_default)
