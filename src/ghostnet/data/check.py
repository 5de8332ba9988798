"""`check_data`: read a whole data set once, before a long run meets its bad files one at a time.

Every image of every split is decoded in full by the loader's own decoder (`load_rgb`), in DataLoader worker
processes; the files are listed by torchvision's ImageFolder rule, so exactly the files a run would read are read.
`.npz` shards are loaded and their arrays checked as `ArrayDataset` checks them. The report lists the unreadable
files (what would stop a run), the images per class and split, and what is suspicious but readable: empty classes,
classes in one split only, tiny images and files the loader ignores.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
from torch.utils.data import DataLoader, Dataset

from ..utils import PathLike
from .datasets import (SPLITS, TORCHVISION_SETS, CorruptImageError, _read_shard, find_split, load_rgb,
                       npz_class_names)

#: Images with a side shorter than this many pixels are listed as suspicious (placeholders, tracking pixels).
MIN_SIZE = 8
#: Files per worker batch: large enough that passing results between processes costs little.
_CHUNK = 32


@dataclass
class Problem:
    """A file and what is wrong with it."""

    path: str
    reason: str


@dataclass
class SplitReport:
    """What one split holds and which of its files cannot be read."""

    split: str
    kind: str  # "images" (an ImageFolder tree) or "arrays" (.npz shards)
    source: str  # the split's folder, or its first shard
    classes: dict[str, int]  # class (folder name, or classes.txt name / label) -> images, in label order
    unreadable: list[Problem] = field(default_factory=list)  # a run would stop at each of these
    small: list[Problem] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # files the loader does not read (no image extension)

    @property
    def images(self) -> int:
        """The images the split lists (unreadable ones included; for arrays, the rows of the shards that load)."""
        return sum(self.classes.values())


@dataclass
class DataReport:
    """The outcome of `check_data`; `ok` is False when some file cannot be read."""

    path: str
    splits: list[SplitReport]
    warnings: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def unreadable(self) -> list[Problem]:
        """Every unreadable file, split by split."""
        return [problem for split in self.splits for problem in split.unreadable]

    @property
    def ok(self) -> bool:
        return not self.unreadable

    def to_dict(self) -> dict[str, Any]:
        """Plain types, for JSON."""
        splits = [{**asdict(s), "images": s.images} for s in self.splits]
        return {"path": self.path, "ok": self.ok, "unreadable": len(self.unreadable), "splits": splits,
                "warnings": self.warnings, "note": self.note}


def check_data(path: PathLike, workers: int = 0, progress: bool = False, min_size: int = MIN_SIZE) -> DataReport:
    """Decode every image of every split of the data set at `path` (what `--data` takes) and report."""
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    root = Path(path).expanduser()
    if str(path).lower() in TORCHVISION_SETS and not root.exists():
        return DataReport(str(path), [], note=f"{str(path).lower()} is torchvision's data set: torchvision checks its "
                                              "files (MD5) when it downloads them; nothing to check here")
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: no such data folder")
    splits = []
    for split in SPLITS:
        found = find_split(root, split)
        if isinstance(found, list):
            splits.append(_check_arrays(split, found, npz_class_names(root), min_size))
        elif found is not None:
            splits.append(_check_images(split, found, workers, progress, min_size))
    if not splits:
        raise ValueError(f"{root}: not a data set (expected an ImageFolder root with train/ and val/ class folders, a "
                         "folder of class folders, or train*.npz / val*.npz shards)")
    return DataReport(str(root), splits, _warnings(splits, min_size))


# ----------------------------------------------------------------------------------------------- image folders
def _list_images(folder: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, class) of every file the loader reads, and the files it ignores: torchvision's own listing."""
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, has_file_allowed_extension, make_dataset

    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError:  # no class folders: a folder of loose images, or not a data set at all
        raise ValueError(f"{folder}: no class folders in it (an ImageFolder split holds one folder per class)") \
            from None
    ignored: list[str] = []

    def is_image(file: str) -> bool:
        readable = has_file_allowed_extension(file, IMG_EXTENSIONS)
        if not readable:
            ignored.append(file)
        return readable

    samples = make_dataset(str(folder), class_to_idx, is_valid_file=is_image, allow_empty=True)
    return [(file, classes[target]) for file, target in samples], sorted(ignored)


