"""The hyperspherical latent space: Bessel functions, the uniform on S^{m-1} and the vMF.

Stochastic checks use fixed generators and tolerances of a few standard errors of the sample
mean (stated at each check), so they are deterministic and fail only on a real error.
"""

import math

import numpy as np
import pytest
import torch
from scipy.special import ive

from dgm.core.errors import DataError
from dgm.core.spherical import (
    HypersphericalUniform,
    VonMisesFisher,
    bessel_ratio,
    log_bessel_iv,
    log_sphere_area,
)

F64 = torch.float64
ORDERS = [0.0, 0.5, 1.0, 4.5, 49.0, 255.0]
ARGS = [1e-4, 0.1, 1.0, 10.0, 100.0, 1e3, 1e4]


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unit(m: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    mu = torch.randn(m, generator=_gen(seed), dtype=dtype)
    return mu / mu.norm()


def _log_iv_series(v: float, x: float) -> float:
    """log I_v(x) from 400 terms of the power series, summed in log space (the reference where
    scipy's exponentially scaled ive underflows, i.e. large v and small x)."""
    k = np.arange(400.0)
    lg = np.array([math.lgamma(kk + 1.0) + math.lgamma(kk + v + 1.0) for kk in k])
    terms = (2 * k + v) * math.log(x / 2.0) - lg
    top = terms.max()
    return float(top + math.log(np.exp(terms - top).sum()))


def _log_iv_ref(v: float, x: float) -> float:
    scaled = ive(v, x)
    if scaled > 1e-250:
        return math.log(scaled) + x
    return _log_iv_series(v, x)


# --------------------------------------------------------------------------- Bessel functions


@pytest.mark.parametrize("v", ORDERS)
def test_log_bessel_iv_matches_scipy(v):
    x = torch.tensor(ARGS, dtype=F64)
    ref = torch.tensor([_log_iv_ref(v, a) for a in ARGS], dtype=F64)
    out = log_bessel_iv(v, x)
    assert out.dtype == F64
    # Relative to max(|log I|, 1): log I_0(1e-4) ≈ 2.5e-9 has no meaningful relative error.
    assert ((out - ref).abs() / ref.abs().clamp_min(1.0)).max() < 1e-10


@pytest.mark.parametrize("v", ORDERS)
def test_bessel_ratio_matches_scipy(v):
    x = torch.tensor(ARGS, dtype=F64)
    ref = torch.tensor(
        [math.exp(_log_iv_ref(v + 1.0, a) - _log_iv_ref(v, a)) for a in ARGS], dtype=F64
    )
    r = bessel_ratio(v, x)
    assert ((r - ref).abs() / ref).max() < 1e-9
    assert bool(((r > 0) & (r < 1)).all())


def test_float32_and_extreme_arguments():
    v = torch.tensor([0.0, 1.0, 49.0, 255.0]).unsqueeze(-1)
    x = torch.tensor([1e-6, 0.5, 3.0, 1e5])
    ref = torch.tensor([[_log_iv_ref(a, b) for b in x.tolist()] for a in v.flatten().tolist()])
    out = log_bessel_iv(v, x)
    assert out.dtype == torch.float32 and out.shape == (4, 4)
    assert ((out.double() - ref.double()).abs() / ref.abs().double().clamp_min(1.0)).max() < 1e-6
    r = bessel_ratio(v, x)
    assert r.dtype == torch.float32 and bool(torch.isfinite(r).all())


def test_bessel_gradients_match_finite_differences():
    x = torch.tensor([1e-3, 0.3, 0.999, 1.001, 7.0, 60.0, 900.0], dtype=F64, requires_grad=True)
    for v in [0.0, 0.5, 3.0, 30.5, 255.0]:
        assert torch.autograd.gradcheck(lambda t: log_bessel_iv(v, t), (x,))
        assert torch.autograd.gradcheck(lambda t: bessel_ratio(v, t), (x,))
        (g,) = torch.autograd.grad(log_bessel_iv(v, x).sum(), x)
        assert torch.allclose(g, bessel_ratio(v, x.detach()) + v / x.detach(), rtol=1e-12)


def test_negative_order_is_rejected():
    with pytest.raises(DataError, match="order"):
        log_bessel_iv(-0.5, torch.tensor([1.0]))


# --------------------------------------------------------------------------- uniform on S^{m-1}


def test_sphere_area_and_uniform():
    assert log_sphere_area(2) == pytest.approx(math.log(2 * math.pi))
    assert log_sphere_area(3) == pytest.approx(math.log(4 * math.pi))
    u = HypersphericalUniform(5)
    z = u.sample((4000,), generator=_gen(), dtype=F64)
    assert z.shape == (4000, 5)
    assert torch.allclose(z.norm(dim=-1), torch.ones(4000, dtype=F64))
    # Each coordinate has variance 1/m; 5 standard errors of the mean.
    assert z.mean(0).abs().max() < 5 * math.sqrt(1 / 5 / 4000)
    lp = u.log_prob(z)
    assert lp.shape == (4000,) and torch.all(lp == -log_sphere_area(5))
    with pytest.raises(DataError):
        HypersphericalUniform(1)


# --------------------------------------------------------------------------- vMF density


@pytest.mark.parametrize("kappa", [0.0, 1e-6, 1.0, 10.0, 100.0])
def test_density_integrates_to_one_on_circle(kappa):
    q = VonMisesFisher(_unit(2, seed=1), torch.tensor(kappa, dtype=F64))
    # The periodic rectangle rule converges geometrically for smooth periodic integrands.
    theta = torch.arange(4096, dtype=F64) * (2 * math.pi / 4096)
    z = torch.stack([theta.cos(), theta.sin()], dim=-1)
    assert q.log_prob(z).exp().sum().item() * (2 * math.pi / 4096) == pytest.approx(1, abs=1e-10)


@pytest.mark.parametrize("kappa", [0.0, 1e-6, 1.0, 10.0, 100.0])
def test_density_integrates_to_one_on_sphere(kappa):
    q = VonMisesFisher(_unit(3, seed=2), torch.tensor(kappa, dtype=F64))
    # Gauss-Legendre in cos θ, rectangle rule in φ: ∫ q dA = ∫∫ q d(cos θ) dφ.
    c, wc = np.polynomial.legendre.leggauss(300)
    c, wc = torch.tensor(c, dtype=F64), torch.tensor(wc, dtype=F64)
    phi = torch.arange(600, dtype=F64) * (2 * math.pi / 600)
    s = torch.sqrt(1 - c**2)
    z = torch.stack(
        [s[:, None] * phi.cos()[None], s[:, None] * phi.sin()[None], c[:, None].expand(-1, 600)],
        dim=-1,
    )
    total = (q.log_prob(z).exp() * wc[:, None]).sum().item() * (2 * math.pi / 600)
    assert total == pytest.approx(1, abs=1e-8)


@pytest.mark.parametrize("m", [2, 3, 64, 256])
def test_zero_concentration_is_uniform(m):
    z = HypersphericalUniform(m).sample((10,), generator=_gen(), dtype=F64)
    mu = _unit(m)
    u = HypersphericalUniform(m).log_prob(z)
    for kappa in [0.0, 1e-8]:
        kap = torch.tensor(kappa, dtype=F64, requires_grad=True)
        lp = VonMisesFisher(mu, kap).log_prob(z)
        assert torch.allclose(lp, u, atol=1e-7, rtol=0)
        # d/dκ log q = μᵀz - A_m(κ), with A_m(0) = 0: finite, no 0 · ∞ at κ = 0.
        (g,) = torch.autograd.grad(lp.sum(), kap)
        assert torch.isfinite(g) and g.item() == pytest.approx((z @ mu).sum().item(), abs=1e-6)


def test_batched_shapes():
    loc = torch.nn.functional.normalize(torch.randn(4, 6, dtype=F64), dim=-1)
    q = VonMisesFisher(loc, torch.tensor([0.5, 2.0, 30.0, 1e3], dtype=F64))
    z = q.rsample(7, generator=_gen())
    assert z.shape == (7, 4, 6) and q.log_prob(z).shape == (7, 4)
    assert q.mean.shape == (4, 6) and q.kl_uniform().shape == (4,) and q.entropy().shape == (4,)
    # One κ shared by the batch broadcasts.
    assert VonMisesFisher(loc, torch.tensor(3.0, dtype=F64)).rsample(2).shape == (2, 4, 6)


def test_invalid_parameters_are_rejected():
    with pytest.raises(DataError, match="unit"):
        VonMisesFisher(torch.tensor([1.0, 1.0]), torch.tensor(1.0))
    with pytest.raises(DataError, match="concentration"):
        VonMisesFisher(torch.tensor([1.0, 0.0]), torch.tensor(-1.0))
    with pytest.raises(DataError, match="m >= 2"):
        VonMisesFisher(torch.tensor([1.0]), torch.tensor(1.0))
    with pytest.raises(DataError, match="broadcast"):
        VonMisesFisher(torch.eye(3)[:2], torch.ones(3))


# --------------------------------------------------------------------------- vMF sampling


@pytest.mark.parametrize("m", [2, 3, 10, 64])
@pytest.mark.parametrize("kappa", [1.0, 50.0, 1e4])
def test_samples_unit_norm_and_mean(m, kappa):
    mu = _unit(m, seed=m)
    q = VonMisesFisher(mu, torch.tensor(kappa, dtype=F64))
    n = 20000
    z = q.sample(n, generator=_gen(1))
    assert torch.allclose(z.norm(dim=-1), torch.ones(n, dtype=F64), atol=1e-12)
    w = z @ mu
    a = q.mean_resultant_length.item()
    # E[μᵀz] = A_m(κ), within 5 standard errors of the sample mean.
    assert abs(w.mean().item() - a) < 5 * w.std().item() / math.sqrt(n)
    # E[z] = A_m(κ) μ coordinate-wise: the direction concentrates on μ.
    se = z.std(0) / math.sqrt(n)
    assert bool(((z.mean(0) - q.mean).abs() <= 5 * se + 1e-12).all())


def test_second_moment_of_orthogonal_part():
    # E[w²] = 1 - (m-1)A/κ, so each orthogonal coordinate has variance A/κ: checks the
    # sqrt(1 - w²) radius and that the orthogonal direction is uniform (isotropic covariance).
    m, kappa, n = 4, 5.0, 40000
    mu = torch.eye(m, dtype=F64)[2]
    q = VonMisesFisher(mu, torch.tensor(kappa, dtype=F64))
    z = q.sample(n, generator=_gen(2))
    perp = z[:, [0, 1, 3]]
    cov = perp.T @ perp / n
    target = q.mean_resultant_length.item() / kappa
    # Entries of z_i z_j have variance below target²·3; 5 standard errors.
    assert (cov - target * torch.eye(3, dtype=F64)).abs().max() < 5 * math.sqrt(3 / n) * target


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_reflection_at_poles(sign):
    mu = torch.tensor([sign, 0.0, 0.0], dtype=F64)
    q = VonMisesFisher(mu, torch.tensor(100.0, dtype=F64))
    z = q.sample(2000, generator=_gen())
    assert (z @ mu).mean().item() == pytest.approx(q.mean_resultant_length.item(), abs=5e-3)


def test_sampling_is_reproducible():
    q = VonMisesFisher(_unit(5), torch.tensor(3.0, dtype=F64))
    assert torch.equal(q.sample(50, generator=_gen(7)), q.sample(50, generator=_gen(7)))
    assert not torch.equal(q.sample(50, generator=_gen(7)), q.sample(50, generator=_gen(8)))


# --------------------------------------------------------------------------- KL and entropy


@pytest.mark.parametrize("m", [2, 3, 10, 64])
@pytest.mark.parametrize("kappa", [0.5, 10.0, 1e3])
def test_kl_uniform_matches_monte_carlo(m, kappa):
    q = VonMisesFisher(_unit(m), torch.tensor(kappa, dtype=F64))
    n = 20000
    z = q.sample(n, generator=_gen(3))
    diff = q.log_prob(z) - HypersphericalUniform(m).log_prob(z)
    # 5 standard errors, plus a floor for the near-deterministic κ = 1e3, m = 2 case.
    tol = 5 * diff.std().item() / math.sqrt(n) + 1e-9
    assert abs(diff.mean().item() - q.kl_uniform().item()) < tol
    # The book's printed first term "κ" instead of κ A_m(κ) would be far off.
    book = kappa + q.log_normalizer().item() + log_sphere_area(m)
    assert abs(book - q.kl_uniform().item()) > 10 * tol
    assert q.entropy().item() == pytest.approx(-q.log_prob(z).mean().item(), abs=tol)


@pytest.mark.parametrize("m", [2, 3, 10, 256])
def test_kl_is_nonnegative_increasing_and_zero_at_zero(m):
    kappa = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(-6, 5, 60, dtype=F64)])
    q = VonMisesFisher(_unit(m).expand(61, m), kappa)
    kl = q.kl_uniform()
    assert kl[0].item() == 0.0
    assert kl[1].item() == pytest.approx(1e-12 / (2 * m), rel=1e-6)  # KL ~ κ²/(2m) as κ -> 0
    assert bool(torch.isfinite(kl).all()) and bool((kl >= 0).all())
    assert bool((kl.diff() > 0).all())


