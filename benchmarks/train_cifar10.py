"""CIFAR-10 on CPU with a short schedule: ResNet-56 and Ghost-ResNet-56 with the same recipe, plus GhostNet 1.0x
with the CIFAR stem. Reports accuracy, parameters, MACs and wall time.

    nice -n 10 python benchmarks/train_cifar10.py --subset 5000 --epochs 3 --val-subset 2000 --threads 1

The schedule is the paper's recipe (cifar10_ghost_resnet56: SGD lr 0.1, momentum 0.9, wd 1e-4, batch 128) with a
one-epoch warmup and a cosine decay over the few epochs that fit on a CPU; the full recipe is `ghostnet train --recipe
cifar10_ghost_resnet56 --data ../shared/data/cifar10`.
"""
from __future__ import annotations

from train_common import arguments, run_all

MODELS = (("resnet56_cifar", {}), ("ghost_resnet56_cifar", {}), ("ghostnet_100", {"stem_stride": 1}))


def main() -> None:
    parser = arguments(__doc__.splitlines()[0], "cifar10", subset=5000, val_subset=2000, epochs=3, workers=0,
                       out="benchmarks/results/train_cifar10.json")
    parser.add_argument("--warmup-epochs", type=float, default=1.0, help="linear warmup (lr 0.1 from step 0 "
                        "diverges in such short runs; He et al. also warm up their deepest CIFAR ResNet)")
    args = parser.parse_args()
    run_all(args, "cifar10_ghost_resnet56", MODELS, 32, schedule="cosine", warmup_epochs=args.warmup_epochs)


if __name__ == "__main__":
    main()
