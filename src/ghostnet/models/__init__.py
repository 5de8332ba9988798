"""Models and the registry."""
from .backbone import FeatureInfo
from .ghostnet import GHOSTNET_STAGES, BlockCfg, GhostNet
from .registry import (ModelInfo, create_model, default_data_config, get_model_entry, list_models, model_info,
                       register_model)

__all__ = ["GHOSTNET_STAGES", "BlockCfg", "FeatureInfo", "GhostNet", "ModelInfo", "create_model",
           "default_data_config", "get_model_entry", "list_models", "model_info", "register_model"]