def test_kl_gradient_matches_finite_differences():
    # Central differences with a relative step h = 1e-4 κ: gradcheck's fixed step 1e-6 would
    # drown at κ = 1e5 in the ~1e-11 rounding of KL ≈ κA - log S (each term ~κ).
    for m in [2, 3, 64, 256]:
        kappa = torch.tensor([1e-3, 0.7, 1.3, 100.0, 1e4, 1e5], dtype=F64, requires_grad=True)
        mu = _unit(m).expand(6, m)
        (g,) = torch.autograd.grad(VonMisesFisher(mu, kappa).kl_uniform().sum(), kappa)
        k, h = kappa.detach(), 1e-4 * kappa.detach()
        fd = (VonMisesFisher(mu, k + h).kl_uniform() - VonMisesFisher(mu, k - h).kl_uniform()) / (
            2 * h
        )
        # A' = 1 - A² - (m-1)A/κ ~ (m-1)/(2κ²) cancels to ~eps κ² relative: 4e-6 at m = 2,
        # κ = 1e5, where the finite difference is not better.
        assert torch.allclose(g, fd, rtol=1e-5, atol=0)
        # For κ >> m, dKL/dκ = κ A'(κ) -> (m-1)/(2κ).
        assert g[-1].item() == pytest.approx((m - 1) / 2e5, rel=m * 1e-4)


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_large_concentration_and_dimension_are_finite(dtype):
    for m, kappa in [(3, 1e5), (256, 1e5), (256, 1.0), (2, 1e5)]:
        raw = torch.randn(3, m, dtype=dtype, requires_grad=True)
        kap = torch.full((3,), kappa, dtype=dtype, requires_grad=True)
        q = VonMisesFisher(torch.nn.functional.normalize(raw, dim=-1), kap)
        z = q.rsample(5, generator=_gen())
        assert z.dtype == dtype and bool(torch.isfinite(z).all())
        assert torch.allclose(z.norm(dim=-1), torch.ones((), dtype=dtype), atol=1e-5)
        lp, kl = q.log_prob(z), q.kl_uniform()
        assert bool(torch.isfinite(lp).all()) and bool(torch.isfinite(kl).all())
        # With κ = 1e5 the draws sit within ~sqrt(m/κ) of μ.
        if kappa == 1e5:
            assert bool(((z * q.loc).sum(-1) > 1 - 10 * m / kappa).all())
        g_raw, g_kap = torch.autograd.grad((z[..., 0] + lp + kl.unsqueeze(0)).sum(), (raw, kap))
        assert bool(torch.isfinite(g_raw).all()) and bool(torch.isfinite(g_kap).all())


