r"""Amortized variational posteriors q_φ(z | x) of a VAE (Book §5.3.3, §5.4.2).

The encoder network maps x to a parameter vector e(x) of ``num_params`` numbers; a posterior
turns it into reparameterized draws z and their log-density log q(z | x). The families:

- :class:`DiagonalGaussianPosterior`: N(μ(x), diag σ²(x)) (Book Eq. 5.28, 5.30).
- Flow posteriors (Book Eq. 5.54): z_0 ~ N(μ(x), diag σ²(x)), z_t = f_t(z_{t-1}), and

      log q(z_T | x) = log N(z_0 | μ, σ²) - Σ_t log |det ∂f_t/∂z_{t-1}|,

  - :class:`HouseholderPosterior`: f_t(z) = H_t z with H_t = I - 2 v_t v_tᵀ/|v_t|², v_1 from
    the encoder and v_{t+1} = A_t v_t + c_t (Tomczak & Welling 2016; Book §5.4.2.1);
    volume preserving, a full-covariance Gaussian when T >= M.
  - :class:`SylvesterPosterior`: f_t(z) = z + Q_t R_t tanh(R̃_t Q_tᵀ z + b_t) with every Q, R,
    R̃, b output by the encoder (van den Berg et al. 2018; Book §5.4.2.2), Q with orthonormal
    columns (``orthogonal``), a product of Householder reflections (``householder``) or an
    alternating identity/reversal permutation (``triangular``).
  - :class:`IAFPosterior`: masked autoregressive affine steps that read a context h(x) from the
    encoder, z_t = (z_{t-1} - m(z_{t-1}, h)) ⊙ exp(-s(z_{t-1}, h)), autoregressive in z_{t-1},
    so a draw and its density take one pass per step (Kingma et al. 2016).
- :class:`VonMisesFisherPosterior`: vMF(μ(x), κ(x)) on the unit sphere S^{M-1}, paired with the
  uniform prior there, with the KL in closed form (Davidson et al. 2018; Book §5.4.2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.distributions import kl_standard_normal, log_normal_diag
from dgm.core.errors import ConfigError
from dgm.core.spherical import VonMisesFisher
from dgm.core.transforms import MaskedAutoregressiveAffine, Permutation
from dgm.core.transforms.householder import householder_matrix, reflect
from dgm.core.transforms.sylvester import orthonormal_columns, sylvester_map, upper_triangular
from dgm.models.latent.priors import Prior, SphericalUniformPrior, StandardNormalPrior

__all__ = [
    "POSTERIORS",
    "PosteriorConfig",
    "GaussianPosterior",
    "PosteriorDraw",
    "AmortizedPosterior",
    "DiagonalGaussianPosterior",
    "FlowPosterior",
    "HouseholderPosterior",
    "SylvesterPosterior",
    "IAFPosterior",
    "VonMisesFisherPosterior",
    "build_posterior",
]

POSTERIORS = ("gaussian", "householder", "sylvester", "iaf", "vmf")


@dataclass(frozen=True, kw_only=True)
class PosteriorConfig:
    """Configuration of a VAE's variational posterior.

    Args:
        kind: ``"gaussian"``, ``"householder"``, ``"sylvester"``, ``"iaf"`` or ``"vmf"`` (a von
            Mises-Fisher posterior on the unit sphere with the uniform prior).
        num_flows: T, the flow steps of the flow posteriors.
        variant: Sylvester's Q: ``"orthogonal"``, ``"householder"`` or ``"triangular"``.
        num_ortho: M' ≤ M, the orthogonal Sylvester bottleneck (default M).
        num_reflections: Householder reflections per Sylvester step (default M).
        hidden: width of the IAF steps' MADEs.
        context_dim: width of the context h(x) the IAF steps read.
    """

    kind: Literal["gaussian", "householder", "sylvester", "iaf", "vmf"] = "gaussian"
    num_flows: int = 4
    variant: Literal["orthogonal", "householder", "triangular"] = "orthogonal"
    num_ortho: int | None = None
    num_reflections: int | None = None
    hidden: int = 128
    context_dim: int = 32

    def __post_init__(self) -> None:
        if self.kind not in POSTERIORS:
            raise ConfigError(
                f"model.posterior.kind: {self.kind!r} is not one of "
                f"{', '.join(map(repr, POSTERIORS))}"
            )
        if self.num_flows < 1:
            raise ConfigError(f"model.posterior.num_flows must be >= 1, got {self.num_flows}")
        if self.variant not in ("orthogonal", "householder", "triangular"):
            raise ConfigError(f"model.posterior.variant: {self.variant!r} is not a Sylvester Q")
        if self.num_ortho is not None and self.num_ortho < 1:
            raise ConfigError(f"model.posterior.num_ortho must be >= 1, got {self.num_ortho}")
        if self.num_reflections is not None and self.num_reflections < 1:
            raise ConfigError("model.posterior.num_reflections must be >= 1")
        if self.hidden < 1 or self.context_dim < 1:
            raise ConfigError("model.posterior.hidden and context_dim must be >= 1")


@dataclass(frozen=True)
class GaussianPosterior:
    """N(mean, diag exp(log_var)); tensors of shape (N, M)."""

    mean: Tensor
    log_var: Tensor

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """k reparameterized draws z = μ + σ ⊙ ε (Eq. 5.30); shape (k, N, M)."""
        eps = torch.randn(
            (k, *self.mean.shape), generator=generator, dtype=self.mean.dtype,
            device=self.mean.device,
        )
        return self.mean + torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z | x) summed over the latent coordinates; z (..., N, M) -> (..., N)."""
        return log_normal_diag(z, self.mean, self.log_var).sum(dim=-1)

    def kl_standard_normal(self) -> Tensor:
        r"""KL[N(μ, σ²) || N(0, I)] = ½ Σ_m (μ² + σ² - log σ² - 1), shape (N,)."""
        return kl_standard_normal(self.mean, self.log_var).sum(dim=-1)


