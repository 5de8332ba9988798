"""Training: the loop (engine), optimizers and schedule, EMA, checkpoints with exact resume, DDP, metrics, plots."""
from .state import (Progress, TrainedModel, export_checkpoint, export_weights, load_trained, read_training_state,
                         save_training_state)
from .config import TrainConfig, list_recipes, load_recipe, make_config, read_recipe, recipe_path
from .distill import build_teacher, distillation_loss, soft_target_loss
from .engine import train
from .finetune import load_initial_weights
from .metrics import EvalResult, evaluate
from .optim import build_optimizer, lr_at, lr_scales, param_groups

__all__ = ["EvalResult", "Progress", "TrainConfig", "TrainedModel", "build_optimizer", "build_teacher",
           "distillation_loss", "evaluate", "export_checkpoint", "export_weights", "list_recipes",
           "load_initial_weights", "load_recipe", "load_trained", "lr_at", "lr_scales", "make_config", "param_groups",
           "read_recipe", "read_training_state", "recipe_path", "save_training_state", "soft_target_loss", "train"]
