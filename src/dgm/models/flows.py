r"""Flow-based models: an invertible map f from data to a standard Gaussian latent.

One machinery (:class:`FlowModel`: preprocessing, dequantization, class conditioning,
sampling) under every flow; the registered models differ only in the transforms of their body
(:mod:`dgm.core.transforms`).

The density is the change of variables (Book §4.1.1-4.1.2, Eq. 4.14),

    log p(x) = log N(f(x) | 0, I) + log |det J_f(x)|,

exact on continuous data. On discrete data (integers 0..L-1) a flow is fitted to the uniformly
dequantized points y = (x + u) / L, u ~ U[0, 1)^D, and scored in the discrete space with the
bound of :mod:`dgm.core.dequantize`:

    log P(x) >= E_u[log p_Y((x + u) / L)] - D log L,

or its importance-weighted version (``log_weights``), which tends to log P(x) as k grows. With
``dequantization: variational`` the noise comes from a learned q(u | x) instead
(:class:`~dgm.core.dequantize.VariationalDequantizer`) and log q(u | x) is subtracted from
each weight: still a lower bound, labelled as such by the evaluator.

References:
    Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, arXiv:1605.08803.
    Theis, van den Oord, Bethge. A note on the evaluation of generative models. ICLR 2016,
    arXiv:1511.01844.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.dequantize import (
    VariationalDequantizer,
    dequantization_log_jacobian,
    quantize,
)
from dgm.core.distributions import log_standard_normal, sum_except_batch
from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.core.transforms import (
    SYLVESTER_VARIANTS,
    ActNorm,
    AffineCoupling,
    Compose,
    ElementwiseAffine,
    InvertibleLinear,
    Inverse,
    Logit,
    MaskedAutoregressiveSpline,
    MaskedAutoregressiveAffine,
    MultiScale,
    Permutation,
    Planar,
    Radial,
    ResidualBlock,
    SplineCoupling,
    Sylvester,
    Transform,
    alternating_mask,
    half_mask,
)
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "FlowConfig",
    "FlowModel",
    "RealNVPConfig",
    "RealNVP",
    "NICEConfig",
    "NICE",
    "MAFConfig",
    "MAF",
    "IAF",
    "GlowConfig",
    "Glow",
    "NSFConfig",
    "NSF",
    "NSFAutoregressive",
    "PlanarConfig",
    "PlanarFlow",
    "RadialFlow",
    "SylvesterConfig",
    "SylvesterFlow",
    "ResidualFlowConfig",
    "ResidualFlow",
    "DenseNetFlow",
]

# (dimension, context width) -> the body of the flow.
BodyBuilder = Callable[[int, int], Transform]


@dataclass(frozen=True, kw_only=True)
class FlowConfig:
    """The options every flow model shares: preprocessing, dequantization and conditioning.

    Args:
        standardize: put a fixed per-coordinate standardization, fitted on the training data by
            ``initialize_from_data``, in front of the body (its log-det is counted).
        logit_alpha: on discrete data, map the dequantized y ∈ [0, 1) through
            logit(α + (1 - 2α) y) first (the RealNVP paper's preprocessing); ``None`` leaves y.
        dequantization: ``"uniform"`` noise u ~ U[0, 1)^D, or ``"variational"``: a learned
            q(u | x) (Flow++), trained jointly; both give a lower bound on log P(x).
        dequant_flows: couplings in the variational dequantizer.
        dequant_hidden: width of the variational dequantizer's networks.
        conditional: condition every layer on the class label (one-hot context); the data
            must have labels.
        seed: seed of random permutations and initial rotations.
    """

    standardize: bool = True
    logit_alpha: float | None = None
    dequantization: Literal["uniform", "variational"] = "uniform"
    dequant_flows: int = 4
    dequant_hidden: int = 64
    conditional: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        # alpha = 0 would send a noise draw of exactly 0 to -inf.
        if self.logit_alpha is not None and not 0.0 < self.logit_alpha < 0.5:
            raise ConfigError(f"model.logit_alpha must be in (0, 0.5), got {self.logit_alpha}")
        if self.dequantization not in ("uniform", "variational"):
            raise ConfigError(
                "model.dequantization must be 'uniform' or 'variational', "
                f"got {self.dequantization!r}"
            )
        if self.dequant_flows < 1 or self.dequant_hidden < 1:
            raise ConfigError("model.dequant_flows and model.dequant_hidden must be >= 1")


@dataclass(frozen=True, kw_only=True)
class _StackConfig(FlowConfig):
    """Fields of flows that stack ``num_flows`` layers with MLP conditioners on flat vectors."""

    num_flows: int = 8
    hidden: int = 256
    num_hidden: int = 2
    permutation: Literal["flip", "random", "lu"] = "flip"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_flows < 1:
            raise ConfigError(f"model.num_flows must be >= 1, got {self.num_flows}")
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.num_hidden < 0:
            raise ConfigError(f"model.num_hidden must be >= 0, got {self.num_hidden}")
        if self.permutation not in ("flip", "random", "lu"):
            raise ConfigError(
                f"model.permutation must be 'flip', 'random' or 'lu', got {self.permutation!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")


def _permutation(dim: int, config: _StackConfig, generator: torch.Generator) -> Transform:
    """The mixing layer between two couplings: the flip, a fixed random order, or a learned
    invertible linear map in LU form (Glow's 1x1 convolution on flat vectors; NSF's choice)."""
    if config.permutation == "flip":
        return Permutation.reverse(dim)
    if config.permutation == "lu":
        return InvertibleLinear(dim, generator=generator)
    return Permutation.random(dim, generator=generator)


def _zero_last(net: nn.Sequential) -> nn.Sequential:
    """Zero the last linear layer, so that a coupling starts as the identity (Book §4.1.6)."""
    last = net[-1]
    assert isinstance(last, nn.Linear)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return net


class FlowModel(GenerativeModel):
    r"""A normalizing flow x -> z = f(x) onto a standard Gaussian: the machinery every flow
    model shares (Book §4.1).

        log p(x | c) = log N(f(x; c) | 0, I) + log |det J_f(x; c)|                  (Eq. 4.14)

    f = body ∘ standardization ∘ [logit], where the body is what a subclass builds. On
    continuous data this is exact. On binary or discrete data (L levels, D coordinates) the
    flow models the dequantized y = (x + u) / L and

        log w(x, u) = log p_Y((x + u)/L | c) - D log L - log q(u | x)

    is a log importance weight of the noise u (q = 1 for uniform noise): its mean over u is a
    lower bound on log P(x), log-mean-exp over k draws the tighter IWAE(k) bound. With
    ``conditional`` the class label enters every conditioner as a one-hot context c.

    Subclasses pass ``body(dim, context_width) -> Transform``; ``image_body=True`` hands the
    body images (N, C, H, W) instead of flat vectors (N, D) (it must return flat latents).
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS, DataKind.DISCRETE, DataKind.BINARY})
    dequantization: str | None = "uniform"

    def __init__(
        self,
        spec: DataSpec,
        config: FlowConfig,
        body: BodyBuilder,
        *,
        image_body: bool = False,
    ) -> None:
        super().__init__(spec)
        self.config = config
        self.dim = dim = spec.dim
        if dim < 2:
            raise ConfigError(f"a flow needs at least 2 coordinates, got {spec.event_shape}")
        self.dequantized = spec.kind.is_discrete
        self.dequantization = config.dequantization if self.dequantized else None
        if config.logit_alpha is not None and not self.dequantized:
            raise ConfigError("model.logit_alpha needs discrete data (it maps [0, 1) to R)")
        if config.conditional and not spec.num_classes:
            raise ConfigError("model.conditional needs labelled data (spec.num_classes)")
        self.num_classes = spec.num_classes if config.conditional else 0
        if image_body and len(spec.event_shape) != 3:
            raise ConfigError(f"{type(self).__name__} needs images (C, H, W), got "
                              f"{spec.event_shape}")
        self.flow_shape = tuple(spec.event_shape) if image_body else (dim,)
        parts: list[Transform] = []
        if config.logit_alpha is not None:
            parts.append(Logit(config.logit_alpha, event_dim=len(self.flow_shape)))
        parts.append(ElementwiseAffine(self.flow_shape))
        parts.append(body(dim, self.num_classes))
        self.flow = Compose(parts)
        self.dequantizer: VariationalDequantizer | None = None
        if self.dequantized and config.dequantization == "variational":
            assert spec.num_levels is not None
            self.dequantizer = VariationalDequantizer(
                dim, spec.num_levels, num_flows=config.dequant_flows,
                hidden=config.dequant_hidden, context=self.num_classes,
            )

    @classmethod
    def likelihood_on(cls, kind: DataKind) -> Likelihood:
        """Exact on continuous data; a lower bound (dequantization) on discrete data."""
        return Likelihood.EXACT if kind is DataKind.CONTINUOUS else Likelihood.LOWER_BOUND

    @property
    def standardize(self) -> ElementwiseAffine:
        """The fixed standardization in front of the body."""
        for t in self.flow.transforms:
            if isinstance(t, ElementwiseAffine):
                return t
        raise AssertionError("the flow has no standardization")

    @property
    def _dtype(self) -> torch.dtype:
        return self.standardize.loc.dtype

    def _context(self, y: Tensor | None, n: int) -> Tensor | None:
        """One-hot labels (N, num_classes) for a conditional flow, None otherwise."""
        if not self.num_classes:
            return None
        if y is None:
            raise DataError(f"{type(self).__name__} is class-conditional: pass the labels y")
        if y.shape != (n,):
            raise DataError(f"y must have shape ({n},), got {tuple(y.shape)}")
        return F.one_hot(y.long(), self.num_classes).to(self._dtype)

    def _to_flow_space(self, x: Tensor, noise: Tensor | None) -> Tensor:
        """Data (N, *event) to the continuous y the flow models; discrete x gets the
        dequantization noise ``noise`` (N, D) in [0, 1), y = (x + u) / L."""
        if self.dequantized:
            assert self.spec.num_levels is not None and noise is not None
            x = (x.reshape(x.shape[0], -1).to(noise.dtype) + noise) / self.spec.num_levels
        return x.reshape(x.shape[0], *self.flow_shape).to(self._dtype)

    def log_density(self, y: Tensor, c: Tensor | None = None) -> Tensor:
        r"""log p_Y(y | c) = log N(f(y) | 0, I) + log |det J_f(y)|, for continuous y in the flow's
        shape; on discrete data y is the dequantized, scaled point (x + u) / L."""
        z, logabsdet = self.flow(y, c)
        return sum_except_batch(log_standard_normal(z)) + logabsdet

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the fixed standardization to the (dequantized) training data, then let every
        ActNorm of the body set itself from one pass of a batch (Glow's data-dependent init)."""
        self.check_input(x)
        noise = None
        if self.dequantized:
            noise = torch.rand(x.shape[0], self.dim, generator=generator).to(x.device)
        y = self._to_flow_space(x, noise)
        if self.config.standardize:
            if self.config.logit_alpha is not None:
                y_std, _ = self.flow.transforms[0](y)
            else:
                y_std = y
            self.standardize.fit(y_std)
        if any(isinstance(m, ActNorm) for m in self.modules()):
            batch = y[:512]
            c = None
            if self.num_classes:  # an even mix of the classes as the context
                c = torch.full((batch.shape[0], self.num_classes), 1.0 / self.num_classes,
                               dtype=batch.dtype, device=batch.device)
            was_training = self.training
            self.train()
            with torch.no_grad():
                self.flow(batch, c)
            self.train(was_training)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""log p_Y((x + u_i)/L | c) - D log L - log q(u_i | x) for k noise draws u_i per
        example; shape (k, N). On continuous data every row is the exact log p(x | c)."""
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        n = x.shape[0]
        c = self._context(y, n)
        if not self.dequantized:
            return self.log_density(self._to_flow_space(x, None), c).expand(k, n)
        assert self.spec.num_levels is not None
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        ck = None if c is None else c.repeat(k, 1)
        flat = xk.reshape(k * n, self.dim)
        if self.dequantizer is None:
            noise = torch.rand(flat.shape, generator=generator, device=x.device)
            log_q = 0.0
        else:
            noise, log_q = self.dequantizer.sample(flat, ck, generator=generator)
        y_flow = self._to_flow_space(flat, noise.to(self._dtype))
        log_jac = dequantization_log_jacobian(self.dim, self.spec.num_levels)
        return (self.log_density(y_flow, ck) + log_jac - log_q).reshape(k, n)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log p(x) on continuous data; a one-draw dequantization bound otherwise."""
        return self.log_weights(x, 1, y=y)[0]

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Negative log-likelihood (or its dequantization bound) per example, in nats."""
        return -self.log_prob(x, y)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, I), x = f⁻¹(z; c); discrete data is then quantized, floor(y L).

        A conditional flow draws from the labels ``y``; without them it cycles through the
        classes 0, 1, ..., C-1, 0, ... (a grid of every class).
        """
        if self.num_classes and y is None:
            y = torch.arange(n, device=self.device) % self.num_classes
        elif not self.num_classes and y is not None:
            raise ConfigError(f"{type(self).__name__} is unconditional: sample() takes no y")
        c = self._context(y, n) if self.num_classes else None
        z = torch.randn(n, self.dim, generator=generator, dtype=self._dtype, device=self.device)
        x, _ = self.flow.inverse(z, c)
        x = x.reshape(n, *self.spec.event_shape)
        if self.dequantized:
            assert self.spec.num_levels is not None
            return quantize(x, self.spec.num_levels)
        return x.to(self.spec.dtype)


# --- RealNVP and NICE -------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RealNVPConfig(_StackConfig):
    """Configuration of :class:`RealNVP` (and the :class:`FlowConfig` fields).

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
    config: _StackConfig,
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
            _zero_last(net)
        layers.append(AffineCoupling(mask, net, scale_bound=scale_bound,
                                     learn_scale_bound=learn_scale_bound, affine=affine))
        layers.append(_permutation(dim, config, generator))
    return Compose(layers)


@register_model("realnvp", RealNVPConfig)
class RealNVP(FlowModel):
    r"""RealNVP: affine couplings and permutations onto a standard Gaussian (Book §4.1.3-4.1.5).

    The flow acts on the flattened example: z_a = x_a, z_b = x_b ⊙ exp(s(x_a)) + t(x_a)
    (Eq. 4.15-4.20) with s bounded by α tanh, then a permutation, ``num_flows`` times. On
    discrete data it models the dequantized y = (x + u) / L (see :class:`FlowModel`). Unlike
    the book's code (noise in (0, 0.5]) the noise fills the whole bin, so the bound is valid.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=17)
        >>> model = RealNVP(spec, RealNVPConfig(num_flows=2, hidden=32, logit_alpha=0.01))
        >>> x = torch.randint(0, 17, (5, 1, 4, 4))
        >>> model.log_weights(x, 3).shape  # (k, N): log p_Y(y) - D log L per noise draw
        torch.Size([3, 5])
        >>> model.sample(2).dtype
        torch.int64

    References:
        Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017,
        arXiv:1605.08803.
    """

    def __init__(self, spec: DataSpec, config: RealNVPConfig | None = None) -> None:
        config = config or RealNVPConfig()
        super().__init__(spec, config, lambda dim, ctx: _coupling_body(
            dim, ctx, config, mask_kind=config.mask, scale_bound=config.scale_bound,
            learn_scale_bound=config.learn_scale_bound, zero_init=config.zero_init,
        ))


@dataclass(frozen=True, kw_only=True)
class NICEConfig(_StackConfig):
    """Configuration of :class:`NICE` (and the :class:`FlowConfig` fields).

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


@register_model("nice", NICEConfig)
class NICE(FlowModel):
    r"""NICE: additive couplings z_b = x_b + t(x_a) and a final diagonal scaling
    z = exp(-log σ) ⊙ h (Dinh, Krueger, Bengio 2015; Book §4.1.3).

    Every coupling is volume preserving; only the learned scaling changes the volume,
    log |det J| = -Σ_d log σ_d, which is what lets NICE weigh the coordinates.

    References:
        Dinh, Krueger, Bengio. NICE: non-linear independent components estimation. ICLR 2015
        workshop, arXiv:1410.8516.
    """

    def __init__(self, spec: DataSpec, config: NICEConfig | None = None) -> None:
        config = config or NICEConfig()

        def body(dim: int, ctx: int) -> Transform:
            couplings = _coupling_body(dim, ctx, config, mask_kind=config.mask, affine=False)
            return Compose([*couplings, ElementwiseAffine((dim,), learnable=True)])

        super().__init__(spec, config, body)


# --- MAF and IAF ------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MAFConfig(_StackConfig):
    """Configuration of :class:`MAF` and :class:`IAF` (and the :class:`FlowConfig` fields).

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
        layers.append(_permutation(dim, config, generator))
    return Compose(layers)


@register_model("maf", MAFConfig)
class MAF(FlowModel):
    r"""Masked autoregressive flow: z_d = (x_d - μ_d(x_{<d})) exp(-α_d(x_{<d})) per layer, with
    (μ, α) from a MADE, and permutations between layers (Papamakarios et al. 2017; Book §4.1).

    The density takes one MADE pass per layer; sampling D passes.

    References:
        Papamakarios, Pavlakou, Murray. Masked autoregressive flow for density estimation.
        NeurIPS 2017, arXiv:1705.07057.
    """

    def __init__(self, spec: DataSpec, config: MAFConfig | None = None) -> None:
        config = config or MAFConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _autoregressive_body(dim, ctx, config, inverse=False)
        )


@register_model("iaf", MAFConfig)
class IAF(FlowModel):
    r"""Inverse autoregressive flow as a density model: each layer is the inverse of a MAF layer,
    x_d = z_d exp(α_d(z_{<d})) + μ_d(z_{<d}) in the sampling direction (Kingma et al. 2016).

    Sampling takes one MADE pass per layer; the density D passes (one per coordinate), so
    training costs D times a MAF's: IAF is the flow for fast sampling and for VAE posteriors.

    References:
        Kingma, Salimans, Jozefowicz, Chen, Sutskever, Welling. Improved variational inference
        with inverse autoregressive flow. NeurIPS 2016, arXiv:1606.04934.
    """

    def __init__(self, spec: DataSpec, config: MAFConfig | None = None) -> None:
        config = config or MAFConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _autoregressive_body(dim, ctx, config, inverse=True)
        )


# --- Glow and the multi-scale RealNVP -----------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class GlowConfig(FlowConfig):
    """Configuration of :class:`Glow` (and the :class:`FlowConfig` fields).

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


@register_model("glow", GlowConfig)
class Glow(FlowModel):
    r"""Glow and the multi-scale RealNVP on images (Book §4.1.6): squeeze, steps of flow,
    factor out half of the channels, repeat (:class:`~dgm.core.transforms.MultiScale`).

    References:
        Kingma, Dhariwal. Glow: generative flow with invertible 1x1 convolutions. NeurIPS 2018,
        arXiv:1807.03039. Dinh et al. 2017 (RealNVP), §3.6.
    """

    def __init__(self, spec: DataSpec, config: GlowConfig | None = None) -> None:
        config = config or GlowConfig()

        def body(dim: int, ctx: int) -> Transform:
            return MultiScale(spec.event_shape, levels=config.levels, steps=config.steps,
                              hidden=config.hidden, kind=config.kind,
                              split_prior=config.split_prior, context=ctx, seed=config.seed)

        super().__init__(spec, config, body, image_body=True)


# --- Neural spline flows ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NSFConfig(_StackConfig):
    """Configuration of :class:`NSF` and :class:`NSFAutoregressive` (and :class:`FlowConfig`).

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
        layers.append(_permutation(dim, config, generator))
    return Compose(layers)


@register_model("nsf", NSFConfig)
class NSF(FlowModel):
    r"""Neural spline flow, coupling form: monotonic rational-quadratic splines with linear tails
    on half of the coordinates, their knots from an MLP of the other half, and a permutation or
    learned linear map between layers (Durkan et al. 2019; Book §4.1).

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural spline flows. NeurIPS 2019,
        arXiv:1906.04032.
    """

    def __init__(self, spec: DataSpec, config: NSFConfig | None = None) -> None:
        config = config or NSFConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _spline_body(dim, ctx, config, autoregressive=False)
        )


@register_model("nsf_ar", NSFConfig)
class NSFAutoregressive(FlowModel):
    r"""Neural spline flow, autoregressive form: z_d = g_d(x_d; θ_d(x_{<d})) with rational-quadratic
    splines whose parameters come from a MADE (Durkan et al. 2019, §3.3; Book §4.1). The density
    is one MADE pass per layer, sampling D passes.

    References:
        Durkan, Bekasov, Murray, Papamakarios. Neural spline flows. NeurIPS 2019,
        arXiv:1906.04032.
    """

    def __init__(self, spec: DataSpec, config: NSFConfig | None = None) -> None:
        config = config or NSFConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _spline_body(dim, ctx, config, autoregressive=True)
        )


# --- Planar, radial and Sylvester flows -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class PlanarConfig(FlowConfig):
    """Configuration of :class:`PlanarFlow` and :class:`RadialFlow` (and :class:`FlowConfig`).

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


@register_model("planar", PlanarConfig)
class PlanarFlow(FlowModel):
    r"""A stack of planar maps z = x + û h(wᵀx + b) (Rezende & Mohamed 2015; Book §4.1), used in
    the density direction; each inverse is a scalar root-finding problem.

    Each layer moves the data along one direction only, so a stack of K layers on D coordinates
    changes the density in at most K directions: a weak density model in high dimension,
    included for completeness and as a VAE posterior.

    References:
        Rezende, Mohamed. Variational inference with normalizing flows. ICML 2015,
        arXiv:1505.05770.
    """

    def __init__(self, spec: DataSpec, config: PlanarConfig | None = None) -> None:
        config = config or PlanarConfig()
        super().__init__(spec, config, lambda dim, ctx: _stack(
            dim, [Planar(dim) for _ in range(config.num_flows)], config.actnorm
        ))


@register_model("radial", PlanarConfig)
class RadialFlow(FlowModel):
    r"""A stack of radial maps z = x + β (x - x₀) / (α + |x - x₀|) (Rezende & Mohamed 2015;
    Book §4.1): each contracts or expands around a point x₀.

    References:
        Rezende, Mohamed. Variational inference with normalizing flows. ICML 2015,
        arXiv:1505.05770.
    """

    def __init__(self, spec: DataSpec, config: PlanarConfig | None = None) -> None:
        config = config or PlanarConfig()
        super().__init__(spec, config, lambda dim, ctx: _stack(
            dim, [Radial(dim) for _ in range(config.num_flows)], config.actnorm
        ))


@dataclass(frozen=True, kw_only=True)
class SylvesterConfig(PlanarConfig):
    """Configuration of :class:`SylvesterFlow` (and :class:`PlanarConfig`).

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


@register_model("sylvester", SylvesterConfig)
class SylvesterFlow(FlowModel):
    r"""A stack of Sylvester maps z = x + Q R h(R̃ Qᵀ x + b), R and R̃ upper triangular, with
    log |det J| = Σ_m log |1 + h'_m R̃_mm R_mm| (van den Berg et al. 2018; Book §5.4.2).

    References:
        van den Berg, Hasenclever, Tomczak, Welling. Sylvester normalizing flows for variational
        inference. UAI 2018, arXiv:1803.05649.
    """

    def __init__(self, spec: DataSpec, config: SylvesterConfig | None = None) -> None:
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

        super().__init__(spec, config, body)


# --- Residual flows and DenseNet flows --------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ResidualFlowConfig(FlowConfig):
    """Configuration of :class:`ResidualFlow` and :class:`DenseNetFlow` (and :class:`FlowConfig`).

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


@register_model("resflow", ResidualFlowConfig)
class ResidualFlow(FlowModel):
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

    def __init__(self, spec: DataSpec, config: ResidualFlowConfig | None = None) -> None:
        config = config or ResidualFlowConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _residual_body(dim, ctx, config, dense=False)
        )


@register_model("densenet_flow", ResidualFlowConfig)
class DenseNetFlow(FlowModel):
    r"""Invertible DenseNet flow: residual blocks whose g is a DenseNet of normalized
    concatenations [η₁ h, η₂ φ(W h)] (η₁² + η₂² = 1) with CLipSwish activations, so Lip(g) < 1
    (Perugachi-Diaz, Tomczak, Bhulai 2021; Book §4.1.7.2).

    References:
        Perugachi-Diaz, Tomczak, Bhulai. Invertible DenseNets with concatenated LipSwish.
        NeurIPS 2021, arXiv:2102.02694.
    """

    def __init__(self, spec: DataSpec, config: ResidualFlowConfig | None = None) -> None:
        config = config or ResidualFlowConfig()
        super().__init__(
            spec, config, lambda dim, ctx: _residual_body(dim, ctx, config, dense=True)
        )
