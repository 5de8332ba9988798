"""Cost analysis: parameters, multiply-accumulates and memory per layer, with the paper's formulas."""
from .cost import LayerRow, MemorySummary, Profile, StageRow, build_model, default_input_size, profile
from .ghost_cost import GhostModuleRow, ghost_modules, is_ghost_module
from .memory import MeasuredPeak, PeakEstimate, estimate_peak, measure_peak, trace_forward
from .profiling import ProfileRun, profile_specs
from .training_memory import TrainingMemory, training_memory

__all__ = [
    "GhostModuleRow", "LayerRow", "MeasuredPeak", "MemorySummary", "PeakEstimate", "Profile", "ProfileRun",
    "StageRow", "build_model", "default_input_size", "estimate_peak", "ghost_modules", "is_ghost_module",
    "measure_peak", "profile", "profile_specs", "trace_forward", "TrainingMemory", "training_memory",
]
