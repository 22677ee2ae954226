"""The registered flows: each a config and a builder function that chooses the body of one
:class:`~dgm.models.flows.model.FlowModel` (Book §4.1; §5.4.2 for Sylvester flows).

Every builder takes ``(spec, config)`` and returns a ``FlowModel``; ``dgm.build_model(name,
spec, ...)`` finds them by their registry name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from dgm.core.errors import ConfigError
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.core.spec import DataSpec
from dgm.core.transforms import (
    SYLVESTER_VARIANTS,
    ActNorm,
    AffineCoupling,
    Compose,
    ElementwiseAffine,
    Inverse,
    MaskedAutoregressiveAffine,
    MaskedAutoregressiveSpline,
    MultiScale,
    Planar,
    Radial,
    ResidualBlock,
    SplineCoupling,
    Sylvester,
    Transform,
    alternating_mask,
    half_mask,
)
from dgm.models.flows.model import FlowConfig, FlowModel, StackConfig, permutation, zero_last

__all__ = [
    "RealNVPConfig", "realnvp", "NICEConfig", "nice", "MAFConfig", "maf", "iaf", "GlowConfig",
    "glow", "NSFConfig", "nsf", "nsf_autoregressive", "PlanarConfig", "planar", "radial",
    "SylvesterConfig", "sylvester", "ResidualFlowConfig", "residual_flow", "densenet_flow",
]


# --- RealNVP and NICE -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RealNVPConfig(StackConfig):
    """Configuration of :func:`realnvp` (and the :class:`FlowConfig` fields).

    Args:
        num_flows: number of affine coupling layers (the book uses 8).
        hidden: width of each conditioner MLP.
        num_hidden: hidden layers per conditioner.
        permutation: order change after each coupling: ``"flip"`` (the book's reversal) or
            ``"random"`` (a fixed random order per layer, drawn from ``seed``).
        mask: which coordinates a coupling keeps fixed: ``"half"`` (the book's split into
            halves) or ``"alternate"`` (even/odd coordinates).
        dropout: dropout rate inside the conditioners (a regularizer for small data).
        scale_bound: initial bound α on the log-scales, s = α tanh(s̃).
        learn_scale_bound: make α learnable per coordinate.
        zero_init: zero the conditioners' last layer so every coupling starts as the identity
            (ReZero-style, Book §4.1.6).
    """

    mask: Literal["half", "alternate"] = "half"
    scale_bound: float = 1.0
    learn_scale_bound: bool = True
    zero_init: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in ("half", "alternate"):
            raise ConfigError(f"model.mask must be 'half' or 'alternate', got {self.mask!r}")
        if self.scale_bound <= 0:
            raise ConfigError(f"model.scale_bound must be positive, got {self.scale_bound}")


def _coupling_body(
    dim: int,
    context: int,
    config: StackConfig,
    *,
    mask_kind: str,
    affine: bool = True,
    scale_bound: float = 1.0,
    learn_scale_bound: bool = True,
    zero_init: bool = True,
) -> Compose:
    """Couplings, each followed by a permutation, so that every coordinate gets transformed."""
    generator = torch.Generator().manual_seed(config.seed)
    layers: list[Transform] = []
    for k in range(config.num_flows):
        if mask_kind == "half":
            mask = half_mask(dim)
        else:
            mask = alternating_mask(dim, even=k % 2 == 0)
        d_a = int(mask.sum())
        net = mlp(d_a + context, config.hidden, (2 if affine else 1) * (dim - d_a),
                  num_hidden=config.num_hidden, dropout=config.dropout)
        if zero_init:
            zero_last(net)
        layers.append(AffineCoupling(mask, net, scale_bound=scale_bound,
                                     learn_scale_bound=learn_scale_bound, affine=affine))
        layers.append(permutation(dim, config, generator))
    return Compose(layers)


@register_model("realnvp", RealNVPConfig, builds=FlowModel)
def realnvp(spec: DataSpec, config: RealNVPConfig | None = None) -> FlowModel:
    r"""RealNVP: affine couplings and permutations onto a standard Gaussian (Book §4.1.3-4.1.5).

    The flow acts on the flattened example: z_a = x_a, z_b = x_b ⊙ exp(s(x_a)) + t(x_a)
    (Eq. 4.15-4.20) with s bounded by α tanh, then a permutation, ``num_flows`` times. On
    discrete data it models the dequantized y = (x + u) / L (see :class:`FlowModel`). Unlike
    the book's code (noise in (0, 0.5]) the noise fills the whole bin, so the bound is valid.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=17)
        >>> model = realnvp(spec, RealNVPConfig(num_flows=2, hidden=32, logit_alpha=0.01))
        >>> x = torch.randint(0, 17, (5, 1, 4, 4))
        >>> model.log_weights(x, 3).shape  # (k, N): log p_Y(y) - D log L per noise draw
        torch.Size([3, 5])
        >>> model.sample(2).dtype
        torch.int64

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017,
        arXiv:1605.08803.
    """

    config = config or RealNVPConfig()
    return FlowModel(spec, config, lambda dim, ctx: _coupling_body(
        dim, ctx, config, mask_kind=config.mask, scale_bound=config.scale_bound,
        learn_scale_bound=config.learn_scale_bound, zero_init=config.zero_init,
    ))


@dataclass(frozen=True, kw_only=True)
class NICEConfig(StackConfig):
    """Configuration of :func:`nice` (and the :class:`FlowConfig` fields).

    Args:
        mask: ``"half"`` or ``"alternate"`` (NICE alternates even/odd coordinates).
        num_flows: additive couplings (NICE uses 4).
    """

    mask: Literal["half", "alternate"] = "alternate"
    num_flows: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask not in ("half", "alternate"):
            raise ConfigError(f"model.mask must be 'half' or 'alternate', got {self.mask!r}")


@register_model("nice", NICEConfig, builds=FlowModel)
def nice(spec: DataSpec, config: NICEConfig | None = None) -> FlowModel:
    r"""NICE: additive couplings z_b = x_b + t(x_a) and a final diagonal scaling
    z = exp(-log σ) ⊙ h (Dinh, Krueger, Bengio 2015; Book §4.1.3).

    Every coupling is volume preserving; only the learned scaling changes the volume,
    log |det J| = -Σ_d log σ_d, which is what lets NICE weigh the coordinates.

    References:
        Dinh, Krueger, Bengio. NICE: non-linear independent components estimation. ICLR 2015
        workshop, arXiv:1410.8516.
    """

    config = config or NICEConfig()

    def body(dim: int, ctx: int) -> Transform:
        couplings = _coupling_body(dim, ctx, config, mask_kind=config.mask, affine=False)
        return Compose([*couplings, ElementwiseAffine((dim,), learnable=True)])

    return FlowModel(spec, config, body)


# --- MAF and IAF ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MAFConfig(StackConfig):
    """Configuration of :func:`maf` and :func:`iaf` (and the :class:`FlowConfig` fields).

    Args:
        num_flows: autoregressive layers, each followed by a permutation.
        hidden, num_hidden: the MADE conditioners.
        scale_bound: bound a on the log-scales, α = a tanh(α̃).
        actnorm: put an ActNorm before every layer (a learned per-coordinate affine map,
            MAF's batch norm without the batch dependence).
        permutation: ``"flip"`` or ``"random"``.
    """

    num_flows: int = 5
    hidden: int = 128
    scale_bound: float = 2.0
    actnorm: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scale_bound <= 0:
            raise ConfigError(f"model.scale_bound must be positive, got {self.scale_bound}")
        if self.dropout:
            raise ConfigError("model.dropout is not supported by MADE conditioners here")


def _autoregressive_body(dim: int, ctx: int, config: MAFConfig, *, inverse: bool) -> Compose:
    generator = torch.Generator().manual_seed(config.seed)
    layers: list[Transform] = []
    for _ in range(config.num_flows):
        if config.actnorm:
            layers.append(ActNorm(dim))
        layer: Transform = MaskedAutoregressiveAffine(
            dim, config.hidden, config.num_hidden, scale_bound=config.scale_bound,
            context=ctx, zero_init=True, generator=generator,
        )
        layers.append(Inverse(layer) if inverse else layer)
        layers.append(permutation(dim, config, generator))
    return Compose(layers)


@register_model("maf", MAFConfig, builds=FlowModel)
def maf(spec: DataSpec, config: MAFConfig | None = None) -> FlowModel:
    r"""Masked autoregressive flow: z_d = (x_d - μ_d(x_{<d})) exp(-α_d(x_{<d})) per layer, with
    (μ, α) from a MADE, and permutations between layers (Papamakarios et al. 2017; Book §4.1).

    The density takes one MADE pass per layer; sampling D passes.

    References:
        Papamakarios, Pavlakou, Murray. Masked autoregressive flow for density estimation.
        NeurIPS 2017, arXiv:1705.07057.
    """

    config = config or MAFConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _autoregressive_body(dim, ctx, config, inverse=False)
    )


@register_model("iaf", MAFConfig, builds=FlowModel)
def iaf(spec: DataSpec, config: MAFConfig | None = None) -> FlowModel:
    r"""Inverse autoregressive flow as a density model: each layer is the inverse of a MAF layer,
    x_d = z_d exp(α_d(z_{<d})) + μ_d(z_{<d}) in the sampling direction (Kingma et al. 2016).

    Sampling takes one MADE pass per layer; the density D passes (one per coordinate), so
    training costs D times a MAF's: IAF is the flow for fast sampling and for VAE posteriors.

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improved variational inference
        with inverse autoregressive flow. NeurIPS 2016, arXiv:1606.04934.
    """

    config = config or MAFConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _autoregressive_body(dim, ctx, config, inverse=True)
    )


# --- Glow and the multi-scale RealNVP -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GlowConfig(FlowConfig):
    """Configuration of :func:`glow` (and the :class:`FlowConfig` fields).

    Args:
        levels: squeeze levels (8x8 images allow up to 3).
        steps: steps of flow per level.
        hidden: channels of the coupling CNNs.
        kind: ``"glow"`` steps (ActNorm, invertible 1x1 conv, channel coupling) or
            ``"realnvp"`` steps (checkerboard and channel couplings).
        split_prior: Glow's learned conditional prior for the factored-out halves.
    """

    levels: int = 2
    steps: int = 4
    hidden: int = 64
    kind: Literal["glow", "realnvp"] = "glow"
    split_prior: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.levels < 1 or self.steps < 1 or self.hidden < 1:
            raise ConfigError("model.levels, model.steps and model.hidden must be >= 1")
        if self.kind not in ("glow", "realnvp"):
            raise ConfigError(f"model.kind must be 'glow' or 'realnvp', got {self.kind!r}")


@register_model("glow", GlowConfig, builds=FlowModel)
def glow(spec: DataSpec, config: GlowConfig | None = None) -> FlowModel:
    r"""Glow and the multi-scale RealNVP on images (Book §4.1.6): squeeze, steps of flow,
    factor out half of the channels, repeat (:class:`~dgm.core.transforms.MultiScale`).

    References:
        Kingma, Dhariwal. Glow: generative flow with invertible 1x1 convolutions. NeurIPS 2018,
        arXiv:1807.03039. Dinh et al. 2017 (RealNVP), §3.6.
    """

    config = config or GlowConfig()

    def body(dim: int, ctx: int) -> Transform:
        return MultiScale(spec.event_shape, levels=config.levels, steps=config.steps,
                          hidden=config.hidden, kind=config.kind,
                          split_prior=config.split_prior, context=ctx, seed=config.seed)

    return FlowModel(spec, config, body, image_body=True)


# --- Neural spline flows ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NSFConfig(StackConfig):
    """Configuration of :func:`nsf` and :func:`nsf_autoregressive` (and :class:`FlowConfig`).

    Args:
        num_bins: K, bins of each rational-quadratic spline.
        bound: B, the splines act on [-B, B] and are the identity (linear tails) outside.
        mask: for couplings, ``"half"`` or ``"alternate"``.
        permutation: ``"flip"``, ``"random"`` or ``"lu"`` (NSF's learned linear map).
        zero_init: start every layer as the identity.
    """

    num_flows: int = 4
    hidden: int = 128
    num_bins: int = 8
    bound: float = 4.0
    mask: Literal["half", "alternate"] = "half"
    zero_init: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_bins < 1:
            raise ConfigError(f"model.num_bins must be >= 1, got {self.num_bins}")
        if self.bound <= 0:
            raise ConfigError(f"model.bound must be positive, got {self.bound}")
        if self.mask not in ("half", "alternate"):
            raise ConfigError(f"model.mask must be 'half' or 'alternate', got {self.mask!r}")


def _spline_body(dim: int, ctx: int, config: NSFConfig, *, autoregressive: bool) -> Compose:
    generator = torch.Generator().manual_seed(config.seed)
    layers: list[Transform] = []
    for k in range(config.num_flows):
        if autoregressive:
            layers.append(MaskedAutoregressiveSpline(
                dim, config.hidden, config.num_hidden, num_bins=config.num_bins,
                bound=config.bound, context=ctx, zero_init=config.zero_init,
                dropout=config.dropout, generator=generator,
            ))
        else:
            if config.mask == "half":
                mask = half_mask(dim)
            else:
                mask = alternating_mask(dim, even=k % 2 == 0)
            layers.append(SplineCoupling.with_mlp(
                mask, config.hidden, config.num_hidden, num_bins=config.num_bins,
                bound=config.bound, context=ctx, dropout=config.dropout,
                zero_init=config.zero_init,
            ))
        layers.append(permutation(dim, config, generator))
    return Compose(layers)


@register_model("nsf", NSFConfig, builds=FlowModel)
def nsf(spec: DataSpec, config: NSFConfig | None = None) -> FlowModel:
    r"""Neural spline flow, coupling form: monotonic rational-quadratic splines with linear tails
    on half of the coordinates, their knots from an MLP of the other half, and a permutation or
    learned linear map between layers (Durkan et al. 2019; Book §4.1).

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural spline flows. NeurIPS 2019,
        arXiv:1906.04032.
    """

    config = config or NSFConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _spline_body(dim, ctx, config, autoregressive=False)
    )


@register_model("nsf_ar", NSFConfig, builds=FlowModel)
def nsf_autoregressive(spec: DataSpec, config: NSFConfig | None = None) -> FlowModel:
    r"""Neural spline flow, autoregressive form: z_d = g_d(x_d; θ_d(x_{<d})) with rational-quadratic
    splines whose parameters come from a MADE (Durkan et al. 2019, §3.3; Book §4.1). The density
    is one MADE pass per layer, sampling D passes.

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural spline flows. NeurIPS 2019,
        arXiv:1906.04032.
    """

    config = config or NSFConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _spline_body(dim, ctx, config, autoregressive=True)
    )


# --- Planar, radial and Sylvester flows -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanarConfig(FlowConfig):
    """Configuration of :func:`planar` and :func:`radial` (and :class:`FlowConfig`).

    Args:
        num_flows: number of layers.
        actnorm: put a learned per-coordinate affine map (ActNorm) in front of the layers.
    """

    num_flows: int = 16
    actnorm: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_flows < 1:
            raise ConfigError(f"model.num_flows must be >= 1, got {self.num_flows}")


def _stack(dim: int, layers: list[Transform], actnorm: bool) -> Compose:
    return Compose(([ActNorm(dim)] if actnorm else []) + layers)


@register_model("planar", PlanarConfig, builds=FlowModel)
def planar(spec: DataSpec, config: PlanarConfig | None = None) -> FlowModel:
    r"""A stack of planar maps z = x + û h(wᵀx + b) (Rezende & Mohamed 2015; Book §4.1), used in
    the density direction; each inverse is a scalar root-finding problem.

    Each layer moves the data along one direction only, so a stack of K layers on D coordinates
    changes the density in at most K directions: a weak density model in high dimension,
    included for completeness and as a VAE posterior.

    References:
        Rezende, Mohamed. Variational inference with normalizing flows. ICML 2015,
        arXiv:1505.05770.
    """

    config = config or PlanarConfig()
    return FlowModel(spec, config, lambda dim, ctx: _stack(
        dim, [Planar(dim) for _ in range(config.num_flows)], config.actnorm
    ))


@register_model("radial", PlanarConfig, builds=FlowModel)
def radial(spec: DataSpec, config: PlanarConfig | None = None) -> FlowModel:
    r"""A stack of radial maps z = x + β (x - x₀) / (α + |x - x₀|) (Rezende & Mohamed 2015;
    Book §4.1): each contracts or expands around a point x₀.

    References:
        Rezende, Mohamed. Variational inference with normalizing flows. ICML 2015,
        arXiv:1505.05770.
    """

    config = config or PlanarConfig()
    return FlowModel(spec, config, lambda dim, ctx: _stack(
        dim, [Radial(dim) for _ in range(config.num_flows)], config.actnorm
    ))


@dataclass(frozen=True, kw_only=True)
class SylvesterConfig(PlanarConfig):
    """Configuration of :func:`sylvester` (and :class:`PlanarConfig`).

    Args:
        variant: how Q is made: ``"orthogonal"`` (M orthonormal columns), ``"householder"``
            (a product of reflections) or ``"triangular"`` (identity or reversal, alternating).
        num_ortho: M for the orthogonal variant (None: D).
        num_reflections: reflections for the Householder variant (None: D).
    """

    variant: Literal["orthogonal", "householder", "triangular"] = "orthogonal"
    num_ortho: int | None = None
    num_reflections: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variant not in SYLVESTER_VARIANTS:
            raise ConfigError(
                f"model.variant must be one of {', '.join(SYLVESTER_VARIANTS)}, got "
                f"{self.variant!r}"
            )


@register_model("sylvester", SylvesterConfig, builds=FlowModel)
def sylvester(spec: DataSpec, config: SylvesterConfig | None = None) -> FlowModel:
    r"""A stack of Sylvester maps z = x + Q R h(R̃ Qᵀ x + b), R and R̃ upper triangular, with
    log |det J| = Σ_m log |1 + h'_m R̃_mm R_mm| (van den Berg et al. 2018; Book §5.4.2).

    References:
        van den Berg, Hasenclever, Tomczak, Welling. Sylvester normalizing flows for variational
        inference. UAI 2018, arXiv:1803.05649.
    """

    config = config or SylvesterConfig()

    def body(dim: int, ctx: int) -> Transform:
        layers: list[Transform] = []
        for k in range(config.num_flows):
            if config.variant == "orthogonal":
                layers.append(Sylvester(dim, config.num_ortho, "orthogonal"))
            elif config.variant == "householder":
                layers.append(Sylvester(dim, variant="householder",
                                        num_reflections=config.num_reflections))
            else:
                layers.append(Sylvester(dim, variant="triangular", reverse=k % 2 == 1))
        return _stack(dim, layers, config.actnorm)

    return FlowModel(spec, config, body)


# --- Residual flows and DenseNet flows --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResidualFlowConfig(FlowConfig):
    """Configuration of :func:`residual_flow` and :func:`densenet_flow` (and :class:`FlowConfig`).

    Args:
        num_blocks: residual blocks x + g(x), each after an ActNorm.
        hidden: width of g's hidden layers (MLP blocks).
        num_hidden: hidden layers of g (MLP blocks).
        growth: features each dense layer adds (DenseNet blocks).
        depth: dense layers per block (DenseNet blocks).
        coeff: spectral-norm coefficient c < 1, so Lip(g) <= c.
        logdet: training estimator of log |det(I + J_g)|: ``"roulette"`` (unbiased Russian
            roulette power series), ``"series"`` (``n_terms`` terms, biased) or ``"exact"``.
        n_terms: power-series terms (``"series"``; the always-computed terms of roulette + 2).
        eval_logdet: ``"auto"`` is exact for D <= 64, so reported likelihoods are exact there.
    """

    num_blocks: int = 4
    hidden: int = 128
    num_hidden: int = 2
    growth: int = 32
    depth: int = 3
    coeff: float = 0.97
    logdet: Literal["roulette", "series", "exact"] = "roulette"
    n_terms: int = 8
    eval_logdet: Literal["auto", "exact", "series", "roulette"] = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        if min(self.num_blocks, self.hidden, self.growth, self.depth, self.n_terms) < 1:
            raise ConfigError("model.num_blocks, hidden, growth, depth, n_terms must be >= 1")
        if self.num_hidden < 1:
            raise ConfigError(f"model.num_hidden must be >= 1, got {self.num_hidden}")
        if not 0.0 < self.coeff < 1.0:
            raise ConfigError(f"model.coeff must be in (0, 1), got {self.coeff}")
        if self.logdet not in ("roulette", "series", "exact"):
            raise ConfigError(
                f"model.logdet must be roulette, series or exact, got {self.logdet!r}"
            )


def _residual_body(dim: int, ctx: int, config: ResidualFlowConfig, *, dense: bool) -> Compose:
    options = dict(logdet=config.logdet, n_terms=config.n_terms, eval_logdet=config.eval_logdet)
    layers: list[Transform] = []
    for _ in range(config.num_blocks):
        layers.append(ActNorm(dim))
        if dense:
            block = ResidualBlock.densenet(dim, config.growth, depth=config.depth,
                                           context_dim=ctx, coeff=config.coeff, **options)
        else:
            block = ResidualBlock.mlp(dim, config.hidden, num_hidden=config.num_hidden,
                                      context_dim=ctx, coeff=config.coeff, **options)
        layers.append(block)
    layers.append(ActNorm(dim))
    return Compose(layers)


@register_model("resflow", ResidualFlowConfig, builds=FlowModel)
def residual_flow(spec: DataSpec, config: ResidualFlowConfig | None = None) -> FlowModel:
    r"""Residual flow: blocks z = x + g(x) with Lip(g) < 1 (spectral norm, LipSwish), between
    ActNorms (Behrmann et al. 2019; Chen et al. 2019; Book §4.1.7).

        log |det(I + J_g)| = Σ_{k>=1} (-1)^{k+1} tr(J_g^k) / k

    estimated in training with the Hutchinson trace and a Russian-roulette number of terms
    (unbiased); the inverse is the fixed point x = z - g(x).

    References:
        Behrmann, Grathwohl, Chen, Duvenaud, Jacobsen. Invertible residual networks. ICML 2019,
        arXiv:1811.00995. Chen, Behrmann, Duvenaud, Jacobsen. Residual flows for invertible
        generative modeling. NeurIPS 2019, arXiv:1906.02735.
    """

    config = config or ResidualFlowConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _residual_body(dim, ctx, config, dense=False)
    )


@register_model("densenet_flow", ResidualFlowConfig, builds=FlowModel)
def densenet_flow(spec: DataSpec, config: ResidualFlowConfig | None = None) -> FlowModel:
    r"""Invertible DenseNet flow: residual blocks whose g is a DenseNet of normalized
    concatenations [η₁ h, η₂ φ(W h)] (η₁² + η₂² = 1) with CLipSwish activations, so Lip(g) < 1
    (Perugachi-Diaz, Tomczak, Bhulai 2021; Book §4.1.7.2).

    References:
        Perugachi-Diaz, Tomczak, Bhulai. Invertible DenseNets with concatenated LipSwish.
        NeurIPS 2021, arXiv:2102.02694.
    """

    config = config or ResidualFlowConfig()
    return FlowModel(
        spec, config, lambda dim, ctx: _residual_body(dim, ctx, config, dense=True)
    )
