"""`ghostnet profile` as one library call: profile a model spec, or several side by side at one image size, with one
training step's memory where asked, and write the JSON, CSV and plot files asked for."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from ..constants import DTYPES
from ..utils import PathLike
from .cost import Profile, build_model, default_input_size, profile
from .report import write_csv, write_json
from .training_memory import TrainingMemory, training_memory

__all__ = ["ProfileRun", "profile_specs"]


@dataclass
class ProfileRun:
    """The profiles of the models profiled together, and their training steps' memory (empty unless asked)."""

    profiles: list[Profile]
    training: list[TrainingMemory] = field(default_factory=list)


def profile_specs(specs: Sequence[str], image_size: Optional[tuple[int, int]] = None, batch_size: int = 1,
                  dtype: str = "float32", measure_memory: bool = True, train: bool = False,
                  grad_checkpointing: bool = False, json_path: Optional[PathLike] = None,
                  csv_path: Optional[PathLike] = None, plot_path: Optional[PathLike] = None) -> ProfileRun:
    """Profile every model spec on the same (H, W) (the first model's own unless given), each in its own channel
    count; with `train`, also one training step each (autocast to `dtype` unless float32; `grad_checkpointing`
    goes with it); then write the files whose paths are given."""
    if grad_checkpointing and not train:
        raise ValueError("grad_checkpointing goes with train")
    models = [build_model(spec) for spec in specs]
    hw = tuple(image_size) if image_size else default_input_size(models[0])[1:]
    profiles = []
    for spec, model in zip(specs, models):
        model.model_name = getattr(model, "model_name", spec)
        size = (default_input_size(model)[0], *hw)
        profiles.append(profile(model, size, batch_size, dtype, measure_memory=measure_memory))
    training = []
    if train:
        autocast = None if dtype == "float32" else DTYPES[dtype]  # mixed precision: the weights stay float32
        for spec, p in zip(specs, profiles):
            model = build_model(spec)  # a fresh copy: the step changes weights and BN statistics
            training.append(training_memory(model, p.input_size, batch_size, grad_checkpointing,
                                            autocast_dtype=autocast))
    if json_path is not None:
        write_json(profiles, json_path, training)
    if csv_path is not None:
        write_csv(profiles, csv_path)
    if plot_path is not None:
        from ..viz.plots import plot_profiles

        plot_profiles(profiles, plot_path)
    return ProfileRun(profiles, training)
