"""The Hugging Face Hub's layout of a timm model, read and written: a folder (or Hub repository) holding config.json
(`architecture`, `num_classes`, `num_features`, `global_pool`, `label_names`, `label_descriptions`, `model_args`,
`pretrained_cfg`), model.safetensors and a model card README.md.

Reading: `create_model("hf-hub:ORG/NAME[@REVISION]")` and `create_model("local-dir:PATH")` (this module registers both
prefixes with the registry, which reads no files). Hub files come through `huggingface_hub.hf_hub_download`, so its
cache (`HF_HUB_CACHE`) and offline switch (`HF_HUB_OFFLINE`) apply; `GHOSTNET_OFFLINE=1` keeps it off the network
too. As in timm, `pretrained=False` builds the folder's architecture with its configuration (classes, input
channels) and random weights; `pretrained=True` loads the folder's weights as well. A folder needs no
huggingface_hub; a Hub repository does (the `hub` extra).

Writing: `hf_config` and `write_hf_folder`; `ghostnet.save_pretrained` (in `deploy.hub_export`, which measures the
model for its card) calls them. Keys and meanings are timm's (`timm/models/_hub.py`, `save_config_for_hf`), so a
folder written here loads with `timm.create_model("local-dir:PATH", pretrained=True)` for the architectures timm has.
"""
from __future__ import annotations

import functools
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ._version import __version__
from .convert.checkpoints import check_fit, load_checkpoint, save_checkpoint
from .download import is_offline
from .errors import CheckpointError, WeightsUnavailableError
from .models.registry import (classifier_name, create_model, get_model_entry, input_size_of, list_models,
                              num_classes_of, set_source_loader)
from .utils import PathLike, atomic_write, check_folder_writable

HUB, LOCAL = "hf-hub", "local-dir"
CONFIG_NAME, WEIGHTS_NAME, CARD_NAME = "config.json", "model.safetensors", "README.md"
#: Weight files looked for in a folder, preferred first (timm's order); pickled ones load with weights_only=True.
WEIGHT_FILES = (WEIGHTS_NAME, "pytorch_model.bin", "pytorch_model.pth", "model.pth")
#: On the Hub only these are tried (each miss is a request), as timm does.
HUB_WEIGHT_FILES = WEIGHT_FILES[:2]
#: pretrained_cfg keys that say where a file was found, not what the weights are (timm's save drops them too).
LOCATION_KEYS = ("url", "file", "hf_hub_id", "hf_hub_filename", "source", "state_dict", "architecture")
#: pretrained_cfg keys timm keeps even when they are None.
KEEP_NULL = ("pool_size", "first_conv", "classifier")
LABEL_KEYS = ("label_names", "label_descriptions")
#: Data-config values stored as JSON lists, carried as tuples (as the registry's configs are).
TUPLE_KEYS = ("input_size", "test_input_size", "min_input_size", "mean", "std", "pool_size", "test_pool_size")
#: Architectures timm builds under the same name with the same state-dict keys, so that timm loads our folders of
#: them (the resnet50 baseline is torchvision's, whose keys timm's shares); a test checks the list against timm.
TIMM_ARCHITECTURES = (
    "ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnetv2_100", "ghostnetv2_130", "ghostnetv2_160",
    "ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160", "repghostnet_050", "repghostnet_058",
    "repghostnet_080", "repghostnet_100", "repghostnet_111", "repghostnet_130", "repghostnet_150", "repghostnet_200",
    "resnet50")
HUB_EXTRA = "pip install 'ghostnet-torch[hub]'"
#: Licence ids of the Hub's model-card metadata that our weights table's licence texts start with.
_LICENSE_IDS = ("apache-2.0", "mit", "bsd-2-clause", "bsd-3-clause", "cc-by-4.0", "cc-by-nc-4.0", "gpl-3.0")
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]*")

__all__ = ["CARD_NAME", "CONFIG_NAME", "HUB", "LOCAL", "TIMM_ARCHITECTURES", "WEIGHTS_NAME", "HubConfig",
           "architecture_of", "check_weights_fit", "create_from_folder", "folder_data_config", "hf_config",
           "license_id", "model_args_of", "parse_hf_config", "read_hf_config", "write_hf_folder"]


# -- writing ------------------------------------------------------------------------------------------------------
def license_id(text: Optional[str]) -> Optional[str]:
    """The Hub's licence id ("apache-2.0", "mit", ...) a licence text starts with, or that it is; None if none."""
    if not text:
        return None
    word = re.split(r"[\s(:;,]", text.strip(), maxsplit=1)[0].lower()
    if word in _LICENSE_IDS or (word == text.strip().lower() and _LICENSE_ID.fullmatch(word)):
        return word
    return None


