"""The paper's Figure 1: intrinsic feature maps of a Ghost module next to the ghost maps made from them."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..analysis.cost import default_input_size
from ..analysis.ghost_cost import ghost_modules
from ..data.transforms import TransformConfig, eval_transform
from ..utils import PathLike
from .figure import new_figure, save_png


@dataclass
class GhostMaps:
    """Intrinsic maps (init_chs, H, W) and ghost maps (new_chs, H, W) of one image at one Ghost module."""

    path: str
    ratio: int
    intrinsic: torch.Tensor
    ghost: torch.Tensor
    depthwise: bool  # ghost map j comes from intrinsic map j // (s - 1) only

    def ghosts_of(self, i: int) -> torch.Tensor:
        """The s-1 ghost maps made from intrinsic map i (depthwise cheap operation)."""
        per = self.ghost.shape[0] // self.intrinsic.shape[0]
        return self.ghost[i * per:(i + 1) * per]


def load_image(path: PathLike, model: nn.Module) -> torch.Tensor:
    """Read an image and preprocess it with the model's data config (resize, centre crop, normalize): (1, C, H, W)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    # The evaluation transform of training and `ghostnet eval`; the size is the one the cost analysis uses.
    cfg = TransformConfig.from_model_cfg(getattr(model, "pretrained_cfg", None) or {},
                                         img_size=default_input_size(model)[-1])
    return eval_transform(cfg)(img).unsqueeze(0)


def _map_sources(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    """The submodules whose outputs are the intrinsic and the ghost maps (the tensors the concat joins)."""
    primary = getattr(module, "primary_conv", None)
    if primary is not None and not isinstance(primary, nn.Identity):
        return primary, module.cheap_operation
    # GhostNetV3's training form: the maps are the outputs of the activations after the branch sums.
    return module.primary_activation, module.cheap_activation


@torch.no_grad()
def ghost_feature_maps(model: nn.Module, image: torch.Tensor, layer: int = 0) -> GhostMaps:
    """Run `image` (1, C, H, W) through `model` and capture the maps of its `layer`-th Ghost module."""
    modules = ghost_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no Ghost module")
    if not 0 <= layer < len(modules):
        raise ValueError(f"layer must be in 0..{len(modules) - 1} (the model has {len(modules)} Ghost modules), "
                         f"got {layer}")
    path, module = modules[layer]
    captured: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _args, output):
            captured[name] = output[0].detach().float().clone()  # clone: ReLUs later run in place

        return hook

    primary, cheap = _map_sources(module)
    handles = [primary.register_forward_hook(keep("intrinsic")), cheap.register_forward_hook(keep("ghost"))]
    was_training = model.training
    try:
        model.eval()
        model(image)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    cheap_conv = next((m for m in cheap.modules() if isinstance(m, nn.Conv2d)), None)
    if cheap_conv is None:  # v3 training form: the cheap convs sit beside the activation
        cheap_conv = next(m for m in module.cheap_rpr_conv.modules() if isinstance(m, nn.Conv2d))
    return GhostMaps(path, int(module.ratio), captured["intrinsic"], captured["ghost"],
                     depthwise=cheap_conv.groups == module.init_chs)


def plot_ghost_maps(maps: GhostMaps, path: PathLike, num_maps: int = 8, pairs_per_row: int = 4,
                    title: Optional[str] = None) -> None:
    """A PNG grid: each intrinsic map (red frame) followed by the s-1 ghost maps made from it (green frames)."""
    if num_maps < 1:
        raise ValueError(f"num_maps must be >= 1, got {num_maps}")
    n = min(num_maps, maps.intrinsic.shape[0])
    per = maps.ratio - 1
    cols = pairs_per_row * (1 + per)
    rows = math.ceil(n / pairs_per_row)
    fig = new_figure(figsize=(1.3 * cols, 1.45 * rows + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(n):
        r, c0 = divmod(i, pairs_per_row)
        c0 *= 1 + per
        ghosts = maps.ghosts_of(i)
        for j, (fmap, label, colour) in enumerate(
                [(maps.intrinsic[i], f"intrinsic {i}", "tab:red")]
                + [(g, f"ghost {i}.{k + 1}", "tab:green") for k, g in enumerate(ghosts)]):
            ax = axes[r][c0 + j]
            ax.set_axis_on()
            ax.imshow(fmap.numpy(), cmap="viridis")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2)
            ax.set_title(label, fontsize=7)
    if title is None:
        title = f"{maps.path}: intrinsic maps and the ghost maps made from them (s={maps.ratio})"
        if not maps.depthwise:
            title += "\n(the cheap operation mixes maps: ghosts shown in channel order)"
    fig.suptitle(title, fontsize=10)
    save_png(fig, path)
