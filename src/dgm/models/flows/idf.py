r"""Integer Discrete Flows (IDF): an exact likelihood for integer data without dequantization.

A bijection f of Z^D onto itself moves probability mass without stretching it, so the pmf of
integer data is the pmf of its latent (Book §4.2, Eq. 4.32, 4.44-4.45),

    log P(x) = log π(f(x)) = Σ_d log π_d(z_d),    z = f(x) ∈ Z^D,

with f a stack of integer additive couplings (rounded translations, Eq. 4.35-4.40; see
:mod:`dgm.core.transforms.integer`) and permutations, and π a factorized base over the
unbounded integers: per coordinate a discretized logistic (Eq. 4.41-4.43),

    π_d(z) = σ((z + ½ - μ_d) / s_d) - σ((z - ½ - μ_d) / s_d),

or a mixture of K of them (PixelCNN++; IDF's mixture base). The masses telescope, so they sum
to one over Z. Training passes gradients through the rounding with the straight-through
estimator.

References:
    Hoogeboom, Peters, van den Berg, Welling. Integer Discrete Flows and Lossless Compression.
    NeurIPS 2019, arXiv:1905.07376.
    Tomczak. Deep Generative Modeling, 2nd ed., §4.2 (Eq. 4.32-4.45, Listings 4.3-4.6).
    Salimans, Karpathy, Chen, Kingma. PixelCNN++. ICLR 2017, arXiv:1701.05517.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.distributions import (
    log_discretized_logistic,
    log_mix_discretized_logistic,
    sample_mix_discretized_logistic,
    sum_except_batch,
)
from dgm.core.errors import CodecError, ConfigError
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.core.transforms import Compose, Permutation, Transform
from dgm.core.transforms.integer import IntegerAdditiveCoupling, IntegerPartitionCoupling
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "IDFConfig",
    "IDF",
    "DiscretizedLogisticBase",
    "FactorOutBase",
]


class DiscretizedLogisticBase(nn.Module):
    r"""A factorized pmf over Z^D: per coordinate a (mixture of K) discretized logistic(s).

        π_d(z) = Σ_k w_dk [σ((z + ½ - μ_dk) / s_dk) - σ((z - ½ - μ_dk) / s_dk)]     (Eq. 4.43)

    with learnable μ, log s and mixture logits per coordinate (K = 1: no logits, w = 1). The
    log-masses come from :func:`dgm.core.distributions.log_discretized_logistic` on the whole
    of Z: a difference of log-sigmoids, log(e^a - e^b) = a + log(-expm1(b - a)), taken in the
    tail where it is not a difference of two numbers near 1, so it stays finite for any z.

    Args:
        dim: D.
        num_components: K.
        log_scale: initial log s (the book uses 1); ``fit`` replaces it with the data's spread.
        min_scale: a floor s_min on every scale, s = s_min + exp(log s) (0: none). A smooth
            pmf keeps the straight-through gradients of the flow informative.
    """

    def __init__(
        self, dim: int, num_components: int = 1, log_scale: float = 1.0, min_scale: float = 0.0
    ) -> None:
        super().__init__()
        if min_scale < 0:
            raise ConfigError(f"min_scale must be >= 0, got {min_scale}")
        self.min_scale = float(min_scale)
        if num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {num_components}")
        self.dim, self.num_components = dim, num_components
        k = num_components
        # Spread the initial means so that the components are not identical.
        offsets = torch.linspace(-(k - 1) / 2, (k - 1) / 2, k) if k > 1 else torch.zeros(1)
        self.loc = nn.Parameter(offsets.repeat(dim, 1))
        self.log_scale = nn.Parameter(torch.full((dim, k), float(log_scale)))
        self.logits = nn.Parameter(torch.zeros(dim, k)) if k > 1 else None

    def scales(self) -> Tensor:
        """log s per coordinate and component, (D, K), with the floor ``min_scale`` applied."""
        if self.min_scale == 0:
            return self.log_scale
        return torch.logaddexp(self.log_scale, torch.full_like(self.log_scale,
                                                               math.log(self.min_scale)))

    def log_prob_each(self, z: Tensor) -> Tensor:
        """log π_d(z_d) for integer z of shape (N, D); returns (N, D)."""
        log_scale = self.scales()
        if self.logits is None:
            return log_discretized_logistic(z, self.loc[:, 0], log_scale[:, 0])
        return log_mix_discretized_logistic(z, self.logits, self.loc, log_scale)

    def log_prob(self, z: Tensor) -> Tensor:
        """Σ_d log π_d(z_d), shape (N,)."""
        return self.log_prob_each(z).sum(dim=1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ π, shape (n, D), float integers (see :func:`sample_mix_discretized_logistic`)."""
        log_scale = self.scales()
        logits = self.logits if self.logits is not None else torch.zeros_like(self.loc)
        return sample_mix_discretized_logistic(
            logits.expand(n, -1, -1), self.loc.expand(n, -1, -1), log_scale.expand(n, -1, -1),
            generator=generator,
        )

    def fit(self, z: Tensor, steps: int = 0, lr: float = 0.05) -> None:
        r"""Fit each coordinate to integer samples z (N, D).

        First moment matching: one logistic with the data's mean and spread
        (sd = s π / √3), or K components at the K quantiles with the spread shared out; then
        ``steps`` full-batch Adam steps (learning rate ``lr``) on the mean log-likelihood.
        The refinement matters: with the trainer's small learning rate the means would move
        only a fraction of a level per epoch.
        """
        z = z.detach().to(self.loc.dtype)
        k = self.num_components
        with torch.no_grad():
            scale = (z.std(dim=0) * math.sqrt(3.0) / math.pi / k - self.min_scale)
            scale = scale.clamp_min(0.1)
            self.log_scale.copy_(torch.log(scale).unsqueeze(1).expand(-1, k))
            if k == 1:
                self.loc.copy_(z.mean(dim=0).unsqueeze(1))
            else:
                levels = (torch.arange(k, dtype=z.dtype, device=z.device) + 0.5) / k
                self.loc.copy_(torch.quantile(z, levels, dim=0).T)
        if steps > 0:
            opt = torch.optim.Adam(self.parameters(), lr=lr)
            with torch.enable_grad():
                for _ in range(steps):
                    opt.zero_grad()
                    (-self.log_prob(z).mean()).backward()
                    opt.step()
            for p in self.parameters():
                p.grad = None


