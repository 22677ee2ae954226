"""Noise schedules and prediction conversions (dgm.core.schedules)."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.core.errors import ConfigError
from dgm.core.schedules import (
    SCHEDULES,
    LearnedSchedule,
    Prediction,
    StraightLine,
    SubVP,
    VEBook,
    VPLinear,
    convert,
    cosine_alpha_bars,
    from_data_and_noise,
    linear_betas,
    make_schedule,
    to_data_and_noise,
)

torch.set_default_dtype(torch.float32)


def _all() -> list[torch.nn.Module]:
    return [make_schedule(name) for name in SCHEDULES]


@pytest.mark.parametrize("schedule", _all(), ids=list(SCHEDULES))
def test_derivatives_match_finite_differences(schedule) -> None:
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)
    schedule = schedule.double()
    d_alpha, d_sigma = schedule.derivatives(t)
    h = 1e-6
    a_hi, s_hi = schedule.alpha_sigma(t + h)
    a_lo, s_lo = schedule.alpha_sigma(t - h)
    torch.testing.assert_close(d_alpha, (a_hi - a_lo) / (2 * h), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(d_sigma, (s_hi - s_lo) / (2 * h), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("schedule", _all(), ids=list(SCHEDULES))
def test_snr_decreases_and_log_snr_is_consistent(schedule) -> None:
    schedule = schedule.double()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    lsnr = schedule.log_snr(t)
    assert (lsnr[1:] < lsnr[:-1]).all()
    alpha, sigma = schedule.alpha_sigma(t)
    torch.testing.assert_close(lsnr, torch.log(alpha**2 / sigma**2), rtol=1e-6, atol=1e-6)


def test_vp_and_sub_vp_sde_coefficients_are_the_papers() -> None:
    # Song et al. 2021: VP g² = β(t); sub-VP g² = β(t)(1 - e^{-2B(t)}); both f = -β/2.
    t = torch.linspace(0.05, 0.95, 10, dtype=torch.float64)
    vp, sub = VPLinear().double(), SubVP().double()
    beta = vp.beta_min + t * (vp.beta_max - vp.beta_min)
    f, g2 = vp.sde(t)
    torch.testing.assert_close(f, -beta / 2)
    torch.testing.assert_close(g2, beta)
    f, g2 = sub.sde(t)
    torch.testing.assert_close(f, -beta / 2)
    torch.testing.assert_close(g2, beta * (1 - torch.exp(-2 * sub.integral(t))))
    # the VP path preserves variance
    alpha, sigma = vp.alpha_sigma(t)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(t))


def test_book_ve_path() -> None:
    # σ_t² = (b^{2t} - 1)/(2 ln b), g(t) = b^t (Book Eq. 9.31-9.33); b = 1 is impossible.
    ve = VEBook(1.01).double()
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    _, sigma = ve.alpha_sigma(t)
    assert float(sigma[0]) == 0.0
    assert float(sigma[2] ** 2) == pytest.approx((1.01**2 - 1) / (2 * math.log(1.01)))
    _, g2 = ve.sde(t[1:])
    torch.testing.assert_close(g2, 1.01 ** (2 * t[1:]))
    with pytest.raises(ConfigError):
        VEBook(1.0)


def test_forward_marginal_matches_a_simulated_sde() -> None:
    # Euler-Maruyama of dz = f z dt + g dw from z_0 = x reaches N(α_t x, σ_t²) (VP, sub-VP).
    gen = torch.Generator().manual_seed(0)
    for schedule in (VPLinear().double(), SubVP().double()):
        x = torch.full((40000,), 1.5, dtype=torch.float64)
        z = x.clone()
        ts = torch.linspace(0, 0.6, 601, dtype=torch.float64)
        for i in range(600):
            f, g2 = schedule.sde(ts[i : i + 1])
            h = ts[i + 1] - ts[i]
            z = z + f * z * h + (g2 * h).sqrt() * torch.randn(z.shape, generator=gen,
                                                               dtype=torch.float64)
        alpha, sigma = schedule.alpha_sigma(ts[-1:])
        assert float(z.mean()) == pytest.approx(float(alpha * 1.5), abs=0.01)
        assert float(z.std()) == pytest.approx(float(sigma), rel=0.02)


def test_discrete_ddpm_chain_matches_closed_form() -> None:
    # iterating z_i = sqrt(1-β_i) z_{i-1} + sqrt(β_i) ε gives N(sqrt(ᾱ) x, 1 - ᾱ) (Eq. 5.98)
    betas = linear_betas(100)
    gen = torch.Generator().manual_seed(1)
    z = torch.full((50000,), -0.7, dtype=torch.float64)
    for b in betas[:60]:
        z = (1 - b).sqrt() * z + b.sqrt() * torch.randn(z.shape, generator=gen,
                                                        dtype=torch.float64)
    abar = torch.prod(1 - betas[:60])
    assert float(z.mean()) == pytest.approx(float(abar.sqrt() * -0.7), abs=0.01)
    assert float(z.var()) == pytest.approx(float(1 - abar), rel=0.02)
    bars = cosine_alpha_bars(1000)
    assert bars[0] == 1 and (bars[1:] < bars[:-1]).all() and bars[-1] < 1e-3


def test_linear_betas_are_ddpm_at_1000_steps() -> None:
    b = linear_betas(1000)
    assert float(b[0]) == pytest.approx(1e-4) and float(b[-1]) == pytest.approx(0.02)
    # fewer steps keep the total noise Σβ about the same
    assert float(linear_betas(100).sum()) == pytest.approx(float(b.sum()), rel=0.01)


@pytest.mark.parametrize("source", list(Prediction))
@pytest.mark.parametrize("target", list(Prediction))
def test_conversions_round_trip(source: Prediction, target: Prediction) -> None:
    gen = torch.Generator().manual_seed(2)
    for schedule in (VPLinear(), StraightLine(0.01), make_schedule("ve"), LearnedSchedule()):
        schedule = schedule.double()
        x = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        eps = torch.randn(6, 3, generator=gen, dtype=torch.float64)
        t = torch.rand(6, generator=gen, dtype=torch.float64) * 0.9 + 0.05
        tb = t.reshape(-1, 1)
        alpha, sigma = schedule.alpha_sigma(tb)
        da, ds = schedule.derivatives(tb)
        z = alpha * x + sigma * eps
        pred = from_data_and_noise(source, x, eps, alpha, sigma, da, ds)
        back = convert(convert(pred, source, target, z, t, schedule), target, source, z, t,
                       schedule)
        torch.testing.assert_close(back, pred)
        x_hat, eps_hat = to_data_and_noise(source, pred, z, alpha, sigma, da, ds)
        torch.testing.assert_close(x_hat, x)
        torch.testing.assert_close(eps_hat, eps)


def test_velocity_is_the_time_derivative_of_the_path() -> None:
    # d/dt (α_t x + σ_t ε) = α'_t x + σ'_t ε: the flow-matching target (Book Theorem 2)
    schedule = StraightLine(0.1).double()
    x, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    t, h = torch.full((4,), 0.3, dtype=torch.float64), 1e-6
    u = from_data_and_noise(Prediction.VELOCITY, x, eps, *schedule.alpha_sigma(t[:, None]),
                            *schedule.derivatives(t[:, None]))
    fd = (schedule.marginal(x, t + h, eps) - schedule.marginal(x, t - h, eps)) / (2 * h)
    torch.testing.assert_close(u, fd)
    torch.testing.assert_close(u, 0.9 * eps - x)


def test_learned_schedule_is_monotone_with_fixed_ends() -> None:
    s = LearnedSchedule(-10.0, 6.0, hidden=16).double()
    with torch.no_grad():
        for p in (s.l1.weight, s.l2.weight, s.l3.weight):
            p.normal_()
    t = torch.linspace(0, 1, 101, dtype=torch.float64)
    g = s.gamma(t)
    assert (g[1:] >= g[:-1]).all()
    assert float(g[0].detach()) == pytest.approx(-10.0)
    assert float(g[-1].detach()) == pytest.approx(6.0)
    loss = s.gamma(torch.tensor([0.5], dtype=torch.float64)).sum()
    loss.backward()
    assert s.l2.weight.grad is not None and s.l2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["vp_linear", "sub_vp", "ve", "ve_book"])
def test_written_out_sde_equals_the_general_formula(name: str) -> None:
    # f = α'/α, g² = 2σσ' - 2fσ² from the marginals, against each schedule's own formula
    from dgm.core.schedules import NoiseSchedule

    schedule = make_schedule(name).double()
    t = torch.linspace(0.05, 1.0, 12, dtype=torch.float64)
    f, g2 = schedule.sde(t)
    f_gen, g2_gen = NoiseSchedule.sde(schedule, t)
    torch.testing.assert_close(f, f_gen)
    torch.testing.assert_close(g2, g2_gen)


@pytest.mark.parametrize("schedule", _all(), ids=list(SCHEDULES))
def test_log_snr_derivative_and_inverse(schedule) -> None:
    from dgm.core.schedules import NoiseSchedule

    schedule = schedule.double()
    t = torch.linspace(0.05, 0.95, 7, dtype=torch.float64)
    lam = schedule.log_snr(t)
    torch.testing.assert_close(schedule.time_at_log_snr(lam), t, rtol=1e-6, atol=1e-7)
    h = 1e-6
    fd = (schedule.log_snr(t + h) - schedule.log_snr(t - h)) / (2 * h)
    torch.testing.assert_close(schedule.d_log_snr(t).detach(), fd.detach(), rtol=1e-4, atol=1e-5)
    # written-out forms agree with the generic ones
    torch.testing.assert_close(schedule.d_log_snr(t).detach(),
                               NoiseSchedule.d_log_snr(schedule, t).detach())
    for mine, generic in zip(schedule.derivatives(t), NoiseSchedule.derivatives(schedule, t)):
        torch.testing.assert_close(mine.detach(), generic.detach())
