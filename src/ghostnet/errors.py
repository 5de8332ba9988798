"""The error types of the package, on the ground floor so that every layer can raise them without importing the
layer that usually does. All are ValueError or OSError subclasses: the command line shows them as one line."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or whose keys do not fit the model."""


class WeightsUnavailableError(FileNotFoundError):
    """A file that is not in the cache and cannot be downloaded (offline, or the server failed)."""


class OutputError(OSError):
    """An output file or folder that cannot be written; the message names the path and what failed."""
