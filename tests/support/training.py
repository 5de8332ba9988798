"""Helpers for the training tests (tiny synthetic data sets, a tiny config, one CPU thread); holds no tests itself."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The tiny model of the training tests: GhostNet 0.5x with the CIFAR stem accepts 16x16 inputs. Its layout is set
#: (NCHW, the batch fold on) rather than measured (auto): the tests compare runs of different batches and modes,
#: which a measured choice could lay out differently (tests/test_train_layout.py tests auto).
TINY = dict(model="ghostnet_050", model_kwargs={"stem_stride": 1, "drop_rate": 0.2}, preset="cifar", img_size=16,
            batch_size=8, lr=0.05, workers=0, progress=False, plots=False, channels_last="false")


def tiny_config(data: Path, output: Path, **overrides: Any) -> dict[str, Any]:
    """TrainConfig values for a few-second run of the tiny model."""
    return {**TINY, "data": str(data), "output": str(output), **overrides}


def write_npz_data(root: Path, n_train: tuple[int, ...] = (24, 16), n_val: int = 16, size: int = 16,
                   num_classes: int = 4, seed: int = 0, class_names: bool = True) -> Path:
    """A folder of uint8 .npz shards (train_0.npz, train_1.npz, ..., test.npz) and a classes.txt."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shards = [(f"train_{i}", n) for i, n in enumerate(n_train)] + [("test", n_val)]
    for name, n in shards:
        labels = (np.arange(n) % num_classes).astype(np.uint8)
        # Class-dependent brightness, so that a few steps can learn something.
        images = rng.integers(0, 128, (n, size, size, 3)) + (labels[:, None, None, None] * 120 // num_classes)
        np.savez(root / f"{name}.npz", images=images.astype(np.uint8), labels=labels)
    if class_names:
        (root / "classes.txt").write_text("".join(f"class{i}\n" for i in range(num_classes)))
    return root


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 4,
                       size: int = 20, seed: int = 0) -> Path:
    """An ImageFolder tree with train/ and val/ of small PNGs."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 2))):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (size, size, 3)) + 70 * c
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")
    return root
