"""Imagewoof at 128 px, 5 epochs (fastai's leaderboard setting): our ghostnet_100 next to timm's ghostnet_100 and
mobilenetv3_large_100, all trained by the same loop with the same recipe (imagewoof_ghostnet).

    nice -n 10 python benchmarks/train_imagewoof.py --subset 3000 --epochs 5 --threads 1

Reports top-1/top-5 on the validation set and the time per epoch. Training images can be limited with --subset so
that the comparison fits a CPU; the full setting is --subset 0.
"""
from __future__ import annotations

from train_common import arguments, run_all

MODELS = (("ghostnet_100", {}), ("timm:ghostnet_100", {}), ("timm:mobilenetv3_large_100", {}))


def main() -> None:
    args = arguments(__doc__.splitlines()[0], "imagewoof", subset=3000, val_subset=0, epochs=5, workers=1,
                     out="benchmarks/results/train_imagewoof.json").parse_args()
    run_all(args, "imagewoof_ghostnet", MODELS, 128)


if __name__ == "__main__":
    main()
