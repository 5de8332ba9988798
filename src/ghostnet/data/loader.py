"""Samplers and loaders that make training reproducible and exactly resumable.

- `ResumableSampler` is torch's DistributedSampler (the same permutation for any world size, one shard per rank)
  that can start mid-epoch and hands out `(index, sample_seed)` pairs.
- `SeededDataset` seeds torch's generator (and Python's and NumPy's) from `sample_seed` before the transform runs, so
  the augmentation of a sample depends only on (seed, epoch, index): not on workers, world size, or where a resumed
  run starts.
- `collate_skipping` drops the `SkippedSample`s of unreadable images and reports them with the batch;
  `BadImageCounter.watch` counts them as the batches reach the training process (workers only drop them, each in
  its own copy of the data set, so counting there would miss the others') and stops a run that meets too many.
"""
from __future__ import annotations

import hashlib
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler, Sampler, Subset
from torch.utils.data import default_collate

from .datasets import SkippedSample


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample's augmentation in one epoch."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class ResumableSampler(DistributedSampler):
    """DistributedSampler yielding `(index, sample_seed)` that can skip the first `start` samples of its shard."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                         drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first `start` samples of this rank's shard in the current epoch (a resumed run)."""
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start must be in 0..{self.num_samples}, got {start}")
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.start:]
        return iter([(i, sample_seed(self.seed, self.epoch, i)) for i in indices])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Every `num_replicas`-th index from `rank`, without the padding DistributedSampler adds (exact evaluation)."""

    def __init__(self, length: int, num_replicas: int = 1, rank: int = 0) -> None:
        self.indices = list(range(rank, length, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class SeededDataset(Dataset):
    """Wraps a data set so that item `(index, seed)` is transformed under `torch.manual_seed(seed)` (and seeded
    Python and NumPy generators, for transforms that draw from them)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        # fork_rng restores the caller's generator afterwards: with num_workers=0 this runs in the training process,
        # whose generator also drives dropout and must not be disturbed.
        # timm's RandAugment draws from Python's random and NumPy's global generator: seed those too.
        python_state, numpy_state = random.getstate(), np.random.get_state()
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


@dataclass
class Batch:
    """A collated batch and the unreadable files that were dropped from it."""

    images: Optional[torch.Tensor]
    targets: Optional[torch.Tensor]
    skipped: list[SkippedSample] = field(default_factory=list)

    def __len__(self) -> int:
        return 0 if self.targets is None else len(self.targets)

    def pin_memory(self) -> "Batch":
        """Called by DataLoader(pin_memory=True): page-locked copies for faster, asynchronous GPU transfers."""
        if self.images is None:
            return self
        return Batch(self.images.pin_memory(), self.targets.pin_memory(), self.skipped)


def collate_skipping(items: Sequence[Any]) -> Batch:
    """Collate (image, target) pairs, dropping and reporting `SkippedSample`s."""
    skipped = [item for item in items if isinstance(item, SkippedSample)]
    kept = [item for item in items if not isinstance(item, SkippedSample)]
    if not kept:
        return Batch(None, None, skipped)
    images, targets = default_collate(kept)
    return Batch(images, targets, skipped)


class BadImageLimitError(ValueError):
    """A run met more unreadable images than it was allowed to skip."""


def _to_stderr(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)  # above the progress bar, as the trainer's own lines


class BadImageCounter:
    """The unreadable images a run skipped: each distinct file is logged once (with its path) and counted; one more
    than `limit` stops the run with BadImageLimitError.

    Distinct files, because a bad training image comes back every epoch and a bad validation image every evaluation;
    `in_epoch` counts the training samples left out of the current epoch.
    """

    def __init__(self, limit: int, log: Callable[[str], None] = _to_stderr, prefix: str = "") -> None:
        self.limit, self.log, self.prefix = limit, log, prefix
        self.found: dict[str, str] = {}  # path -> reason, in the order met
        self.in_epoch = 0

    def count(self, skipped: Sequence[SkippedSample], training: bool = True) -> None:
        """Count the skipped samples of one batch: log the files not met before, stop past the limit."""
        if training:
            self.in_epoch += len(skipped)
        for item in skipped:
            if item.path not in self.found:
                self.found[item.path] = item.reason
                self.log(f"{self.prefix}skipped unreadable image ({len(self.found)} of at most {self.limit}): "
                         f"{item.reason}")
                self.check()

    def check(self) -> None:
        """Raise BadImageLimitError if more distinct files than `limit` were met."""
        if len(self.found) > self.limit:
            last = next(reversed(self.found.values()))
            raise BadImageLimitError(f"{len(self.found)} unreadable images seen, more than the {self.limit} that "
                                     f"--skip-bad-images allows; the last: {last} (ghostnet data check lists them "
                                     "all)")

    def end_epoch(self, gather: Callable[[Any], list[Any]] = lambda obj: [obj]) -> dict[str, int]:
        """The epoch's counts for metrics.jsonl, over every process: `gather(obj)` returns every process's `obj`
        (torch.distributed's all_gather_object). The files the others met join this process's count and limit."""
        ranks = gather((self.in_epoch, self.found))
        self.in_epoch = 0
        union: dict[str, str] = {}
        for _, found in ranks:
            for path, reason in found.items():
                union.setdefault(path, reason)
        self.found = union
        self.check()  # the same union, in the same order, on every process: all stop together, naming one file
        return {"bad_images": sum(n for n, _ in ranks), "bad_images_total": len(self.found)}

    def watch(self, loader: Iterable[Batch], training: bool = True) -> "CountedLoader":
        """`loader`, its batches counted as they come (`training`: they count towards `in_epoch`)."""
        return CountedLoader(loader, self, training)


class CountedLoader:
    """Iterates a loader of `Batch`es, handing each batch's skipped samples to a BadImageCounter."""

    def __init__(self, loader: Iterable[Batch], counter: BadImageCounter, training: bool) -> None:
        self.loader, self.counter, self.training = loader, counter, training

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            self.counter.count(batch.skipped, self.training)
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def subset(dataset: Dataset, n: Optional[int], seed: int = 0) -> Dataset:
    """A fixed pseudo-random selection of `n` samples (the same for every run), or the data set itself.

    Pseudo-random rather than the first n because ImageFolder lists samples class by class.
    """
    if n is None or n >= len(dataset):
        return dataset
    if n < 1:
        raise ValueError(f"subset size must be >= 1, got {n}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:n]
    return Subset(dataset, sorted(order.tolist()))


def make_loader(dataset: Dataset, batch_size: int, sampler: Sampler, workers: int = 0, pin_memory: bool = False,
                seed: int = 0, drop_last: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader with `collate_skipping`, persistent workers, and its own generator (global RNG untouched)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=pin_memory,
        drop_last=drop_last, collate_fn=collate_skipping, persistent_workers=workers > 0,
        generator=torch.Generator().manual_seed(seed))
