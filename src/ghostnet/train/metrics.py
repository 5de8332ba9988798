"""Evaluation metrics (top-1, top-5, per-class accuracy, confusion matrix) and the metrics log."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..utils import PathLike, atomic_write
from .distributed import all_reduce_sum


@dataclass
class EvalResult:
    """Accuracy over a whole split; `confusion[i, j]` counts samples of class i predicted as j."""

    loss: float
    top1: float
    top5: float
    count: int
    confusion: torch.Tensor
    skipped: int = 0

    @property
    def per_class(self) -> list[float]:
        """Recall of each class (NaN for a class with no samples)."""
        totals = self.confusion.sum(1).double()
        return (self.confusion.diag().double() / totals).tolist()

    def to_dict(self, classes: Optional[list[str]] = None) -> dict[str, Any]:
        """JSON-ready summary; per-class accuracy keyed by class name."""
        names = classes or [str(i) for i in range(len(self.confusion))]
        per_class = {name: (None if acc != acc else acc) for name, acc in zip(names, self.per_class)}
        return {"top1": self.top1, "top5": self.top5, "loss": self.loss, "count": self.count,
                "skipped": self.skipped, "per_class": per_class, "confusion": self.confusion.tolist()}


def autocast(device: torch.device, amp: str):
    """torch.autocast for `amp` ('none', 'bf16', 'fp16') on `device`, or a disabled one."""
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "none")


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device, num_classes: int, amp: str = "none",
             channels_last: bool = False, progress: bool = False, desc: str = "eval") -> EvalResult:
    """Evaluate `model` over `loader` (batches from collate_skipping); counts are summed over all processes."""
    from tqdm import tqdm

    model.eval()
    k = min(5, num_classes)
    confusion = torch.zeros(num_classes * num_classes, dtype=torch.int64, device=device)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-k hits, count, skipped
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
        sums[3] += len(batch.skipped)
        if len(batch) == 0:
            continue
        images = batch.images.to(device, non_blocking=True, memory_format=memory_format)
        targets = batch.targets.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(images)
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, targets, reduction="sum")
        sums[1] += (logits.topk(k, dim=1).indices == targets[:, None]).any(1).sum()
        sums[2] += len(targets)
        confusion += torch.bincount(targets * num_classes + logits.argmax(1), minlength=num_classes ** 2)
    all_reduce_sum(confusion)
    all_reduce_sum(sums)
    confusion = confusion.view(num_classes, num_classes).cpu()
    count = int(sums[2].item())
    if count == 0:
        raise ValueError("evaluation saw no images (empty split, or every image unreadable)")
    return EvalResult(loss=sums[0].item() / count, top1=100.0 * confusion.diag().sum().item() / count,
                      top5=100.0 * sums[1].item() / count, count=count, confusion=confusion,
                      skipped=int(sums[3].item()))


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: PathLike) -> Path:
    """Write rows as JSON lines, atomically (the whole log is rewritten from the run's history each epoch)."""
    path = Path(path)
    with atomic_write(path) as tmp:
        tmp.write_text("".join(json.dumps(dict(row)) + "\n" for row in rows), encoding="utf-8")
    return path

