"""Contracts and helpers shared by every family."""

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import (
    Auxiliary,
    BoundedLikelihood,
    EstimatedLikelihood,
    ExpectationMaximization,
    Generates,
    ImportanceWeighted,
    LatentVariable,
    TwoPlayer,
)
from dgm.core.fitting import AuxiliaryFit, EMFit, Fit, GradientFit, StepInfo, TwoPlayerFit
from dgm.core.errors import CheckpointError, ConfigError, DataError, DgmError, TrainingError
from dgm.core.registry import build_model, model_entry, model_names, register_model

__all__ = [
    "GenerativeModel",
    "Likelihood",
    "Fit",
    "GradientFit",
    "EMFit",
    "TwoPlayerFit",
    "AuxiliaryFit",
    "StepInfo",
    "ImportanceWeighted",
    "BoundedLikelihood",
    "EstimatedLikelihood",
    "ExpectationMaximization",
    "TwoPlayer",
    "Auxiliary",
    "LatentVariable",
    "Generates",
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
