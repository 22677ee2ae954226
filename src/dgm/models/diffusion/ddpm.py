r"""Denoising diffusion probabilistic models as hierarchical VAEs (Book §5.5.3; Ho et al. 2020).

T latent levels z_1..z_T of the data's shape at the times t_i = i/T of a variance-preserving
schedule (:mod:`dgm.core.schedules`), ᾱ_i = α(t_i)², ᾱ_0 = 1. The forward (encoder) process is
fixed,

    q(z_i | x) = N(sqrt(ᾱ_i) x, (1 - ᾱ_i) I)                                  (Book Eq. 5.98)

and the reverse (decoder) steps are p(z_{i-1} | z_i) = N(μ̃_i(z_i, x̂(z_i, i)), Σ_i), the
forward posterior's mean with the network's estimate x̂ of the data in place of x (Eq. 5.99-
5.101). Σ_i is β_i ("large"), β̃_i ("small") or a learned interpolation between their logs
(Nichol & Dhariwal 2021). The variational bound on the NLL (Eq. 5.102) is

    -log P(x) <= L_T + Σ_{i=2}^T L_{i-1} + L_0,
    L_T = KL(q(z_T | x) || N(0, I)),  L_{i-1} = KL(q(z_{i-1} | z_i, x) || p(z_{i-1} | z_i)),
    L_0 = -log p(x | z_1),

with every KL in closed form and p(x | z_1) a Gaussian discretized into the data's L bins
(Ho et al., Eq. 13): a pmf over the levels, so the bound is a bound on the discrete NLL with
no dequantization and no hard-coded offset. On continuous data p(x | z_1) is the Gaussian
density itself (a bound on the negative log-density).

Training: L_simple = ||target - prediction||² averaged over coordinates at a uniform i (Ho et
al.), the bound itself (T·L_{i-1} + L_T, unbiased), or the hybrid L_simple + λ T L_{i-1}/D
with the mean's gradient stopped in the bound term, which trains a learned variance.

The book's listing (5.13) keeps its reverse networks in a plain list that never trains, scores
the KL terms against the wrong levels and uses a fixed β on inputs that never reach ±1; here
one network, conditioned on t, serves every level.

References:
    Ho, Jain, Abbeel. Denoising diffusion probabilistic models. NeurIPS 2020.
    Nichol, Dhariwal. Improved denoising diffusion probabilistic models. ICML 2021.
    Song, Meng, Ermon. Denoising diffusion implicit models. ICLR 2021.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dgm.core.base import Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.distributions import kl_normal_diag, log_normal_diag
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.schedules import Prediction, from_data_and_noise, make_schedule, to_data_and_noise
from dgm.core.solvers import SOLVERS
from dgm.core.spec import DataSpec
from dgm.models.diffusion.common import (
    ContinuousTimeModel,
    NetworkConfig,
    OdeEvalConfig,
    build_network,
    check_sample_steps,
    discretized_gaussian_log_prob,
    read_levels,
)
from dgm.models.diffusion.samplers import (
    Denoiser,
    ancestral,
    ddim,
    probability_flow,
)

__all__ = ["DDPMConfig", "DDPM"]

DDPM_SAMPLERS = ("ancestral", "ddim") + SOLVERS


@dataclass(frozen=True, kw_only=True)
class DDPMConfig(NetworkConfig, OdeEvalConfig):
    """Options of :class:`DDPM`.

    Args:
        steps: T, the number of latent levels.
        schedule: ``vp_linear`` (β from 1e-4 to 0.02 at T = 1000, Ho et al.) or ``vp_cosine``
            (Nichol & Dhariwal).
        prediction: what the network predicts: ``noise`` (ε), ``data`` (x), ``v``, or
            ``levels`` (discrete data: logits over the levels per coordinate, x̂ the posterior
            mean :func:`~.common.level_posterior_mean`, exact at small noise; L_simple is
            then the ε-error of the implied ε̂).
        variance: the reverse steps' variance: ``large`` (β_i), ``small`` (β̃_i) or
            ``learned`` (needs ``loss`` vlb or hybrid).
        loss: ``simple``, ``vlb`` or ``hybrid``.
        hybrid_weight: λ of the hybrid loss.
        clip_denoised: clip x̂ to [-1, 1] in the reverse steps when sampling and scoring
            (discrete data only; training losses never clip).
        bound_terms: KL terms per example when scoring the bound: None for all T (the bound
            itself), or m for an unbiased estimate from m stratified levels.
        sampler: default sampler: ``ancestral``, ``ddim`` or an ODE solver
            (probability-flow ODE).
        sample_steps: default number of sampler steps (None: T for ancestral/ddim, 100 for
            ODE solvers).
        eta: DDIM's η (0: deterministic; 1: ancestral with the small variance).
    """

    steps: int = 1000
    schedule: Literal["vp_linear", "vp_cosine"] = "vp_linear"
    prediction: Literal["noise", "data", "v", "levels"] = "noise"
    variance: Literal["small", "large", "learned"] = "large"
    loss: Literal["simple", "vlb", "hybrid"] = "simple"
    hybrid_weight: float = 0.001
    clip_denoised: bool = True
    bound_terms: int | None = None
    sampler: str = "ancestral"
    sample_steps: int | None = None
    eta: float = 0.0

    def __post_init__(self) -> None:
        NetworkConfig.__post_init__(self)
        OdeEvalConfig.__post_init__(self)
        if self.steps < 1:
            raise ConfigError(f"model.steps must be >= 1, got {self.steps}")
        if self.schedule not in ("vp_linear", "vp_cosine"):
            raise ConfigError(f"model.schedule must be vp_linear or vp_cosine, got "
                              f"{self.schedule!r}")
        if self.prediction not in ("noise", "data", "v", "levels"):
            raise ConfigError(f"model.prediction must be noise, data, v or levels, got "
                              f"{self.prediction!r}")
        if self.variance not in ("small", "large", "learned"):
            raise ConfigError(f"model.variance must be small, large or learned, got "
                              f"{self.variance!r}")
        if self.loss not in ("simple", "vlb", "hybrid"):
            raise ConfigError(f"model.loss must be simple, vlb or hybrid, got {self.loss!r}")
        if self.variance == "learned" and self.loss == "simple":
            raise ConfigError("model.variance learned needs model.loss vlb or hybrid "
                              "(L_simple does not train a variance)")
        if self.sampler not in DDPM_SAMPLERS:
            raise ConfigError(f"model.sampler must be one of {', '.join(DDPM_SAMPLERS)}")
        if self.bound_terms is not None and self.bound_terms < 1:
            raise ConfigError("model.bound_terms must be >= 1 or null")
        if self.eta < 0:
            raise ConfigError(f"model.eta must be >= 0, got {self.eta}")


@register_model("ddpm", DDPMConfig)
class DDPM(ContinuousTimeModel):
    r"""A denoising diffusion probabilistic model with the full variational bound in nats
    (Book §5.5.3; Ho et al. 2020).

    ``log_prob`` is minus the bound (L_T + Σ L_{i-1} + L_0) with a discretized decoder, so
    that on discrete data it bounds log P(x) in the data's own space; the evaluator's
    ``bound`` method averages it and never passes it through IWAE. ``log_prob_estimate`` is
    the probability-flow ODE's likelihood of the same network on the continuous schedule (a
    different model of the data, with its own label).
    """

    likelihood = Likelihood.LOWER_BOUND
    sample_options = frozenset({"steps", "solver", "eta", "guidance"})

    def __init__(self, spec: DataSpec, config: DDPMConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        self.schedule = make_schedule(config.schedule)
        learned = config.variance == "learned"
        if config.prediction == "levels" and not self.discrete:
            raise ConfigError("model.prediction levels needs discrete data (it predicts a "
                              "distribution over the levels)")
        self._mean_outputs = self.num_levels if config.prediction == "levels" else 1
        self.net = build_network(spec, config,
                                 outputs=self._mean_outputs + (1 if learned else 0))
        T = config.steps
        times = torch.arange(T + 1, dtype=torch.float64) / T
        with torch.no_grad():
            alpha, _ = self.schedule.double().alpha_sigma(times)
        self.schedule.float()
        abar = alpha**2
        abar[0] = 1.0
        betas = 1 - abar[1:] / abar[:-1]
        post_var = betas * (1 - abar[:-1]) / (1 - abar[1:])  # β̃_i, i = 1..T
        clipped = post_var.clone()
        clipped[0] = post_var[1] if T > 1 else betas[0]
        pad = lambda v: torch.cat([v.new_zeros(1), v])  # noqa: E731  (index by i = 1..T)
        self.register_buffer("abar", abar.float())
        self.register_buffer("log_beta", pad(betas.log()).float())
        self.register_buffer("log_post_var", pad(clipped.log()).float())
        self.register_buffer("coef_x", pad(abar[:-1].sqrt() * betas / (1 - abar[1:])).float())
        self.register_buffer("coef_z",
                             pad((1 - betas).sqrt() * (1 - abar[:-1]) / (1 - abar[1:])).float())

    # --- the network's estimates ------------------------------------------------------------

    def bound_name(self) -> str:
        decoder = "discretized Gaussian decoder" if self.discrete else "Gaussian decoder"
        terms = "" if self.config.bound_terms is None else f", {self.config.bound_terms} terms"
        return f"diffusion VLB (T = {self.config.steps}, {decoder}{terms})"

    def _predict(self, z: Tensor, i: Tensor, y: Tensor | None, guidance: float = 1.0
                 ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x̂, ε̂, raw variance output or None) at level i (N,) long."""
        t = i.to(z.dtype) / self.config.steps
        out = self.guided(self.net, z, t, y, guidance)
        ab = self._at(self.abar, i, z)
        return self._read(out, z, ab.sqrt(), (1 - ab).sqrt())

    def _read(self, out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor
              ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x̂, ε̂, raw variance output or None) from the network's output at z_t = αx + σε."""
        parts = out.chunk(self._mean_outputs + (self.config.variance == "learned"), dim=1)
        var_out = parts[-1] if self.config.variance == "learned" else None
        if self.config.prediction == "levels":
            x_hat, eps_hat = read_levels(torch.cat(parts[:self.num_levels], dim=1), z, alpha,
                                         sigma, self.num_levels)
            return x_hat, eps_hat, var_out
        x_hat, eps_hat = to_data_and_noise(Prediction(self.config.prediction), parts[0], z,
                                           alpha, sigma)
        return x_hat, eps_hat, var_out

    @staticmethod
    def _at(table: Tensor, i: Tensor, like: Tensor) -> Tensor:
        return table[i].reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def _log_variance(self, i: Tensor, var_out: Tensor | None, like: Tensor) -> Tensor:
        """log Σ_i of the reverse step from level i."""
        large = self._at(self.log_beta, i, like)
        small = self._at(self.log_post_var, i, like)
        if self.config.variance == "large":
            return large.expand_as(like)
        if self.config.variance == "small":
            return small.expand_as(like)
        assert var_out is not None
        frac = (var_out + 1) / 2
        return frac * large + (1 - frac) * small

    def _clip(self, x_hat: Tensor) -> Tensor:
        return x_hat.clamp(-1, 1) if self.discrete and self.config.clip_denoised else x_hat

    # --- the bound ----------------------------------------------------------------------------

    def _term(self, x: Tensor, x0: Tensor, i: Tensor, y: Tensor | None, *, noise: Tensor,
              clip: bool, detach_mean: bool = False) -> Tensor:
        """L_{i-1} per example (L_0 where i = 1), z_i drawn with ``noise``."""
        ab = self._at(self.abar, i, x0)
        z = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        x_hat, _, var_out = self._predict(z, i, y)
        if clip:
            x_hat = self._clip(x_hat)
        mean = self._at(self.coef_x, i, z) * x_hat + self._at(self.coef_z, i, z) * z
        if detach_mean:
            mean = mean.detach()
        log_var = self._log_variance(i, var_out, z)
        true_mean = self._at(self.coef_x, i, z) * x0 + self._at(self.coef_z, i, z) * z
        log_post = self._at(self.log_post_var, i, z).expand_as(z)
        kl = kl_normal_diag(true_mean, log_post, mean, log_var)
        kl = kl.reshape(kl.shape[0], -1).sum(1)
        if self.discrete:
            log_dec = discretized_gaussian_log_prob(x, mean, 0.5 * log_var, self.num_levels)
        else:
            log_dec = log_normal_diag(x0, mean, log_var)
        dec = -log_dec.reshape(log_dec.shape[0], -1).sum(1)
        return torch.where(i == 1, dec, kl)

    def prior_term(self, x0: Tensor) -> Tensor:
        """L_T = KL(q(z_T | x) || N(0, I)) per example."""
        ab = self.abar[-1].to(x0.dtype)
        kl = kl_normal_diag(ab.sqrt() * x0, torch.log(1 - ab).expand_as(x0),
                            torch.zeros_like(x0), torch.zeros_like(x0))
        return kl.reshape(kl.shape[0], -1).sum(1)

    def _space(self, x: Tensor) -> Tensor:
        """x in the model space: bin centres (discrete), standardized (continuous)."""
        return self.to_model_space(x)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Minus the variational bound, -(L_T + Σ_{i≥2} L_{i-1} + L_0), per example (nats)."""
        self.check_input(x)
        x0 = self._space(x)
        labels = self.likelihood_labels(x, y)
        T = self.config.steps
        n = x.shape[0]
        total = self.prior_term(x0)
        if self.config.bound_terms is None or self.config.bound_terms >= T:
            levels = torch.arange(1, T + 1, device=x.device).repeat(n, 1)  # (N, T)
            weight = 1.0
        else:
            m = self.config.bound_terms
            # stratified: one level per stratum of T/m levels, weighted T/m
            edges = torch.linspace(0, T, m + 1, device=x.device)
            u = torch.rand(n, m, device=x.device)
            levels = (edges[:-1] + u * (edges[1:] - edges[:-1])).floor().long().clamp(0, T - 1) + 1
            weight = T / m
        per_chunk = max(1, 4096 // max(1, n))
        for start in range(0, levels.shape[1], per_chunk):
            cols = levels[:, start:start + per_chunk]  # (N, c)
            c = cols.shape[1]
            rep = lambda v: v.repeat_interleave(c, 0)  # noqa: E731
            xr, x0r = rep(x), rep(x0)
            yr = None if labels is None else rep(labels)
            noise = torch.randn_like(x0r)
            terms = self._term(xr, x0r, cols.reshape(-1), yr, noise=noise, clip=True)
            total = total + weight * terms.reshape(n, c).sum(1)
        return -total

    # --- training -----------------------------------------------------------------------------

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """L_simple, the bound (unbiased, one level), or the hybrid, per example."""
        self.check_input(x)
        x0 = self._space(x)
        labels = self.training_labels(y)
        n = x.shape[0]
        i = torch.randint(1, self.config.steps + 1, (n,), device=x.device)
        noise = torch.randn_like(x0)
        if self.config.loss == "vlb":
            bound = self._term(x, x0, i, labels, noise=noise, clip=False)
            return self.config.steps * bound + self.prior_term(x0)
        ab = self._at(self.abar, i, x0)
        z = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        t = i.to(z.dtype) / self.config.steps
        out = self.net(z, t, labels)
        if self.config.prediction == "levels":
            out, target = self._read(out, z, ab.sqrt(), (1 - ab).sqrt())[1], noise
        else:
            if self.config.variance == "learned":
                out = out.chunk(2, dim=1)[0]
            target = from_data_and_noise(Prediction(self.config.prediction), x0, noise,
                                         ab.sqrt(), (1 - ab).sqrt())
        simple = (out - target).pow(2).reshape(n, -1).mean(1)
        if self.config.loss == "simple":
            return simple
        bound = self._term(x, x0, i, labels, noise=noise, clip=False, detach_mean=True)
        return simple + self.config.hybrid_weight * self.config.steps * bound / self.spec.dim

    # --- sampling -----------------------------------------------------------------------------

    def _denoiser(self, y: Tensor | None, guidance: float, cache: dict[str, Tensor], *,
                  clip: bool = True) -> Denoiser:
        """(z, t) -> (x̂, ε̂) on continuous t (level i = t·T); with ``clip`` x̂ is clipped and
        ε̂ recomputed from it; the learned variance output, if any, is left in ``cache``."""

        def denoise(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            tb = t.reshape(-1, *([1] * (z.dim() - 1)))
            alpha, sigma = self.schedule.alpha_sigma(tb)
            out = self.guided(self.net, z, t, y, guidance)
            x_hat, eps_hat, var_out = self._read(out, z, alpha, sigma)
            if var_out is not None:
                cache["var"] = var_out
            if not clip:
                return x_hat, eps_hat
            clipped = self._clip(x_hat)
            if clipped is not x_hat:
                eps_hat = (z - alpha * clipped) / sigma
            return clipped, eps_hat

        return denoise

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None,
               steps: int | None = None, solver: str | None = None, eta: float | None = None,
               guidance: float = 1.0) -> Tensor:
        """``n`` examples by ``solver``: ``ancestral`` (the model's own reverse process, ending
        in a draw from the discretized decoder), ``ddim`` (η = ``eta``) or an ODE solver on
        the probability-flow ODE; ``steps`` sampler steps (a sub-grid of the T levels for
        ancestral and DDIM); ``guidance`` the classifier-free guidance scale."""
        cfg = self.config
        solver = solver or cfg.sampler
        if solver not in DDPM_SAMPLERS:
            raise ConfigError(f"unknown sampler {solver!r} for ddpm; choose one of "
                              f"{', '.join(DDPM_SAMPLERS)}")
        self.check_guidance(guidance)
        default = cfg.steps if solver in ("ancestral", "ddim") else 100
        steps = check_sample_steps(steps or cfg.sample_steps or default)
        eta = cfg.eta if eta is None else eta
        labels = self.sampling_labels(n, y)
        cache: dict[str, Tensor] = {}
        denoise = self._denoiser(labels, guidance, cache)
        z = torch.randn(n, *self.spec.event_shape, generator=generator, device=self.loc.device)
        T = cfg.steps
        if solver in ("ancestral", "ddim"):
            steps = min(steps, T)
            levels = torch.linspace(T, 1, steps, device=z.device).round()
            ts = torch.cat([levels / T, levels.new_zeros(1)])
            if solver == "ddim":
                out = ddim(denoise, self.schedule, z, ts, eta=eta, generator=generator)
                self.last_sample_nfe = out.nfe
                return self.to_data(out.z)
            log_var = None
            if cfg.variance == "learned":
                def log_var(z_: Tensor, t_: Tensor, small: Tensor, large: Tensor) -> Tensor:
                    frac = (cache["var"] + 1) / 2
                    return frac * large + (1 - frac) * small
            variance = cfg.variance
            out = ancestral(denoise, self.schedule, z, ts, variance=variance,
                            log_variance=log_var, generator=generator)
            # the last reverse step is the decoder p(x | z_1): its mean plus its own noise
            i1 = torch.ones(n, dtype=torch.long, device=z.device)
            log_var1 = self._log_variance(i1, cache.get("var"), out.z)
            noise = torch.randn(out.z.shape, generator=generator, device=z.device)
            self.last_sample_nfe = out.nfe
            return self.to_data(out.z + torch.exp(0.5 * log_var1) * noise)
        out = probability_flow(denoise, self.schedule, z, t_min=1 / T, solver=solver,
                               steps=steps, rtol=cfg.eval_rtol, atol=cfg.eval_atol)
        self.last_sample_nfe = out.nfe
        return self.to_data(out.x_hat)

    # --- the probability-flow ODE likelihood ------------------------------------------------

    def log_prob_estimate(self, x: Tensor, y: Tensor | None = None, *,
                          generator: torch.Generator | None = None) -> LikelihoodEstimate:
        """log P(x) of the probability-flow ODE of the network on the continuous schedule,
        from t = 1/T (where the bound's decoder sits) to t = 1 (base N(0, I))."""
        labels = self.likelihood_labels(x, y)

        def decoder(xc: Tensor, eps: Tensor, lab: Tensor | None) -> Tensor:
            """log P(x | z_1), the bound's L_0 decoder, at z_1 = √ᾱ_1 x + √(1 - ᾱ_1) ε."""
            first = torch.ones(xc.shape[0], dtype=torch.long, device=xc.device)
            return -self._term(xc, self._space(xc), first, lab, noise=eps, clip=True)

        return self.flow_estimate(x, lambda lab: self._denoiser(lab, 1.0, {}, clip=False),
                                  self.schedule, self.config, t_min=1 / self.config.steps,
                                  labels=labels, generator=generator, decoder=decoder,
                                  what="probability-flow ODE of the DDPM network from t = 1/T "
                                  "to 1 in log-SNR time")

    def extra_repr(self) -> str:
        return f"T={self.config.steps}, schedule={self.config.schedule}"
