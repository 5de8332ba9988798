"""Models and the registry."""
from .backbone import FeatureInfo
from .ghostnet import GHOSTNET_STAGES, BlockCfg, GhostNet
from .registry import create_model, default_data_config, get_model_entry, list_models, register_model

__all__ = ["GHOSTNET_STAGES", "BlockCfg", "FeatureInfo", "GhostNet", "create_model", "default_data_config",
           "get_model_entry", "list_models", "register_model"]
