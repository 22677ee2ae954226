"""Invertible transforms for normalizing flows, one module per family.

Direction convention (one for the whole library): a transform maps **data to latent**,
``forward(x, c) -> (z, log |det ∂z/∂x|)`` and ``inverse(z, c) -> (x, log |det ∂x/∂z|)``; see
:mod:`dgm.core.transforms.base`.
"""

from dgm.core.transforms.autoregressive import MaskedAutoregressiveAffine
from dgm.core.transforms.base import Compose, Inverse, Transform
from dgm.core.transforms.coupling import AffineCoupling, Permutation, alternating_mask, half_mask
from dgm.core.transforms.elementwise import (
    ActNorm,
    ElementwiseAffine,
    InvertibleLinear,
    Logit,
    Squeeze,
)
from dgm.core.transforms.householder import Householder
from dgm.core.transforms.spline import (
    MaskedAutoregressiveSpline,
    SplineCoupling,
    rational_quadratic_spline,
)
from dgm.core.transforms.sylvester import SYLVESTER_VARIANTS, Planar, Radial, Sylvester
from dgm.core.transforms.residual import (
    CLipSwish,
    DenseNetResidual,
    LipSwish,
    LipschitzMLP,
    ResidualBlock,
    SpectralNormLinear,
)
from dgm.core.transforms.integer import (
    IntegerAdditiveCoupling,
    IntegerPartitionCoupling,
    round_ste,
)
from dgm.core.transforms.multiscale import (
    ConvCoupling,
    MultiScale,
    channel_mask,
    checkerboard_mask,
)

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "AffineCoupling",
    "Permutation",
    "ElementwiseAffine",
    "ActNorm",
    "InvertibleLinear",
    "MaskedAutoregressiveAffine",
    "Squeeze",
    "Householder",
    "Logit",
    "half_mask",
    "alternating_mask",
    "ConvCoupling",
    "MultiScale",
    "channel_mask",
    "checkerboard_mask",
    "SplineCoupling",
    "MaskedAutoregressiveSpline",
    "rational_quadratic_spline",
    "Planar",
    "Radial",
    "Sylvester",
    "SYLVESTER_VARIANTS",
    "ResidualBlock",
    "LipschitzMLP",
    "DenseNetResidual",
    "SpectralNormLinear",
    "LipSwish",
    "CLipSwish",
    "IntegerAdditiveCoupling",
    "IntegerPartitionCoupling",
    "round_ste",
]
