r"""Mixtures of diagonal Gaussians, fitted by gradients or by EM (Book §2.3, Listing 2.1).

The model is

    p(y) = Σ_k ω_k N(y | μ_k, diag σ²_k),      log p(y) = LSE_k [log ω_k + log N(y | μ_k, σ²_k)]

(Eq. 2.25-2.37), with ω = softmax(logits) on the simplex and σ²_k = σ²_min + exp(η_k) kept above
a variance floor σ²_min: a component that sits on one data point cannot drive the likelihood to
infinity (Book §2.3.3; Mattei & Frellsen 2018).

On continuous data y = x and ``log_prob`` is exact. On discrete data (K levels) the mixture is
a density on y = (x + u) / L, u ~ U[0, 1)^D, scored in the discrete space by uniform
dequantization (:mod:`dgm.core.dequantize`): ``log_prob`` is the single-draw lower bound
log p_Y(y) - D log L and ``log_weights`` gives k such terms for the IWAE bound. Samples are
drawn in y-space and quantized, so they are integers like the data.

EM (Dempster et al. 1977; Bishop 2006, §9.2) alternates responsibilities
r_nk = ω_k N(y_n | μ_k, σ²_k) / Σ_j ω_j N(y_n | μ_j, σ²_j), computed in log space, and the
closed-form M-step ω_k = N_k / N, μ_k = Σ_n r_nk y_n / N_k,
σ²_k = max(Σ_n r_nk y_n² / N_k - μ_k², σ²_min) with N_k = Σ_n r_nk. The floor is the exact
maximizer of the expected complete log-likelihood under the constraint σ² >= σ²_min, so the
log-likelihood still never decreases.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §2.3.
    Bishop, Pattern Recognition and Machine Learning, 2006, §9.2.
    Mattei & Frellsen, Leveraging the exact likelihood of deep latent variable models, 2018,
    arXiv:1802.04826.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.fitting import EMFit, GradientFit, em_statistics_begun
from dgm.core.dequantize import dequantization_log_jacobian, quantize, uniform_dequantize
from dgm.core.distributions import log_normal_diag
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = ["MoGConfig", "MoG"]

_FITS = {"gradient": GradientFit(), "em": EMFit()}

# Rows (examples x draws) scored at once: the (rows, K, D) tensor of per-coordinate terms
# stays at a few tens of MB for digits-sized data.
_ROWS_PER_BLOCK = 4096


@dataclass(frozen=True, kw_only=True)
class MoGConfig:
    """Configuration of :class:`MoG`.

    Attributes:
        num_components: K, the number of Gaussians (the book uses 25 on digits).
        uniform_weights: fix ω_k = 1/K (no gradient, not re-estimated by EM), as the book's
            companion code does; otherwise ω = softmax(logits) is learned.
        fit: ``"gradient"``: the trainer minimizes the NLL with its optimizer (the book's
            choice); ``"em"``: closed-form EM updates, one per epoch.
        min_var: the variance floor σ²_min > 0, in the model's space (y = (x + u)/L in [0, 1)
            on discrete data, the data itself on continuous data).
        init_log_var: log σ² of every component before any data is seen (book: -3).
        init_from_data: in :meth:`MoG.initialize_from_data`, put the K means at K random
            training points and every variance at the per-coordinate data variance.
    """

    num_components: int = 25
    uniform_weights: bool = False
    fit: Literal["gradient", "em"] = "gradient"
    min_var: float = 1e-4
    init_log_var: float = -3.0
    init_from_data: bool = True

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {self.num_components}")
        if self.fit not in _FITS:
            raise ConfigError(f"fit must be one of {', '.join(_FITS)}, got {self.fit!r}")
        if not (self.min_var > 0 and math.isfinite(self.min_var)):
            raise ConfigError(f"min_var must be a positive number, got {self.min_var}")
        if not math.exp(self.init_log_var) > self.min_var:
            raise ConfigError(
                f"init_log_var must give a variance above min_var={self.min_var}, got "
                f"init_log_var={self.init_log_var} (variance {math.exp(self.init_log_var):.3g})"
            )


@register_model("mog", MoGConfig)
class MoG(GenerativeModel):
    r"""Mixture of K diagonal Gaussians, by gradients or EM (Book §2.3).

    p(y) = Σ_k ω_k N(y | μ_k, diag σ²_k); exact on continuous data, a uniformly dequantized
    lower bound on discrete data.

    Args:
        spec: the data spec (continuous, discrete or binary).
        config: a :class:`MoGConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> model = MoG(DataSpec((2,), DataKind.CONTINUOUS), MoGConfig(num_components=3))
        >>> model.log_prob(torch.zeros(4, 2)).shape
        torch.Size([4])
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS, DataKind.DISCRETE, DataKind.BINARY})
    dequantization = "uniform"

    def __init__(self, spec: DataSpec, config: MoGConfig | None = None) -> None:
        super().__init__(spec)
        config = MoGConfig() if config is None else config
        self.config = config
        self.fit = _FITS[config.fit]
        k, d = config.num_components, spec.dim
        # Book init: means around the middle of [0, 1] (the y-space of discrete data); on
        # continuous data a standard normal. initialize_from_data replaces both.
        loc = torch.randn(k, d) * 0.25 + 0.5 if spec.kind.is_discrete else torch.randn(k, d)
        self.loc = nn.Parameter(loc)
        excess = math.log(math.exp(config.init_log_var) - config.min_var)
        self.log_excess_var = nn.Parameter(torch.full((k, d), excess))  # η = log(σ² - σ²_min)
        if config.uniform_weights:
            self.register_buffer("logits", torch.zeros(k))
        else:
            self.logits = nn.Parameter(torch.zeros(k))
        self._em_stats: list[Tensor] | None = None

    # -- the density ---------------------------------------------------------------------------
    @classmethod
    def likelihood_on(cls, kind: DataKind) -> Likelihood:
        """Exact on continuous data; a dequantized lower bound on discrete data."""
        return Likelihood.LOWER_BOUND if kind.is_discrete else Likelihood.EXACT

    @property
    def log_mixture_weights(self) -> Tensor:
        """log ω, shape (K,)."""
        return F.log_softmax(self.logits, dim=-1)

    @property
    def variance(self) -> Tensor:
        """σ² = σ²_min + exp(η), shape (K, D)."""
        return self.config.min_var + torch.exp(self.log_excess_var)

    @property
    def log_var(self) -> Tensor:
        """log σ², shape (K, D), computed without forming σ² first."""
        log_floor = torch.full_like(self.log_excess_var, math.log(self.config.min_var))
        return torch.logaddexp(self.log_excess_var, log_floor)

    def _log_joint(self, y: Tensor) -> Tensor:
        """log ω_k + log N(y_n | μ_k, σ²_k): (N, D) -> (N, K)."""
        comp = log_normal_diag(y.unsqueeze(1), self.loc, self.log_var).sum(-1)  # (N, K)
        return self.log_mixture_weights + comp

    def _log_density_flat(self, y: Tensor) -> Tensor:
        """log p_Y(y) for flat points (M, D), scored in blocks of rows to bound memory."""
        return torch.cat(
            [
                torch.logsumexp(self._log_joint(block), dim=-1)
                for block in y.split(_ROWS_PER_BLOCK)
            ]
        )

    def log_density(self, y: Tensor) -> Tensor:
        r"""log p_Y(y) = LSE_k [log ω_k + log N(y | μ_k, σ²_k)] of the continuous mixture.

        Args:
            y: points in the model's space, shape (N, *event_shape), any floating dtype (on
                discrete data: y = (x + u)/L in [0, 1)^D).

        Returns:
            shape (N,), nats.
        """
        if not y.dtype.is_floating_point or tuple(y.shape[1:]) != self.spec.event_shape:
            shape = ", ".join(map(str, self.spec.event_shape))
            raise DataError(
                f"y must be a floating tensor of shape (N, {shape}), "
                f"got {y.dtype} of shape {tuple(y.shape)}"
            )
        flat = y.reshape(y.shape[0], -1).to(self.loc.dtype)
        return self._log_density_flat(flat)

    def _to_y(self, x: Tensor, generator: torch.Generator | None) -> Tensor:
        """Data to flat points of the model's space: x itself, or one dequantized draw."""
        if self.spec.kind.is_discrete:
            x = uniform_dequantize(x, self.spec.num_levels, generator=generator)
        return x.reshape(x.shape[0], -1).to(self.loc.dtype)

    def _log_jacobian(self) -> float:
        if not self.spec.kind.is_discrete:
            return 0.0
        return dequantization_log_jacobian(self.spec.dim, self.spec.num_levels)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        r"""log p(x): exact on continuous data; on discrete data the one-draw bound
        log p_Y((x + u)/L) - D log L <= log P(x), u ~ U[0, 1)^D (global RNG). Labels ``y``
        are ignored (the model is unconditional).

        Returns:
            shape (N,), nats.
        """
        self.check_input(x)
        return self._log_density_flat(self._to_y(x, None)) + self._log_jacobian()

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log_prob(x), shape (N,): the NLL, or the dequantized upper bound on it."""
        return -self.log_prob(x, y)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""k importance log-weights per example: log p_Y((x + u_i)/L) - D log L, u_i ~ U[0,1)^D.

        Their mean is the dequantization bound and log (1/k) Σ_i exp(·) the IWAE(k) bound, which
        tends to log P(x) = log ∫ p_Y((x + u)/L) L^{-D} du as k grows. On continuous data all
        k weights equal the exact log p(x).

        Returns:
            shape (k, N), nats.
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        n = x.shape[0]
        if not self.spec.kind.is_discrete:
            return self._log_density_flat(self._to_y(x, None)).expand(k, n).clone()
        draws_per_block = max(1, _ROWS_PER_BLOCK // max(1, n))
        blocks = []
        for start in range(0, k, draws_per_block):
            c = min(draws_per_block, k - start)
            xc = x.repeat(c, *([1] * (x.dim() - 1)))  # (c N, *event_shape), draw-major
            blocks.append(self._log_density_flat(self._to_y(xc, generator)).reshape(c, n))
        return torch.cat(blocks) + self._log_jacobian()

    # -- sampling ------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        r"""Ancestral sampling: k ~ Cat(ω), then y ~ N(μ_k, diag σ²_k); quantized on discrete data.

        On discrete data, y = floor(y L) clamped to 0..L-1: the little mass p_Y puts outside
        [0, 1)^D goes to the edge values.

        Returns:
            shape (n, *event_shape): long integers in 0..L-1 on discrete data, float32 otherwise.
        """
        if y is not None:
            raise ConfigError("MoG is unconditional: sample() takes no labels y")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        probs = self.log_mixture_weights.exp()
        if n > 0:
            comp = torch.multinomial(probs, n, replacement=True, generator=generator)  # (n,)
        else:
            comp = torch.zeros(0, dtype=torch.long, device=probs.device)
        eps = torch.randn(
            n, self.spec.dim, generator=generator, device=self.loc.device, dtype=self.loc.dtype
        )
        points = self.loc[comp] + self.variance[comp].sqrt() * eps  # (n, D)
        points = points.reshape(n, *self.spec.event_shape)
        if self.spec.kind.is_discrete:
            return quantize(points, self.spec.num_levels)
        return points.to(self.spec.dtype)

    # -- initialization ------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Means at K random training points (dequantized on discrete data), every variance at
        the per-coordinate data variance (at least the floor), uniform weights."""
        if not self.config.init_from_data:
            return
        self.check_input(x)
        points = self._to_y(x.cpu(), generator).to(self.loc.device)  # (N, D); generator on CPU
        n, k = points.shape[0], self.config.num_components
        if n >= k:
            idx = torch.randperm(n, generator=generator)[:k]
        else:
            idx = torch.randint(n, (k,), generator=generator)
        self.loc.copy_(points[idx.to(points.device)])
        var = points.var(dim=0, unbiased=False) if n > 1 else torch.ones_like(points[0])
        excess = (var - self.config.min_var).clamp_min(self.config.min_var)
        self.log_excess_var.copy_(torch.log(excess).expand_as(self.log_excess_var))
        self.logits.zero_()

    # -- EM ------------------------------------------------------------------------------------
    def _stat_dtype(self) -> torch.dtype:
        # float64 keeps E[y²] - μ² accurate; MPS has no float64.
        return torch.float32 if self.loc.device.type == "mps" else torch.float64

    def em_begin(self) -> None:
        """Reset the sufficient statistics Σ_n r_nk, Σ_n r_nk y_n and Σ_n r_nk y_n²."""
        k, d = self.loc.shape
        opts = {"dtype": self._stat_dtype(), "device": self.loc.device}
        self._em_stats = [
            torch.zeros(k, **opts),  # Σ_n r_nk
            torch.zeros(k, d, **opts),  # Σ_n r_nk y_n
            torch.zeros(k, d, **opts),  # Σ_n r_nk y_n²
        ]

    @torch.no_grad()
    def em_accumulate(self, x: Tensor) -> Tensor:
        """E-step on a batch: add its responsibility-weighted statistics.

        On discrete data the batch is dequantized afresh (global RNG), so EM fits p_Y to the
        dequantized data and the returned values are the one-draw bounds.

        Returns:
            the batch's log-likelihoods under the current parameters, shape (N,), nats.
        """
        self.check_input(x)
        em_statistics_begun(self._em_stats, "em_accumulate")
        points = self._to_y(x, None)
        s0, s1, s2 = self._em_stats
        out = []
        for block in points.split(_ROWS_PER_BLOCK):
            a = self._log_joint(block)  # (B, K)
            log_p = torch.logsumexp(a, dim=-1)
            r = torch.exp(a - log_p.unsqueeze(-1)).to(s0.dtype)  # responsibilities (B, K)
            b = block.to(s0.dtype)
            s0 += r.sum(0)
            s1 += r.T @ b
            s2 += r.T @ b.square()
            out.append(log_p)
        return torch.cat(out) + self._log_jacobian()

    def em_statistics(self) -> list[Tensor]:
        """[Σ r_nk (K,), Σ r_nk y_n (K, D), Σ r_nk y_n² (K, D)]: the accumulators themselves,
        so that summing them in place across processes (all-reduce) is all a distributed run
        needs."""
        return em_statistics_begun(self._em_stats, "em_statistics")

    @torch.no_grad()
    def em_maximize(self) -> None:
        """M-step: closed-form ω, μ, σ² (floored) from the statistics. A component with no
        responsibility keeps its mean and variance (and gets weight ~0)."""
        em_statistics_begun(self._em_stats, "em_maximize")
        s0, s1, s2 = self._em_stats
        tiny = torch.finfo(s0.dtype).tiny
        alive = (s0 > 1e-10 * s0.sum()).unsqueeze(-1)  # (K, 1)
        nk = s0.clamp_min(tiny).unsqueeze(-1)
        mean = s1 / nk
        var = (s2 / nk - mean.square()).clamp_min(self.config.min_var)
        old_var = self.variance.to(s0.dtype)
        mean = torch.where(alive, mean, self.loc.to(s0.dtype))
        var = torch.where(alive, var, old_var)
        # σ² = σ²_min + exp(η): at the floor η -> -inf; a tiny excess keeps η finite.
        excess = (var - self.config.min_var).clamp_min(self.config.min_var * 1e-12)
        self.loc.copy_(mean.to(self.loc.dtype))
        self.log_excess_var.copy_(torch.log(excess).to(self.log_excess_var.dtype))
        if not self.config.uniform_weights:
            self.logits.copy_(torch.log(s0.clamp_min(tiny) / s0.sum()).to(self.logits.dtype))
