"""Independent and mixture models (Book ch. 2): the per-pixel floor, mixtures of Gaussians."""

from dgm.models.mixtures.factorized import Factorized, FactorizedConfig
from dgm.models.mixtures.mog import MoG, MoGConfig

__all__ = ["Factorized", "FactorizedConfig", "MoG", "MoGConfig"]
