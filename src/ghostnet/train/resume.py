"""The settings of a run to start or to continue: a recipe (or the defaults) with overrides, or the config stored in
the checkpoint being resumed, of which only the settings that leave the computation unchanged may be overridden.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..utils import PathLike
from .state import read_training_state
from .config import Source, TrainConfig, load_recipe, make_config

#: Fields a resumed run may change: they do not alter the computation (or, for epochs, extend it on purpose).
#: Gradient checkpointing gives the same step; compiling computes the same functions (to float rounding), so a run
#: that no longer fits in memory or wants speed can take them up on resume. Skipping non-finite steps changes nothing
#: until a step is non-finite, so a run stopped by a bad batch can be resumed past it.
RESUME_MUTABLE = {"data", "data_dir", "download", "workers", "progress", "tensorboard", "plots", "output", "device",
                  "save_every_steps", "eval_every", "log_every_steps", "epochs", "skip_bad_images",
                  "grad_checkpointing", "compile", "skip_nonfinite_steps"}


def check_resume_overrides(stored: dict[str, Any], overrides: dict[str, Any]) -> None:
    """Refuse overrides of a resumed run's stored config outside RESUME_MUTABLE (the run would no longer be the
    same)."""
    changed = sorted(k for k, v in overrides.items() if k not in RESUME_MUTABLE and stored.get(k) != v)
    if changed:
        raise ValueError(f"cannot change {', '.join(changed)} when resuming (the run would no longer be the same); "
                         f"only {', '.join(sorted(RESUME_MUTABLE))} may change")


def resume_config(overrides: dict[str, Any], checkpoint: Optional[PathLike] = None,
                  overrides_source: Source = "overrides") -> tuple[TrainConfig, Path]:
    """(config, checkpoint path) to continue the run saved in `checkpoint` (default: OUTPUT/last.pt, OUTPUT from
    `overrides` or the default), with `overrides` of the settings that may change."""
    output = overrides.get("output", TrainConfig().output)
    resume = Path(checkpoint) if checkpoint else Path(output) / "last.pt"
    if not resume.is_file():
        raise FileNotFoundError(f"{resume}: no checkpoint to resume from")
    stored = read_training_state(resume)["config"]
    check_resume_overrides(stored, overrides)
    overrides = dict(overrides)
    if "output" not in overrides:  # the run stays in its folder unless told otherwise
        overrides["output"] = str(resume.parent)
    return make_config(stored, str(resume), overrides, overrides_source), resume


def run_config(recipe: Optional[str], overrides: dict[str, Any], resume: Optional[PathLike] = None,
               overrides_source: Source = "overrides") -> tuple[TrainConfig, Optional[Path]]:
    """(config, checkpoint to resume or None) of `ghostnet train`: a new run from `recipe` (or the defaults) with
    `overrides`, or, when `resume` is not None, the run saved there ("" for OUTPUT/last.pt)."""
    if resume is None:
        if recipe:
            return load_recipe(recipe, overrides, overrides_source), None
        return make_config({}, "defaults", overrides, overrides_source), None
    if recipe:
        raise ValueError("--resume continues a run with the settings stored in its checkpoint; drop --recipe")
    return resume_config(overrides, resume, overrides_source)