def test_gradients_reach_loc_and_concentration():
    m = 5
    raw = torch.randn(8, m, dtype=F64, requires_grad=True)
    log_kappa = torch.randn(8, dtype=F64, requires_grad=True)
    q = VonMisesFisher(torch.nn.functional.normalize(raw, dim=-1), log_kappa.exp() * 10)
    z = q.rsample(4, generator=_gen())
    target = torch.ones(m, dtype=F64)
    loss = ((z - target) ** 2).sum(-1).mean() + q.kl_uniform().mean()
    g_raw, g_kap = torch.autograd.grad(loss, (raw, log_kappa))
    assert bool(torch.isfinite(g_raw).all()) and bool(torch.isfinite(g_kap).all())
    assert bool((g_raw.abs().sum(-1) > 0).all()) and bool((g_kap != 0).all())


def test_loc_gradient_is_unbiased():
    # E[cᵀz] = A cᵀμ with μ = p/‖p‖, so ∇_p E[cᵀz] = A (I - μμᵀ) c / ‖p‖ (no rejection bias:
    # the accepted ε does not depend on μ). Per-draw gradients, 5 standard errors.
    m, n, kappa = 4, 20000, 3.0
    p0 = torch.tensor([0.3, -1.0, 0.5, 2.0], dtype=F64)
    c = torch.tensor([1.0, 2.0, -1.0, 0.5], dtype=F64)
    p = p0.expand(n, m).clone().requires_grad_(True)
    q = VonMisesFisher(p / p.norm(dim=-1, keepdim=True), torch.tensor(kappa, dtype=F64))
    (g,) = torch.autograd.grad((q.rsample(1, generator=_gen(4)) @ c).sum(), p)
    mu = p0 / p0.norm()
    a = bessel_ratio(0.5 * m - 1, torch.tensor(kappa, dtype=F64))
    exact = a * (c - mu * (mu @ c)) / p0.norm()
    assert bool(((g.mean(0) - exact).abs() < 5 * g.std(0) / math.sqrt(n) + 1e-12).all())


