"""ghostnet: GhostNet v1/v2/v3 and Ghost twins of classic CNNs for PyTorch, with cost analysis, training and
deployment tools."""
from .analysis import profile
from .convert.checkpoints import CheckpointError, load_checkpoint
from .convert.ghostify import ghostify
from .layers import GhostBottleneck, GhostModule, GhostModuleV3, SqueezeExcite, reparameterize_model
from .models import GhostNet, create_model, list_models

__version__ = "0.1.0"

__all__ = ["CheckpointError", "GhostBottleneck", "GhostModule", "GhostModuleV3", "GhostNet", "SqueezeExcite",
           "create_model", "ghostify", "list_models", "load_checkpoint", "profile", "reparameterize_model",
           "__version__"]
