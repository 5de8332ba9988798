"""Writes the mindcv reference files that tests/test_mindspore.py checks our MindSpore checkpoint reader against.

    pip install mindspore==2.10.0 mindcv==0.3.0   # in a separate environment; not a dependency of ghostnet
    python tests/data/make_mindcv_reference.py

Builds mindcv's own GhostNet (mindcv.models.ghostnet, from the installed wheel) at width 0.1 with 10 classes, so the
file stays small, gives every batch norm random statistics and affine parameters (a fresh network's are trivial),
saves it with `mindspore.save_checkpoint` as mindcv's released `.ckpt` files are saved, and stores a seeded input
batch with the network's eval-mode output.
"""
from __future__ import annotations

import sys
from pathlib import Path

import mindspore as ms
import numpy as np
from mindcv.models.ghostnet import GhostNet

HERE = Path(__file__).resolve().parent
WIDTH, CLASSES = 0.1, 10


def main() -> None:
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    model = GhostNet(num_classes=CLASSES, width=WIDTH)
    for param in model.get_parameters(expand=True):
        name, shape = param.name, param.shape
        if name.endswith("moving_variance"):
            value = rng.uniform(1.0, 2.0, shape)
        elif name.endswith(".gamma"):
            value = rng.uniform(0.3, 0.7, shape)
        elif name.endswith((".beta", "moving_mean")):
            value = rng.normal(0.0, 0.2, shape)
        else:
            continue
        param.set_data(ms.Tensor(value.astype("float32")))
    model.set_train(False)
    x = rng.normal(0.0, 1.0, (2, 3, 64, 64)).astype("float32")
    logits = model(ms.Tensor(x)).asnumpy()
    ms.save_checkpoint(model, str(HERE / "mindcv_ghostnet_w0_1.ckpt"))
    np.savez(HERE / "mindcv_ghostnet_w0_1_io.npz", input=x, logits=logits)
    print(f"mindspore {ms.__version__}, python {sys.version.split()[0]}: logits {logits.shape}, "
          f"|logits| max {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
