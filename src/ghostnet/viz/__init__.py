"""Pictures: cost profiles per stage and the paper's Figure 1 (intrinsic and ghost feature maps)."""
from .ghost_maps import GhostMaps, ghost_feature_maps, load_image, plot_ghost_maps
from .plots import plot_profiles

__all__ = ["GhostMaps", "ghost_feature_maps", "load_image", "plot_ghost_maps", "plot_profiles"]
