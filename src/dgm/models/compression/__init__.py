"""Neural lossy compression (Book ch. 10): quantizers, entropy models and the codec."""

from dgm.models.compression.codec import Codec, CodecConfig
from dgm.models.compression.entropy_models import (
    AutoregressiveEntropy,
    CategoricalEntropy,
    FactorizedEntropy,
    HyperpriorEntropy,
    UniformEntropy,
)
from dgm.models.compression.quantizers import CodebookQuantizer, RoundingQuantizer

__all__ = ["Codec", "CodecConfig", "CodebookQuantizer", "RoundingQuantizer", "UniformEntropy",
           "CategoricalEntropy", "AutoregressiveEntropy", "FactorizedEntropy",
           "HyperpriorEntropy"]
