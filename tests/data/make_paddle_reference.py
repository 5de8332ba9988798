"""Writes the PaddleClas reference files that tests/test_paddle.py checks our converter against.

    pip install paddlepaddle==3.3.1 paddleclas==2.6.0   # in a separate environment; not a dependency of ghostnet
    python tests/data/make_paddle_reference.py

Builds PaddleClas's own GhostNet (ppcls/arch/backbone/model_zoo/ghostnet.py, imported from the installed paddleclas
wheel, not copied) at scale 0.1 with 10 classes, so the file stays small, gives every batch norm random statistics
and affine parameters (a fresh network's are trivial), saves its state_dict with `paddle.save` as PaddleClas's
released `.pdparams` files are saved, and stores a seeded input batch with the network's eval-mode output.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import paddle

HERE = Path(__file__).resolve().parent
SCALE, CLASSES = 0.1, 10


def paddleclas_ghostnet_module() -> types.ModuleType:
    # Importing ppcls through its package pulls in the whole training stack; the model file needs only paddle
    # (its one relative import loads pretrained weights, which is not used here).
    spec = importlib.util.find_spec("paddleclas")
    source = Path(spec.origin).parent / "ppcls/arch/backbone/model_zoo/ghostnet.py"
    text = source.read_text().replace("from ....utils.save_load import load_dygraph_pretrain",
                                      "load_dygraph_pretrain = None")
    module = types.ModuleType("paddleclas_ghostnet")
    exec(compile(text, str(source), "exec"), module.__dict__)
    return module


def main() -> None:
    paddle.seed(0)
    rng = np.random.default_rng(0)
    model = paddleclas_ghostnet_module().GhostNet(scale=SCALE, class_num=CLASSES)
    for name, tensor in model.state_dict().items():
        if "_batch_norm." in name:
            shape = tensor.shape
            if name.endswith("_variance"):
                value = rng.uniform(1.0, 2.0, shape)
            elif name.endswith(".weight"):
                value = rng.uniform(0.3, 0.7, shape)
            else:  # bias, _mean
                value = rng.normal(0.0, 0.2, shape)
            tensor.set_value(value.astype("float32"))
    model.eval()
    x = rng.normal(0.0, 1.0, (2, 3, 64, 64)).astype("float32")
    logits = model(paddle.to_tensor(x)).numpy()
    paddle.save(model.state_dict(), str(HERE / "paddleclas_ghostnet_x0_1.pdparams"))
    np.savez(HERE / "paddleclas_ghostnet_x0_1_io.npz", input=x, logits=logits)
    print(f"paddle {paddle.__version__}, python {sys.version.split()[0]}: logits {logits.shape}, "
          f"|logits| max {np.abs(logits).max():.3f}")


if __name__ == "__main__":
    main()
