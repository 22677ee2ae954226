"""Hybrid models (Book ch. 6): a classifier head on any likelihood model, one weighted
objective."""

from dgm.models.hybrid.hybrid import Hybrid, HybridConfig

__all__ = ["Hybrid", "HybridConfig"]
