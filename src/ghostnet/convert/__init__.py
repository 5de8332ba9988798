"""Checkpoint I/O: read the checkpoints people have (official, timm, PaddleClas, MindSpore) and write ours."""
from .checkpoints import extract_state_dict, load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["extract_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint"]

