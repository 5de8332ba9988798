"""ghostnet: GhostNet v1/v2/v3 and Ghost twins of classic CNNs for PyTorch, with cost analysis, training and
deployment tools."""
from .analysis import profile
from .convert.checkpoints import load_checkpoint
from .errors import CheckpointError
from .surgery import ghostify
from .layers import GhostBottleneck, GhostModule, GhostModuleV3, SqueezeExcite, reparameterize_model
from .models import GhostNet, create_model, list_models
from . import hub  # noqa: F401  (installs the pretrained-weights loader that create_model calls)
from ._version import __version__


def __getattr__(name: str):
    # The trainer pulls in the data pipeline; import it only when `ghostnet.load_trained` is used.
    if name == "load_trained":
        from .train import load_trained

        return load_trained
    # The Hub folder writers measure the model for its card (analysis, the bench harness): imported when used.
    if name in ("save_pretrained", "push_to_hub"):
        from .deploy import hub_export

        return getattr(hub_export, name)
    raise AttributeError(f"module 'ghostnet' has no attribute {name!r}")


__all__ = ["CheckpointError", "GhostBottleneck", "GhostModule", "GhostModuleV3", "GhostNet", "SqueezeExcite",
           "create_model", "ghostify", "list_models", "load_checkpoint", "load_trained", "profile", "push_to_hub",
           "reparameterize_model", "save_pretrained", "__version__"]
