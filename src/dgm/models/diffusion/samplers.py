r"""Samplers of Gaussian-path models as plain functions of a denoiser and a schedule.

A denoiser maps (z_t, t) to its estimates (x̂, ε̂) of the data and the noise in
z_t = α_t x + σ_t ε (:func:`dgm.core.schedules.to_data_and_noise` turns any prediction into
them). Time runs from t = 1 (noise) down to ``t_min`` (:mod:`dgm.core.schedules`); every
sampler returns the last z, the last x̂ and the number of denoiser evaluations (NFE).

Between two times s < t of a grid, with α_{t|s} = α_t/α_s and σ²_{t|s} = σ_t² - α²_{t|s} σ_s²,
the forward posterior is (Ho et al. 2020, Eq. 6-7; Kingma et al. 2021, Eq. 27-28)

    q(z_s | z_t, x) = N(μ, σ̃² I),  μ = (α_{t|s} σ_s²/σ_t²) z_t + (α_s σ²_{t|s}/σ_t²) x,
                                    σ̃² = σ²_{t|s} σ_s² / σ_t².

- :func:`ancestral`: z_s ~ N(μ(x̂), v) with v = σ̃² ("small") or σ²_{t|s} ("large"), the
  DDPM sampler on any grid (a sub-grid is Nichol & Dhariwal's respacing).
- :func:`ddim`: z_s = α_s x̂ + sqrt(σ_s² - c²) ε̂ + c ε with c = η σ̃ (Song, Meng, Ermon 2021):
  η = 1 is the ancestral sampler with the small variance, η = 0 is deterministic.
- :func:`probability_flow`: the ODE dz/dt = α'_t x̂ + σ'_t ε̂ (Book Eq. 9.26 written with the
  denoiser) with any solver of :mod:`dgm.core.solvers`, integrated in the log-SNR
  λ = log(α²/σ²) instead of t (:func:`log_snr_field`): dz/dλ = (dz/dt)/(dλ/dt) has bounded
  coefficients where dz/dt does not (σ ~ sqrt(t) near t = 0 on the linear VP path makes the
  t-form stiff enough to stall an adaptive solver), and fixed steps uniform in λ spend the
  evaluations where the path changes (as DDIM and DPM-Solver do).
- :func:`reverse_sde`: Euler-Maruyama on dz = [f z - g² ∇log p_t] dt + g dw̄ backward in time
  (Song et al. 2021, Eq. 6), ∇log p_t = -ε̂/σ_t.
- :func:`predictor_corrector`: that predictor followed by Langevin corrector steps with the
  signal-to-noise step size (Song et al. 2021, Algorithm 5; :mod:`dgm.core.mcmc`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dgm.core.errors import ConfigError
from dgm.core.mcmc import langevin_corrector
from dgm.core.schedules import NoiseSchedule, broadcast_time
from dgm.core.solvers import solve_ode

__all__ = [
    "Denoiser",
    "Sampled",
    "time_steps",
    "ancestral",
    "ddim",
    "probability_flow",
    "log_snr_field",
    "reverse_sde",
    "predictor_corrector",
    "SAMPLERS",
]

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]  # (z, t (N,)) -> (x̂, ε̂)

#: the sampler names that models accept besides the ODE solvers (``--solver``)
SAMPLERS = ("ancestral", "ddim", "euler_maruyama", "pc")


@dataclass(frozen=True)
class Sampled:
    """The state at the last time, the denoiser's last estimate of the data, and the NFE."""

    z: Tensor
    x_hat: Tensor
    nfe: int


