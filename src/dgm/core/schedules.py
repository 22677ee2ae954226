r"""Noise schedules of Gaussian paths, and the conversions between what a network can predict.

**The time direction, once for the whole library:** t ∈ [0, 1], t = 0 is the data and t = 1
is the noise. Every diffusion, score and flow-matching model corrupts forward in t and
generates backward in t (from 1 to 0). The book's flow-matching chapter runs the other way
(noise at 0, data at 1, Book §9.4.2); its paths are written here with t replaced by 1 - t.

A Gaussian path is the marginal of the corruption given a data point x,

    q(z_t | x) = N(z_t | α_t x, σ_t² I),      z_t = α_t x + σ_t ε,  ε ~ N(0, I),

with the signal-to-noise ratio SNR(t) = α_t² / σ_t² decreasing in t. Every such path is the
marginal of the linear SDE dz = f(t) z dt + g(t) dw with

    f(t) = d log α_t / dt,      g²(t) = dσ_t²/dt - 2 f(t) σ_t²                 (Kingma et al. 2021,
                                                                               Song et al. 2021)

so the VP, sub-VP and VE SDEs of Book §9.3 and the straight line of flow matching differ only
in (α_t, σ_t). The probability-flow ODE of the path (Book Eq. 9.26) is

    dz/dt = f(t) z - ½ g²(t) ∇ log p_t(z) = α'_t x̂ + σ'_t ε̂,

with x̂ = E[x | z_t], ε̂ = E[ε | z_t]: the same velocity that flow matching regresses.

Schedules (all ``nn.Module`` so that the learned one trains and all move with ``.to``):

- :class:`VPLinear`: β(t) linear from β_min to β_max, α_t = exp(-½ B(t)), σ_t² = 1 - α_t²
  (DDPM's linear schedule in continuous time; Song et al. 2021).
- :class:`VPCosine`: ᾱ(t) = cos²(π/2 · (t + s)/(1 + s)) / cos²(π/2 · s/(1 + s)) (Nichol &
  Dhariwal 2021), clipped so that t = 1 keeps a tiny signal.
- :class:`SubVP`: the VP mean with σ_t = 1 - α_t² (Song et al. 2021).
- :class:`VEGeometric`: α_t = 1, σ_t = σ_min (σ_max/σ_min)^t (NCSN's noise levels, VE SDE).
- :class:`VEBook`: α_t = 1, σ_t² = (b^{2t} - 1) / (2 ln b) (Book Eq. 9.32-9.33, g(t) = b^t).
- :class:`StraightLine`: α_t = 1 - t, σ_t = σ_min + (1 - σ_min) t: flow matching's path of
  Lipman et al. (Book Eq. 9.65-9.66 with t -> 1 - t); σ_min = 0 is rectified flow.
- :class:`LearnedSchedule`: a monotone network for γ(t) = -log SNR(t) between fixed ends
  (the variational diffusion model; Kingma et al. 2021, §4 and Appendix H), α_t² = sigmoid(-γ),
  σ_t² = sigmoid(γ).

Discrete-time DDPM tables (:func:`linear_betas`, :func:`cosine_alpha_bars`) are here too.

References:
    Ho, Jain, Abbeel. Denoising diffusion probabilistic models. NeurIPS 2020.
    Nichol, Dhariwal. Improved denoising diffusion probabilistic models. ICML 2021.
    Song et al. Score-based generative modeling through SDEs. ICLR 2021.
    Kingma, Salimans, Poole, Ho. Variational diffusion models. NeurIPS 2021.
    Salimans, Ho. Progressive distillation for fast sampling of diffusion models. ICLR 2022
    (the v-prediction).
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError

__all__ = [
    "NoiseSchedule",
    "VPLinear",
    "VPCosine",
    "SubVP",
    "VEGeometric",
    "VEBook",
    "StraightLine",
    "LearnedSchedule",
    "SCHEDULES",
    "make_schedule",
    "Prediction",
    "to_data_and_noise",
    "from_data_and_noise",
    "convert",
    "linear_betas",
    "cosine_alpha_bars",
    "broadcast_time",
    "scale_gradient",
]


def broadcast_time(t: Tensor | float, like: Tensor) -> Tensor:
    """t as a tensor of shape (N, 1, ..., 1) that broadcasts against ``like`` (N, ...)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(like.shape[0])
    return t.reshape(-1, *([1] * (like.dim() - 1)))


