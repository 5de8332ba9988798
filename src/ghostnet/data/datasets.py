"""Image classification data sets: ImageFolder trees, uint8 `.npz` shards, torchvision's CIFAR-10/100.

`open_split(spec, "train" | "val", transform)` turns what a user passes as `--data` into a data set with a
`classes` list (display names). A corrupt or unreadable image raises `CorruptImageError` naming the file, or, with
`skip_corrupt=True`, comes back as a `SkippedSample` that `collate_skipping` (see loader.py) drops and counts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from ..utils import PathLike

Transform = Optional[Callable[[Any], Any]]

SPLITS = ("train", "val")
#: Folder names accepted for each split of an ImageFolder tree, in order of preference.
SPLIT_DIRS = {"train": ("train",), "val": ("val", "validation", "valid", "test")}
#: Shard name prefixes accepted for each split of an .npz folder, in order of preference.
SPLIT_SHARDS = {"train": ("train",), "val": ("val", "valid", "test")}
TORCHVISION_SETS = ("cifar10", "cifar100")
DEFAULT_DOWNLOAD_DIR = Path("~/.cache/ghostnet/datasets")


class CorruptImageError(ValueError):
    """An image file that cannot be opened or decoded."""


@dataclass(frozen=True)
class SkippedSample:
    """Stands in for an unreadable image when corrupt files are skipped; the collate function drops it."""

    path: str
    reason: str


def load_rgb(path: PathLike):
    """Open an image file as an RGB PIL image, or raise CorruptImageError naming the file."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            # convert() forces the full decode, so a truncated file fails here and not later in a transform.
            return img.convert("RGB")
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CorruptImageError(f"{path}: cannot read image ({type(exc).__name__}: {reason[:200]})") from None


def _split_error(split: str) -> ValueError:
    return ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def read_class_names(path: PathLike) -> dict[str, str] | list[str]:
    """Read a classes.txt: `id<TAB>name` lines give a mapping, plain lines a list (line i = label i)."""
    lines = [line.rstrip("\n") for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if lines and all("\t" in line for line in lines):
        return dict(line.split("\t", 1) for line in lines)
    return lines


class ImageFolderDataset(Dataset):
    """torchvision's ImageFolder with a loader that names corrupt files, and an option to skip them."""

    def __init__(self, root: PathLike, transform: Transform = None, skip_corrupt: bool = False) -> None:
        from torchvision.datasets import ImageFolder

        self.root = Path(root)
        try:
            self.folder = ImageFolder(str(self.root), transform=None, loader=load_rgb)
        except FileNotFoundError as exc:  # torchvision's message names the classes but not the folder
            raise FileNotFoundError(f"{self.root}: {exc}") from None
        self.samples = self.folder.samples
        self.targets = self.folder.targets
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        nearby = (self.root / "classes.txt", self.root.parent / "classes.txt")
        self.classes = _display_names(self.folder.classes, nearby)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = load_rgb(path)
        except CorruptImageError as exc:
            if not self.skip_corrupt:
                raise
            return SkippedSample(path, str(exc))
        if self.transform is not None:
            image = self.transform(image)
        return image, target


def _display_names(folder_names: Sequence[str], candidates: Sequence[Path]) -> list[str]:
    """Folder names, replaced by the names a nearby classes.txt gives them (e.g. wnid -> 'Shih-Tzu')."""
    for classes_file in candidates:
        if classes_file.is_file():
            names = read_class_names(classes_file)
            if isinstance(names, dict) and all(n in names for n in folder_names):
                return [names[n] for n in folder_names]
    return list(folder_names)


def _natural_key(path: Path) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.name)]


class ArrayDataset(Dataset):
    """uint8 images (N x H x W x 3, RGB) and integer labels from one or more .npz shards, held in memory.

    Items are uint8 CHW `tv_tensors.Image`s, which torchvision's v2 transforms take as they are.
    """

    def __init__(self, files: Sequence[PathLike], transform: Transform = None,
                 classes: Optional[Sequence[str]] = None) -> None:
        if not files:
            raise ValueError("ArrayDataset needs at least one .npz file")
        images, labels = [], []
        for file in files:
            x, y = _read_shard(Path(file))
            images.append(x)
            labels.append(y)
        self.images = np.concatenate(images) if len(images) > 1 else images[0]
        self.targets = np.concatenate(labels).astype(np.int64)
        self.transform = transform
        num_classes = int(self.targets.max()) + 1 if len(self.targets) else 0
        if classes is not None and num_classes > len(classes):
            raise ValueError(f"{files[0]}: labels go up to {num_classes - 1} but only {len(classes)} class names are "
                             "given")
        self.classes = list(classes) if classes is not None else [str(i) for i in range(num_classes)]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        image = tv_tensors.Image(torch.from_numpy(self.images[index]).permute(2, 0, 1))
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.targets[index])


