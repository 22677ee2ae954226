"""ODE/SDE solvers, trace estimators and the ODE likelihood (dgm.core.solvers, estimators,
ode_likelihood)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm.core.errors import ConfigError
from dgm.core.estimators import exact_divergence, hutchinson_divergence, jacobian, probe
from dgm.core.ode_likelihood import ode_log_likelihood
from dgm.core.schedules import VEGeometric, VPLinear
from dgm.core.solvers import SolverError, euler_maruyama, solve_ode, time_grid


def _linear_error(solver: str, steps: int) -> float:
    # dx/dt = -x + sin t... use the linear ODE dx/dt = A x with a rotation-damping A
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    x0 = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    sol = solve_ode(lambda t, x: x @ a.T, x0, 0.0, 1.5, solver=solver, steps=steps)
    exact = x0 @ torch.linalg.matrix_exp(1.5 * a).T
    return float((sol.state - exact).norm())


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_fixed_step_order_of_convergence(solver: str, order: int) -> None:
    e1, e2 = _linear_error(solver, 40), _linear_error(solver, 80)
    assert math.log2(e1 / e2) == pytest.approx(order, abs=0.25)


@pytest.mark.parametrize("solver,stages", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_nfe_counts_the_evaluations(solver: str, stages: int) -> None:
    sol = solve_ode(lambda t, x: -x, torch.ones(3), 1.0, 0.0, solver=solver, steps=7)
    assert sol.nfe == 7 * stages


def test_adaptive_meets_its_tolerance_and_backward_time() -> None:
    a = torch.tensor([[-0.5, 2.0], [-2.0, -0.5]], dtype=torch.float64)
    x1 = torch.tensor([[0.3, -0.2]], dtype=torch.float64)
    # integrate backward in time from t = 1 to t = 0
    sol = solve_ode(lambda t, x: x @ a.T, x1, 1.0, 0.0, solver="dopri5", rtol=1e-9, atol=1e-9)
    exact = x1 @ torch.linalg.matrix_exp(-a).T
    assert float((sol.state - exact).abs().max()) < 1e-7
    assert sol.nfe > 6


def test_adaptive_solver_stops_instead_of_hanging() -> None:
    stiff = lambda t, x: -1e6 * (x - torch.cos(t * 1e3))  # noqa: E731
    with pytest.raises(SolverError, match="more than 20 steps"):
        solve_ode(stiff, torch.ones(2, dtype=torch.float64), 0.0, 1.0, solver="dopri5",
                  max_steps=20)


def test_adaptive_solver_names_a_step_underflow() -> None:
    # a field too noisy for the tolerance in float32: a SolverError, not torchdiffeq's assert
    gen = torch.Generator().manual_seed(0)
    noisy = lambda t, x: torch.randn(x.shape, generator=gen) * 1e3  # noqa: E731
    with pytest.raises(SolverError, match="dopri5 (shrank its step|needed more than)"):
        solve_ode(noisy, torch.ones(4), 0.0, 1.0, solver="dopri5", rtol=1e-9, atol=1e-9,
                  max_steps=800)


def test_tuple_states_and_unknown_solver() -> None:
    sol = solve_ode(lambda t, s: (s[1], -s[0]), (torch.ones(1), torch.zeros(1)), 0.0,
                    math.pi / 2, solver="rk4", steps=50)
    assert float(sol.state[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(sol.state[1]) == pytest.approx(-1.0, abs=1e-6)
    with pytest.raises(ConfigError, match="unknown solver"):
        solve_ode(lambda t, x: x, torch.ones(1), 0, 1, solver="leapfrog")
    with pytest.raises(ConfigError):
        time_grid(0, 1, 0)


def test_euler_maruyama_matches_ornstein_uhlenbeck() -> None:
    # dx = -θ x dt + s dw: x_t ~ N(x0 e^{-θt}, s²(1 - e^{-2θt})/(2θ))
    gen = torch.Generator().manual_seed(0)
    theta, s, t = 1.3, 0.8, 1.0
    x0 = torch.full((40000,), 2.0, dtype=torch.float64)
    sol = euler_maruyama(lambda t, x: -theta * x, lambda t: torch.tensor(s), x0,
                         time_grid(0, t, 400, dtype=torch.float64), generator=gen)
    x = sol.state
    assert float(x.mean()) == pytest.approx(2.0 * math.exp(-theta * t), abs=0.01)
    var = s**2 * (1 - math.exp(-2 * theta * t)) / (2 * theta)
    assert float(x.var()) == pytest.approx(var, rel=0.03)
    assert sol.nfe == 400


def _mlp(d: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, d)).double()


def test_exact_divergence_is_the_jacobian_trace() -> None:
    net = _mlp(5)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    out = net(x)
    full = torch.stack([torch.autograd.functional.jacobian(net, x[i]) for i in range(4)])
    torch.testing.assert_close(jacobian(out, x, block=2), full)
    torch.testing.assert_close(exact_divergence(out, x, block=3),
                               full.diagonal(dim1=1, dim2=2).sum(1))


@pytest.mark.parametrize("kind", ["gaussian", "rademacher"])
def test_hutchinson_is_unbiased_with_the_predicted_variance(kind: str) -> None:
    # Var(εᵀAε) = 2||A_s||_F² (Gaussian), 2(||A_s||_F² - Σ A_ii²) (Rademacher)
    torch.manual_seed(1)
    a = torch.randn(6, 6, dtype=torch.float64)
    x = torch.randn(20000, 6, dtype=torch.float64, requires_grad=True)
    out = x @ a.T
    eps = probe(x, kind, generator=torch.Generator().manual_seed(3))
    est = hutchinson_divergence(out, x, eps)
    a_sym = (a + a.T) / 2
    var = 2 * (a_sym**2).sum()
    if kind == "rademacher":
        var = var - 2 * (a.diagonal() ** 2).sum()
    se = math.sqrt(float(var) / est.numel())
    assert abs(float(est.mean()) - float(a.trace())) < 4 * se
    assert float(est.var()) == pytest.approx(float(var), rel=0.05)


def test_the_books_trace_of_ones_is_not_an_estimator() -> None:
    # The book differentiates v.sum(): 1ᵀJε has mean 0, not tr J. Ours does not.
    a = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    x = torch.randn(50000, 3, dtype=torch.float64, requires_grad=True)
    out = x @ a.T
    eps = probe(x, "gaussian", generator=torch.Generator().manual_seed(0))
    (ones_j,) = torch.autograd.grad(out.sum(), x, retain_graph=True)
    books = (ones_j * eps).sum(1)
    assert abs(float(books.mean())) < 0.1
    assert float(hutchinson_divergence(out, x, eps).mean()) == pytest.approx(6.0, abs=0.1)


def _gaussian_log_prob(z: torch.Tensor, var: float) -> torch.Tensor:
    return (-0.5 * z.pow(2) / var - 0.5 * math.log(2 * math.pi * var)).sum(1)


def test_ode_likelihood_of_a_linear_field_is_exact() -> None:
    # v = A z: z_1 = e^{A} x, log p_0(x) = log N(e^{A} x) + tr(A)  (Book checklist 44)
    a = torch.tensor([[-0.3, 0.4], [0.1, 0.2]], dtype=torch.float64)
    x = torch.randn(7, 2, dtype=torch.float64)
    res = ode_log_likelihood(lambda t, z: z @ a.T, x, lambda z: _gaussian_log_prob(z, 1.0),
                             solver="dopri5", rtol=1e-9, atol=1e-9, chunk=3)
    z1 = x @ torch.linalg.matrix_exp(a).T
    torch.testing.assert_close(res.log_prob, _gaussian_log_prob(z1, 1.0) + a.trace())
    assert res.stderr is None and res.nfe > 0


@pytest.mark.parametrize("schedule", [VPLinear(), VEGeometric(0.01, 20.0)], ids=["vp", "ve"])
def test_probability_flow_likelihood_of_gaussian_data_under_its_exact_score(schedule) -> None:
    # data N(μ, s²I): p_t = N(α μ, α² s² + σ²); the PF-ODE with the exact score carries it to
    # p_1 and its ODE likelihood equals log N(x | μ, s²) (Book checklist 42).
    schedule = schedule.double()
    mu, s2 = 0.7, 0.25

    def velocity(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        tb = t[:, None]
        alpha, sigma = schedule.alpha_sigma(tb)
        f, g2 = schedule.sde(tb)
        score = -(z - alpha * mu) / (alpha**2 * s2 + sigma**2)
        return f * z - 0.5 * g2 * score

    t0 = 1e-4
    a1, s1 = schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))
    var1 = float(a1**2 * s2 + s1**2)
    x = mu + math.sqrt(s2) * torch.randn(5, 3, dtype=torch.float64)
    res = ode_log_likelihood(velocity, x, lambda z: _gaussian_log_prob(z - float(a1) * mu, var1),
                             t0=t0, solver="dopri5", rtol=1e-8, atol=1e-8)
    a0, s0 = schedule.alpha_sigma(torch.tensor(t0, dtype=torch.float64))
    var0 = float(a0**2 * s2 + s0**2)
    torch.testing.assert_close(res.log_prob, _gaussian_log_prob(x - float(a0) * mu, var0),
                               rtol=1e-5, atol=1e-5)


def test_hutchinson_ode_likelihood_brackets_the_exact_one() -> None:
    net = _mlp(4)
    field = lambda t, z: net(z) * (1 + t[:, None])  # noqa: E731
    x = torch.randn(3, 4, dtype=torch.float64)
    base = lambda z: _gaussian_log_prob(z, 1.0)  # noqa: E731
    exact = ode_log_likelihood(field, x, base, solver="rk4", steps=20)
    est = ode_log_likelihood(field, x, base, solver="rk4", steps=20, divergence="hutchinson",
                             num_probes=400, generator=torch.Generator().manual_seed(0))
    assert est.stderr is not None and (est.stderr > 0).all()
    assert ((est.log_prob - exact.log_prob).abs() < 4 * est.stderr).all()
    torch.testing.assert_close(est.z, exact.z)


def test_ode_likelihood_trains_through_a_fixed_step_solver() -> None:
    net = _mlp(2)
    x = torch.randn(8, 2, dtype=torch.float64)
    res = ode_log_likelihood(lambda t, z: net(z), x, lambda z: _gaussian_log_prob(z, 1.0),
                             solver="rk4", steps=4, create_graph=True, regularize=True,
                             divergence="hutchinson")
    loss = -res.log_prob.mean() + 0.01 * (res.kinetic.mean() + res.jacobian_norm.mean())
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    assert (res.kinetic > 0).all() and (res.jacobian_norm > 0).all()