def time_steps(steps: int, t_min: float = 0.0, t_max: float = 1.0, *,
               device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """``steps + 1`` evenly spaced times from t_max down to t_min."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= t_min < t_max <= 1.0:
        raise ConfigError(f"need 0 <= t_min < t_max <= 1, got {t_min}, {t_max}")
    return torch.linspace(t_max, t_min, steps + 1, device=device, dtype=dtype)


def _coefficients(schedule: NoiseSchedule, t: Tensor, s: Tensor, like: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """α_s, σ_s, the posterior mean coefficients (on z_t and on x) and σ²_{t|s}."""
    a_t, s_t = schedule.alpha_sigma(broadcast_time(t, like))
    a_s, s_s = schedule.alpha_sigma(broadcast_time(s, like))
    a_ts = a_t / a_s
    var_ts = (s_t**2 - a_ts**2 * s_s**2).clamp_min(0)
    c_z = a_ts * s_s**2 / s_t**2
    c_x = a_s * var_ts / s_t**2
    return a_s, s_s, c_z, c_x, var_ts


def _noise(z: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)


def ancestral(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    z: Tensor,
    ts: Tensor,
    *,
    variance: str = "small",
    log_variance: Callable[[Tensor, Tensor, Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> Sampled:
    """Ancestral sampling along the decreasing grid ``ts``: z_s ~ N(μ(z_t, x̂), v).

    ``variance``: ``"small"`` (σ̃², the forward posterior's), ``"large"`` (σ²_{t|s}), or
    ``"learned"``, for which ``log_variance(z, t, log σ̃², log σ²_{t|s})`` gives log v. The last
    step (to ``ts[-1]``) adds no noise: its mean is what the caller decodes.
    """
    if variance not in ("small", "large", "learned"):
        raise ConfigError(f"variance must be small, large or learned, got {variance!r}")
    x_hat = z
    nfe = 0
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        tt = t.expand(z.shape[0])
        x_hat, _ = denoise(z, tt)
        nfe += 1
        _, s_s, c_z, c_x, var_ts = _coefficients(schedule, t, s, z)
        mean = c_z * z + c_x * x_hat
        if i == len(ts) - 2:
            z = mean
            break
        small = var_ts * s_s**2 / schedule.alpha_sigma(broadcast_time(t, z))[1] ** 2
        if variance == "small":
            std = small.sqrt()
        elif variance == "large":
            std = var_ts.sqrt()
        else:
            assert log_variance is not None
            std = torch.exp(0.5 * log_variance(z, tt, small.clamp_min(1e-20).log(),
                                               var_ts.clamp_min(1e-20).log()))
        z = mean + std * _noise(z, generator)
    return Sampled(z, x_hat, nfe)


def ddim(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    z: Tensor,
    ts: Tensor,
    *,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> Sampled:
    """DDIM along the decreasing grid ``ts``: z_s = α_s x̂ + sqrt(σ_s² - c²) ε̂ + c ε, c = η σ̃."""
    if eta < 0:
        raise ConfigError(f"eta must be >= 0, got {eta}")
    x_hat = z
    nfe = 0
    for i in range(len(ts) - 1):
        t, s = ts[i], ts[i + 1]
        x_hat, eps_hat = denoise(z, t.expand(z.shape[0]))
        nfe += 1
        a_s, s_s, _, _, var_ts = _coefficients(schedule, t, s, z)
        _, s_t = schedule.alpha_sigma(broadcast_time(t, z))
        c = eta * (var_ts * s_s**2 / s_t**2).sqrt()
        z = a_s * x_hat + (s_s**2 - c**2).clamp_min(0).sqrt() * eps_hat
        if eta > 0 and i < len(ts) - 2:
            z = z + c * _noise(z, generator)
    return Sampled(z, x_hat, nfe)


def log_snr_field(denoise: Denoiser, schedule: NoiseSchedule
                  ) -> Callable[[Tensor, Tensor], Tensor]:
    """The probability-flow field in log-SNR time, (λ, z) -> dz/dλ = (α'_t x̂ + σ'_t ε̂)/λ'(t)
    at t = t(λ); λ may be a 0-dim tensor or one value per example (N,)."""

    def field(lam: Tensor, z: Tensor) -> Tensor:
        t = schedule.time_at_log_snr(lam.reshape(-1)[:1]).to(z.dtype)
        tt = t.expand(z.shape[0])
        x_hat, eps_hat = denoise(z, tt)
        tb = broadcast_time(tt, z)
        d_alpha, d_sigma = schedule.derivatives(tb)
        return (d_alpha * x_hat + d_sigma * eps_hat) / schedule.d_log_snr(tb)

    return field


def probability_flow(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    z: Tensor,
    *,
    t_min: float,
    t_max: float = 1.0,
    solver: str = "heun",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Sampled:
    """Solve the probability-flow ODE from t_max down to t_min, in log-SNR time."""
    ends = schedule.log_snr(torch.tensor([t_max, t_min], dtype=z.dtype, device=z.device))
    sol = solve_ode(log_snr_field(denoise, schedule), z, float(ends[0]), float(ends[1]),
                    solver=solver, steps=steps, rtol=rtol, atol=atol)
    assert isinstance(sol.state, Tensor)
    x_hat, _ = denoise(sol.state, torch.full((z.shape[0],), t_min, dtype=z.dtype,
                                             device=z.device))
    return Sampled(sol.state, x_hat, sol.nfe + 1)


def _score(denoise: Denoiser, schedule: NoiseSchedule, z: Tensor, tt: Tensor
           ) -> tuple[Tensor, Tensor]:
    x_hat, eps_hat = denoise(z, tt)
    _, sigma = schedule.alpha_sigma(broadcast_time(tt, z))
    return -eps_hat / sigma, x_hat


def reverse_sde(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    z: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Sampled:
    """Euler-Maruyama on the reverse-time SDE along the decreasing grid ``ts`` (no noise on the
    last step)."""
    x_hat = z
    nfe = 0
    for i in range(len(ts) - 1):
        t, h = ts[i], ts[i] - ts[i + 1]
        tt = t.expand(z.shape[0])
        score, x_hat = _score(denoise, schedule, z, tt)
        nfe += 1
        f, g2 = schedule.sde(broadcast_time(tt, z))
        z = z - (f * z - g2 * score) * h
        if i < len(ts) - 2:
            z = z + (g2 * h).sqrt() * _noise(z, generator)
    return Sampled(z, x_hat, nfe)


def predictor_corrector(
    denoise: Denoiser,
    schedule: NoiseSchedule,
    z: Tensor,
    ts: Tensor,
    *,
    snr: float = 0.16,
    corrector_steps: int = 1,
    generator: torch.Generator | None = None,
) -> Sampled:
    """Reverse-SDE predictor steps, each followed by ``corrector_steps`` Langevin corrector
    steps at the new time with step size 2 (snr ||ε|| / ||score||)² (Song et al. 2021)."""
    if corrector_steps < 0 or snr <= 0:
        raise ConfigError("corrector_steps must be >= 0 and snr > 0")
    x_hat = z
    nfe = 0
    for i in range(len(ts) - 1):
        t, s, h = ts[i], ts[i + 1], ts[i] - ts[i + 1]
        tt = t.expand(z.shape[0])
        score, x_hat = _score(denoise, schedule, z, tt)
        nfe += 1
        f, g2 = schedule.sde(broadcast_time(tt, z))
        z = z - (f * z - g2 * score) * h
        last = i == len(ts) - 2
        if not last:
            z = z + (g2 * h).sqrt() * _noise(z, generator)
            ss = s.expand(z.shape[0])
            for _ in range(corrector_steps):
                score, x_hat = _score(denoise, schedule, z, ss)
                nfe += 1
                z = langevin_corrector(z, score, snr, generator=generator)
    return Sampled(z, x_hat, nfe)