@dataclass(frozen=True)
class PosteriorDraw:
    """k draws z ~ q(z | x), shape (k, N, M), and log q(z | x), shape (k, N).

    ``log_proposal`` (k, N), for samplers that use rejection (the vMF): log π(ε; φ) of the
    accepted proposal, whose score completes the reparameterization gradient (Naesseth et al.
    2017): the gradient of f + f.detach() · (log π - log π.detach()) is unbiased for ∇ E_q[f].
    """

    z: Tensor
    log_q: Tensor
    log_proposal: Tensor | None = None


class AmortizedPosterior(nn.Module):
    """q_φ(z | x) from the encoder output e(x), shape (N, ``num_params``)."""

    def __init__(self, latent_dim: int, num_params: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.num_params = num_params

    def gaussian(self, params: Tensor) -> GaussianPosterior:
        """The Gaussian part N(μ, σ²) of the parameters: the posterior itself, or a flow's base
        q_0 (the VampPrior's components)."""
        mean, log_var = params[..., : 2 * self.latent_dim].chunk(2, dim=-1)
        return GaussianPosterior(mean, log_var)

    def rsample(
        self, params: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> PosteriorDraw:
        raise NotImplementedError

    def location(self, params: Tensor) -> Tensor:
        """A point summary of q(z | x), (N, M): the mean, or the flow applied to the base mean."""
        return self.gaussian(params).mean

    def closed_form_kl(self, params: Tensor, prior: Prior) -> Tensor | None:
        """KL[q(z | x) || p(z)] in closed form where there is one, as (N, G) per group of latent
        units (one column per unit when they factorize); None where there is none."""
        return None


class DiagonalGaussianPosterior(AmortizedPosterior):
    r"""q(z | x) = N(μ(x), diag σ²(x)) (Book Eq. 5.28), encoder output [μ, log σ²]."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim, 2 * latent_dim)

    def rsample(
        self, params: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> PosteriorDraw:
        q = self.gaussian(params)
        z = q.rsample(k, generator=generator)
        return PosteriorDraw(z, q.log_prob(z))

    def closed_form_kl(self, params: Tensor, prior: Prior) -> Tensor | None:
        if isinstance(prior, StandardNormalPrior):
            q = self.gaussian(params)
            return kl_standard_normal(q.mean, q.log_var)
        return None


class FlowPosterior(AmortizedPosterior):
    """A Gaussian base q_0 pushed through T steps whose parameters come from the encoder;
    subclasses implement :meth:`flow` on flat batches."""

    def flow(self, z0: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """z_T and Σ_t log |det ∂z_t/∂z_{t-1}| for z0 (B, M) and the encoder outputs (B, P)."""
        raise NotImplementedError

    def rsample(
        self, params: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> PosteriorDraw:
        base = self.gaussian(params)
        z0 = base.rsample(k, generator=generator)  # (k, N, M)
        log_q0 = base.log_prob(z0)
        n = params.shape[0]
        flat_params = params.unsqueeze(0).expand(k, *params.shape).reshape(k * n, -1)
        z, log_det = self.flow(z0.reshape(k * n, self.latent_dim), flat_params)
        return PosteriorDraw(z.reshape(k, n, self.latent_dim), log_q0 - log_det.reshape(k, n))

    def location(self, params: Tensor) -> Tensor:
        return self.flow(self.gaussian(params).mean, params)[0]


class HouseholderPosterior(FlowPosterior):
    r"""Householder flow z_t = (I - 2 v_t v_tᵀ / |v_t|²) z_{t-1} (Book Eq. 5.58-5.59).

    The encoder outputs [μ, log σ², v_1]; v_{t+1} = Linear_t(v_t). Every step is orthogonal, so
    log q(z_T | x) = log N(z_0 | μ, σ²) and q(z_T | x) = N(Uμ, U diag σ² Uᵀ) with U = H_T ... H_1.
    """

    def __init__(self, latent_dim: int, num_flows: int) -> None:
        super().__init__(latent_dim, 3 * latent_dim)
        self.updates = nn.ModuleList(
            nn.Linear(latent_dim, latent_dim) for _ in range(num_flows - 1)
        )

    def flow(self, z0: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v = params[:, 2 * self.latent_dim : 3 * self.latent_dim]
        z = reflect(z0, v)
        for update in self.updates:
            v = update(v)
            z = reflect(z, v)
        return z, z.new_zeros(z.shape[0])


class SylvesterPosterior(FlowPosterior):
    r"""Amortized Sylvester flow z_t = z_{t-1} + Q_t R_t tanh(R̃_t Q_tᵀ z_{t-1} + b_t)
    (Book Eq. 5.63-5.64; van den Berg et al. 2018), log-det Σ_m log(1 + h'(·)_m R̃_mm R_mm).

    The encoder outputs, per step, the strict upper parts of R and R̃, their diagonals (through
    tanh, so R_mm R̃_mm > -1 and every step is invertible), b, and Q's raw parameters:
    ``orthogonal``: a D x M' matrix orthonormalized by a thin QR with fixed signs (exactly
    orthonormal and differentiable, where the paper's Björck iteration is approximate);
    ``householder``: K reflection vectors; ``triangular``: none, Q alternates between the
    identity and the reversal permutation.
    """

    def __init__(
        self,
        latent_dim: int,
        num_flows: int,
        variant: str = "orthogonal",
        *,
        num_ortho: int | None = None,
        num_reflections: int | None = None,
    ) -> None:
        m = latent_dim if num_ortho is None or variant != "orthogonal" else num_ortho
        if not 1 <= m <= latent_dim:
            raise ConfigError(f"model.posterior.num_ortho must be in [1, {latent_dim}], got {m}")
        k = latent_dim if num_reflections is None else num_reflections
        q_size = {"orthogonal": latent_dim * m, "householder": k * latent_dim, "triangular": 0}
        per_flow = 2 * m * m + 3 * m + q_size[variant]
        super().__init__(latent_dim, 2 * latent_dim + num_flows * per_flow)
        self.variant, self.num_flows, self.m, self.k = variant, num_flows, m, k
        self.per_flow = per_flow
        eye = torch.eye(latent_dim)
        self.register_buffer("identity", eye, persistent=False)
        self.register_buffer("reversal", eye.flip(1), persistent=False)

    def _orthogonal(self, raw: Tensor, t: int) -> Tensor:
        b, d = raw.shape[0], self.latent_dim
        if self.variant == "orthogonal":
            return orthonormal_columns(raw.reshape(b, d, self.m))
        if self.variant == "householder":
            return householder_matrix(raw.reshape(b, self.k, d))
        return self.reversal if t % 2 else self.identity

    def flow(self, z0: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        m, b = self.m, params.shape[0]
        z, log_det = z0, z0.new_zeros(b)
        for t in range(self.num_flows):
            start = 2 * self.latent_dim + t * self.per_flow
            p = params[:, start : start + self.per_flow]
            sizes = [m * m, m * m, m, m, m, self.per_flow - 2 * m * m - 3 * m]
            r_raw, rt_raw, r_diag, rt_diag, shift, q_raw = p.split(sizes, dim=1)
            r = upper_triangular(r_raw.reshape(b, m, m), r_diag)
            rt = upper_triangular(rt_raw.reshape(b, m, m), rt_diag)
            z, ld = sylvester_map(z, self._orthogonal(q_raw, t), r, rt, shift)
            log_det = log_det + ld
        return z, log_det


class IAFPosterior(FlowPosterior):
    r"""Inverse autoregressive flow posterior (Kingma et al. 2016; Book §5.4.2).

    The encoder outputs [μ, log σ², h]; each step is a MADE of z_{t-1} and the context h,
    z_t = (z_{t-1} - m_t) ⊙ exp(-s_t) with (m_t, s_t) = MADE_t(z_{t-1}, h), started at the
    identity, with a reversal of the coordinates between steps. The Jacobian is triangular:
    log |det ∂z_t/∂z_{t-1}| = -Σ_d s_td.
    """

    def __init__(self, latent_dim: int, num_flows: int, hidden: int, context_dim: int) -> None:
        if latent_dim < 2:
            raise ConfigError("an IAF posterior needs model.latent_dim >= 2")
        super().__init__(latent_dim, 2 * latent_dim + context_dim)
        gen = torch.Generator().manual_seed(0)
        self.steps = nn.ModuleList(
            MaskedAutoregressiveAffine(
                latent_dim, hidden, 1, context=context_dim, zero_init=True, generator=gen
            )
            for _ in range(num_flows)
        )
        self.reverse = Permutation.reverse(latent_dim)

    def flow(self, z0: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        h = params[:, 2 * self.latent_dim :]
        z, log_det = z0, z0.new_zeros(z0.shape[0])
        for t, step in enumerate(self.steps):
            if t > 0:
                z = self.reverse(z)[0]
            z, ld = step(z, h)
            log_det = log_det + ld
        return z, log_det


class VonMisesFisherPosterior(AmortizedPosterior):
    r"""q(z | x) = vMF(z | μ(x), κ(x)) on S^{M-1} (Book Eq. 5.66-5.68; Davidson et al. 2018).

    The encoder outputs [μ̃ (M), κ̃]; μ = μ̃ / |μ̃| and κ = softplus(κ̃) + 1 (the shift keeps the
    posterior away from the uniform at initialization, as in Davidson et al.). With the uniform
    prior on the sphere the KL is in closed form, κ A_M(κ) + log C_M(κ) + log |S^{M-1}|, with
    the Bessel ratio A_M(κ) = I_{M/2}(κ) / I_{M/2-1}(κ) that the book's printed formula lacks.
    Draws come from Wood's rejection sampler, reparameterized through the accepted proposal;
    ``log_proposal`` carries the score that completes the gradient w.r.t. κ.
    """

    def __init__(self, latent_dim: int) -> None:
        if latent_dim < 2:
            raise ConfigError("a vMF posterior needs model.latent_dim >= 2 (the circle S^1)")
        super().__init__(latent_dim, latent_dim + 1)

    def distribution(self, params: Tensor) -> VonMisesFisher:
        """vMF(μ(x), κ(x)) for the encoder outputs (N, M + 1)."""
        raw_loc, raw_kappa = params[..., : self.latent_dim], params[..., self.latent_dim]
        loc = F.normalize(raw_loc, dim=-1, eps=1e-12)
        return VonMisesFisher(loc, F.softplus(raw_kappa) + 1.0, validate=False)

    def gaussian(self, params: Tensor) -> GaussianPosterior:
        raise ConfigError("a vMF posterior has no Gaussian part")

    def rsample(
        self, params: Tensor, k: int, *, generator: torch.Generator | None = None
    ) -> PosteriorDraw:
        q = self.distribution(params)
        z, log_pi = q.rsample_with_correction(k, generator=generator)
        return PosteriorDraw(z, q.log_prob(z), log_proposal=log_pi)

    def location(self, params: Tensor) -> Tensor:
        return self.distribution(params).loc

    def closed_form_kl(self, params: Tensor, prior: Prior) -> Tensor | None:
        if isinstance(prior, SphericalUniformPrior):
            return self.distribution(params).kl_uniform().unsqueeze(-1)
        return None


def build_posterior(config: PosteriorConfig, latent_dim: int) -> AmortizedPosterior:
    """The posterior named by ``config.kind``."""
    if config.kind == "gaussian":
        return DiagonalGaussianPosterior(latent_dim)
    if config.kind == "householder":
        return HouseholderPosterior(latent_dim, config.num_flows)
    if config.kind == "sylvester":
        return SylvesterPosterior(
            latent_dim, config.num_flows, config.variant, num_ortho=config.num_ortho,
            num_reflections=config.num_reflections,
        )
    if config.kind == "iaf":
        return IAFPosterior(latent_dim, config.num_flows, config.hidden, config.context_dim)
    return VonMisesFisherPosterior(latent_dim)

