"""Evaluate a trained model on a data split, and classify image files (what `ghostnet eval` / `predict` run)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from ..data import (ShardSampler, TransformConfig, dataset_class_ids, dataset_classes, eval_transform, load_rgb,
                    make_loader, open_split, read_class_names, subset)
from ..models.registry import num_classes_of
from ..utils import PathLike
from .state import TrainedModel, load_trained
from .distributed import pick_device
from .metrics import EvalResult, evaluate


def load_for_inference(checkpoint: Optional[PathLike], use_ema: bool = False, model_name: Optional[str] = None,
                       pretrained: Union[None, bool, str] = None) -> TrainedModel:
    """A model ready for inference: from a ghostnet checkpoint/export, or any checkpoint plus a model name.

    With `model_name`, the file may be any checkpoint `load_checkpoint` reads (official, timm, ...); the data
    config is then the model's own (ImageNet-style evaluation at its input size). With `pretrained` (True or a
    weights tag) instead of a file, the model's published weights and the data config they were evaluated with.
    """
    from ..models.spec import create_from_spec as create, data_config_of as data_defaults

    if pretrained is not None:
        if model_name is None or checkpoint is not None:
            raise ValueError("published weights need a model name and no checkpoint file")
        model = create(model_name, pretrained=pretrained).eval()
        data_config = TransformConfig.from_model_cfg(getattr(model, "pretrained_cfg", None)
                                                     or data_defaults(model_name)).eval_dict()
        return TrainedModel(model, [], data_config, {"model": model_name, "pretrained": pretrained})
    if checkpoint is None:
        raise ValueError("give a checkpoint file, or a model name with pretrained weights")
    if model_name is None:
        return load_trained(checkpoint, use_ema=use_ema)
    from ..convert.checkpoints import extract_state_dict, load_checkpoint, read_checkpoint

    cfg = data_defaults(model_name)
    obj, _ = read_checkpoint(checkpoint)
    state = extract_state_dict(obj, use_ema=use_ema, source=str(checkpoint))
    head = state.get(f"{cfg.get('classifier', 'classifier')}.weight")  # the checkpoint's class count wins
    kwargs = {"num_classes": int(head.shape[0])} if head is not None and head.ndim == 2 else {}
    model = create(model_name, **kwargs)
    load_checkpoint(model, checkpoint, use_ema=use_ema)
    model.eval()
    data_config = TransformConfig.from_model_cfg(cfg).eval_dict()
    return TrainedModel(model, [], data_config, {"model": model_name, "model_kwargs": kwargs})


@dataclass
class Evaluation:
    """The result of `evaluate_checkpoint`: metrics and the class names they refer to.

    `imagenet_indices` is set when an ImageNet-1k model was evaluated on a subset of ImageNet's classes (folders
    named by WordNet id, as Imagewoof's and Imagenette's are): the model's logits at those indices, in the data's
    class order, are the prediction.
    """

    result: EvalResult
    classes: list[str]
    imagenet_indices: Optional[list[int]] = None

    def to_dict(self) -> dict[str, Any]:
        out = self.result.to_dict(self.classes)
        return out if self.imagenet_indices is None else {**out, "imagenet_indices": self.imagenet_indices}


class ClassSubset(torch.nn.Module):
    """A classifier restricted to some of its classes: the logits at `indices`, in that order."""

    def __init__(self, model: torch.nn.Module, indices: Sequence[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(list(indices), dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).index_select(1, self.indices)


def imagenet_subset_indices(classes: Sequence[str], num_classes: int) -> Optional[list[int]]:
    """ImageNet-1k indices of `classes` when they are all ImageNet WordNet ids and the model has 1000 classes."""
    from ..hub import imagenet_synsets

    if num_classes != 1000:
        return None
    index = {wnid: i for i, wnid in enumerate(imagenet_synsets())}
    return [index[c] for c in classes] if all(c in index for c in classes) else None


def evaluate_checkpoint(checkpoint: Optional[PathLike], data: PathLike, split: str = "val", use_ema: bool = False,
                        model_name: Optional[str] = None, batch_size: int = 64, workers: int = 2,
                        device: str = "auto", subset_size: Optional[int] = None, img_size: Optional[int] = None,
                        skip_corrupt: bool = False, progress: bool = True,
                        pretrained: Union[None, bool, str] = None, check_classes: bool = True) -> Evaluation:
    """Top-1, top-5, per-class accuracy and the confusion matrix of a checkpoint on one split of `data`.

    An ImageNet-1k model on data whose classes are ImageNet WordNet ids (a subset such as Imagewoof) is evaluated
    on those classes: its logits at their ImageNet indices are the prediction (`Evaluation.imagenet_indices`).
    A checkpoint that stores its class names must be evaluated on data with the same names in the same order
    (else its scores mean nothing); `check_classes=False` evaluates anyway.
    """
    trained = load_for_inference(checkpoint, use_ema, model_name, pretrained)
    tcfg = TransformConfig.from_eval_dict(trained.data_config, img_size)
    dataset = open_split(data, split, eval_transform(tcfg), skip_corrupt=skip_corrupt)
    data_classes = dataset_classes(dataset)
    num_classes = num_classes_of(trained.model)
    model, classes = trained.model, trained.classes or data_classes
    # A checkpoint with class names of its own that match the data in number is evaluated as it is.
    matched = bool(trained.classes) and len(data_classes) == num_classes
    if matched and check_classes and list(trained.classes) != list(data_classes):
        raise ValueError(f"the checkpoint was trained on {_show(trained.classes)} but {data} has "
                         f"{_show(data_classes)}; pass --ignore-class-names to evaluate anyway")
    indices = None if matched else imagenet_subset_indices(dataset_class_ids(dataset), num_classes)
    if indices is not None:
        model, classes, num_classes = ClassSubset(model, indices), data_classes, len(indices)
    elif len(data_classes) != num_classes:
        raise ValueError(f"{data} has {len(data_classes)} classes but the model predicts {num_classes}")
    dataset = subset(dataset, subset_size)
    dev = pick_device(device)
    loader = make_loader(dataset, batch_size, ShardSampler(len(dataset)), workers, dev.type == "cuda")
    result = evaluate(model.to(dev), loader, dev, num_classes, progress=progress)
    return Evaluation(result, classes, indices)


def _show(classes: Sequence[str], limit: int = 4) -> str:
    """'10 classes (a, b, c, d, ...)': enough of a class list to recognise it in one line."""
    head = ", ".join(classes[:limit]) + (", ..." if len(classes) > limit else "")
    return f"{len(classes)} classes ({head})"


def class_names(trained: TrainedModel, labels: Optional[PathLike] = None) -> list[str]:
    """Names for the model's outputs: a labels file, else the checkpoint's, else ImageNet's for 1000, else indices."""
    num_classes = num_classes_of(trained.model)
    if labels is not None:
        names = read_class_names(labels)
        names = list(names.values()) if isinstance(names, dict) else names
        if len(names) != num_classes:
            raise ValueError(f"{labels} has {len(names)} names but the model predicts {num_classes} classes")
        return names
    if len(trained.classes) == num_classes:
        return list(trained.classes)
    if num_classes == 1000:
        try:
            from ..hub import imagenet_classes
        except ImportError:
            pass
        else:
            return list(imagenet_classes())
    return [str(i) for i in range(num_classes)]


