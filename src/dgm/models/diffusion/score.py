r"""Score-based generative models: the noise-conditional score network and the score SDE
(Book §9.2-9.3).

A score model learns s_θ(z, t) ≈ ∇_z log p_t(z), the score of the data density smoothed by the
Gaussian path z_t = α_t x + σ_t ε of :mod:`dgm.core.schedules` (t = 0 data, t = 1 noise). Both
models here let the network predict the noise, ε̂ = net(z_t, t), and read the score as

    s_θ(z, t) = -ε̂(z, t) / σ_t                                           (Book Eq. 9.19)

**Denoising score matching** (Vincent 2011; Book Eqs. 9.4-9.13, 9.28-9.29). The score of the
perturbation kernel is ∇ log q(z_t | x) = -ε/σ_t, so with the weighting λ(t)

    J_DSM = ½ E_t E_x E_ε [ λ(t) ||s_θ(z_t, t) + ε/σ_t||² ]
          = ½ E_t E_x E_ε [ (λ(t)/σ_t²) ||ε̂(z_t, t) - ε||² ],

minimized by the true score. λ = σ_t² (Song & Ermon 2019) gives the plain ½||ε̂ - ε||² at every
noise level; the book's Eq. 9.13 prints the prefactor 1/(2σ), which is not this weighting (it
down-weights the large noise levels by 1/σ). λ = g²(t) (Song, Durkan, Murray, Ermon 2021) makes
J_DSM the score-matching part of an upper bound on the negative log-likelihood of the SDE model:

    -log p_θ^SDE(x) <= ½ ∫ g²(t) E ||s_θ(z_t, t) - ∇ log q(z_t | x)||² dt + C(x)   (C free of θ),

i.e. a per-example loss ½ (g²(t)/σ_t²) ||ε̂ - ε||². Since g²/σ² = -d log SNR(t)/dt for every path
(:mod:`dgm.core.schedules`), drawing t uniformly in log-SNR instead of in t is the importance
sampling that removes the weight: ½ (log SNR(t_ε) - log SNR(1)) ||ε̂ - ε||² (Song et al. 2021b,
§5; the "uniform in log-SNR" view of Kingma et al. 2021).

**Sliced score matching** (Song, Garg, Shi, Ermon 2019; Book §9.2.6). Hyvärinen's implicit
objective E[tr ∇_x s(x) + ½||s(x)||²] (equal to ½ E||s - ∇ log p||² up to a constant) with the
trace replaced by random projections:

    J_SSM = E_x E_v [ vᵀ ∇_x s_θ(x) v + ½ (vᵀ s_θ(x))² ],     E[v vᵀ] = I,

(``variance_reduction``: ½||s||² in place of ½(vᵀs)², its expectation over v; "SSM-VR"). One
vector-Jacobian product per probe (:func:`~dgm.core.estimators.hutchinson_divergence`), no
perturbation kernel needed; here it is applied to the noise-perturbed data of each level.

**Sampling.** The NCSN samples by annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1;
:func:`~dgm.core.mcmc.annealed_langevin`) with the noise tied to the step, sqrt(2α). The book's
listing (α = 0.1, η = 0.05) decouples them and so samples a sharpened p^(2ασ/η²), not p; that is
not copied. The score SDE samples with any sampler of :mod:`.samplers`: the reverse SDE
(Euler-Maruyama), predictor-corrector, ancestral, DDIM, or the probability-flow ODE

    dz/dt = f(t) z - ½ g²(t) ∇ log p_t(z) = α'_t x̂ + σ'_t ε̂                 (Book Eq. 9.26)

with ½ g² (the book's listing uses g) integrated backwards in time from t = 1 to t_ε.

References:
    Song, Ermon. Generative modeling by estimating gradients of the data distribution. NeurIPS
    2019 (NCSN).
    Song, Ermon. Improved techniques for training score-based generative models. NeurIPS 2020.
    Song, Garg, Shi, Ermon. Sliced score matching: a scalable approach to density and score
    estimation. UAI 2019.
    Song, Sohl-Dickstein, Kingma, Kumar, Ermon, Poole. Score-based generative modeling through
    stochastic differential equations. ICLR 2021.
    Song, Durkan, Murray, Ermon. Maximum likelihood training of score-based diffusion models.
    NeurIPS 2021 (likelihood weighting).
    Vincent. A connection between score matching and denoising autoencoders. Neural
    Computation 2011.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar, Literal

import torch
from torch import Tensor

from dgm.core.base import Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.errors import ConfigError
from dgm.core.estimators import PROBES, hutchinson_divergence, probe
from dgm.core.mcmc import annealed_langevin
from dgm.core.registry import register_model
from dgm.core.schedules import (
    NoiseSchedule,
    Prediction,
    SubVP,
    VEBook,
    VEGeometric,
    VPLinear,
    broadcast_time,
    to_data_and_noise,
)
from dgm.core.solvers import SOLVERS
from dgm.core.spec import DataSpec
from dgm.models.diffusion.common import (
    ContinuousTimeModel,
    NetworkConfig,
    OdeEvalConfig,
    build_network,
    check_sample_steps,
    read_levels,
    standard_normal_log_prob,
)
from dgm.models.diffusion.samplers import (
    SAMPLERS,
    Sampled,
    ancestral,
    ddim,
    predictor_corrector,
    probability_flow,
    reverse_sde,
    time_steps,
)

__all__ = [
    "NCSNConfig",
    "NCSN",
    "ScoreSDEConfig",
    "ScoreSDE",
    "SDES",
    "denoising_score_matching",
    "sliced_score_matching",
]

#: the SDEs of :class:`ScoreSDE`
SDES = ("vp", "sub_vp", "ve", "ve_book")


def _sum(x: Tensor) -> Tensor:
    return x.reshape(x.shape[0], -1).sum(1)


def denoising_score_matching(eps_hat: Tensor, eps: Tensor) -> Tensor:
    r"""½ ||ε̂ - ε||² per example, (N,): the DSM loss ½ λ ||s_θ + ε/σ||² with λ = σ², for a
    noise prediction ε̂ = -σ s_θ (Book Eqs. 9.11-9.13 with the σ² weighting).

    >>> denoising_score_matching(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
    tensor([2.5000])
    """
    return 0.5 * _sum((eps_hat - eps) ** 2)


def sliced_score_matching(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    probe_kind: str = "rademacher",
    num_probes: int = 1,
    variance_reduction: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The sliced score-matching objective per example, (N,) (Song et al. 2019, Eq. 6-8):

        mean over v_1..v_M of  v_mᵀ ∇_x s(x) v_m + ½ (v_mᵀ s(x))²

    with probes v of ``probe_kind`` (E[v vᵀ] = I), an unbiased estimate of Hyvärinen's
    tr ∇_x s(x) + ½ ||s(x)||². ``variance_reduction`` uses ½ ||s(x)||² for the second term
    (its expectation over v; SSM-VR). The graph to the parameters of ``score_fn`` is kept when
    gradients are enabled, so the result can be minimized; gradients with respect to x are
    taken whatever the grad mode.
    """
    if num_probes < 1:
        raise ConfigError(f"num_probes must be >= 1, got {num_probes}")
    keep = torch.is_grad_enabled()
    with torch.enable_grad():
        xg = x.detach().requires_grad_(True)
        s = score_fn(xg)
        total = x.new_zeros(x.shape[0])
        for _ in range(num_probes):
            v = probe(xg, probe_kind, generator=generator)
            total = total + hutchinson_divergence(s, xg, v, create_graph=keep)
            if not variance_reduction:
                total = total + 0.5 * _sum(v * s) ** 2
        total = total / num_probes
        if variance_reduction:
            total = total + 0.5 * _sum(s**2)
    return total if keep else total.detach()


# --- the noise-conditional score network ------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NCSNConfig(NetworkConfig):
    """The NCSN: noise levels, objective and annealed Langevin sampler.

    Args:
        sigma_max, sigma_min: the largest and smallest noise level (in the model space, where
            discrete data fill [-1, 1] and continuous data are standardized). Song & Ermon
            (2020, technique 1) take σ_1 about the largest distance between two training
            examples.
        noise_levels: L >= 2 levels σ_1 > ... > σ_L, geometric from sigma_max to sigma_min
            (technique 2: adjacent levels must overlap; the ratio γ = σ_i/σ_{i+1} should shrink
            like 1 + O(1/sqrt(D)) with the dimension D).
        objective: ``"dsm"`` (denoising score matching) or ``"ssm"`` (sliced score matching),
            both weighted by λ(σ) = σ² at a level drawn uniformly.
        ssm_probe, ssm_probes: the kind (``rademacher``, ``gaussian``) and number of projections
            per example of the sliced objective.
        ssm_variance_reduction: ½||s||² in place of ½(vᵀs)² (SSM-VR; the same expectation).
        steps_per_level, epsilon: annealed Langevin's T steps per level and step ε at the
            smallest level, α_i = ε σ_i²/σ_L² (the defaults make α_i/σ_i² ≈ 0.16: technique 4 of
            Song & Ermon 2020 for these levels and T).
        init: the sampler's start: ``"gaussian"`` N(0, σ_1² I) (technique 1) or ``"uniform"``
            U[-1, 1]^D (Song & Ermon 2019).
        final_denoise: end with the Tweedie step x + σ_L² s_θ(x, σ_L) = E[x | x̃].
    """

    sigma_max: float = 10.0
    sigma_min: float = 0.01
    noise_levels: int = 50
    objective: Literal["dsm", "ssm"] = "dsm"
    ssm_probe: Literal["rademacher", "gaussian"] = "rademacher"
    ssm_probes: int = 1
    ssm_variance_reduction: bool = True
    steps_per_level: int = 5
    epsilon: float = 1.6e-5
    init: Literal["gaussian", "uniform"] = "gaussian"
    final_denoise: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError("need 0 < model.sigma_min < model.sigma_max, got "
                              f"{self.sigma_min}, {self.sigma_max}")
        if self.noise_levels < 2:
            raise ConfigError(f"model.noise_levels must be >= 2, got {self.noise_levels}")
        if self.objective not in ("dsm", "ssm"):
            raise ConfigError(f"model.objective must be dsm or ssm, got {self.objective!r}")
        if self.ssm_probe not in PROBES:
            raise ConfigError(f"model.ssm_probe must be one of {PROBES}, got {self.ssm_probe!r}")
        if self.ssm_probes < 1 or self.steps_per_level < 1:
            raise ConfigError("model.ssm_probes and model.steps_per_level must be >= 1")
        if not (math.isfinite(self.epsilon) and self.epsilon > 0):
            raise ConfigError(f"model.epsilon must be > 0, got {self.epsilon}")
        if self.init not in ("gaussian", "uniform"):
            raise ConfigError(f"model.init must be gaussian or uniform, got {self.init!r}")


@register_model("ncsn", NCSNConfig)
class NCSN(ContinuousTimeModel):
    r"""The noise-conditional score network: one network s_θ(x, σ_i) for the scores of the data
    smoothed at L geometric noise levels, trained by denoising (or sliced) score matching and
    sampled by annealed Langevin dynamics (Book §9.2.4; Song & Ermon 2019).

    The levels σ_1 > ... > σ_L are the VE path σ(t) = σ_min (σ_max/σ_min)^t
    (:class:`~dgm.core.schedules.VEGeometric`) at the times t_i = log(σ_i/σ_min) /
    log(σ_max/σ_min), so the network is the library's ``net(z, t, y)`` conditioned on t_i and
    predicts the noise: s_θ(x, σ_i) = -ε̂(x, t_i)/σ_i. The objective is, at a level i drawn
    uniformly and x̃ = x + σ_i ε,

        dsm:  ½ σ_i² ||s_θ(x̃, σ_i) + ε/σ_i||² = ½ ||ε̂ - ε||²             (Book Eqs. 9.11-9.13)
        ssm:  σ_i² [vᵀ ∇_x̃ s_θ(x̃, σ_i) v + ½ (vᵀ s_θ(x̃, σ_i))²]      (Song et al. 2019)

    (not nats: a discrete set of noise levels defines no density, so the model has no
    likelihood, ``Likelihood.NONE``). Discrete data are trained on their uniformly dequantized
    points in [-1, 1]; samples are binned back to levels by ``to_data``.

    Sampling: annealed Langevin x <- x + α_i s_θ(x, σ_i) + sqrt(2 α_i) z, α_i = ε σ_i²/σ_L², T
    steps per level, then the Tweedie denoising step (:func:`~dgm.core.mcmc.annealed_langevin`).
    ``sample`` takes ``steps`` (T per level), ``solver`` (only ``"langevin"``) and ``guidance``
    (classifier-free guidance of a conditional model).
    """

    likelihood = Likelihood.NONE
    sample_options: ClassVar[frozenset[str]] = frozenset({"steps", "solver", "guidance"})

    def __init__(self, spec: DataSpec, config: NCSNConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        self.schedule = VEGeometric(config.sigma_min, config.sigma_max)
        self.net = build_network(spec, config)
        L = config.noise_levels
        # σ_i = σ_max (σ_min/σ_max)^{(i-1)/(L-1)}: t_i runs from 1 (σ_max) down to 0 (σ_min).
        times = torch.linspace(1.0, 0.0, L, dtype=torch.float64)
        self.register_buffer("level_times", times.float(), persistent=False)

    @property
    def sigmas(self) -> list[float]:
        """The noise levels σ_1 > ... > σ_L."""
        log_ratio = math.log(self.config.sigma_max / self.config.sigma_min)
        return [self.config.sigma_min * math.exp(float(t) * log_ratio)
                for t in torch.linspace(1.0, 0.0, self.config.noise_levels, dtype=torch.float64)]

    def level_time(self, sigma: float) -> float:
        """t = log(σ/σ_min)/log(σ_max/σ_min): where σ sits on the VE path."""
        c = self.config
        return math.log(sigma / c.sigma_min) / math.log(c.sigma_max / c.sigma_min)

    def score(self, z: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 1.0
              ) -> Tensor:
        """s_θ(z, σ(t)) = -ε̂(z, t)/σ(t) for times t (N,) (with guidance for a conditional
        model; y None is the null label)."""
        _, sigma = self.schedule.alpha_sigma(broadcast_time(t, z))
        return -self.guided(self.net, z, t, y, guidance) / sigma

    def _draw_levels(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """A uniformly drawn level per example: its time (N,) and its σ broadcast like x."""
        idx = torch.randint(0, self.config.noise_levels, (x.shape[0],), device=x.device)
        t = self.level_times.to(x.dtype)[idx]
        _, sigma = self.schedule.alpha_sigma(broadcast_time(t, x))
        return t, sigma

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The weighted score-matching objective per example (N,) at a uniformly drawn level
        (``dsm``: ½||ε̂ - ε||²; ``ssm``: σ² times the sliced objective)."""
        self.check_input(x)
        labels = self.training_labels(y)
        x0 = self.dequantize(x)
        t, sigma = self._draw_levels(x0)
        eps = torch.randn_like(x0)
        z = x0 + sigma * eps
        if self.config.objective == "dsm":
            return denoising_score_matching(self.net(z, t, labels), eps)
        weight = sigma.reshape(-1) ** 2
        ssm = sliced_score_matching(
            lambda zz: self.score(zz, t, labels), z, probe_kind=self.config.ssm_probe,
            num_probes=self.config.ssm_probes,
            variance_reduction=self.config.ssm_variance_reduction,
        )
        return weight * ssm

    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        solver: str | None = None,
        guidance: float = 1.0,
    ) -> Tensor:
        """``n`` examples by annealed Langevin dynamics; ``steps`` overrides the steps per
        level, ``solver`` may only be ``"langevin"``, ``guidance`` is the classifier-free
        guidance scale of a conditional model (1: plain conditional)."""
        if solver not in (None, "langevin"):
            raise ConfigError(f"NCSN samples by annealed Langevin dynamics: solver must be "
                              f"'langevin' (or left out), got {solver!r}")
        per_level = check_sample_steps(self.config.steps_per_level if steps is None else steps)
        self.check_guidance(guidance)
        labels = self.sampling_labels(n, y)
        c = self.config
        shape = (n, *self.spec.event_shape)
        kw = {"generator": generator, "device": self.device, "dtype": self.dtype}
        if c.init == "uniform":
            x0 = 2 * torch.rand(shape, **kw) - 1
        else:
            x0 = c.sigma_max * torch.randn(shape, **kw)

        def score_fn(x: Tensor, sigma: float) -> Tensor:
            t = torch.full((x.shape[0],), self.level_time(sigma), dtype=x.dtype, device=x.device)
            return self.score(x, t, labels, guidance)

        with torch.no_grad():
            x = annealed_langevin(x0, score_fn, self.sigmas, steps_per_level=per_level,
                                  epsilon=c.epsilon, generator=generator,
                                  final_denoise=c.final_denoise)
        self.last_sample_nfe = len(self.sigmas) * per_level + int(c.final_denoise)
        return self.to_data(x)


# --- the score SDE -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ScoreSDEConfig(NetworkConfig, OdeEvalConfig):
    """The score SDE: its path, objective, sampler and ODE likelihood.

    Args:
        sde: ``"vp"`` (β linear from beta_min to beta_max), ``"sub_vp"`` (the same β),
            ``"ve"`` (geometric σ from sigma_min to sigma_max) or ``"ve_book"`` (the book's
            g(t) = b^t with b = ``ve_base``; Book Eq. 9.31-9.33).
        beta_min, beta_max: the VP and sub-VP β(t) (Song et al. 2021: 0.1 and 20).
        sigma_min, sigma_max: the VE levels, in the model space ([-1, 1] for discrete data,
            standardized continuous data); σ_max about the largest distance between two
            training examples (Song & Ermon 2020; 50 for CIFAR-10, ~20 for 8x8 digits).
        ve_base: the book's b; 25 gives σ_1 ≈ 9.8. The book's b = 1.01 gives σ_1² ≈ 1.01,
            too little noise to forget data in [-1, 1], so that N(0, σ_1² I) is a poor prior.
        t_eps: the smallest time trained on, sampled to and scored at (σ_0 = 0 for the VP,
            sub-VP and book paths, where the score is singular: they need t_eps > 0).
        prediction: what the network outputs: ``"noise"`` ε, ``"v"`` = α ε - σ x, or
            ``"levels"`` (discrete data): logits over the levels per coordinate, x̂ the
            posterior mean over the levels (:func:`~.common.level_posterior_mean`), exact at
            small noise. The model then trains on the levels themselves, and its likelihood
            dequantizes by the forward process at t_ε with the decoder p(x | z) ∝
            N(z | α c_x, σ²) (as VDM's).
        weighting: ``"sigma2"`` (λ = σ_t², the loss ½||ε̂ - ε||²) or ``"likelihood"``
            (λ = g²(t), the loss ½ g²/σ² ||ε̂ - ε||²: the NLL bound's score-matching term).
        importance_sampling: with the likelihood weighting, draw t uniformly in log SNR (the
            density ∝ g²/σ²) instead of uniformly in t.
        sampler: ``"euler_maruyama"`` (the default), ``"pc"``, ``"ancestral"``, ``"ddim"`` or
            an ODE solver of :data:`~dgm.core.solvers.SOLVERS` (the probability-flow ODE).
            Predictor-corrector's Langevin step is set per example from ||s_θ|| and is
            unbounded where the score vanishes (an untrained network), so it is not the
            default.
        sample_steps: steps of a sampler (ignored by adaptive ODE solvers).
        eta: DDIM's η (0: deterministic; 1: ancestral).
        snr, corrector_steps: the predictor-corrector's Langevin corrector.
        sample_rtol, sample_atol: an adaptive ODE solver's tolerances for sampling.
    """

    sde: Literal["vp", "sub_vp", "ve", "ve_book"] = "vp"
    beta_min: float = 0.1
    beta_max: float = 20.0
    sigma_min: float = 0.01
    sigma_max: float = 50.0
    ve_base: float = 25.0
    t_eps: float = 1e-5
    prediction: Literal["noise", "v", "levels"] = "noise"
    weighting: Literal["sigma2", "likelihood"] = "sigma2"
    importance_sampling: bool = True
    sampler: str = "euler_maruyama"
    sample_steps: int = 500
    eta: float = 0.0
    snr: float = 0.16
    corrector_steps: int = 1
    sample_rtol: float = 1e-5
    sample_atol: float = 1e-5

    def __post_init__(self) -> None:
        NetworkConfig.__post_init__(self)
        OdeEvalConfig.__post_init__(self)
        if self.sde not in SDES:
            raise ConfigError(f"model.sde must be one of {', '.join(SDES)}, got {self.sde!r}")
        if not 0 <= self.t_eps < 1:
            raise ConfigError(f"model.t_eps must be in [0, 1), got {self.t_eps}")
        if self.t_eps == 0 and self.sde != "ve":
            raise ConfigError(f"the {self.sde} path has σ_0 = 0, where the score is singular: "
                              "model.t_eps must be > 0 (e.g. 1e-5)")
        if self.prediction not in ("noise", "v", "levels"):
            raise ConfigError(f"model.prediction must be noise, v or levels, got "
                              f"{self.prediction!r}")
        if self.weighting not in ("sigma2", "likelihood"):
            raise ConfigError("model.weighting must be sigma2 or likelihood, got "
                              f"{self.weighting!r}")
        _check_sampler(self.sampler, "model.sampler")
        if self.sample_steps < 1 or self.corrector_steps < 0:
            raise ConfigError("model.sample_steps must be >= 1 and model.corrector_steps >= 0")
        if self.eta < 0 or self.snr <= 0 or self.sample_rtol <= 0 or self.sample_atol <= 0:
            raise ConfigError("model.eta must be >= 0; model.snr and the tolerances > 0")

    def make_schedule(self) -> NoiseSchedule:
        """The path of ``sde`` (its constructor checks the numbers)."""
        if self.sde == "vp":
            return VPLinear(self.beta_min, self.beta_max)
        if self.sde == "sub_vp":
            return SubVP(self.beta_min, self.beta_max)
        if self.sde == "ve":
            return VEGeometric(self.sigma_min, self.sigma_max)
        return VEBook(self.ve_base)


def _check_sampler(name: object, where: str) -> str:
    choices = (*SAMPLERS, *SOLVERS)
    if not isinstance(name, str) or name not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)} (an ODE solver samples "
                          f"the probability-flow ODE), got {name!r}")
    return name


@register_model("score_sde", ScoreSDEConfig)
class ScoreSDE(ContinuousTimeModel):
    r"""The score SDE: a time-conditional score network for the marginals of a VP, sub-VP or VE
    diffusion, sampled by reversing the SDE or solving its probability-flow ODE, with the
    ODE's likelihood (Book §9.3; Song et al. 2021).

    The forward SDE dz = f(t) z dt + g(t) dw carries the (dequantized) data at t = 0 to about
    N(0, σ_1² I) at t = 1 with the marginals z_t = α_t x + σ_t ε of :mod:`dgm.core.schedules`:

    - VP: f = -β/2, g² = β, α_t = e^{-B(t)/2}, σ_t² = 1 - α_t² (Book §9.3.5);
    - sub-VP: the VP mean with σ_t = 1 - α_t², g² = β(1 - e^{-2B}) (Book §9.3.5);
    - VE: f = 0, σ_t = σ_min (σ_max/σ_min)^t (NCSN's levels in continuous time);
    - VE as in the book: f = 0, g = b^t, σ_t² = (b^{2t} - 1)/(2 ln b) (Book Eqs. 9.31-9.33)
      with b = 25 by default: the book's b = 1.01 gives σ_1² ≈ 1.01, far from forgetting data
      in [-1, 1] (its prior N(0, 1.01 I) is then not the law of z_1).

    The network predicts ε (or v) at t ~ U(t_ε, 1); the loss is denoising score matching
    (Book Eqs. 9.28-9.29) with λ = σ² (½||ε̂ - ε||²) or the likelihood weighting λ = g²
    (Song, Durkan, Murray, Ermon 2021), see :mod:`dgm.models.diffusion.score`.

    Sampling starts from z_1 ~ N(0, σ_1² I) and runs a sampler of :mod:`.samplers` down to
    t_ε; the result is the last denoised estimate x̂ = E[x | z] (the usual final denoising
    step), mapped back to the data by ``to_data``.

    Likelihood (``Likelihood.ESTIMATE``): the probability-flow ODE dz/dt = α'_t x̂ + σ'_t ε̂
    defines a continuous normalizing flow from the model space at t_ε to the base N(0, σ_1² I)
    at t = 1, whose density is computed by the instantaneous change of variables
    (:meth:`~dgm.models.diffusion.common.ContinuousTimeModel.ode_estimate`; exact trace or
    Hutchinson's estimate), on discrete data as the uniform-dequantization bound, or, with
    ``prediction: levels`` (trained on the levels themselves), dequantized by the forward
    process at t_ε with the decoder p(x | z) ∝ N(z | α c_x, σ²)
    (:meth:`~dgm.models.diffusion.common.ContinuousTimeModel.flow_estimate`). The base is
    part of the model's definition: for VP paths the true law of z_1 is N(α_1 x, σ_1²)
    averaged over the data, α_1 ≈ 0.007 for β from 0.1 to 20, a tiny mismatch that makes the
    ODE model slightly different from the diffusion but leaves the number a valid likelihood
    of the ODE model.
    """

    likelihood = Likelihood.ESTIMATE
    dequantization: str | None = "uniform"
    sample_options: ClassVar[frozenset[str]] = frozenset({"steps", "solver", "eta", "guidance"})

    def __init__(self, spec: DataSpec, config: ScoreSDEConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        self.levels = config.prediction == "levels"
        if self.levels and not self.discrete:
            raise ConfigError("model.prediction levels needs discrete data (it predicts a "
                              "distribution over the levels)")
        self.dequantization = "uniform" if self.discrete and not self.levels else None
        self.schedule = config.make_schedule()
        self.prediction = None if self.levels else Prediction(config.prediction)
        self.net = build_network(spec, config, outputs=self.num_levels if self.levels else 1)

    @property
    def prior_var(self) -> float:
        """σ_1², the variance of the base N(0, σ_1² I)."""
        return self.schedule.prior_std() ** 2

    # --- the denoiser and the probability-flow field -------------------------------------------

    def _time(self, t: Tensor) -> Tensor:
        """t clamped to [t_ε, 1]: adaptive solvers (torchdiffeq) step past the end of the
        interval and interpolate back, and the VP paths are undefined below t = 0."""
        return t.clamp(self.config.t_eps, 1.0)

    def denoise(self, z: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 1.0
                ) -> tuple[Tensor, Tensor]:
        """(x̂, ε̂) = (E[x | z_t], E[ε | z_t]) as the network estimates them, t (N,)."""
        t = self._time(t)
        alpha, sigma = self.schedule.alpha_sigma(broadcast_time(t, z))
        pred = self.guided(self.net, z, t, y, guidance)
        return self._read(pred, z, alpha, sigma)

    def _read(self, pred: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor
              ) -> tuple[Tensor, Tensor]:
        if self.prediction is None:
            return read_levels(pred, z, alpha, sigma, self.num_levels)
        return to_data_and_noise(self.prediction, pred, z, alpha, sigma)

    def score(self, z: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 1.0
              ) -> Tensor:
        """s_θ(z, t) = -ε̂/σ_t ≈ ∇_z log p_t(z)."""
        _, eps_hat = self.denoise(z, t, y, guidance)
        return -eps_hat / self.schedule.alpha_sigma(broadcast_time(t, z))[1]

    def velocity(self, t: Tensor, z: Tensor, y: Tensor | None = None, guidance: float = 1.0
                 ) -> Tensor:
        """The probability-flow field f z - ½ g² s_θ = α'_t x̂ + σ'_t ε̂ (Book Eq. 9.26), the
        one :func:`~dgm.models.diffusion.samplers.probability_flow` integrates."""
        x_hat, eps_hat = self.denoise(z, t, y, guidance)
        d_alpha, d_sigma = self.schedule.derivatives(broadcast_time(self._time(t), z))
        return d_alpha * x_hat + d_sigma * eps_hat

    # --- training ------------------------------------------------------------------------------

    def _draw_times(self, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
        """Times (N,) and the factor of ½||ε̂ - ε||² at each: 1 (λ = σ²); (1 - t_ε) g²/σ²
        (likelihood weighting, t uniform); or log SNR(t_ε) - log SNR(1) (t uniform in log
        SNR, the importance sampling of the likelihood weighting)."""
        c = self.config
        u = torch.rand(n, device=like.device, dtype=like.dtype)
        if c.weighting == "likelihood" and c.importance_sampling:
            ends = torch.tensor([c.t_eps, 1.0], dtype=torch.float64, device=like.device)
            hi, lo = self.schedule.log_snr(ends).tolist()
            t = self.schedule.time_at_log_snr(hi + u.double() * (lo - hi))
            return t.clamp(c.t_eps, 1.0).to(like.dtype), torch.full_like(u, hi - lo)
        t = c.t_eps + (1 - c.t_eps) * u
        if c.weighting == "sigma2":
            return t, torch.ones_like(u)
        _, g2 = self.schedule.sde(t)
        _, sigma = self.schedule.alpha_sigma(t)
        return t, (1 - c.t_eps) * g2 / sigma**2

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Denoising score matching per example (N,): w(t) ½||ε̂ - ε||² at a drawn t with
        z_t = α_t x + σ_t ε, x the dequantized data, or the levels themselves with
        ``prediction: levels`` (see ``weighting``)."""
        self.check_input(x)
        labels = self.training_labels(y)
        x0 = self.to_model_space(x) if self.levels else self.dequantize(x)
        t, weight = self._draw_times(x0.shape[0], x0)
        eps = torch.randn_like(x0)
        alpha, sigma = self.schedule.alpha_sigma(broadcast_time(t, x0))
        z = alpha * x0 + sigma * eps
        _, eps_hat = self._read(self.net(z, t, labels), z, alpha, sigma)
        return weight * denoising_score_matching(eps_hat, eps)

    # --- sampling ------------------------------------------------------------------------------

    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        solver: str | None = None,
        eta: float | None = None,
        guidance: float = 1.0,
    ) -> Tensor:
        """``n`` examples from z_1 ~ N(0, σ_1² I) down to t_ε.

        ``solver``: ``"euler_maruyama"`` (the reverse SDE), ``"pc"`` (predictor-corrector),
        ``"ancestral"``, ``"ddim"`` or an ODE solver (the probability-flow ODE); default the
        config's ``sampler``. ``steps``: the sampler's steps (``sample_steps``). ``eta``:
        DDIM's η (only with ``ddim``). ``guidance``: classifier-free guidance scale of a
        conditional model (1: plain conditional).
        """
        c = self.config
        name = _check_sampler(c.sampler if solver is None else solver, "solver")
        steps = check_sample_steps(c.sample_steps if steps is None else steps)
        if eta is not None and name != "ddim":
            raise ConfigError(f"eta is DDIM's parameter; it does not apply to solver {name!r}")
        eta = c.eta if eta is None else float(eta)
        self.check_guidance(guidance)
        labels = self.sampling_labels(n, y)
        shape = (n, *self.spec.event_shape)

        def denoise(z: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            return self.denoise(z, t, labels, guidance)

        with torch.no_grad():
            z = self.schedule.prior_std() * torch.randn(
                shape, generator=generator, device=self.device, dtype=self.dtype)
            out = self._run_sampler(name, denoise, z, steps, eta, generator)
        self.last_sample_nfe = out.nfe
        return self.to_data(out.x_hat)

    def _run_sampler(self, name: str, denoise: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
                     z: Tensor, steps: int, eta: float, generator: torch.Generator | None
                     ) -> Sampled:
        c = self.config
        if name in SOLVERS:
            return probability_flow(denoise, self.schedule, z, t_min=c.t_eps, solver=name,
                                    steps=steps, rtol=c.sample_rtol, atol=c.sample_atol)
        ts = time_steps(steps, c.t_eps, 1.0, device=z.device, dtype=z.dtype)
        if name == "euler_maruyama":
            return reverse_sde(denoise, self.schedule, z, ts, generator=generator)
        if name == "pc":
            return predictor_corrector(denoise, self.schedule, z, ts, snr=c.snr,
                                       corrector_steps=c.corrector_steps, generator=generator)
        if name == "ancestral":
            return ancestral(denoise, self.schedule, z, ts, generator=generator)
        return ddim(denoise, self.schedule, z, ts, eta=eta, generator=generator)

    # --- the probability-flow likelihood -------------------------------------------------------

    def log_prob_estimate(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LikelihoodEstimate:
        """log p(x) per example under the probability-flow ODE model (discrete data: its
        uniform-dequantization bound), with the estimator's standard error; a conditional model
        gives log p(x | y) (the null label, i.e. the unconditional model, when y is None)."""
        c = self.config
        var = self.prior_var

        def base(z: Tensor) -> Tensor:
            return standard_normal_log_prob(z, var)

        what = f"probability-flow ODE of the {c.sde} SDE"
        labels = self.likelihood_labels(x, y)
        if self.levels:
            return self.flow_estimate(
                x, lambda lab: lambda z, t: self.denoise(z, t, lab), self.schedule, c,
                t_min=c.t_eps, labels=labels, generator=generator,
                decoder=self.levels_decoder(self.schedule, c.t_eps),
                what=f"{what} (levels posterior) in log-SNR time")
        return self.ode_estimate(x, self.velocity, base, c, t0=c.t_eps, t1=1.0,
                                 labels=labels, generator=generator, what=what)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The probability-flow ODE likelihood (:meth:`log_prob_estimate`), (N,)."""
        return self.log_prob_estimate(x, y).log_prob
