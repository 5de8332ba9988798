"""Model surgery: turning a trained or untrained CNN into its Ghost twin (`ghostify`)."""
from .filter_init import init_from_conv_
from .ghostify import GhostifyReport, ghostify

__all__ = ["GhostifyReport", "ghostify", "init_from_conv_"]
