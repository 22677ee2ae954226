r"""Probabilistic PCA: the linear-Gaussian latent-variable model with everything in closed form.

With a latent z ∈ R^M and data y ∈ R^D (Book §5.2, Eq. 5.2-5.7),

    p(z) = N(0, I),   p(y | z) = N(y | W z + b, σ² I),   i.e. y = W z + b + ε, ε ~ N(0, σ² I),
    p(y) = N(y | b, C),   C = W Wᵀ + σ² I                                          (5.4-5.6)
    p(z | y) = N(z | M⁻¹ Wᵀ (y - b), σ² M⁻¹),   M = Wᵀ W + σ² I  (an M×M matrix)   (5.7)

The book prints the posterior's second argument as σ⁻² M, which is its precision; the
covariance is σ² M⁻¹. log p(y) uses the matrix determinant lemma and Woodbury's identity,

    log det C = (D - M) log σ² + log det M,   C⁻¹ = σ⁻² (I - W M⁻¹ Wᵀ),

so it costs O(D M) per point after an O(D M²) set-up, in float64.

The maximum-likelihood fit is closed-form (Tipping & Bishop 1999, Eq. 7-8): with the sample
mean ȳ and covariance S = U Λ Uᵀ (eigenvalues in decreasing order),

    b = ȳ,   σ² = (1 / (D - M)) Σ_{j > M} λ_j,   W = U_M (Λ_M - σ² I)^{1/2}  (up to a rotation).

The trainer reaches it as an EM-style fit: the "E-step" accumulates the sufficient statistics
(count, Σ y, Σ y yᵀ) over the training set and the "M-step" is the closed form above, so one
epoch is the exact ML solution and later epochs reproduce it.

Discrete data (integers 0..L-1) are scored by uniform dequantization with bins of width one and
no rescaling: y = x + u, u ~ U[0, 1)^D, and

    log P(x) = log ∫ p(x + u) du >= E_u[log p(x + u)]
             = log N(x + ½ | b, C) - tr(C⁻¹) / 24                     (E[u] = ½, Cov[u] = I/12)

``log_prob`` returns this expectation exactly (a deterministic lower bound); ``log_weights``
gives k draws log p(x + u_i), whose log-mean-exp is the tighter IWAE(k) bound. Because a
Gaussian's expected log-likelihood depends on the data only through its first two moments, the
closed-form fit on the moments of x + u (mean x̄ + ½, covariance S + I/12) maximizes the expected
dequantized log-likelihood exactly. Where a posterior over z is needed for discrete x (latent
means, reconstructions), x is read at its bin centre x + ½.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §5.2.
    Tipping, Bishop. Probabilistic Principal Component Analysis. J. R. Stat. Soc. B 61(3),
    1999.
    Bishop, Pattern Recognition and Machine Learning, 2006, §12.2.
    Theis, van den Oord, Bethge. A note on the evaluation of generative models. ICLR 2016,
    arXiv:1511.01844.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.fitting import EMFit, em_statistics_begun
from dgm.core.distributions import LOG_2PI, log_standard_normal
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = ["PPCAConfig", "PPCA", "GaussianMarginal", "FullCovGaussian", "LatentProposal"]

# Points scored at once in log_weights: (rows, D) float64 blocks of a few tens of MB.
_ROWS_PER_BLOCK = 1 << 16


@dataclass(frozen=True)
class GaussianMarginal:
    """p(y) = N(mean, covariance): mean (D,), covariance (D, D)."""

    mean: Tensor
    covariance: Tensor


class LatentProposal(Protocol):
    """A proposal q(z) per example, as a VAE's Gaussian posterior gives one: mean (N, M)."""

    mean: Tensor

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """k draws, shape (k, N, M)."""
        ...

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z), z (k, N, M) -> (k, N)."""
        ...


@dataclass(frozen=True)
class FullCovGaussian:
    """N(mean_n, covariance) per example, one covariance shared by all: mean (N, M), cov (M, M).

    pPCA's exact posterior p(z | y) has this form: its covariance σ² M⁻¹ does not depend on y.
    """

    mean: Tensor
    covariance: Tensor

    @property
    def scale_tril(self) -> Tensor:
        """The Cholesky factor L of the covariance, L Lᵀ = Σ, shape (M, M)."""
        return torch.linalg.cholesky(self.covariance)

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """k reparameterized draws z = μ + L ε; shape (k, N, M)."""
        eps = torch.randn(
            (k, *self.mean.shape), generator=generator, dtype=self.mean.dtype,
            device=self.mean.device,
        )
        return self.mean + eps @ self.scale_tril.T

    def log_prob(self, z: Tensor) -> Tensor:
        """log N(z | μ, Σ); z (..., N, M) -> (..., N)."""
        tril = self.scale_tril
        r = (z.to(self.mean.dtype) - self.mean).unsqueeze(-1)  # (..., N, M, 1)
        a = torch.linalg.solve_triangular(tril, r, upper=False).squeeze(-1)
        m = self.mean.shape[-1]
        log_det = 2.0 * torch.log(torch.diagonal(tril)).sum()
        return -0.5 * (m * LOG_2PI + log_det + a.square().sum(-1))

    def kl_standard_normal(self) -> Tensor:
        r"""KL[N(μ, Σ) || N(0, I)] = ½ (tr Σ + |μ|² - M - log det Σ), shape (N,)."""
        m = self.mean.shape[-1]
        log_det = 2.0 * torch.log(torch.diagonal(self.scale_tril)).sum()
        trace = torch.diagonal(self.covariance).sum()
        return 0.5 * (trace + self.mean.square().sum(-1) - m - log_det)


@dataclass(frozen=True, kw_only=True)
class PPCAConfig:
    """Configuration of :class:`PPCA`.

    Args:
        latent_dim: M, the size of z; must be below the data dimension D.
        min_var: floor σ²_min > 0 on the noise variance σ², in the data's units. It binds only
            when the data (nearly) lie in an M-dimensional subspace; with σ² held at the floor,
            W = U_M (Λ_M - σ² I)^{1/2} is still the constrained maximizer.
    """

    latent_dim: int = 8
    min_var: float = 1e-6

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if not (self.min_var > 0 and math.isfinite(self.min_var)):
            raise ConfigError(f"model.min_var must be a positive number, got {self.min_var}")


@register_model("ppca", PPCAConfig)
class PPCA(GenerativeModel):
    r"""Probabilistic PCA (Book §5.2; Tipping & Bishop 1999), fitted in closed form.

        p(z) = N(0, I),  p(y | z) = N(W z + b, σ² I),  p(y) = N(b, W Wᵀ + σ² I)     (5.2-5.6)
        p(z | y) = N(M⁻¹ Wᵀ (y - b), σ² M⁻¹),  M = Wᵀ W + σ² I                     (5.7)

    On continuous data y = x and ``log_prob`` is exact. On discrete data y = x + u with
    u ~ U[0, 1)^D, ``log_prob`` is the exact expectation E_u log p(x + u) <= log P(x) and
    ``log_weights`` gives k dequantization draws for the IWAE(k) bound. ``fit = EMFit()``: the
    trainer accumulates (count, Σ y, Σ y yᵀ) and :meth:`em_maximize` sets the ML solution.
    Parameters are float64: W (D, M), b (D,) and log σ².

    Args:
        spec: the data spec (continuous, discrete or binary); any event shape, flattened.
        config: a :class:`PPCAConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> model = PPCA(DataSpec((5,), DataKind.CONTINUOUS), PPCAConfig(latent_dim=2))
        >>> x = torch.randn(100, 5)
        >>> model.fit_data(x)
        >>> model.posterior(x).covariance.shape, model.log_prob(x).shape
        (torch.Size([2, 2]), torch.Size([100]))

    References:
        Tipping, Bishop. Probabilistic Principal Component Analysis. J. R. Stat. Soc. B 61(3),
        1999.
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS, DataKind.DISCRETE, DataKind.BINARY})
    dequantization = "uniform"
    fit = EMFit()

    def __init__(self, spec: DataSpec, config: PPCAConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or PPCAConfig()
        self.dim = d = spec.dim
        self.latent_dim = m = config.latent_dim
        if m >= d:
            raise ConfigError(
                f"model.latent_dim must be below the data dimension D = {d}, got {m}"
            )
        self.dequantized = spec.kind.is_discrete
        centre = 0.5 * spec.num_levels if self.dequantized else 0.0
        # Parameters before any fit: a small random W, b at the middle of the range, σ² = 1.
        self.weight = nn.Parameter(0.1 * torch.randn(d, m, dtype=torch.float64))  # W (D, M)
        self.bias = nn.Parameter(torch.full((d,), centre, dtype=torch.float64))  # b (D,)
        self.log_var = nn.Parameter(torch.zeros((), dtype=torch.float64))  # log σ²
        # The EM statistics are sums of (x - c)(x - c)ᵀ around a fixed c near the data mean,
        # so that the second moment keeps its digits and every epoch sums the same numbers.
        self.register_buffer("stat_shift", torch.full((d,), centre, dtype=torch.float64))
        self._em_stats: list[Tensor] | None = None

    @classmethod
    def likelihood_on(cls, kind: DataKind) -> Likelihood:
        """Exact on continuous data; a dequantized lower bound on discrete data."""
        return Likelihood.LOWER_BOUND if kind.is_discrete else Likelihood.EXACT

    @property
    def variance(self) -> Tensor:
        """σ², a scalar."""
        return torch.exp(self.log_var)

    # -- data and points -------------------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim).to(self.weight.dtype)

    def _centres(self, x: Tensor) -> Tensor:
        """Data to points of R^D: x itself, or the bin centres x + ½ on discrete data."""
        self.check_input(x)
        y = self._flat(x)
        return y + 0.5 if self.dequantized else y

    def _dequantize(self, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        """k draws y = x + u per example, u ~ U[0, 1)^D; (N, D) integers -> (k, N, D)."""
        u = torch.rand(
            (k, *x.shape), generator=generator, dtype=self.weight.dtype, device=x.device
        )
        return x.to(self.weight.dtype) + u

    # -- the Gaussians -------------------------------------------------------------------------
    def _inner(self) -> tuple[Tensor, Tensor]:
        """M = Wᵀ W + σ² I (M, M) and its Cholesky factor."""
        eye = torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
        inner = self.weight.T @ self.weight + self.variance * eye
        return inner, torch.linalg.cholesky(inner)

    def marginal(self) -> GaussianMarginal:
        """p(y) = N(b, W Wᵀ + σ² I) (Eq. 5.4-5.6)."""
        eye = torch.eye(self.dim, dtype=self.weight.dtype, device=self.weight.device)
        cov = self.weight @ self.weight.T + self.variance * eye
        return GaussianMarginal(mean=self.bias, covariance=cov)

    def _log_density_flat(self, y: Tensor) -> Tensor:
        """log N(y | b, C) for points (..., D) -> (...), by Woodbury and the determinant lemma."""
        d, m = self.dim, self.latent_dim
        _, tril = self._inner()
        var = self.variance
        # a = L⁻¹ Wᵀ r, so rᵀ W M⁻¹ Wᵀ r = |a|² and rᵀ C⁻¹ r = (|r|² - |a|²) / σ².
        proj = torch.linalg.solve_triangular(tril, self.weight.T, upper=False)  # (M, D)
        log_det = (d - m) * self.log_var + 2.0 * torch.log(torch.diagonal(tril)).sum()
        out = []
        flat = y.reshape(-1, d)
        for block in flat.split(_ROWS_PER_BLOCK):
            r = block - self.bias
            quad = (r.square().sum(-1) - (r @ proj.T).square().sum(-1)) / var
            out.append(-0.5 * (d * LOG_2PI + log_det + quad))
        return torch.cat(out).reshape(y.shape[:-1])

    def _trace_precision(self) -> Tensor:
        """tr C⁻¹ = (D - tr(M⁻¹ Wᵀ W)) / σ²."""
        inner, _ = self._inner()
        wtw = self.weight.T @ self.weight
        return (self.dim - torch.linalg.solve(inner, wtw).diagonal().sum()) / self.variance

    def log_density(self, y: Tensor) -> Tensor:
        """log p(y) = log N(y | b, W Wᵀ + σ² I) of points y (N, *event_shape), floating; (N,)."""
        if not y.dtype.is_floating_point or tuple(y.shape[1:]) != self.spec.event_shape:
            shape = ", ".join(map(str, self.spec.event_shape))
            raise DataError(
                f"y must be a floating tensor of shape (N, {shape}), "
                f"got {y.dtype} of shape {tuple(y.shape)}"
            )
        return self._log_density_flat(self._flat(y))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        r"""log p(x) on continuous data (exact); on discrete data the exact dequantization bound

            E_u log p(x + u) = log N(x + ½ | b, C) - tr(C⁻¹) / 24  <=  log P(x).

        Labels ``y`` are ignored (the model is unconditional).

        Returns:
            shape (N,), nats, float64.
        """
        points = self._centres(x)
        log_p = self._log_density_flat(points)
        if self.dequantized:
            log_p = log_p - self._trace_precision() / 24.0
        return log_p

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
        r"""k dequantization weights log p(x + u_i), u_i ~ U[0, 1)^D, per example; (k, N).

        Their mean estimates the bound of :meth:`log_prob`; log (1/k) Σ_i exp(·) is the IWAE(k)
        bound, which tends to log P(x) as k grows. On continuous data every row is the exact
        log p(x).
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        flat = self._flat(x)
        if not self.dequantized:
            return self._log_density_flat(flat).expand(k, x.shape[0]).clone()
        draws_per_block = max(1, _ROWS_PER_BLOCK // max(1, x.shape[0]))
        blocks = []
        for start in range(0, k, draws_per_block):
            c = min(draws_per_block, k - start)
            blocks.append(self._log_density_flat(self._dequantize(flat, c, generator)))
        return torch.cat(blocks)

    # -- the posterior ------------------------------------------------------------------------
    def _posterior_at(self, points: Tensor) -> FullCovGaussian:
        """p(z | y) for points (..., D): mean (..., M), covariance σ² M⁻¹ (M, M) (Eq. 5.7)."""
        inner, tril = self._inner()
        rhs = ((points - self.bias) @ self.weight).unsqueeze(-1)  # Wᵀ (y - b), (..., M, 1)
        mean = torch.cholesky_solve(rhs, tril).squeeze(-1)
        cov = self.variance * torch.cholesky_inverse(tril)
        return FullCovGaussian(mean=mean, covariance=0.5 * (cov + cov.T))

    def posterior(self, x: Tensor) -> FullCovGaussian:
        """Exact p(z | x) = N(M⁻¹ Wᵀ (x - b), σ² M⁻¹) (Eq. 5.7, with the covariance corrected);
        discrete x are read at their bin centres x + ½. Means (N, M), covariance (M, M)."""
        return self._posterior_at(self._centres(x))

    def latent_log_weights(
        self,
        x: Tensor,
        k: int,
        posterior: LatentProposal | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""Latent importance weights log p(y | z_i) + log p(z_i) - log q(z_i), z_i ~ q; (k, N).

        With q the exact posterior (the default) every weight equals log p(y) exactly, so the
        ELBO equals log p(y) with zero variance; any other proposal q (e.g. a VAE's diagonal
        Gaussian posterior, mean (N, M)) gives weights whose mean is
        the ELBO(q) = log p(y) - KL[q || p(z | y)] and whose log-mean-exp is the IWAE(k) bound.
        On discrete data y = x + u_i with a fresh u_i ~ U[0, 1)^D per weight (the proposal is
        U × q, log q(u) = 0), so the default weights are :meth:`log_weights`' draws.
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        flat = self._flat(x)
        if self.dequantized:
            points = self._dequantize(flat, k, generator)  # (k, N, D)
        else:
            points = flat.expand(k, *flat.shape)
        if posterior is None:
            exact = self._posterior_at(points)  # one posterior per draw, (k, N, M)
            eps = torch.randn(
                exact.mean.shape, generator=generator, dtype=exact.mean.dtype,
                device=exact.mean.device,
            )
            z = exact.mean + eps @ exact.scale_tril.T
            log_q = exact.log_prob(z)
        else:
            if posterior.mean.shape != (x.shape[0], self.latent_dim):
                raise DataError(
                    f"posterior must have mean of shape ({x.shape[0]}, {self.latent_dim}), "
                    f"got {tuple(posterior.mean.shape)}"
                )
            z = posterior.rsample(k, generator=generator)  # (k, N, M)
            log_q = posterior.log_prob(z).to(self.weight.dtype)
            z = z.to(self.weight.dtype)
        mean = z @ self.weight.T + self.bias  # (k, N, D)
        log_px_z = -0.5 * (
            self.dim * (LOG_2PI + self.log_var)
            + (points - mean).square().sum(-1) / self.variance
        )
        return log_px_z + self.prior_log_prob(z) - log_q

    # -- LatentVariable protocol --------------------------------------------------------------
    def latent_means(self, x: Tensor) -> list[Tensor]:
        """[E[z | x]], the exact posterior mean, (N, M)."""
        return [self.posterior(x).mean]

    def kl_per_level(self, x: Tensor) -> list[Tensor]:
        """[KL[p(z | x) || N(0, I)]] in closed form, (N,)."""
        return [self.posterior(x).kl_standard_normal()]

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z | 0, I); z (..., M) -> (...)."""
        return log_standard_normal(z).sum(-1)

    def decode_top(self, z: Tensor) -> Tensor:
        """The mode W z + b of p(y | z), in the data's space and dtype; z (N, M)."""
        return self._to_data(z.to(self.weight.dtype) @ self.weight.T + self.bias)

    def _to_data(self, y: Tensor) -> Tensor:
        """Points (N, D) to data: floor(y) clamped to 0..L-1 on discrete data (the bin that
        holds y), float32 otherwise."""
        y = y.reshape(y.shape[0], *self.spec.event_shape)
        if self.dequantized:
            assert self.spec.num_levels is not None
            return torch.floor(y).clamp(0, self.spec.num_levels - 1).long()
        return y.to(self.spec.dtype)

    # -- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, I), y = W z + b + σ ε; floor(y) clamped to the levels on discrete data.

        Returns:
            shape (n, *event_shape): long integers on discrete data, float32 otherwise.
        """
        if y is not None:
            raise ConfigError("PPCA is unconditional: sample() takes no labels y")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        opts = {"dtype": self.weight.dtype, "device": self.weight.device}
        z = torch.randn(n, self.latent_dim, generator=generator, **opts)
        eps = torch.randn(n, self.dim, generator=generator, **opts)
        return self._to_data(z @ self.weight.T + self.bias + self.variance.sqrt() * eps)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """W E[z | x] + b, the posterior mean decoded, in the data's space and dtype
        (deterministic: ``generator`` is not used)."""
        return self.decode_top(self.posterior(x).mean)

    # -- the closed-form fit ------------------------------------------------------------------
    @torch.no_grad()
    def fit_moments(self, mean: Tensor, covariance: Tensor) -> None:
        r"""Set the ML parameters for data of this mean (D,) and covariance (D, D) (Tipping &
        Bishop 1999, Eq. 7-8): b = mean, σ² = mean of the D - M smallest eigenvalues (at least
        ``min_var``), W = U_M (Λ_M - σ² I)^{1/2}."""
        evals, evecs = torch.linalg.eigh(covariance.to(torch.float64))
        evals, evecs = evals.flip(0), evecs.flip(1)  # decreasing
        m = self.latent_dim
        var = evals[m:].mean().clamp_min(self.config.min_var)
        scale = (evals[:m] - var).clamp_min(0.0).sqrt()
        self.weight.copy_((evecs[:, :m] * scale).to(self.weight))
        self.bias.copy_(mean.to(self.bias))
        self.log_var.copy_(var.log().to(self.log_var))

    def _fit_statistics(self, count: Tensor, s1: Tensor, s2: Tensor, shift: Tensor) -> None:
        """ML fit from Σ (x - c) and Σ (x - c)(x - c)ᵀ over ``count`` examples, shift c."""
        if float(count) < 1:
            raise DataError("the closed-form fit needs at least one example")
        mean = s1 / count
        cov = s2 / count - torch.outer(mean, mean)
        if self.dequantized:  # moments of x + u: E[u] = ½, Cov[u] = I / 12
            mean = mean + 0.5
            cov = cov + torch.eye(self.dim, dtype=cov.dtype, device=cov.device) / 12.0
        self.fit_moments(mean + shift, 0.5 * (cov + cov.T))

    @torch.no_grad()
    def fit_data(self, x: Tensor) -> None:
        """The closed-form ML fit to a whole data set x (N, *event_shape), in one call.

        On discrete data it maximizes the expected dequantized log-likelihood E_u log p(x + u)
        exactly, through the moments of x + u.
        """
        self.check_input(x)
        flat = x.reshape(x.shape[0], self.dim).to(torch.float64)
        shift = flat.mean(0)
        centred = flat - shift
        count = torch.tensor(float(x.shape[0]), dtype=torch.float64)
        self._fit_statistics(count, centred.sum(0), centred.T @ centred, shift)

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Start from the closed-form fit to the subset ``x`` (the first epoch refits on all)
        and centre the EM statistics at its mean."""
        self.fit_data(x)
        shift = x.reshape(x.shape[0], self.dim).to(torch.float64).mean(0)
        # On integer data an integer shift makes every statistic an exact integer in float64,
        # so the sums do not depend on the batch order: each epoch refits bit for bit.
        self.stat_shift.copy_(shift.round() if self.dequantized else shift)

    def em_begin(self) -> None:
        """Reset the statistics: count, Σ (x - c), Σ (x - c)(x - c)ᵀ in float64, around the
        fixed c = ``stat_shift`` (the mean of the initialization subset)."""
        opts = {"dtype": torch.float64, "device": self.weight.device}
        self._em_stats = [
            torch.zeros((), **opts),
            torch.zeros(self.dim, **opts),
            torch.zeros(self.dim, self.dim, **opts),
        ]

    @torch.no_grad()
    def em_accumulate(self, x: Tensor) -> Tensor:
        """Add a batch's statistics; returns its log_prob under the current parameters (N,)."""
        em_statistics_begun(self._em_stats, "em_accumulate")
        log_p = self.log_prob(x)
        centred = x.reshape(x.shape[0], self.dim).to(torch.float64) - self.stat_shift
        count, s1, s2 = self._em_stats
        count += x.shape[0]
        s1 += centred.sum(0)
        s2 += centred.T @ centred
        return log_p

    def em_statistics(self) -> list[Tensor]:
        """[count (), Σ (x - c) (D,), Σ (x - c)(x - c)ᵀ (D, D)]: the accumulators themselves,
        so that an in-place all-reduce sum is all a distributed run needs."""
        return em_statistics_begun(self._em_stats, "em_statistics")

    @torch.no_grad()
    def em_maximize(self) -> None:
        """The closed-form ML fit from the accumulated statistics."""
        em_statistics_begun(self._em_stats, "em_maximize")
        self._fit_statistics(*self._em_stats, self.stat_shift)
