"""Converters: checkpoints from other implementations (and, with issue 4, ghostify)."""
from .checkpoints import (CheckpointError, extract_state_dict, load_checkpoint, read_checkpoint, save_checkpoint)
from .ghostify import GhostifyReport, ghostify

__all__ = ["CheckpointError", "GhostifyReport", "extract_state_dict", "ghostify", "load_checkpoint", "read_checkpoint",
           "save_checkpoint"]
