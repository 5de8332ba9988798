"""Numbers that several layers share: normalization statistics, the default input of an ImageNet model and the
floating-point types by name."""
from __future__ import annotations

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIFAR-10 training-set statistics, as the CIFAR ResNet literature normalizes with them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: (C, H, W) of an ImageNet classifier's input when a model says nothing else.
DEFAULT_INPUT_SIZE = (3, 224, 224)
#: The floating-point types a profile or a benchmark runs in, by the names the command line takes.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
