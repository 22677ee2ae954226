"""Langevin samplers (dgm.core.mcmc): stationary laws against closed forms, annealing on a
mixture, the SNR corrector, autograd scores, argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dgm.core.errors import ConfigError, DataError
from dgm.core.mcmc import (
    annealed_langevin,
    langevin,
    langevin_corrector,
    langevin_step,
    snr_step_size,
    ula_stationary_variance,
)

CHAINS = 20_000


def gaussian_score(mu: float, s2: float):
    return lambda x: (mu - x) / s2


def var_tolerance(var: float, n: int, k: float = 4.0) -> float:
    """k standard errors of a sample variance of n independent normal draws: sqrt(2/n)·var."""
    return k * math.sqrt(2.0 / n) * var


# --- ULA on a Gaussian: exact stationary law --------------------------------------------------


@pytest.mark.parametrize("alpha", [0.05, 0.2])
def test_tied_ula_on_a_gaussian_matches_the_closed_form_stationary_law(alpha: float) -> None:
    mu, s2 = 1.5, 0.7**2
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((CHAINS,), -5.0, dtype=torch.float64)
    x = langevin(x0, gaussian_score(mu, s2), alpha, 400, generator=g)
    predicted = ula_stationary_variance(s2, alpha)
    assert abs(float(x.mean()) - mu) < 4 * math.sqrt(predicted / CHAINS)
    assert abs(float(x.var()) - predicted) < var_tolerance(predicted, CHAINS)
    if alpha >= 0.2:  # the discretization bias s²/(1 - α/2s²) - s² is then many errors wide
        assert float(x.var()) - s2 > 3 * var_tolerance(predicted, CHAINS)


def test_decoupled_noise_samples_a_sharpened_target() -> None:
    # The book's listing: α = 0.01, η = 0.05 on N(0, 1) targets p^(2α/η²) = p^8, variance 1/8.
    alpha, eta = 0.01, 0.05
    g = torch.Generator().manual_seed(1)
    x0 = torch.zeros(CHAINS, dtype=torch.float64)
    x = langevin(x0, gaussian_score(0.0, 1.0), alpha, 1000, noise=eta, generator=g)
    rho = 1 - alpha
    predicted = ula_stationary_variance(1.0, alpha, noise_std=eta)
    assert predicted == pytest.approx(eta**2 / (1 - rho**2))
    assert predicted == pytest.approx(eta**2 / (2 * alpha), abs=1e-3)  # the p^(2α/η²) limit
    assert abs(float(x.var()) - predicted) < var_tolerance(predicted, CHAINS)
    assert float(x.var()) < 0.2  # nowhere near the target's variance of 1


def test_tied_noise_is_noise_sqrt_2_alpha() -> None:
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(2))
    score = -x
    alpha = 0.03
    tied = langevin_step(x, score, alpha, generator=torch.Generator().manual_seed(3))
    explicit = langevin_step(
        x, score, alpha, noise=math.sqrt(2 * alpha), generator=torch.Generator().manual_seed(3)
    )
    assert torch.equal(tied, explicit)
    g = torch.Generator().manual_seed(3)
    smaller = langevin_step(x, score, alpha, noise=0.05, generator=g)
    assert not torch.equal(tied, smaller)


def test_the_same_seed_gives_the_same_chain() -> None:
    x0 = torch.zeros(100, 2)

    def run(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        return langevin(x0, lambda x: -x, 0.1, 20, generator=g)

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))

    def run_annealed(seed: int) -> Tensor:
        g = torch.Generator().manual_seed(seed)
        score = lambda x, sigma: -x / (1 + sigma**2)
        return annealed_langevin(
            x0, score, [2.0, 1.0], steps_per_level=5, epsilon=0.1, generator=g
        )

    assert torch.equal(run_annealed(6), run_annealed(6))


def test_clamp_keeps_the_chain_in_range() -> None:
    g = torch.Generator().manual_seed(7)
    flat = lambda x: torch.zeros_like(x)
    x = langevin(torch.full((500,), 0.5), flat, 0.5, 10, clamp=(0.0, 1.0), generator=g)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0  # the noise does reach the bounds


# --- annealed Langevin on a mixture (Song & Ermon 2019, Section 3.2 / Figure 3) ---------------

WEIGHTS = torch.tensor([0.8, 0.2], dtype=torch.float64)
MEANS = torch.tensor([-4.0, 4.0], dtype=torch.float64)
STD = 0.5


def mixture_score(x: Tensor, sigma: float) -> Tensor:
    """∇ log of the mixture convolved with N(0, σ²): Σ_k w_k N(μ_k, s² + σ²)."""
    var = STD**2 + sigma**2
    diff = MEANS - x.unsqueeze(-1)  # (N, K)
    resp = torch.softmax(torch.log(WEIGHTS) - 0.5 * diff**2 / var, dim=-1)
    return (resp * diff).sum(-1) / var


def uniform_start(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64) * 16 - 8


def test_annealed_langevin_recovers_the_mode_weights_that_plain_langevin_misses() -> None:
    n = 10_000
    sigmas = torch.logspace(1, -2, 20, dtype=torch.float64).tolist()  # 10 -> 0.01
    g = torch.Generator().manual_seed(8)
    x = annealed_langevin(
        uniform_start(n, g), mixture_score, sigmas, steps_per_level=100, epsilon=2e-5, generator=g
    )
    near = lambda x, m: float(((x - m).abs() < 1.5).double().mean())
    assert near(x, -4.0) + near(x, 4.0) > 0.99  # every sample ends in a mode
    assert abs(near(x, 4.0) - 0.2) < 0.03

    # One level at the smallest σ: each chain stays in the mode whose basin it started in.
    g = torch.Generator().manual_seed(8)
    smallest = lambda x: mixture_score(x, sigmas[-1])
    plain = langevin(uniform_start(n, g), smallest, 0.01, 1000, generator=g)
    assert near(plain, -4.0) + near(plain, 4.0) > 0.99
    assert abs(near(plain, 4.0) - 0.5) < 0.03


def test_final_denoise_is_tweedie() -> None:
    # On N(0, s²) smoothed by σ: score -x/(s² + σ²), so x + σ²·score = x·s²/(s² + σ²).
    s2, sigmas = 1.0, [1.0, 0.5]
    score = lambda x, sigma: -x / (s2 + sigma**2)
    x0 = torch.randn(50, 4, generator=torch.Generator().manual_seed(9))
    kwargs = {"steps_per_level": 3, "epsilon": 0.05}
    noisy = annealed_langevin(
        x0, score, sigmas, generator=torch.Generator().manual_seed(1), **kwargs
    )
    clean = annealed_langevin(
        x0, score, sigmas, generator=torch.Generator().manual_seed(1), final_denoise=True, **kwargs
    )
    torch.testing.assert_close(clean, noisy * s2 / (s2 + 0.5**2))


@pytest.mark.parametrize(
    "sigmas", [[0.1, 1.0], [1.0, 0.1, 0.5], [1.0, 1.0], [], [1.0, -0.1], [1.0, float("nan")]]
)
def test_annealed_langevin_rejects_a_bad_schedule(sigmas: list[float]) -> None:
    with pytest.raises(ConfigError):
        annealed_langevin(torch.zeros(3), lambda x, s: -x, sigmas, steps_per_level=1, epsilon=0.1)


# --- the SNR corrector (Song et al. 2021, Algorithm 5) ----------------------------------------


def test_snr_step_size_by_hand() -> None:
    score = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    # D = 2, mean ||s|| = (5 + 1)/2 = 3: α = 2 (0.5·√2 / 3)² = 1/9
    torch.testing.assert_close(snr_step_size(score, 0.5), torch.tensor(1 / 9))
    assert float(snr_step_size(torch.zeros(2, 3), 0.5)) == 0.0


def test_snr_step_size_is_one_for_the_batch() -> None:
    # a step per example would depend on the state (the chain would not keep p_t invariant)
    score = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(10))
    score[1] *= 10
    alpha = snr_step_size(score, 0.16)
    assert alpha.dim() == 0
    mean_norm = score.flatten(1).norm(dim=1).mean()
    torch.testing.assert_close(alpha * mean_norm**2, torch.tensor(2 * 0.16**2 * 32))


def test_the_corrector_keeps_a_gaussian_invariant() -> None:
    # exact score of N(0, 4 I) in 2-D; start at the target: many corrector steps keep it
    g = torch.Generator().manual_seed(3)
    x = 2.0 * torch.randn(20000, 2, generator=g)
    for _ in range(50):
        x = langevin_corrector(x, -x / 4.0, 0.16, generator=g)
    assert float(x.var()) == pytest.approx(4.0, rel=0.08)


def test_the_corrector_step_has_the_target_signal_to_noise_ratio() -> None:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(8, 1000, generator=g)
    score = torch.randn(8, 1000, generator=g) * torch.logspace(-1, 1, 8).unsqueeze(1)
    step = langevin_corrector(x, score, 0.16, generator=torch.Generator().manual_seed(12))
    alpha = snr_step_size(score, 0.16)
    drift = alpha * score
    noise = step - x - drift
    ratio = drift.norm(dim=1).mean() / noise.norm(dim=1).mean()
    torch.testing.assert_close(ratio, torch.tensor(0.16), rtol=0.1, atol=0.0)
    same = langevin_step(x, score, alpha, generator=torch.Generator().manual_seed(12))
    torch.testing.assert_close(step, same)


# --- scores through autograd (energy models) --------------------------------------------------


def energy_score(x: Tensor, create_graph: bool = False) -> Tensor:
    """-∇E for E(x) = x²/2, through autograd as an energy model would."""
    x = x.detach().requires_grad_(True)
    energy = (0.5 * x**2).sum()
    (grad,) = torch.autograd.grad(energy, x, create_graph=create_graph)
    return -grad


@pytest.mark.parametrize("create_graph", [False, True])
def test_langevin_with_an_autograd_score_returns_a_plain_tensor(create_graph: bool) -> None:
    g = torch.Generator().manual_seed(13)
    x0 = torch.full((CHAINS,), 3.0, dtype=torch.float64, requires_grad=True)
    x = langevin(x0, lambda x: energy_score(x, create_graph), 0.1, 200, generator=g)
    assert not x.requires_grad and x.grad_fn is None
    predicted = ula_stationary_variance(1.0, 0.1)
    assert abs(float(x.var()) - predicted) < var_tolerance(predicted, CHAINS)


def test_an_autograd_score_that_enables_grad_works_under_no_grad() -> None:
    def score(x: Tensor) -> Tensor:
        with torch.enable_grad():
            return energy_score(x)

    with torch.no_grad():
        x = langevin(torch.zeros(10), score, 0.1, 5, generator=torch.Generator().manual_seed(0))
    assert x.shape == (10,) and bool(torch.isfinite(x).all())


# --- the closed form and argument checks ------------------------------------------------------


def test_ula_stationary_variance_closed_forms() -> None:
    s2, alpha = 0.49, 0.2
    assert ula_stationary_variance(s2, alpha) == pytest.approx(s2 / (1 - alpha / (2 * s2)))
    rho = 1 - alpha / s2
    assert ula_stationary_variance(s2, alpha, math.sqrt(2 * alpha)) == pytest.approx(
        2 * alpha / (1 - rho**2)
    )
    assert ula_stationary_variance(s2, alpha, 0.0) == 0.0


@pytest.mark.parametrize("alpha", [2 * 0.49, 2 * 0.49 + 1e-6, 5.0])
def test_ula_stationary_variance_raises_when_the_chain_diverges(alpha: float) -> None:
    # ρ = 1 - α/s² reaches -1 at α = 2 s²
    with pytest.raises(ConfigError, match="diverges"):
        ula_stationary_variance(0.49, alpha)
    assert ula_stationary_variance(0.49, 2 * 0.49 - 1e-3) > 0  # just below: finite


@pytest.mark.parametrize(
    "kwargs",
    [
        {"step_size": 0.0},
        {"step_size": -0.1},
        {"step_size": float("nan")},
        {"noise": "book"},
        {"noise": -0.1},
        {"noise": float("inf")},
        {"steps": -1},
        {"steps": 2.5},
        {"clamp": (1.0, 0.0)},
    ],
)
def test_langevin_rejects_bad_arguments(kwargs: dict) -> None:
    args = {"step_size": 0.1, "steps": 2} | kwargs
    with pytest.raises(ConfigError):
        langevin(torch.zeros(3), lambda x: -x, **args)


def test_other_bad_arguments() -> None:
    with pytest.raises(DataError):
        langevin_step(torch.zeros(3), torch.zeros(4), 0.1)
    with pytest.raises(ConfigError):
        snr_step_size(torch.ones(2, 3), 0.0)
    with pytest.raises(ConfigError):
        annealed_langevin(torch.zeros(3), lambda x, s: -x, [1.0], steps_per_level=0, epsilon=0.1)
    with pytest.raises(ConfigError):
        annealed_langevin(torch.zeros(3), lambda x, s: -x, [1.0], steps_per_level=1, epsilon=0.0)
    with pytest.raises(ConfigError):
        ula_stationary_variance(0.0, 0.1)