@pytest.mark.parametrize("m, kappa", [(2, 5.0), (3, 1.0), (10, 5.0)])
def test_rejection_correction_removes_concentration_gradient_bias(m, kappa):
    # d/dκ E[μᵀz] = A'(κ) = 1 - A² - (m-1)A/κ. The pathwise gradient alone (rsample) is biased
    # here (measured: about -24 %, -20 % and -7.5 %); adding the score term of Naesseth et al.
    # is unbiased. Per-draw gradients, 5 standard errors.
    n = 50000
    mu = torch.eye(m, dtype=F64)[1].expand(n, m)
    kap = torch.full((n,), kappa, dtype=F64, requires_grad=True)
    z, log_pi = VonMisesFisher(mu, kap).rsample_with_correction(1, generator=_gen(5))
    f = (z * mu).sum(-1)
    (g_path,) = torch.autograd.grad(f.sum(), kap, retain_graph=True)
    surrogate = f + f.detach() * (log_pi - log_pi.detach())
    (g_full,) = torch.autograd.grad(surrogate.sum(), kap)
    a = bessel_ratio(0.5 * m - 1, torch.tensor(kappa, dtype=F64)).item()
    exact = 1 - a * a - (m - 1) * a / kappa
    se_full, se_path = g_full.std().item() / math.sqrt(n), g_path.std().item() / math.sqrt(n)
    assert abs(g_full.mean().item() - exact) < 5 * se_full
    assert g_path.mean().item() < exact - 10 * se_path
    assert 0.03 < (exact - g_path.mean().item()) / exact < 0.4
