"""The errors dgm raises on purpose.

Every error a user can cause (an unknown name, a bad config key, a wrong tensor, a missing or
corrupt file) is a subclass of :class:`DgmError`. The CLI prints its message and exits non-zero
without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "DgmError", "ConfigError", "DataError", "CheckpointError", "TrainingError", "SamplingError",
    "CodecError",
]


class DgmError(Exception):
    """Base class: a problem with the user's input, files or settings, stated in words."""


class ConfigError(DgmError, ValueError):
    """An unknown model, dataset or config key, or a value of the wrong type or range."""


class DataError(DgmError, ValueError):
    """A tensor of the wrong shape, dtype or range, or a data file that is missing or corrupt."""


class CheckpointError(DgmError):
    """A run directory or checkpoint that is missing, incomplete or corrupt."""


class TrainingError(DgmError):
    """Training cannot go on (for example, the loss stays non-finite after every rollback)."""


class SamplingError(DgmError):
    """A sampler or solver that diverged (non-finite values) or could not reach its end."""


class CodecError(DgmError):
    """A compressed file that is truncated, corrupt, of another format version, or made by
    another model; or data that the codec cannot code."""