class _Decode(Dataset):
    """Item i: (path, reason it cannot be read or None, (width, height) or None)."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, Optional[str], Optional[tuple[int, int]]]:
        path = self.paths[index]
        try:
            return path, None, load_rgb(path).size
        except CorruptImageError as exc:
            return path, str(exc).removeprefix(f"{path}: "), None


def _check_images(split: str, folder: Path, workers: int, progress: bool, min_size: int) -> SplitReport:
    from torchvision.datasets.folder import find_classes
    from tqdm import tqdm

    samples, ignored = _list_images(folder)
    counts = dict.fromkeys(find_classes(str(folder))[0], 0)
    for _, name in samples:
        counts[name] += 1
    report = SplitReport(split, "images", str(folder), counts, ignored=ignored)
    paths = [file for file, _ in samples]
    loader = DataLoader(_Decode(paths), batch_size=_CHUNK, num_workers=workers, collate_fn=list)
    with tqdm(total=len(paths), desc=f"reading {split}", unit="img", disable=not progress, leave=False) as bar:
        for chunk in loader:
            for path, reason, size in chunk:
                if reason is not None:
                    report.unreadable.append(Problem(path, reason))
                elif min(size) < min_size:
                    report.small.append(Problem(path, f"{size[0]}x{size[1]} pixels"))
            bar.update(len(chunk))
    return report


# ----------------------------------------------------------------------------------------------- .npz shards
def _check_arrays(split: str, shards: list[Path], names: Optional[list[str]], min_size: int) -> SplitReport:
    """Load each shard as ArrayDataset would; a shard that does not load, does not fit the split's first shard's
    image size or has labels without a name is unreadable."""
    source = str(shards[0]) if len(shards) == 1 else f"{shards[0]} .. {shards[-1].name} ({len(shards)} shards)"
    report = SplitReport(split, "arrays", source, {})
    counts = np.zeros(len(names or ()), np.int64)
    size = None
    for shard in shards:
        try:
            images, labels = _read_shard(shard)
        except ValueError as exc:
            report.unreadable.append(Problem(str(shard), str(exc).removeprefix(f"{shard}: ")))
            continue
        if size is not None and images.shape[1:3] != size:
            report.unreadable.append(Problem(str(shard), f"images are {images.shape[1]}x{images.shape[2]} but "
                                                         f"{shards[0].name}'s are {size[0]}x{size[1]}: the shards "
                                                         "of a split must share one size"))
            continue
        size = size or images.shape[1:3]
        if names is not None and len(labels) and labels.max() >= len(names):
            report.unreadable.append(Problem(str(shard), f"labels go up to {labels.max()} but classes.txt names "
                                                         f"{len(names)} classes"))
            continue
        found = np.bincount(labels, minlength=len(counts))
        counts = np.pad(counts, (0, len(found) - len(counts))) + found
        if min(images.shape[1:3]) < min_size:
            report.small.append(Problem(str(shard), f"{images.shape[1]}x{images.shape[2]} pixels"))
    labels = names if names is not None else [str(i) for i in range(len(counts))]
    report.classes = {name: int(n) for name, n in zip(labels, counts)}
    return report


# ----------------------------------------------------------------------------------------------- the report
def _warnings(splits: list[SplitReport], min_size: int) -> list[str]:
    """What is readable but suspicious."""
    lines = []
    for s in splits:
        empty = [name for name, n in s.classes.items() if n == 0]
        if empty:
            lines.append(f"{s.split}: no images in class(es) {', '.join(empty)}"
                         + (" (training refuses an ImageFolder split with an empty class)" if s.kind == "images"
                            else ""))
        if s.small:
            lines.append(f"{s.split}: {len(s.small)} image(s) with a side under {min_size} pixels, e.g. "
                         f"{s.small[0].path} ({s.small[0].reason})")
        if s.ignored:
            lines.append(f"{s.split}: {len(s.ignored)} file(s) the loader does not read (not an image file name), "
                         f"e.g. {s.ignored[0]}")
    if len(splits) == 2 and splits[0].kind == splits[1].kind == "images":
        train, val = (set(s.classes) for s in splits)
        for split, only in (("train", train - val), ("val", val - train)):
            if only:
                lines.append(f"class(es) only in {split}: {', '.join(sorted(only))} (ImageFolder numbers classes by "
                             "their sorted folder names, so val's labels would not match train's)")
    return lines


def format_report(report: DataReport, max_listed: int = 50) -> str:
    """The report as text: splits, images per class and split, unreadable files, warnings, a last line that says
    whether every file can be read."""
    if not report.splits:
        return report.note
    lines = [f"{'split':<6} {'kind':<7} {'images':>8} {'classes':>8}  source"]
    lines += [f"{s.split:<6} {s.kind:<7} {s.images:>8} {len(s.classes):>8}  {s.source}" for s in report.splits]
    names = list(dict.fromkeys(name for s in report.splits for name in s.classes))
    width = max([len("class"), *map(len, names)])
    lines += ["", f"{'class':<{width}} " + " ".join(f"{s.split:>8}" for s in report.splits)]
    for name in names:
        cells = (f"{s.classes[name]:>8}" if name in s.classes else f"{'-':>8}" for s in report.splits)
        lines.append(f"{name:<{width}} " + " ".join(cells))
    unreadable = report.unreadable
    if unreadable:
        lines += ["", f"unreadable ({len(unreadable)}):"]
        lines += [f"  {p.path}: {p.reason}" for p in unreadable[:max_listed]]
        if len(unreadable) > max_listed:
            lines.append(f"  ... and {len(unreadable) - max_listed} more (--json lists them all)")
    if report.warnings:
        lines += ["", "warnings:"] + [f"  {w}" for w in report.warnings]
    total = sum(s.images for s in report.splits)
    n = len(unreadable)
    lines += ["", f"{n} unreadable file{'s' if n != 1 else ''} (a run stops at the first unless --skip-bad-images "
                  "allows it)" if n else f"all {total} images readable"]
    return "\n".join(lines)