class NoiseSchedule(nn.Module):
    r"""A Gaussian path q(z_t | x) = N(α_t x, σ_t² I) on t ∈ [0, 1] (t = 0 data, t = 1 noise).

    Subclasses give ``alpha_sigma(t)``; the derivatives come from autograd unless a subclass
    writes them out (:meth:`derivatives`). ``t`` is any float tensor; results have its shape.
    """

    #: name in :data:`SCHEDULES`
    name: str = ""

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(α_t, σ_t)."""
        raise NotImplementedError

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(dα_t/dt, dσ_t/dt), by forward-mode differentiation of :meth:`alpha_sigma`."""
        t = t.detach().clone()  # forward-mode AD needs memory of its own (no expanded view)
        _, (d_alpha, d_sigma) = torch.func.jvp(self.alpha_sigma, (t,), (torch.ones_like(t),))
        return d_alpha, d_sigma

    def log_snr(self, t: Tensor) -> Tensor:
        """log SNR(t) = log(α_t² / σ_t²), decreasing in t."""
        alpha, sigma = self.alpha_sigma(t)
        return 2 * (torch.log(alpha) - torch.log(sigma))

    def d_log_snr(self, t: Tensor) -> Tensor:
        """dλ/dt of λ(t) = log SNR(t) (negative)."""
        t = t.detach().clone()
        _, d = torch.func.jvp(self.log_snr, (t,), (torch.ones_like(t),))
        return d

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        """The t in [0, 1] with log SNR(t) = λ (log SNR decreases in t), by bisection in
        float64 (60 halvings); λ outside the schedule's range gives the end it is beyond."""
        lam64 = lam.detach().to(torch.float64)
        lo = torch.zeros_like(lam64)
        hi = torch.ones_like(lam64)
        with torch.no_grad():
            for _ in range(60):
                mid = (lo + hi) / 2
                above = self.log_snr(mid.to(self._dtype())).to(torch.float64) > lam64
                lo = torch.where(above, mid, lo)
                hi = torch.where(above, hi, mid)
        return ((lo + hi) / 2).to(lam.dtype)

    def _dtype(self) -> torch.dtype:
        for p in self.parameters():
            return p.dtype
        return torch.float64

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(f(t), g²(t)) of the SDE dz = f z dt + g dw whose marginals are this path:
        f = α'/α, g² = 2 σ σ' - 2 f σ²."""
        alpha, sigma = self.alpha_sigma(t)
        d_alpha, d_sigma = self.derivatives(t)
        f = d_alpha / alpha
        return f, 2 * sigma * d_sigma - 2 * f * sigma**2

    def marginal(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """z_t = α_t x + σ_t ε for t of shape (N,)."""
        alpha, sigma = self.alpha_sigma(broadcast_time(t, x))
        return alpha * x + sigma * noise

    def prior_std(self) -> float:
        """The standard deviation of the Gaussian that z_1 is taken to follow when generating:
        σ_1 (for VE paths the data's own scale is then negligible; for VP paths ~ 1)."""
        _, sigma = self.alpha_sigma(torch.ones(()))
        return float(sigma.detach())


class VPLinear(NoiseSchedule):
    r"""Variance preserving, β(t) = β_min + t (β_max - β_min):
    B(t) = ∫_0^t β = β_min t + ½ (β_max - β_min) t², α_t = e^{-B/2}, σ_t = sqrt(1 - e^{-B}).

    β_min = 0.1, β_max = 20 is DDPM's linear schedule (β from 1e-4 to 0.02 over 1000 steps) in
    continuous time (Song et al. 2021, Appendix B)."""

    name = "vp_linear"

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        super().__init__()
        if not 0 < beta_min < beta_max:
            raise ConfigError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t: Tensor) -> Tensor:
        """β(t)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Tensor) -> Tensor:
        """B(t) = ∫_0^t β(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integral(t)
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = -β(t)/2, g² = β(t) (written out: σ' is infinite at t = 0)."""
        beta = self.beta(t)
        return -0.5 * beta, beta

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """α' = -½ β α, σ' = ½ β α² / σ."""
        alpha, sigma = self.alpha_sigma(t)
        beta = self.beta(t)
        return -0.5 * beta * alpha, 0.5 * beta * alpha**2 / sigma

    def d_log_snr(self, t: Tensor) -> Tensor:
        """λ' = -β / σ²."""
        return -self.beta(t) / -torch.expm1(-self.integral(t))

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        """B = log(1 + e^{-λ}), then the root of β_min t + ½ (β_max - β_min) t² = B."""
        b = F.softplus(-lam.to(torch.float64))
        a = self.beta_max - self.beta_min
        t = (torch.sqrt(self.beta_min**2 + 2 * a * b) - self.beta_min) / a
        return t.clamp(0, 1).to(lam.dtype)

    def log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(torch.expm1(self.integral(t)))


class SubVP(VPLinear):
    r"""Sub-variance preserving: the VP mean α_t = e^{-B/2} with σ_t = 1 - e^{-B}; its SDE has
    g² = β(t)(1 - e^{-2B(t)}) (Song et al. 2021, Eq. 29; Book §9.3.5)."""

    name = "sub_vp"

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integral(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def log_snr(self, t: Tensor) -> Tensor:
        b = self.integral(t)
        return -b - 2 * torch.log(-torch.expm1(-b))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = -β(t)/2, g² = β(t)(1 - e^{-2B(t)})."""
        beta = self.beta(t)
        return -0.5 * beta, -beta * torch.expm1(-2 * self.integral(t))

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """α' = -½ β α, σ' = β α²."""
        alpha, _ = self.alpha_sigma(t)
        beta = self.beta(t)
        return -0.5 * beta * alpha, beta * alpha**2

    def d_log_snr(self, t: Tensor) -> Tensor:
        """λ' = -β (1 + 2 α²/σ)."""
        alpha, sigma = self.alpha_sigma(t)
        return -self.beta(t) * (1 + 2 * alpha**2 / sigma)

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        return NoiseSchedule.time_at_log_snr(self, lam)


class VPCosine(NoiseSchedule):
    r"""Variance preserving with Nichol & Dhariwal's cosine ᾱ(t) = cos²(π/2 (t+s)/(1+s)) /
    cos²(π/2 s/(1+s)), α_t = sqrt(ᾱ), σ_t = sqrt(1 - ᾱ); t is mapped into [0, t_max] with
    t_max such that ᾱ(1) = ``min_alpha_bar`` (the cosine reaches 0 at t = 1, where the SDE's
    drift would blow up)."""

    name = "vp_cosine"

    def __init__(self, s: float = 0.008, min_alpha_bar: float = 1e-5) -> None:
        super().__init__()
        if s < 0 or not 0 < min_alpha_bar < 1:
            raise ConfigError("need s >= 0 and 0 < min_alpha_bar < 1")
        self.s = s
        c0 = math.cos(math.pi / 2 * s / (1 + s))
        # ᾱ(u) = min_alpha_bar at u = t_max.
        u = math.acos(math.sqrt(min_alpha_bar) * c0) * 2 / math.pi * (1 + s) - s
        self.t_max = u
        self._log_c0 = math.log(c0)

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = t * self.t_max
        log_alpha = torch.log(torch.cos(math.pi / 2 * (u + self.s) / (1 + self.s))) - self._log_c0
        alpha = torch.exp(log_alpha)
        return alpha, torch.sqrt(-torch.expm1(2 * log_alpha))


class VEGeometric(NoiseSchedule):
    r"""Variance exploding with geometric noise levels: α_t = 1, σ_t = σ_min (σ_max/σ_min)^t
    (NCSN, Song & Ermon 2019; the VE SDE of Song et al. 2021). σ_0 = σ_min > 0 is the smallest
    noise the model is trained on."""

    name = "ve"

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0) -> None:
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        log_sigma = math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min)
        return torch.ones_like(t), torch.exp(log_sigma)

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = 0, g² = dσ²/dt = 2 σ_t² ln(σ_max/σ_min)."""
        _, sigma = self.alpha_sigma(t)
        return torch.zeros_like(t), 2 * sigma**2 * math.log(self.sigma_max / self.sigma_min)

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """α' = 0, σ' = σ ln(σ_max/σ_min)."""
        _, sigma = self.alpha_sigma(t)
        return torch.zeros_like(t), sigma * math.log(self.sigma_max / self.sigma_min)

    def d_log_snr(self, t: Tensor) -> Tensor:
        """λ = -2 log σ_t, λ' = -2 ln(σ_max/σ_min)."""
        return torch.full_like(t, -2 * math.log(self.sigma_max / self.sigma_min))

    def time_at_log_snr(self, lam: Tensor) -> Tensor:
        log_sigma = -0.5 * lam.to(torch.float64)
        t = (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)
        return t.clamp(0, 1).to(lam.dtype)


class VEBook(NoiseSchedule):
    r"""The book's variance-exploding path: g(t) = b^t, σ_t² = (b^{2t} - 1) / (2 ln b), α_t = 1
    (Book Eq. 9.31-9.33). σ_0 = 0; b = 1 is impossible (ln b = 0). The book's b = 1.01 gives
    σ_1² ≈ 1.01, too little noise to forget data in [-1, 1]: b ≈ 25 is the usual choice."""

    name = "ve_book"

    def __init__(self, base: float = 25.0) -> None:
        super().__init__()
        if base <= 0 or base == 1:
            raise ConfigError(f"the VE base must be > 0 and != 1, got {base}")
        self.base = base

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        lb = math.log(self.base)
        return torch.ones_like(t), torch.sqrt(torch.expm1(2 * t * lb) / (2 * lb))

    def sde(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """f = 0, g² = b^{2t} (σ' is infinite at t = 0)."""
        return torch.zeros_like(t), torch.exp(2 * t * math.log(self.base))


class StraightLine(NoiseSchedule):
    r"""The straight-line path of flow matching, z_t = (1 - t) x + (σ_min + (1 - σ_min) t) ε:
    Lipman et al.'s optimal-transport path (Book Eq. 9.65-9.68 with t -> 1 - t), whose
    conditional velocity is dz/dt = (1 - σ_min) ε - x. σ_min = 0 is rectified flow (Liu et
    al. 2023)."""

    name = "straight"

    def __init__(self, sigma_min: float = 0.0) -> None:
        super().__init__()
        if not 0 <= sigma_min < 1:
            raise ConfigError(f"sigma_min must be in [0, 1), got {sigma_min}")
        self.sigma_min = sigma_min

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return 1 - t, self.sigma_min + (1 - self.sigma_min) * t

    def derivatives(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return -torch.ones_like(t), torch.full_like(t, 1 - self.sigma_min)


class _PositiveLinear(nn.Linear):
    """A linear layer with weights softplus(W) >= 0, so that a composition with increasing
    activations is increasing in its input."""

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, F.softplus(self.weight), self.bias)


class LearnedSchedule(NoiseSchedule):
    r"""A learned monotone schedule γ(t) = -log SNR(t) with fixed ends (VDM; Kingma et al. 2021):

        γ(t) = γ_0 + (γ_1 - γ_0) (l(t) - l(0)) / (l(1) - l(0)),
        l(t) = L1(t) + L3(sigmoid(L2(L1(t))))      (positive weights: l is increasing),

    α_t² = sigmoid(-γ(t)), σ_t² = sigmoid(γ(t)) (variance preserving). The ends are fixed, so
    the continuous-time loss depends on the schedule only through its endpoints (Kingma et
    al., Eq. 15); the shape between them is trained to reduce the variance of the loss
    estimator, and ``γ_0``, ``γ_1`` can be trained too (``learn_ends``).
    """

    name = "learned"

    def __init__(
        self, gamma_min: float = -13.3, gamma_max: float = 5.0, *, hidden: int = 1024,
        learn_ends: bool = True,
    ) -> None:
        super().__init__()
        if not gamma_min < gamma_max:
            raise ConfigError(f"need gamma_min < gamma_max, got {gamma_min}, {gamma_max}")
        self.l1 = _PositiveLinear(1, 1)
        self.l2 = _PositiveLinear(1, hidden)
        self.l3 = _PositiveLinear(hidden, 1)
        self.gamma_0 = nn.Parameter(torch.tensor(float(gamma_min)), requires_grad=learn_ends)
        self.gamma_1 = nn.Parameter(torch.tensor(float(gamma_max)), requires_grad=learn_ends)

    def _l(self, t: Tensor) -> Tensor:
        h = self.l1(t.reshape(-1, 1).to(self.l1.weight.dtype))
        return (h + self.l3(torch.sigmoid(self.l2(h)))).reshape(t.shape)

    def shape(self, t: Tensor) -> Tensor:
        """The normalized shape (l(t) - l(0)) / (l(1) - l(0)), increasing from 0 to 1."""
        ends = self._l(torch.tensor([0.0, 1.0], device=t.device))
        return (self._l(t) - ends[0]) / (ends[1] - ends[0])

    def gamma(self, t: Tensor) -> Tensor:
        """γ(t) = -log SNR(t), increasing from γ_0 to γ_1."""
        return self.from_shape(self.shape(t))

    def from_shape(self, frac: Tensor) -> Tensor:
        """γ = γ_0 + (γ_1 - γ_0) · frac."""
        return self.gamma_0 + (self.gamma_1 - self.gamma_0) * frac

    def alpha_sigma(self, t: Tensor) -> tuple[Tensor, Tensor]:
        g = self.gamma(t)
        return torch.sqrt(torch.sigmoid(-g)), torch.sqrt(torch.sigmoid(g))

    def log_snr(self, t: Tensor) -> Tensor:
        return -self.gamma(t)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by a per-example factor read at
    backward time (filled in after the loss is known)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, holder: list[Tensor]) -> Tensor:  # type: ignore[override]
        ctx.holder = holder
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.holder[0].reshape(grad.shape), None


def scale_gradient(x: Tensor, holder: list[Tensor]) -> Tensor:
    """x, whose gradient is multiplied elementwise by ``holder[0]`` on the way back; the caller
    puts the factor in ``holder`` before calling ``backward`` (VDM's variance-minimizing
    gradient for the schedule's shape: 2 L_i ∇L_i = ∇ L_i²)."""
    return _ScaleGradient.apply(x, holder)


SCHEDULES: dict[str, type[NoiseSchedule]] = {
    cls.name: cls
    for cls in (VPLinear, VPCosine, SubVP, VEGeometric, VEBook, StraightLine, LearnedSchedule)
}


def make_schedule(name: str, **kwargs: float) -> NoiseSchedule:
    """A schedule by name (``vp_linear``, ``vp_cosine``, ``sub_vp``, ``ve``, ``ve_book``,
    ``straight``, ``learned``) with its keyword arguments."""
    if name not in SCHEDULES:
        raise ConfigError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    return SCHEDULES[name](**kwargs)


# --- what a network predicts, and the conversions, written once ------------------------------


class Prediction(str, Enum):
    r"""What a denoising network outputs at (z_t, t), with z_t = α x + σ ε:

    - ``noise``: ε (DDPM, Ho et al. 2020);
    - ``data``: x;
    - ``v``: v = α ε - σ x (Salimans & Ho 2022);
    - ``score``: ∇ log q(z_t | x) = -ε / σ (the denoising score-matching target, Book Eq. 9.19);
    - ``velocity``: u = α' x + σ' ε, the path's dz/dt (flow matching; the probability-flow ODE's
      field when averaged over x given z_t).
    """

    NOISE = "noise"
    DATA = "data"
    V = "v"
    SCORE = "score"
    VELOCITY = "velocity"


def to_data_and_noise(
    kind: Prediction, pred: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor,
    d_alpha: Tensor | None = None, d_sigma: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    r"""(x̂, ε̂) from a prediction of ``kind`` at z = α x + σ ε (α, σ broadcast against z).

    Velocity needs the derivatives: u = α' x + σ' ε and z = α x + σ ε solve to
    x = (σ' z - σ u) / (α σ' - α' σ), ε = (α u - α' z) / (α σ' - α' σ).
    """
    kind = Prediction(kind)
    if kind is Prediction.NOISE:
        return (z - sigma * pred) / alpha, pred
    if kind is Prediction.DATA:
        return pred, (z - alpha * pred) / sigma
    if kind is Prediction.V:
        norm = alpha**2 + sigma**2
        return (alpha * z - sigma * pred) / norm, (sigma * z + alpha * pred) / norm
    if kind is Prediction.SCORE:
        eps = -sigma * pred
        return (z - sigma * eps) / alpha, eps
    if d_alpha is None or d_sigma is None:
        raise ConfigError("a velocity needs the schedule's derivatives (d_alpha, d_sigma)")
    det = alpha * d_sigma - d_alpha * sigma
    return (d_sigma * z - sigma * pred) / det, (alpha * pred - d_alpha * z) / det


def from_data_and_noise(
    kind: Prediction, x: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor,
    d_alpha: Tensor | None = None, d_sigma: Tensor | None = None,
) -> Tensor:
    """The prediction of ``kind`` that (x, ε) correspond to (the inverse of
    :func:`to_data_and_noise`)."""
    kind = Prediction(kind)
    if kind is Prediction.NOISE:
        return eps
    if kind is Prediction.DATA:
        return x
    if kind is Prediction.V:
        return alpha * eps - sigma * x
    if kind is Prediction.SCORE:
        return -eps / sigma
    if d_alpha is None or d_sigma is None:
        raise ConfigError("a velocity needs the schedule's derivatives (d_alpha, d_sigma)")
    return d_alpha * x + d_sigma * eps


def convert(
    pred: Tensor, source: Prediction, target: Prediction, z: Tensor, t: Tensor | float,
    schedule: NoiseSchedule,
) -> Tensor:
    """A prediction of ``source`` at (z, t) as the equivalent prediction of ``target``, under
    ``schedule`` (t of shape (N,) or a float)."""
    tb = broadcast_time(t, z)
    alpha, sigma = schedule.alpha_sigma(tb)
    d_alpha = d_sigma = None
    if Prediction.VELOCITY in (Prediction(source), Prediction(target)):
        d_alpha, d_sigma = schedule.derivatives(tb)
    x, eps = to_data_and_noise(source, pred, z, alpha, sigma, d_alpha, d_sigma)
    return from_data_and_noise(target, x, eps, alpha, sigma, d_alpha, d_sigma)


# --- discrete-time DDPM tables -----------------------------------------------------------------


def linear_betas(steps: int, beta_1: float = 1e-4, beta_T: float = 0.02) -> Tensor:
    """DDPM's β_1..β_T, linear (Ho et al. 2020: T = 1000, 1e-4 to 0.02), float64 (T,).

    For T other than 1000 the ends are rescaled by 1000/T so that the total noise ∑β stays
    the same (the DDPM schedule as a function of t = i/T)."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    scale = 1000.0 / steps
    lo, hi = beta_1 * scale, min(beta_T * scale, 0.999)
    if steps == 1:
        return torch.tensor([hi], dtype=torch.float64)
    return torch.linspace(lo, hi, steps, dtype=torch.float64)


def cosine_alpha_bars(steps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """ᾱ_0..ᾱ_T of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17), each β_t = 1 -
    ᾱ_t/ᾱ_{t-1} clipped at ``max_beta``; float64 (T + 1,), ᾱ_0 = 1."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    u = torch.arange(steps + 1, dtype=torch.float64) / steps
    f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=max_beta)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])
