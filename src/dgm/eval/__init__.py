"""Likelihood evaluation, plots and reports."""

from dgm.eval.likelihood import Evaluation, bits_per_dim, evaluate, per_example_nll

__all__ = ["Evaluation", "evaluate", "bits_per_dim", "per_example_nll"]
