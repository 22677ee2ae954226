"""Neural lossy compression (Book ch. 10): quantizers, entropy models, the transform codec,
and the pixel-domain codec on an exact ARM."""

from dgm.models.compression.codec import Codec, CodecConfig
from dgm.models.compression.entropy_models import (
    AutoregressiveEntropy,
    AutoregressiveGaussianEntropy,
    CategoricalEntropy,
    FactorizedEntropy,
    HyperpriorEntropy,
    UniformEntropy,
)
from dgm.models.compression.pixel_codec import PixelCodec, PixelCodecConfig
from dgm.models.compression.quantizers import CodebookQuantizer, RoundingQuantizer

__all__ = ["Codec", "CodecConfig", "PixelCodec", "PixelCodecConfig", "CodebookQuantizer",
           "RoundingQuantizer", "UniformEntropy", "CategoricalEntropy", "AutoregressiveEntropy",
           "AutoregressiveGaussianEntropy", "FactorizedEntropy", "HyperpriorEntropy"]
