r"""Flow-based models: an invertible map f from data to a standard Gaussian latent.

The density is the change of variables (Book §4.1.1-4.1.2, Eq. 4.14),

    log p(x) = log N(f(x) | 0, I) + log |det J_f(x)|,

exact on continuous data. On discrete data (integers 0..L-1) a flow is fitted to the uniformly
dequantized points y = (x + u) / L, u ~ U[0, 1)^D, and scored in the discrete space with the
bound of :mod:`dgm.core.dequantize`:

    log P(x) >= E_u[log p_Y((x + u) / L)] - D log L,

or its importance-weighted version (``log_weights``), which tends to log P(x) as k grows.

References:
    Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, arXiv:1605.08803.
    Theis, van den Oord, Bethge. A note on the evaluation of generative models. ICLR 2016,
    arXiv:1511.01844.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.dequantize import dequantization_log_jacobian, quantize, uniform_dequantize
from dgm.core.distributions import log_standard_normal, sum_except_batch
from dgm.core.errors import ConfigError
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.core.transforms import (
    AffineCoupling,
    Compose,
    ElementwiseAffine,
    Logit,
    Permutation,
    Transform,
    alternating_mask,
    half_mask,
)
from dgm.data.spec import DataKind, DataSpec

__all__ = ["RealNVPConfig", "RealNVP"]


@dataclass(frozen=True, kw_only=True)
class RealNVPConfig:
    """Configuration of :class:`RealNVP`.

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
        standardize: put a fixed per-coordinate standardization, fitted on the training data by
            ``initialize_from_data``, in front of the couplings (its log-det is counted).
        logit_alpha: on discrete data, map the dequantized y ∈ [0, 1) through
            logit(α + (1 - 2α) y) before the standardization (the RealNVP paper's
            preprocessing); ``None`` leaves y as it is.
        seed: seed of the random permutations.
    """

    num_flows: int = 8
    hidden: int = 256
    num_hidden: int = 2
    permutation: Literal["flip", "random"] = "flip"
    mask: Literal["half", "alternate"] = "half"
    dropout: float = 0.0
    scale_bound: float = 1.0
    learn_scale_bound: bool = True
    zero_init: bool = True
    standardize: bool = True
    logit_alpha: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.num_flows < 1:
            raise ConfigError(f"model.num_flows must be >= 1, got {self.num_flows}")
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.num_hidden < 0:
            raise ConfigError(f"model.num_hidden must be >= 0, got {self.num_hidden}")
        if self.permutation not in ("flip", "random"):
            raise ConfigError(
                f"model.permutation must be 'flip' or 'random', got {self.permutation!r}"
            )
        if self.mask not in ("half", "alternate"):
            raise ConfigError(f"model.mask must be 'half' or 'alternate', got {self.mask!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.scale_bound <= 0:
            raise ConfigError(f"model.scale_bound must be positive, got {self.scale_bound}")
        # alpha = 0 would send a noise draw of exactly 0 to -inf.
        if self.logit_alpha is not None and not 0.0 < self.logit_alpha < 0.5:
            raise ConfigError(f"model.logit_alpha must be in (0, 0.5), got {self.logit_alpha}")


def _conditioner(d_in: int, d_out: int, config: RealNVPConfig) -> nn.Sequential:
    net = mlp(
        d_in, config.hidden, 2 * d_out, num_hidden=config.num_hidden, dropout=config.dropout
    )
    if config.zero_init:
        last = net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return net


def _coupling_flow(dim: int, config: RealNVPConfig) -> Compose:
    """Couplings, each followed by a permutation, so that every coordinate gets transformed."""
    generator = torch.Generator().manual_seed(config.seed)
    layers: list[Transform] = []
    for k in range(config.num_flows):
        if config.mask == "half":
            mask = half_mask(dim)
        else:
            mask = alternating_mask(dim, even=k % 2 == 0)
        d_a = int(mask.sum())
        coupling = AffineCoupling(
            mask,
            _conditioner(d_a, dim - d_a, config),
            scale_bound=config.scale_bound,
            learn_scale_bound=config.learn_scale_bound,
        )
        layers.append(coupling)
        if config.permutation == "flip":
            layers.append(Permutation.reverse(dim))
        else:
            layers.append(Permutation.random(dim, generator=generator))
    return Compose(layers)


@register_model("realnvp", RealNVPConfig)
class RealNVP(GenerativeModel):
    r"""RealNVP: affine couplings and permutations onto a standard Gaussian (Book §4.1.3-4.1.5).

    The flow acts on the flattened example. On continuous data

        log p(x) = log N(f(x) | 0, I) + log |det J_f(x)|            (Eq. 4.14, 4.22)

    is exact. On binary or discrete data (L levels, D coordinates) the flow models the
    dequantized y = (x + u) / L, u ~ U[0, 1)^D; f starts with an optional logit(α + (1 - 2α) y)
    (``logit_alpha``) and a fixed standardization, both with their log-dets counted, and

        log w(x, u) = log N(f(y) | 0, I) + log |det J_f(y)| - D log L

    is a log importance weight of the noise u (q(u) = 1 on the unit cube): its mean over u is a
    lower bound on log P(x), and log-mean-exp over k draws is the tighter IWAE(k) bound.
    Unlike the book's code (noise in (0, 0.5]) the noise fills the whole bin, so the bound is
    valid.

    Args:
        spec: the data spec; any event shape, flattened to D = ``spec.dim`` coordinates (D >= 2).
        config: a :class:`RealNVPConfig`.

    Example:
        >>> from dgm.data.spec import DataKind, DataSpec
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

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS, DataKind.DISCRETE, DataKind.BINARY})
    dequantization = "uniform"

    def __init__(self, spec: DataSpec, config: RealNVPConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or RealNVPConfig()
        dim = spec.dim
        if dim < 2:
            raise ConfigError(
                f"RealNVP needs at least 2 coordinates, got event_shape {spec.event_shape}"
            )
        self.dim = dim
        self.dequantized = spec.kind.is_discrete
        if config.logit_alpha is not None and not self.dequantized:
            raise ConfigError("model.logit_alpha needs discrete data (it maps [0, 1) to R)")
        # [logit,] fixed standardization, couplings.
        parts: list[Transform] = [ElementwiseAffine((dim,)), _coupling_flow(dim, config)]
        if config.logit_alpha is not None:
            parts.insert(0, Logit(config.logit_alpha))
        self.flow = Compose(parts)

    @classmethod
    def likelihood_on(cls, kind: DataKind) -> Likelihood:
        """Exact on continuous data; a lower bound (uniform dequantization) on discrete data."""
        return Likelihood.EXACT if kind is DataKind.CONTINUOUS else Likelihood.LOWER_BOUND

    @property
    def standardize(self) -> ElementwiseAffine:
        """The fixed standardization in front of the couplings."""
        for t in self.flow.transforms:
            if isinstance(t, ElementwiseAffine):
                return t
        raise AssertionError("the flow has no standardization")

    @property
    def _dtype(self) -> torch.dtype:
        return self.standardize.loc.dtype

    def _to_flow_space(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Data (N, *event) to the flat continuous y the flow models; discrete x gets noise."""
        if self.dequantized:
            assert self.spec.num_levels is not None
            x = uniform_dequantize(x, self.spec.num_levels, generator=generator)
        return x.reshape(x.shape[0], self.dim).to(self._dtype)

    def log_density(self, y: Tensor) -> Tensor:
        r"""log p_Y(y) = log N(f(y) | 0, I) + log |det J_f(y)| for flat continuous y (N, D).

        On discrete data y is the dequantized, scaled point (x + u) / L.
        """
        z, logabsdet = self.flow(y)
        return sum_except_batch(log_standard_normal(z)) + logabsdet

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the fixed standardization to the (dequantized) training data, if enabled."""
        self.check_input(x)
        if self.config.standardize:
            y = self._to_flow_space(x, generator)
            if self.config.logit_alpha is not None:
                y, _ = self.flow.transforms[0](y)
            self.standardize.fit(y)

    def log_weights(
        self, x: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""log p_Y((x + u_i)/L) - D log L for k noise draws u_i per example; shape (k, N).

        On continuous data there is no noise and every row is the exact log p(x).
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        n = x.shape[0]
        if not self.dequantized:
            return self.log_density(self._to_flow_space(x, None)).expand(k, n)
        assert self.spec.num_levels is not None
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * n, *x.shape[1:])
        y = self._to_flow_space(xk, generator)
        log_jac = dequantization_log_jacobian(self.dim, self.spec.num_levels)
        return (self.log_density(y) + log_jac).reshape(k, n)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log p(x) on continuous data; a one-draw dequantization bound otherwise."""
        return self.log_weights(x, 1)[0]

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Negative log-likelihood (or its dequantization bound) per example, in nats."""
        return -self.log_prob(x)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, I), x = f⁻¹(z); discrete data is then quantized, floor(y L)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=self._dtype, device=self.device)
        x, _ = self.flow.inverse(z)
        x = x.reshape(n, *self.spec.event_shape)
        if self.dequantized:
            assert self.spec.num_levels is not None
            return quantize(x, self.spec.num_levels)
        return x.to(self.spec.dtype)
