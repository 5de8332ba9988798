"""Checkpoint I/O: read the checkpoints people have (official, timm, PaddleClas, MindSpore) and write ours."""
from .checkpoints import CheckpointError, extract_state_dict, load_checkpoint, read_checkpoint, save_checkpoint

__all__ = ["CheckpointError", "extract_state_dict", "load_checkpoint", "read_checkpoint", "save_checkpoint"]


def __getattr__(name: str):
    # Deprecated: ghostify used to live here; it is model surgery now (ghostnet.surgery).
    if name in ("ghostify", "GhostifyReport"):
        import warnings

        from .. import surgery

        warnings.warn(f"ghostnet.convert.{name} moved to ghostnet.surgery.{name}", DeprecationWarning, stacklevel=2)
        return getattr(surgery, name)
    raise AttributeError(f"module 'ghostnet.convert' has no attribute {name!r}")
