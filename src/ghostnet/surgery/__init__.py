"""Model surgery: turning a trained or untrained CNN into its Ghost twin (`ghostify`)."""
from .ghostify import GhostifyReport, ghostify

__all__ = ["GhostifyReport", "ghostify"]
