"""Likelihood evaluation (a registry of methods), sample quality, latent diagnostics, plots and
reports."""

from dgm.eval.likelihood import (
    Evaluation,
    EvalMethod,
    bits_per_dim,
    evaluate,
    method_names,
    per_example_nll,
    register_method,
)
from dgm.eval.quality import QualityResult, compare, sample_quality

__all__ = [
    "Evaluation",
    "EvalMethod",
    "evaluate",
    "bits_per_dim",
    "per_example_nll",
    "register_method",
    "method_names",
    "QualityResult",
    "sample_quality",
    "compare",
]
