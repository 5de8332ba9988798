"""Numbers that several layers share: normalization statistics and the default input of an ImageNet model."""
from __future__ import annotations

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CIFAR-10 training-set statistics, as the CIFAR ResNet literature normalizes with them.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
#: (C, H, W) of an ImageNet classifier's input when a model says nothing else.
DEFAULT_INPUT_SIZE = (3, 224, 224)
