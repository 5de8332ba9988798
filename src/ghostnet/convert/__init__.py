"""Converters: checkpoints from other implementations (and, with issue 4, ghostify)."""
from .checkpoints import (CheckpointError, extract_state_dict, load_checkpoint, read_checkpoint, save_checkpoint)

__all__ = ["CheckpointError", "extract_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint"]
