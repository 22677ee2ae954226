"""Contracts and helpers shared by every family."""

from dgm.core.base import (
    ExpectationMaximization,
    Fit,
    GenerativeModel,
    ImportanceWeighted,
    LatentVariable,
    Likelihood,
)
from dgm.core.errors import CheckpointError, ConfigError, DataError, DgmError, TrainingError
from dgm.core.registry import build_model, model_entry, model_names, register_model

__all__ = [
    "GenerativeModel",
    "Likelihood",
    "Fit",
    "ImportanceWeighted",
    "ExpectationMaximization",
    "LatentVariable",
    "DgmError",
    "ConfigError",
    "DataError",
    "CheckpointError",
    "TrainingError",
    "register_model",
    "build_model",
    "model_entry",
    "model_names",
]