def _read_shard(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            names = sorted(data.files)
            images, labels = (data["images"], data["labels"]) if {"images", "labels"} <= set(names) else (None, None)
    except Exception as exc:  # numpy's ValueError for a file that is not an archive does not name the file
        raise ValueError(f"{path}: not a readable .npz file ({type(exc).__name__}: {exc})") from None
    if images is None:
        raise ValueError(f"{path}: expected arrays 'images' and 'labels', found {names}")
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"{path}: 'images' must be uint8 N x H x W x 3 (RGB), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: 'labels' must be {len(images)} integers, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) and labels.min() < 0:
        raise ValueError(f"{path}: labels must be >= 0, found {labels.min()}")
    return images, labels


def _npz_shards(root: Path, split: str) -> list[Path]:
    for prefix in SPLIT_SHARDS[split]:
        files = sorted((p for p in root.glob(f"{prefix}*.npz") if p.is_file()), key=_natural_key)
        if files:
            return files
    return []


def _torchvision_set(name: str, split: str, transform: Transform, download: bool, root: Optional[PathLike]):
    from torchvision import datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    root = Path(root or os.environ.get("GHOSTNET_DATASETS", DEFAULT_DOWNLOAD_DIR)).expanduser()
    try:
        dataset = cls(str(root), train=split == "train", transform=transform, download=download)
    except RuntimeError as exc:
        raise ValueError(f"{name} is not in {root} ({exc}); pass --download to fetch it, or --data-dir to point "
                         "at a folder that holds it") from None
    return dataset


def open_split(spec: PathLike, split: str, transform: Transform = None, *, download: bool = False,
               data_dir: Optional[PathLike] = None, skip_corrupt: bool = False) -> Dataset:
    """Open one split of a data set named by `spec` (what `--data` takes).

    `spec` is an ImageFolder root with train/ and val/ (val/ may be validation/, valid/ or test/), a folder of
    .npz shards (train*.npz and val*.npz or test*.npz, with an optional classes.txt), or `cifar10` / `cifar100`
    (torchvision's, fetched into `data_dir` only when `download=True`). For the val split, a folder of class
    folders is also accepted as the split itself.
    """
    if split not in SPLITS:
        raise _split_error(split)
    root = Path(spec).expanduser()
    if str(spec).lower() in TORCHVISION_SETS and not root.exists():
        return _torchvision_set(str(spec).lower(), split, transform, download, data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{spec}: no such data folder (expected an ImageFolder root with train/ and val/, a "
                                f"folder of .npz shards, or one of {', '.join(TORCHVISION_SETS)})")
    found = find_split(root, split)
    if isinstance(found, list):
        return ArrayDataset(found, transform, npz_class_names(root))
    if found is not None:
        return ImageFolderDataset(found, transform, skip_corrupt)
    raise ValueError(f"{root}: found no {split} data (looked for {', '.join(d + '/' for d in SPLIT_DIRS[split])} "
                     f"and {', '.join(p + '*.npz' for p in SPLIT_SHARDS[split])})")


def find_split(root: Path, split: str) -> Union[list[Path], Path, None]:
    """Where `split` of a data folder is: its .npz shards (a list), its ImageFolder folder, or None."""
    shards = _npz_shards(root, split)
    if shards:
        return shards
    for name in SPLIT_DIRS[split]:
        if (root / name).is_dir():
            return root / name
    has_split_dirs = any((root / n).is_dir() for names in SPLIT_DIRS.values() for n in names)
    if split == "val" and not has_split_dirs and any(p.is_dir() for p in root.iterdir()):
        return root  # a folder of class folders is a val split by itself
    return None


def npz_class_names(root: Path) -> Optional[list[str]]:
    """The label names of a folder of .npz shards, from its classes.txt (None without one)."""
    classes_file = root / "classes.txt"
    names = read_class_names(classes_file) if classes_file.is_file() else None
    return list(names.values()) if isinstance(names, dict) else names


def _unwrapped(dataset: Dataset) -> Dataset:
    """The data set under Subset-style wrappers: the first one that has `classes`."""
    while not hasattr(dataset, "classes") and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset


def dataset_classes(dataset: Dataset) -> list[str]:
    """The class names of a data set (through Subset wrappers)."""
    return list(_unwrapped(dataset).classes)


def dataset_class_ids(dataset: Dataset) -> list[str]:
    """The class folder names of an image folder (ImageNet WordNet ids for Imagewoof), else the class names."""
    dataset = _unwrapped(dataset)
    folder = getattr(dataset, "folder", None)
    return list(folder.classes) if folder is not None else list(dataset.classes)


def check_same_classes(train_set: Dataset, val_set: Dataset) -> None:
    """Refuse image folders whose splits list different class folders: ImageFolder numbers classes by the sorted
    folder names of each split on its own, so one missing folder would silently shift every later label."""
    train, val = _unwrapped(train_set), _unwrapped(val_set)
    if not (isinstance(train, ImageFolderDataset) and isinstance(val, ImageFolderDataset)):
        return  # .npz labels are stored numbers, the same in every split
    train_ids, val_ids = list(train.folder.classes), list(val.folder.classes)
    if train_ids != val_ids:
        only_train = sorted(set(train_ids) - set(val_ids))
        only_val = sorted(set(val_ids) - set(train_ids))
        raise ValueError(f"{train.root} and {val.root} have different class folders (only in train: "
                         f"{', '.join(only_train[:5]) or 'none'}; only in val: {', '.join(only_val[:5]) or 'none'}), "
                         f"so their labels would not match; give both splits the same class folders "
                         f"(`ghostnet data check` lists them)")