@torch.no_grad()
def predict(trained: TrainedModel, images: Sequence[PathLike], topk: int = 5, labels: Optional[PathLike] = None,
            device: str = "auto") -> list[dict[str, Any]]:
    """Top-k (class, probability) for each image file; unreadable files raise CorruptImageError naming them."""
    names = class_names(trained, labels)
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    transform = eval_transform(TransformConfig.from_eval_dict(trained.data_config))
    dev = pick_device(device)
    model = trained.model.to(dev).eval()
    k = min(topk, len(names))
    results = []
    input_hw = tuple(trained.data_config.get("input_size", (3, 224, 224))[1:])
    for path in images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: no such image file")
        image = load_rgb(path)
        x = transform(image).unsqueeze(0).to(dev)
        probs = model(x).float().softmax(-1)[0]
        values, indices = probs.topk(k)
        item = {"image": str(path), "top": [{"class": names[i], "index": int(i), "prob": float(p)}
                                            for p, i in zip(values.tolist(), indices.tolist())]}
        if too_small(image.size[::-1], input_hw):
            item["warning"] = (f"{path} is {image.size[0]}x{image.size[1]}, much smaller than the model's "
                               f"{input_hw[1]}x{input_hw[0]} input: it was upscaled, expect unreliable predictions")
        results.append(item)
    return results


#: An image whose side is below this fraction of the model's input side is upscaled past what it can show.
SMALL_IMAGE_FRACTION = 0.5


def too_small(image_hw: Sequence[int], input_hw: Sequence[int]) -> bool:
    """True when either side of the image is under SMALL_IMAGE_FRACTION of the model's input side."""
    return any(have < SMALL_IMAGE_FRACTION * want for have, want in zip(image_hw, input_hw))
