r"""The variational diffusion model: continuous time, a learned noise schedule, a bound in nats
(Kingma, Salimans, Poole, Ho 2021; Book §5.5.3.4).

z_t = α_t x + σ_t ε on a variance-preserving path with γ(t) = -log SNR(t) learned and monotone
(:class:`~dgm.core.schedules.LearnedSchedule`), α_t² = sigmoid(-γ), σ_t² = sigmoid(γ). With
T -> ∞ levels the diffusion VLB becomes (Kingma et al., Eq. 17)

    -log P(x) <= KL(q(z_1 | x) || N(0, I))                                  (prior)
                 - E_{q(z_0|x)}[log p(x | z_0)]                              (reconstruction)
                 + ½ E_{t~U(0,1), ε}[γ'(t) ||ε - ε̂(z_t, t)||²]              (diffusion)

all in nats. The decoder p(x | z_0) is factorized over coordinates and is a pmf over the L
levels: p(x_d = k | z_0) ∝ N(z_0,d | α_0 c_k, σ_0²), with c_k the centre of bin k
(:mod:`.common`), so the bound is a bound on the NLL of the discrete data itself. The
diffusion term depends on the schedule only through γ_0 and γ_1 (Eq. 15); its shape changes
the variance of the Monte-Carlo estimate, and is trained to reduce that variance by the
gradient of the squared loss (Appendix I.2) while the ends follow the bound. The times of a
batch are drawn as one low-discrepancy set, t_i = (u + i/N) mod 1.

On continuous data the decoder is the Gaussian N(x | z_0/α_0, σ_0²/α_0²) (a density bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dgm.core.base import Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.distributions import log_normal_diag
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.schedules import LearnedSchedule, scale_gradient
from dgm.core.solvers import SOLVERS
from dgm.core.spec import DataSpec
from dgm.models.diffusion.common import (
    ContinuousTimeModel,
    NetworkConfig,
    OdeEvalConfig,
    build_network,
    check_sample_steps,
    level_decoder_log_prob,
    level_decoder_sample,
    read_levels,
)
from dgm.models.diffusion.samplers import Denoiser, ancestral, ddim, probability_flow

__all__ = ["VDMConfig", "VDM"]

VDM_SAMPLERS = ("ancestral", "ddim") + SOLVERS


@dataclass(frozen=True, kw_only=True)
class VDMConfig(NetworkConfig, OdeEvalConfig):
    """Options of :class:`VDM`.

    Args:
        gamma_min, gamma_max: the schedule's ends γ_0 = -log SNR(0), γ_1 = -log SNR(1)
            (Kingma et al.: -13.3 and 5.0).
        schedule: ``learned`` (monotone network, ends trained) or ``fixed`` (γ linear in t).
        schedule_hidden: width of the schedule network.
        bound_draws: (t, ε) draws per example when scoring the bound (stratified in t).
        prediction: ``noise`` (the network predicts ε, as in VDM) or ``levels`` (discrete
            data: the network predicts logits h_k per coordinate and level, and
            x̂ = E[x | z] with p(x = c_k | z) ∝ N(z | α c_k, σ²) e^{h_k}
            (:func:`~.common.level_posterior_mean`), ε̂ = (z - α x̂)/σ: exact at small noise,
            where an ε-network must learn to round).
        sampler: ``ancestral``, ``ddim`` or an ODE solver (probability-flow ODE).
        sample_steps: default sampler steps.
        eta: DDIM's η.
    """

    gamma_min: float = -13.3
    gamma_max: float = 5.0
    schedule: Literal["learned", "fixed"] = "learned"
    schedule_hidden: int = 1024
    bound_draws: int = 16
    prediction: Literal["noise", "levels"] = "noise"
    sampler: str = "ancestral"
    sample_steps: int = 256
    eta: float = 0.0

    def __post_init__(self) -> None:
        NetworkConfig.__post_init__(self)
        OdeEvalConfig.__post_init__(self)
        if not self.gamma_min < self.gamma_max:
            raise ConfigError("model.gamma_min must be < model.gamma_max")
        if self.schedule not in ("learned", "fixed"):
            raise ConfigError(f"model.schedule must be learned or fixed, got {self.schedule!r}")
        if self.bound_draws < 1 or self.sample_steps < 1 or self.schedule_hidden < 1:
            raise ConfigError("model.bound_draws, sample_steps, schedule_hidden must be >= 1")
        if self.sampler not in VDM_SAMPLERS:
            raise ConfigError(f"model.sampler must be one of {', '.join(VDM_SAMPLERS)}")
        if self.eta < 0:
            raise ConfigError(f"model.eta must be >= 0, got {self.eta}")
        if self.prediction not in ("noise", "levels"):
            raise ConfigError(f"model.prediction must be noise or levels, got "
                              f"{self.prediction!r}")


@register_model("vdm", VDMConfig)
class VDM(ContinuousTimeModel):
    r"""A variational diffusion model with a learned noise schedule, whose continuous-time
    bound is a bound on the discrete NLL in nats (Kingma et al. 2021).

    ``log_prob`` is minus the bound averaged over ``bound_draws`` stratified (t, ε) draws per
    example; ``log_prob_estimate`` is the probability-flow ODE likelihood of the same network.
    """

    likelihood = Likelihood.LOWER_BOUND
    sample_options = frozenset({"steps", "solver", "eta", "guidance"})

    def __init__(self, spec: DataSpec, config: VDMConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        self.schedule = LearnedSchedule(config.gamma_min, config.gamma_max,
                                        hidden=config.schedule_hidden)
        if config.schedule == "fixed":
            for p in self.schedule.parameters():
                p.requires_grad_(False)
            with torch.no_grad():  # l(t) = t (softplus weights 1 and ~0): γ linear in t
                self.schedule.l1.weight.fill_(math.log(math.expm1(1.0)))
                self.schedule.l1.bias.zero_()
                self.schedule.l3.weight.fill_(-40.0)
        if config.prediction == "levels" and not self.discrete:
            raise ConfigError("model.prediction levels needs discrete data (it predicts a "
                              "distribution over the levels)")
        levels = config.prediction == "levels"
        self.net = build_network(spec, config, outputs=self.num_levels if levels else 1)

    def bound_name(self) -> str:
        decoder = "levels decoder" if self.discrete else "Gaussian decoder"
        n = self.config.bound_draws
        return (f"continuous-time diffusion VLB ({self.config.schedule} schedule, {decoder}, "
                f"{n} draw{'s' if n != 1 else ''} of t)")

    # --- the bound ----------------------------------------------------------------------------

    def _gamma_and_slope(self, t: Tensor, holder: list[Tensor] | None) -> tuple[Tensor, Tensor]:
        """γ(t) and γ'(t), (N,); with a ``holder`` the shape's gradient is scaled by it."""
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            tg = t.detach().requires_grad_(True)
            frac = self.schedule.shape(tg)
            (slope,) = torch.autograd.grad(frac.sum(), tg, create_graph=grad_on)
        if not grad_on:
            frac, slope = frac.detach(), slope.detach()
        if holder is not None:
            frac, slope = scale_gradient(frac, holder), scale_gradient(slope, holder)
        width = self.schedule.gamma_1 - self.schedule.gamma_0
        return self.schedule.from_shape(frac), width * slope

    def _decoder_log_prob(self, x: Tensor, z0: Tensor) -> Tensor:
        """log p(x | z_0) per example."""
        g0 = self.schedule.gamma_0
        alpha0, var0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0)
        if not self.discrete:
            mean, log_var = z0 / alpha0, torch.log(var0) - torch.log(alpha0**2)
            x0 = self.to_model_space(x)
            lp = log_normal_diag(x0, mean, log_var.expand_as(x0))
            return lp.reshape(x.shape[0], -1).sum(1)
        return level_decoder_log_prob(x, z0, alpha0, var0.sqrt(), self.num_levels)

    def _bound_terms(self, x: Tensor, y: Tensor | None, t: Tensor,
                     holder: list[Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(prior, reconstruction, diffusion) terms per example at the times t (N,)."""
        x0 = self.to_model_space(x)
        n = x.shape[0]
        g1 = self.schedule.gamma_1
        a1sq, s1sq = torch.sigmoid(-g1), torch.sigmoid(g1)
        prior = 0.5 * (s1sq + a1sq * x0**2 - 1 - torch.log(s1sq))
        prior = prior.reshape(n, -1).sum(1)
        g0 = self.schedule.gamma_0
        eps0 = torch.randn_like(x0)
        z0 = torch.sigmoid(-g0).sqrt() * x0 + torch.sigmoid(g0).sqrt() * eps0
        recon = -self._decoder_log_prob(x, z0)
        gamma, slope = self._gamma_and_slope(t, holder)
        shape = (-1,) + (1,) * (x0.dim() - 1)
        alpha = torch.sigmoid(-gamma).sqrt().reshape(shape)
        sigma = torch.sigmoid(gamma).sqrt().reshape(shape)
        eps = torch.randn_like(x0)
        z = alpha * x0 + sigma * eps
        eps_hat = self._eps_hat(z, t, y, alpha, sigma)
        diffusion = 0.5 * slope * (eps - eps_hat).pow(2).reshape(n, -1).sum(1)
        return prior, recon, diffusion

    def _times(self, n: int, device: torch.device) -> Tensor:
        """n low-discrepancy times (u + i/n) mod 1."""
        u = torch.rand((), device=device)
        return torch.remainder(u + torch.arange(n, device=device) / n, 1.0)

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        self.check_input(x)
        t = self._times(x.shape[0], x.device)
        prior, recon, diffusion = self._bound_terms(x, self.training_labels(y), t)
        return {"prior": prior, "reconstruction": recon, "diffusion": diffusion}

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The continuous-time bound per example (nats); in training the schedule's shape gets
        the gradient of the squared diffusion term instead (variance reduction)."""
        self.check_input(x)
        t = self._times(x.shape[0], x.device)
        learn_shape = (self.training and self.config.schedule == "learned"
                       and torch.is_grad_enabled())
        holder = [torch.ones(x.shape[0], device=x.device)] if learn_shape else None
        prior, recon, diffusion = self._bound_terms(x, self.training_labels(y), t, holder)
        if holder is not None:
            holder[0] = 2 * diffusion.detach()
        return prior + recon + diffusion

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Minus the bound, averaged over ``bound_draws`` stratified draws of t per example."""
        self.check_input(x)
        labels = self.likelihood_labels(x, y)
        m = self.config.bound_draws
        total = torch.zeros(x.shape[0], device=x.device)
        u = torch.rand(x.shape[0], device=x.device)
        for j in range(m):
            t = (j + u) / m
            prior, recon, diffusion = self._bound_terms(x, labels, t)
            total = total + prior + recon + diffusion
        return -total / m

    # --- sampling -----------------------------------------------------------------------------

    def _eps_hat(self, z: Tensor, t: Tensor, y: Tensor | None, alpha: Tensor, sigma: Tensor,
                 guidance: float = 1.0) -> Tensor:
        """ε̂(z, t): the network's output, or (``prediction: levels``) the noise implied by the
        posterior mean over the levels."""
        out = self.guided(self.net, z, t, y, guidance)
        if self.config.prediction == "noise":
            return out
        return read_levels(out, z, alpha, sigma, self.num_levels)[1]

    def _denoiser(self, y: Tensor | None, guidance: float) -> Denoiser:
        def denoise(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            alpha, sigma = self.schedule.alpha_sigma(t.reshape(-1, *([1] * (z.dim() - 1))))
            eps_hat = self._eps_hat(z, t, y, alpha, sigma, guidance)
            return (z - sigma * eps_hat) / alpha, eps_hat

        return denoise

    def _decode_sample(self, z0: Tensor, generator: torch.Generator | None) -> Tensor:
        """A draw from p(x | z_0), in the data's space."""
        g0 = self.schedule.gamma_0
        alpha0, var0 = torch.sigmoid(-g0).sqrt(), torch.sigmoid(g0)
        if not self.discrete:
            std = (var0 / alpha0**2).sqrt()
            noise = torch.randn(z0.shape, generator=generator, device=z0.device)
            return self.to_data(z0 / alpha0 + std * noise)
        k = level_decoder_sample(z0, alpha0, var0.sqrt(), self.num_levels, generator)
        return k.to(self.spec.dtype)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None,
               steps: int | None = None, solver: str | None = None, eta: float | None = None,
               guidance: float = 1.0) -> Tensor:
        """z_1 ~ N(0, I), then ``solver`` (ancestral, ddim or an ODE solver) down to t = 0 in
        ``steps`` steps, then a draw from the decoder p(x | z_0)."""
        cfg = self.config
        solver = solver or cfg.sampler
        if solver not in VDM_SAMPLERS:
            raise ConfigError(f"unknown sampler {solver!r} for vdm; choose one of "
                              f"{', '.join(VDM_SAMPLERS)}")
        self.check_guidance(guidance)
        steps = check_sample_steps(steps or cfg.sample_steps)
        eta = cfg.eta if eta is None else eta
        denoise = self._denoiser(self.sampling_labels(n, y), guidance)
        z = torch.randn(n, *self.spec.event_shape, generator=generator, device=self.loc.device)
        ts = torch.linspace(1.0, 0.0, steps + 1, device=z.device)
        if solver == "ancestral":
            out = ancestral(denoise, self.schedule, z, ts, variance="small", generator=generator)
        elif solver == "ddim":
            out = ddim(denoise, self.schedule, z, ts, eta=eta, generator=generator)
        else:
            out = probability_flow(denoise, self.schedule, z, t_min=0.0, solver=solver,
                                   steps=steps, rtol=cfg.eval_rtol, atol=cfg.eval_atol)
        self.last_sample_nfe = out.nfe
        # the samplers end on the mean of z_0 (ancestral, DDIM) or on z_0 itself (ODE)
        return self._decode_sample(out.z, generator)

    def log_prob_estimate(self, x: Tensor, y: Tensor | None = None, *,
                          generator: torch.Generator | None = None) -> LikelihoodEstimate:
        """log P(x) of the probability-flow ODE of the network from t = 0 to t = 1 (its
        decoder replaced by the dequantization bound)."""
        labels = self.likelihood_labels(x, y)

        def decoder(xc: Tensor, eps: Tensor, lab: Tensor | None) -> Tensor:
            """log P(x | z_0), the bound's decoder, at z_0 = α_0 x + σ_0 ε."""
            g0 = self.schedule.gamma_0
            x0 = self.to_model_space(xc)
            return self._decoder_log_prob(xc, torch.sigmoid(-g0).sqrt() * x0
                                          + torch.sigmoid(g0).sqrt() * eps)

        return self.flow_estimate(x, lambda lab: self._denoiser(lab, 1.0), self.schedule,
                                  self.config, t_min=0.0, labels=labels, generator=generator,
                                  decoder=decoder,
                                  what="probability-flow ODE of the VDM network in log-SNR time")
