r"""Flow-based models: an invertible map f from data to a standard Gaussian latent.

One machinery (:class:`FlowModel`: preprocessing, dequantization, class conditioning,
sampling) under every flow; the registered models (:mod:`dgm.models.flows.builders`) are
functions that only choose the transforms of its body (:mod:`dgm.core.transforms`).

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

__all__ = ["FlowConfig", "StackConfig", "FlowModel", "BodyBuilder", "permutation", "zero_last"]

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
class StackConfig(FlowConfig):
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


def permutation(dim: int, config: StackConfig, generator: torch.Generator) -> Transform:
    """The mixing layer between two couplings: the flip, a fixed random order, or a learned
    invertible linear map in LU form (Glow's 1x1 convolution on flat vectors; NSF's choice)."""
    if config.permutation == "flip":
        return Permutation.reverse(dim)
    if config.permutation == "lu":
        return InvertibleLinear(dim, generator=generator)
    return Permutation.random(dim, generator=generator)


def zero_last(net: nn.Sequential) -> nn.Sequential:
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

    Builders pass ``body(dim, context_width) -> Transform``; ``image_body=True`` hands the
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

    def representation(self, x: Tensor) -> Tensor:
        """z = f(y) flattened (N, D), y the centre of x's dequantization cell (x + 1/2) / L on
        discrete data: the latent a hybrid's classifier reads (Book §6.3, Eq. 6.12)."""
        self.check_input(x)
        if self.num_classes:
            raise ConfigError("a class-conditional flow has no label-free representation")
        noise = None
        if self.dequantized:
            noise = torch.full((x.shape[0], self.dim), 0.5, dtype=self._dtype, device=x.device)
        z, _ = self.flow(self._to_flow_space(x, noise), None)
        return z.reshape(x.shape[0], -1)

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
