"""Independent and mixture models (Book ch. 2): the per-pixel floor, mixtures of Gaussians and
of categoricals."""

from dgm.models.mixtures.categorical import CategoricalMixture, CategoricalMixtureConfig
from dgm.models.mixtures.factorized import Factorized, FactorizedConfig
from dgm.models.mixtures.mog import MoG, MoGConfig

__all__ = ["CategoricalMixture", "CategoricalMixtureConfig", "Factorized", "FactorizedConfig",
           "MoG", "MoGConfig"]