def architecture_of(model: nn.Module, architecture: Optional[str] = None) -> str:
    """The registered name a folder of `model` gives as its `architecture`: `architecture`, else the model's own."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = architecture or cfg.get("architecture") or getattr(model, "model_name", None)
    if not isinstance(name, str) or name not in list_models():
        raise ValueError(f"{name!r} is not a registered ghostnet model, which config.json must name; pass "
                         "architecture=NAME (`ghostnet models` lists them)")
    return name


def model_args_of(model: nn.Module) -> dict[str, Any]:
    """The builder arguments that give `model` its shape (timm's `model_args`): in_chans where its class takes
    them, num_classes, and global_pool where its class takes one."""
    params = inspect.signature(type(model).__init__).parameters
    args: dict[str, Any] = {}
    if "in_chans" in params:
        args["in_chans"] = int(input_size_of(model)[0])
    args["num_classes"] = num_classes_of(model)
    pool = _pool_type(model)
    if "global_pool" in params and pool:
        args["global_pool"] = pool
    return args


def _pool_type(model: nn.Module) -> Optional[str]:
    """The model's global pooling ("avg", "max", ...): a pooling module's `pool_type` or an attribute saying it."""
    pool = getattr(model, "global_pool", None)
    for value in (pool, getattr(pool, "pool_type", None), getattr(model, "global_pool_type", None)):
        if isinstance(value, str) and value:
            return value
    return None


def _labels(label_names: Any, label_descriptions: Any, num_classes: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if label_names:
        names = dict(label_names) if isinstance(label_names, Mapping) else list(label_names)
        if isinstance(names, list) and len(names) != num_classes:
            raise ValueError(f"label_names has {len(names)} names for a classifier of {num_classes} classes")
        out["label_names"] = names
    if label_descriptions:
        if not isinstance(label_descriptions, Mapping):
            raise ValueError("label_descriptions must map label names to descriptions")
        out["label_descriptions"] = dict(label_descriptions)
    return out


def hf_config(model: nn.Module, *, architecture: Optional[str] = None, label_names: Optional[Sequence[str]] = None,
              label_descriptions: Optional[Mapping[str, str]] = None, license: Optional[str] = None
              ) -> dict[str, Any]:
    """config.json for `model`, keys in the order timm's `save_config_for_hf` writes them.

    `license` is the Hub's licence id written into `pretrained_cfg` (none when None). Labels the model carries in
    its `pretrained_cfg` (one loaded from a folder) are kept unless others are given.
    """
    if getattr(model, "features_only", False):
        raise ValueError("a features_only model has no classifier; save the classifier model it was built from")
    arch = architecture_of(model, architecture)
    args = model_args_of(model)
    num_classes = args["num_classes"]
    own = dict(getattr(model, "pretrained_cfg", None) or {})
    if own.get("num_classes") != num_classes:  # labels of another head do not name these outputs
        for key in LABEL_KEYS:
            own.pop(key, None)
    pretrained_cfg = {k: v for k, v in own.items() if k not in LOCATION_KEYS + LABEL_KEYS + ("license",)
                      and (v is not None or k in KEEP_NULL)}
    pretrained_cfg.setdefault("crop_mode", "center")
    # Our networks pool globally, so any input size runs; checkpoints hold plain state dicts.
    pretrained_cfg.update(custom_load=False, fixed_input_size=False, num_classes=num_classes)
    if license:
        pretrained_cfg["license"] = license
    num_features = getattr(model, "num_features", None) or model.get_submodule(classifier_name(model)).in_features
    config: dict[str, Any] = {"architecture": arch, "num_classes": num_classes, "num_features": int(num_features)}
    if "global_pool" in args:
        config["global_pool"] = args["global_pool"]
    config.update(_labels(label_names if label_names is not None else own.get("label_names"),
                          label_descriptions if label_descriptions is not None else own.get("label_descriptions"),
                          num_classes))
    config["model_args"] = args
    config["pretrained_cfg"] = pretrained_cfg
    try:
        json.dumps(config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config.json of {arch} cannot be written as JSON ({exc})") from None
    return config


def check_weights_fit(model: nn.Module, config: Mapping[str, Any]) -> None:
    """Raise CheckpointError unless `model`'s weights load into the model `config` builds (not a fused copy)."""
    arch, args = config["architecture"], dict(config.get("model_args") or {})
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated or initialised
            fresh = create_model(arch, **args)
    except (NotImplementedError, RuntimeError):
        fresh = create_model(arch, **args)
    check_fit(model.state_dict(), fresh.state_dict(),
              f"the model's weights (a fused or re-parameterized copy cannot be saved as {arch}: save the model "
              "before fusing)")


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_hf_folder(model: nn.Module, directory: PathLike, config: Mapping[str, Any],
                    card: Optional[str] = None) -> Path:
    """Write `model`'s weights (model.safetensors), `config` (config.json) and `card` (README.md) into
    `directory`, each file atomically; returns the folder."""
    folder = check_folder_writable(directory, "output folder")
    check_weights_fit(model, config)
    save_checkpoint(model.state_dict(), folder / WEIGHTS_NAME, {"format": "pt"})
    _write_text(folder / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    if card is not None:
        _write_text(folder / CARD_NAME, card)
    return folder


# -- reading ------------------------------------------------------------------------------------------------------
@dataclass
class HubConfig:
    """A config.json parsed as timm parses it: the architecture, its `pretrained_cfg` (labels and `num_classes`
    included) and the builder arguments."""

    architecture: str
    pretrained_cfg: dict[str, Any]
    model_args: dict[str, Any]

    @property
    def num_classes(self) -> Optional[int]:
        """The classifier size of the stored weights."""
        value = self.model_args.get("num_classes", self.pretrained_cfg.get("num_classes"))
        return None if value is None else int(value)


def parse_hf_config(raw: Any, where: str) -> HubConfig:
    """Read a config.json object (timm's layout, or its older single-dict form) of `where`."""
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: config.json is not a JSON object")
    if "pretrained_cfg" not in raw:  # timm's older layout: one dict, class names under "labels"
        flat = {k: v for k, v in raw.items() if k not in ("architecture", "num_features")}
        if "labels" in flat:
            flat["label_names"] = flat.pop("labels")
        raw = {"architecture": raw.get("architecture"), "pretrained_cfg": flat}
    arch = raw.get("architecture")
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{where}: config.json names no architecture")
    if arch not in list_models():
        raise ValueError(f"{where}: config.json's architecture {arch!r} is not a ghostnet model "
                         f"(`ghostnet models` lists the {len(list_models())} it builds)")
    cfg, args = raw.get("pretrained_cfg"), raw.get("model_args") or {}
    if not isinstance(cfg, dict) or not isinstance(args, dict):
        raise CheckpointError(f"{where}: config.json's pretrained_cfg and model_args must be JSON objects")
    cfg = dict(cfg)
    for key in ("num_classes",) + LABEL_KEYS:
        if key in raw:
            cfg[key] = raw[key]
    if args.get("in_chans") is not None:
        cfg["input_size"] = (int(args["in_chans"]), *tuple(cfg.get("input_size") or (3, 224, 224))[1:])
    for key in TUPLE_KEYS:
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    return HubConfig(arch, cfg, dict(args))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _hub_download(repo: str, filename: str) -> Optional[Path]:
    """The local copy of `filename` of Hub repository `repo` ("org/name[@revision]"), through huggingface_hub's
    cache; None when the repository has no such file."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                           RevisionNotFoundError)
    except ImportError:
        raise ImportError(f"hf-hub: models need huggingface_hub ({HUB_EXTRA})") from None
    repo_id, _, revision = repo.partition("@")
    not_cached = WeightsUnavailableError(
        f"hf-hub:{repo}: {filename} is not in the Hugging Face cache and cannot be downloaded (HF_HUB_OFFLINE "
        "or GHOSTNET_OFFLINE is set, or the Hub cannot be reached)")
    if is_offline():
        # A cache lookup alone: hf_hub_download(local_files_only=True) still builds request headers, and
        # huggingface_hub 2.x fetches an agent registry from the Hub for them unless HF_HUB_OFFLINE is set.
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, filename, revision=revision or None)
        if found is None:
            raise not_cached
        return Path(found) if isinstance(found, str) else None  # else: cached as absent from the repository
    try:
        return Path(hf_hub_download(repo_id, filename, revision=revision or None, library_name="ghostnet",
                                    library_version=__version__))
    except LocalEntryNotFoundError:  # before EntryNotFoundError, its base class
        raise not_cached from None
    except EntryNotFoundError:
        return None
    except (RepositoryNotFoundError, RevisionNotFoundError) as exc:
        raise ValueError(f"hf-hub:{repo}: {_first_line(exc)}") from None
    except OSError as exc:
        raise OSError(f"hf-hub:{repo}: {filename}: {_first_line(exc)}") from None
    except ValueError as exc:  # an invalid repository id
        raise ValueError(f"hf-hub:{repo}: {_first_line(exc)}") from None


def _folder(ident: str) -> Path:
    folder = Path(ident).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"local-dir:{ident}: no such folder")
    return folder


def _config_file(source: str, ident: str) -> Path:
    if source == LOCAL:
        path = _folder(ident) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"local-dir:{ident}: no {CONFIG_NAME} in the folder")
        return path
    path = _hub_download(ident, CONFIG_NAME)
    if path is None:
        raise CheckpointError(f"hf-hub:{ident}: the repository has no {CONFIG_NAME} (not a timm-layout model)")
    return path


def _weights_file(source: str, ident: str) -> Path:
    if source == LOCAL:
        found = next((p for p in (_folder(ident) / n for n in WEIGHT_FILES) if p.is_file()), None)
        if found is None:
            raise CheckpointError(f"local-dir:{ident}: no weights file ({', '.join(WEIGHT_FILES)}) in the folder")
        return found
    unavailable: Optional[WeightsUnavailableError] = None
    for name in HUB_WEIGHT_FILES:
        try:
            path = _hub_download(ident, name)
        except WeightsUnavailableError as exc:  # offline: another file may still be cached
            unavailable = unavailable or exc
            continue
        if path is not None:
            return path
    if unavailable is not None:
        raise unavailable
    raise CheckpointError(f"hf-hub:{ident}: the repository has no weights file ({', '.join(HUB_WEIGHT_FILES)})")


def read_hf_config(source: str, ident: str) -> HubConfig:
    """The parsed config.json of "hf-hub:`ident`" or "local-dir:`ident`"."""
    path = _config_file(source, ident)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{source}:{ident}: {CONFIG_NAME} is not valid JSON ({exc})") from None
    return parse_hf_config(raw, f"{source}:{ident}")


def _carried_cfg(model: nn.Module, cfg: HubConfig, source: str, ident: str, kwargs: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The model's pretrained_cfg: the registry's, the folder's on top, and where it came from (as timm records)."""
    out = dict(getattr(model, "pretrained_cfg", None) or {})
    out.update(cfg.pretrained_cfg)
    if "in_chans" in kwargs:
        out["input_size"] = (int(kwargs["in_chans"]), *tuple(out["input_size"])[1:])
    if not getattr(model, "features_only", False) and num_classes_of(model) != cfg.num_classes:
        for key in LABEL_KEYS:  # a new head: the stored class names name other outputs
            out.pop(key, None)
        out["num_classes"] = num_classes_of(model)
    where = {"hf_hub_id": ident} if source == HUB else {"file": str(_folder(ident))}
    out.update(architecture=cfg.architecture, source=source, **where)
    return out


def create_from_folder(source: str, ident: str, pretrained: object = None, **kwargs: Any) -> nn.Module:
    """What `create_model("hf-hub:ORG/NAME")` / `create_model("local-dir:PATH")` returns: the folder's architecture
    built with its `model_args` (overridden by `kwargs`), with the folder's weights when `pretrained` is True.

    A `num_classes` other than the folder's gets its weights and a freshly initialised classifier of that size.
    """
    where = f"{source}:{ident}"
    if pretrained not in (None, False, True):
        raise ValueError(f"{where}: pretrained must be True or False (a folder holds one set of weights), "
                         f"got {pretrained!r}")
    cfg = read_hf_config(source, ident)
    build = {**cfg.model_args, **kwargs}
    saved = cfg.num_classes
    if saved is not None:
        build.setdefault("num_classes", saved)
    wanted = build.get("num_classes")
    swap = bool(pretrained) and saved is not None and wanted != saved and not build.get("features_only")
    if swap:
        build["num_classes"] = saved  # load the whole checkpoint, then give the model its own head
    try:
        model = create_model(cfg.architecture, **build)
    except TypeError as exc:
        raise ValueError(f"{where}: {cfg.architecture} does not take {sorted(build)} ({exc})") from None
    if pretrained:
        load_checkpoint(model, _weights_file(source, ident))
        if swap:
            if not hasattr(model, "reset_classifier"):
                raise ValueError(f"{where}: {cfg.architecture} cannot change its classifier; num_classes must be "
                                 f"{saved}")
            model.reset_classifier(wanted)
    model.pretrained_cfg = _carried_cfg(model, cfg, source, ident, kwargs)
    model.model_name = where
    return model


def folder_data_config(source: str, ident: str) -> dict[str, Any]:
    """The data config (input_size, crop_pct, interpolation, mean, std, ...) of a folder's model, without building
    it: its architecture's, with the folder's `pretrained_cfg` on top."""
    cfg = read_hf_config(source, ident)
    return {**get_model_entry(cfg.architecture).default_cfg, **cfg.pretrained_cfg}


for _source in (HUB, LOCAL):
    set_source_loader(_source, functools.partial(create_from_folder, _source),
                      functools.partial(folder_data_config, _source))