class FactorOutBase(nn.Module):
    r"""A hierarchical pmf over Z^D: the latent split into P consecutive parts z^(1..P),

        π(z) = π_1(z^(1)) Π_{i=2..P} π_i(z^(i) | z^(<i)),

    π_1 a factorized :class:`DiscretizedLogisticBase` and each π_i a factorized mixture of
    discretized logistics whose weights, means and log-scales are an MLP of the earlier parts.
    This is IDF's factor-out with conditional priors (Hoogeboom et al. 2019, §3.3; Book §4.2.4,
    the mixture base made conditional): each factor sums to 1 over Z^{D_i} for every condition,
    so π does over Z^D, and log P(x) = log π(f(x)) stays exact.

    Args:
        dim: D.
        parts: P >= 2.
        num_components: K of every factor.
        hidden: width of the conditioning MLPs.
        scale: divides the conditioning integers before the MLPs (the number of levels).
        min_scale: the floor on the first factor's scales.
    """

    def __init__(
        self, dim: int, parts: int, num_components: int, hidden: int, scale: float,
        min_scale: float = 0.0,
    ) -> None:
        super().__init__()
        if not 2 <= parts <= dim:
            raise ConfigError(f"the factor-out base needs 2 <= parts <= D, got {parts}")
        self.sizes = [dim // parts + (1 if i < dim % parts else 0) for i in range(parts)]
        self.k = num_components
        self.scale = float(scale)
        self.first = DiscretizedLogisticBase(self.sizes[0], num_components, min_scale=min_scale)
        self.nets = nn.ModuleList()
        for i in range(1, parts):
            net = mlp(sum(self.sizes[:i]), hidden, self.sizes[i] * 3 * num_components)
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            self.nets.append(net)

    def _params(self, i: int, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.nets[i - 1](previous / self.scale)
        out = out.reshape(previous.shape[0], self.sizes[i], 3, self.k)
        spread = torch.linspace(-(self.k - 1) / 2, (self.k - 1) / 2, self.k, device=out.device)
        return out[:, :, 0], out[:, :, 1] + spread, out[:, :, 2].clamp_min(-7.0)

    def fit(self, z: Tensor, steps: int = 0, lr: float = 0.05) -> None:
        """Fit the first factor to its part of z (the others start unconditioned)."""
        self.first.fit(z[:, : self.sizes[0]], steps=steps, lr=lr)

    def log_prob_each(self, z: Tensor) -> Tensor:
        """log π_i(z_d | z^(<i)) for every coordinate, shape (N, D)."""
        chunks = z.split(self.sizes, dim=1)
        out = [self.first.log_prob_each(chunks[0])]
        for i in range(1, len(self.sizes)):
            logits, loc, log_scale = self._params(i, z[:, : sum(self.sizes[:i])])
            out.append(log_mix_discretized_logistic(chunks[i], logits, loc, log_scale))
        return torch.cat(out, dim=1)

    def log_prob(self, z: Tensor) -> Tensor:
        """log π(z), shape (N,)."""
        return self.log_prob_each(z).sum(dim=1)

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ π part by part, shape (n, D), float integers."""
        z = self.first.sample(n, generator=generator)
        for i in range(1, len(self.sizes)):
            logits, loc, log_scale = self._params(i, z)
            z = torch.cat([z, sample_mix_discretized_logistic(
                logits, loc, log_scale, generator=generator)], dim=1)
        return z


class _LatentCursor:
    """log π(z_G = a | z of earlier parts) for every a of the window and every coordinate of
    the part G (the later parts do not enter a part's pmf)."""

    def __init__(self, log_prob_each: Callable[[Tensor], Tensor], sizes: list[int], rows: int,
                 alphabet: Tensor, dtype: torch.dtype) -> None:
        self._log_prob_each, self._alphabet = log_prob_each, alphabet.to(dtype)
        self.z = torch.zeros(rows, sum(sizes), dtype=dtype)
        bounds = [0, *itertools.accumulate(sizes)]
        self.steps = tuple(torch.arange(a, b) for a, b in zip(bounds, bounds[1:]))
        self._t = 0

    def log_pmf(self) -> Tensor:
        positions, rows, size = self.steps[self._t], self.z.shape[0], len(self._alphabet)
        candidates = self.z.repeat(size, 1)
        candidates[:, positions] = self._alphabet.repeat_interleave(rows).unsqueeze(1)
        each = self._log_prob_each(candidates)[:, positions]  # (A rows, G)
        return each.reshape(size, rows, -1).permute(1, 2, 0)

    def advance(self, values: Tensor) -> None:
        self.z[:, self.steps[self._t]] = values.to(self.z.dtype)
        self._t += 1


@dataclass(frozen=True, kw_only=True)
class IDFConfig:
    """Configuration of :class:`IDF`.

    Args:
        num_flows: number of integer couplings (the book uses 8).
        partition: ``"bipartite"`` (Eq. 4.35-4.36) or ``"quadripartite"`` (Eq. 4.37-4.40).
        hidden: width of each translation MLP (the book's M = 256).
        num_hidden: hidden layers per MLP (the book's 2).
        dropout: dropout rate inside the MLPs.
        base: ``"logistic"`` (one discretized logistic per coordinate, Eq. 4.41-4.43) or
            ``"mixture"`` (``num_components`` of them).
        num_components: K of the mixture base (>= 2 for ``"mixture"``, 1 for ``"logistic"``).
        min_scale: a floor on the base's scales, s = min_scale + exp(log s); sharper pmfs
            fit the pixels better but make the straight-through gradients less informative.
        permutation: order change after each coupling: ``"flip"`` (the book's) or ``"random"``
            (a fixed random order per layer, drawn from ``seed``).
        translation_scale: the translations are ``translation_scale · net(x / L)`` in integer
            units (L the number of levels): the net sees O(1) inputs and an O(1) output moves
            a coordinate by about ``translation_scale`` levels.
        zero_init: zero the MLPs' last layer so that every coupling starts as the identity.
        fit_base: initialize the base from the (centered) training data's per-pixel moments
            (``initialize_from_data``); otherwise μ = 0, log s = 1 as in the book.
        fit_base_steps: full-batch Adam steps that refine that fit (the flow starts as the
            identity, so the base starts at the best factorized model of the pixels).
        conditional: condition every translation on the one-hot label y (``spec.num_classes``
            classes), concatenated to the MLP input: log P(x | y).
        prior_parts: P > 1 splits the latent into P parts with the factor-out prior
            π(z^(1)) Π_i π(z^(i) | z^(<i)) (:class:`FactorOutBase`); 1 is the factorized base.
        prior_hidden: width of the factor-out prior's conditioning MLPs.
        seed: seed of the random permutations.
    """

    num_flows: int = 8
    partition: Literal["bipartite", "quadripartite"] = "bipartite"
    hidden: int = 256
    num_hidden: int = 2
    dropout: float = 0.0
    base: Literal["logistic", "mixture"] = "logistic"
    num_components: int = 1
    min_scale: float = 0.0
    permutation: Literal["flip", "random"] = "flip"
    translation_scale: float = 1.0
    zero_init: bool = True
    fit_base: bool = True
    fit_base_steps: int = 200
    prior_parts: int = 1
    prior_hidden: int = 256
    conditional: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prior_parts < 1 or self.prior_hidden < 1:
            raise ConfigError("model.prior_parts and model.prior_hidden must be >= 1")
        if self.num_flows < 1:
            raise ConfigError(f"model.num_flows must be >= 1, got {self.num_flows}")
        if self.partition not in ("bipartite", "quadripartite"):
            raise ConfigError(
                "model.partition must be 'bipartite' or 'quadripartite', "
                f"got {self.partition!r}"
            )
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.num_hidden < 0:
            raise ConfigError(f"model.num_hidden must be >= 0, got {self.num_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.base not in ("logistic", "mixture"):
            raise ConfigError(f"model.base must be 'logistic' or 'mixture', got {self.base!r}")
        if self.base == "logistic" and self.num_components != 1:
            raise ConfigError(
                f"model.num_components must be 1 for base 'logistic', got {self.num_components}"
            )
        if self.base == "mixture" and self.num_components < 2:
            raise ConfigError(
                f"model.num_components must be >= 2 for base 'mixture', got {self.num_components}"
            )
        if self.permutation not in ("flip", "random"):
            raise ConfigError(
                f"model.permutation must be 'flip' or 'random', got {self.permutation!r}"
            )
        if self.min_scale < 0:
            raise ConfigError(f"model.min_scale must be >= 0, got {self.min_scale}")
        if self.fit_base_steps < 0:
            raise ConfigError(f"model.fit_base_steps must be >= 0, got {self.fit_base_steps}")
        if not self.translation_scale > 0:
            raise ConfigError(
                f"model.translation_scale must be positive, got {self.translation_scale}"
            )


def _integer_flow(dim: int, levels: int, context: int, config: IDFConfig) -> Compose:
    """Integer couplings, each followed by a permutation."""

    def make_net(d_in: int, d_out: int) -> nn.Module:
        net = mlp(d_in, config.hidden, d_out, num_hidden=config.num_hidden,
                  dropout=config.dropout)
        if config.zero_init:
            last = net[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        return net

    scales = dict(input_scale=float(levels), output_scale=config.translation_scale)
    generator = torch.Generator().manual_seed(config.seed)
    layers: list[Transform] = []
    for _ in range(config.num_flows):
        if config.partition == "bipartite":
            layers.append(IntegerAdditiveCoupling(dim, make_net, context=context, **scales))
        else:
            layers.append(
                IntegerPartitionCoupling(dim, make_net, num_parts=4, context=context, **scales)
            )
        if config.permutation == "flip":
            layers.append(Permutation.reverse(dim))
        else:
            layers.append(Permutation.random(dim, generator=generator))
    return Compose(layers)


@register_model("idf", IDFConfig)
class IDF(GenerativeModel):
    r"""Integer Discrete Flow (Hoogeboom et al. 2019; Book §4.2.3-4.2.4, Listings 4.3-4.6).

    The data x ∈ {0..L-1}^D is flattened and centered, x̃ = x - ⌊L/2⌋ (still integers, so the
    base sits near 0), and mapped by integer couplings and permutations to z = f(x̃) ∈ Z^D;

        log P(x) = Σ_d log π_d(f(x̃)_d)                           (Eq. 4.32, 4.44-4.45)

    exactly (no dequantization, no Jacobian). f is a bijection of all of Z^D, so the model is a
    pmf over Z^D: the mass it gives to integers outside 0..L-1 is lost to the data, and the NLL
    on the data is that of a (slightly defective) distribution — honest, never optimistic.

    Sampling draws z ~ π and returns x = f⁻¹(z) + ⌊L/2⌋; values outside 0..L-1 can occur and are
    **clamped** into the range, so samples follow the clamped model, not exactly ``log_prob``.

    With ``conditional`` every translation also sees the one-hot label y: ``log_prob(x, y)``
    is log P(x | y), and ``sample`` draws labels uniformly when y is not given.

    Args:
        spec: discrete or binary data; any event shape, D = ``spec.dim`` >= 2 (>= 4 for the
            quadripartite coupling).
        config: an :class:`IDFConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=17)
        >>> model = IDF(spec, IDFConfig(num_flows=2, hidden=32)).eval()
        >>> x = torch.randint(0, 17, (5, 1, 4, 4))
        >>> model.log_prob(x).shape
        torch.Size([5])
        >>> model.sample(2).dtype
        torch.int64

    References:
        Hoogeboom, Peters, van den Berg, Welling. Integer Discrete Flows and Lossless
        Compression. NeurIPS 2019, arXiv:1905.07376.
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: IDFConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or IDFConfig()
        dim = spec.dim
        need = 4 if config.partition == "quadripartite" else 2
        if dim < need:
            raise ConfigError(
                f"IDF with a {config.partition} coupling needs at least {need} coordinates, "
                f"got event_shape {spec.event_shape}"
            )
        if config.conditional and not spec.num_classes:
            raise ConfigError("model.conditional needs labelled data (spec.num_classes)")
        assert spec.num_levels is not None
        self.dim = dim
        self.num_levels = spec.num_levels
        self.offset = spec.num_levels // 2
        self.num_classes = spec.num_classes if config.conditional else None
        self.flow = _integer_flow(dim, spec.num_levels, self.num_classes or 0, config)
        self.base: DiscretizedLogisticBase | FactorOutBase
        if config.prior_parts > 1:
            self.base = FactorOutBase(dim, config.prior_parts, config.num_components,
                                      config.prior_hidden, spec.num_levels, config.min_scale)
        else:
            self.base = DiscretizedLogisticBase(
                dim, config.num_components, min_scale=config.min_scale
            )

    @property
    def _dtype(self) -> torch.dtype:
        return next(self.base.parameters()).dtype

    def _context(self, y: Tensor | None, n: int) -> Tensor | None:
        if self.num_classes is None:
            return None
        if y is None:
            raise ConfigError("this IDF is conditional: pass the labels y")
        y = torch.as_tensor(y, device=self.device).long().reshape(-1)
        if y.shape[0] != n:
            raise ConfigError(f"got {y.shape[0]} labels for {n} examples")
        return F.one_hot(y, self.num_classes).to(self._dtype)

    def _centered(self, x: Tensor) -> Tensor:
        """Flat, centered integers as floats: x - ⌊L/2⌋, shape (N, D)."""
        # to floats first: uint8 pixels minus the offset would wrap around
        return x.reshape(x.shape[0], self.dim).to(self._dtype) - self.offset

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the base to the centered training data (the couplings start as the identity)."""
        self.check_input(x)
        if self.config.fit_base:
            self.base.fit(self._centered(x), steps=self.config.fit_base_steps)

    def latent(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """z = f(x - ⌊L/2⌋), flat integers (N, D) stored as floats."""
        self.check_input(x)
        z, _ = self.flow(self._centered(x), self._context(y, x.shape[0]))
        return z

    def representation(self, x: Tensor) -> Tensor:
        """The integer latent z = f(x - ⌊L/2⌋) as floats (N, D), for a classifier on it (the
        hybrid IDF, Book §6.4); gradients pass the rounding straight through."""
        return self.latent(x)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Exact log P(x) (log P(x | y) if conditional) per example, in nats (Eq. 4.44-4.45)."""
        return sum_except_batch(self.base.log_prob_each(self.latent(x, y)))

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log P(x) per example, in nats."""
        return -self.log_prob(x, y)

    # -- lossless coding (Book §4.2: an IDF codes its integer latent) ---------------------------

    def _unconditional_for_coding(self) -> None:
        if self.num_classes is not None:
            raise CodecError("a class-conditional IDF needs the labels to code; train an "
                             "unconditional one for compression")

    def coding_symbols(self, x: Tensor) -> Tensor:
        """z = f(x - ⌊L/2⌋) as integers (N, D): what the coder codes."""
        self._unconditional_for_coding()
        return self.latent(x).round().long()

    def coding_inverse(self, symbols: Tensor) -> Tensor:
        """x = f⁻¹(z) + ⌊L/2⌋, (N, *event) long (not clamped: the encoder checks that it
        gives x back)."""
        x, _ = self.flow.inverse(symbols.to(self._dtype), None)
        return (x + self.offset).round().long().reshape(-1, *self.spec.event_shape)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> "_LatentCursor":
        """The base's pmf over the window ``alphabet`` of integers, part by part (one step for
        a factorized base, one per part for the factor-out base)."""
        self._unconditional_for_coding()
        sizes = getattr(self.base, "sizes", [self.dim])
        return _LatentCursor(self.base.log_prob_each, sizes, rows, alphabet, self._dtype)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ π, x = f⁻¹(z) + ⌊L/2⌋, clamped to 0..L-1; long, shape (n, *event_shape).

        Run it in ``eval()`` mode when the MLPs use dropout (the inverse needs the same
        translations as the forward pass).
        """
        if self.num_classes is None and y is not None:
            raise ConfigError("this IDF is unconditional: sample() takes no labels y")
        if self.num_classes is not None and y is None:
            y = torch.randint(self.num_classes, (n,), generator=generator)
        z = self.base.sample(n, generator=generator)
        x, _ = self.flow.inverse(z, self._context(y, n))
        x = (x + self.offset).clamp(0, self.num_levels - 1)
        return x.round().long().reshape(n, *self.spec.event_shape)
