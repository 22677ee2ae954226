"""Invertible residual flows (i-ResNet, Residual Flows, i-DenseNet; Book §4.1.7), float64:
Lipschitz bounds, the fixed-point inverse, exact and estimated log-dets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from dgm.core.errors import ConfigError, DataError
from dgm.core.transforms.base import Compose
from dgm.core.transforms.residual import (
    CLipSwish,
    LipSwish,
    ResidualBlock,
    SpectralNormLinear,
)

D = 5
CTX = 3


def _saturate(block: ResidualBlock, bias: float = 1.0) -> ResidualBlock:
    """Put every constrained weight at its bound with all singular values equal (orthogonal x 10,
    rescaled to the coefficient) and push the pre-activations to where LipSwish has slope
    near 1, so that ||J_g|| comes close to the Lipschitz bound and the tests have power."""
    with torch.no_grad():
        for m in block.modules():
            if isinstance(m, SpectralNormLinear):
                torch.nn.init.orthogonal_(m.weight)
                m.weight.mul_(10.0)
                m.bias.fill_(bias)
    return block


def _block(kind: str, *, coeff: float = 0.97, context: int = 0, **kw: object) -> ResidualBlock:
    if kind == "mlp":
        b = ResidualBlock.mlp(D, D, num_hidden=1, context_dim=context, coeff=coeff, **kw)
    elif kind == "mlp_wide":
        b = ResidualBlock.mlp(D, 32, num_hidden=2, context_dim=context, coeff=coeff, **kw)
    elif kind == "mlp_clipswish":
        b = ResidualBlock.mlp(D, D, num_hidden=1, context_dim=context, coeff=coeff,
                              activation="clipswish", **kw)
    else:
        b = ResidualBlock.densenet(D, 3, depth=2, context_dim=context, coeff=coeff, **kw)
    return _saturate(b.double()).eval()


def _jac_g(block: ResidualBlock, x: Tensor, c: Tensor | None = None) -> Tensor:
    """Batched Jacobian of the residual function, (N, D, D), column by column."""
    x = x.detach().requires_grad_(True)
    gx = block.residual(x, c)
    rows = [torch.autograd.grad(gx[:, i].sum(), x, retain_graph=True)[0] for i in range(D)]
    return torch.stack(rows, dim=1)


def _trace_powers(jac: Tensor, n: int) -> Tensor:
    """tr(J^k) for k = 1..n, shape (N, n)."""
    out, power = [], torch.eye(D, dtype=jac.dtype).expand_as(jac)
    for _ in range(n):
        power = power @ jac
        out.append(torch.diagonal(power, dim1=1, dim2=2).sum(-1))
    return torch.stack(out, dim=1)


KINDS = ["mlp", "mlp_wide", "mlp_clipswish", "densenet"]


@pytest.mark.parametrize("kind", KINDS)
def test_lipschitz_of_residual_below_coeff(kind: str) -> None:
    coeff = 0.9
    block = _block(kind, coeff=coeff, context=CTX)
    layers = [m for m in block.modules() if isinstance(m, SpectralNormLinear)]
    for m in layers:
        sigma = torch.linalg.matrix_norm(m.normalized_weight().detach(), ord=2)
        # The saturated weights are rescaled to exactly coeff (a tight power-iteration estimate).
        assert sigma <= coeff * (1 + 1e-9)
        assert sigma >= coeff * (1 - 1e-6)
    x = torch.cat([torch.randn(300, D, dtype=torch.float64) * s for s in (0.3, 1.0, 5.0)])
    c = torch.randn(x.shape[0], CTX, dtype=torch.float64) * 3
    top = torch.linalg.matrix_norm(_jac_g(block, x, c), ord=2)
    assert float(top.max()) <= coeff
    assert float(top.max()) > 0.3  # the test is not trivially passed by a near-zero g


def test_spectral_norm_leaves_small_weights_and_eval_is_frozen() -> None:
    layer = SpectralNormLinear(6, 4, coeff=0.97).double()
    with torch.no_grad():
        layer.weight.mul_(0.01 / torch.linalg.matrix_norm(layer.weight, ord=2))
    layer.eval()
    assert torch.equal(layer.normalized_weight(), layer.weight)  # σ̂ < coeff: unchanged
    with torch.no_grad():
        layer.weight.mul_(1000.0)  # σ = 10: rescaled, the new version triggers reconvergence
    w1 = layer.normalized_weight().detach().clone()
    u1 = layer.u.clone()
    assert torch.linalg.matrix_norm(w1, ord=2) == pytest.approx(0.97, rel=1e-9)
    assert torch.equal(layer.normalized_weight(), w1) and torch.equal(layer.u, u1)
    layer.train()
    layer.u.copy_(torch.nn.functional.normalize(torch.randn(4, dtype=torch.float64), dim=0))
    u2 = layer.u.clone()
    layer.normalized_weight()
    assert not torch.equal(layer.u, u2)  # a training call takes a power-iteration step


@pytest.mark.parametrize("beta", [0.1, 1.0, 10.0])
def test_lipswish_and_clipswish_lipschitz_at_most_one(beta: float) -> None:
    t = torch.linspace(-30 / beta, 30 / beta, 20001, dtype=torch.float64).requires_grad_(True)
    act = LipSwish(beta).double()
    (d,) = torch.autograd.grad(act(t).sum(), t)
    assert float(d.abs().max()) <= 1.0
    assert float(d.max()) > 0.999  # 1.0998 / 1.1: the bound is tight
    cact = CLipSwish(beta).double()
    out = cact(t.unsqueeze(1))  # (T, 2): the Jacobian of each coordinate is a 2x1 column
    (d1,) = torch.autograd.grad(out[:, 0].sum(), t, retain_graph=True)
    (d2,) = torch.autograd.grad(out[:, 1].sum(), t)
    col_norm = torch.sqrt(d1**2 + d2**2)
    assert float(col_norm.max()) <= 1.0
    assert float(col_norm.max()) > 0.9999
    # A vector input: the spectral norm of the full (2H, H) Jacobian.
    x = torch.randn(4, dtype=torch.float64) * 3
    jac = torch.autograd.functional.jacobian(cact, x)
    assert float(torch.linalg.matrix_norm(jac, ord=2)) <= 1.0


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_point_inverse_undoes_forward(kind: str) -> None:
    block = _block(kind, context=CTX)
    x = torch.randn(64, D, dtype=torch.float64) * 2
    c = torch.randn(64, CTX, dtype=torch.float64)
    z, ld = block(x, c)
    x_back, inv_ld = block.inverse(z, c)
    assert block.last_inverse_iterations < block.inverse_max_iter
    assert torch.allclose(x_back, x, atol=1e-8, rtol=0)
    assert torch.allclose(ld + inv_ld, torch.zeros_like(ld), atol=1e-10)
    assert float((z - x).detach().abs().max()) > 0.5  # a block far from the identity
    z2, _ = block.inverse(x, c)
    assert torch.allclose(block(z2, c)[0], x, atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_exact_logdet_matches_autograd_jacobian(kind: str) -> None:
    block = _block(kind, context=CTX, logdet="series")  # eval "auto" -> exact for D=5
    assert block.current_method() == "exact"
    x = torch.randn(6, D, dtype=torch.float64)
    c = torch.randn(6, CTX, dtype=torch.float64)
    ld = block(x, c)[1].detach()
    for i in range(6):
        jac = torch.autograd.functional.jacobian(lambda u: block(u, c[i:i + 1])[0], x[i:i + 1])
        expected = torch.linalg.slogdet(jac.reshape(D, D))[1]
        assert float(ld[i]) == pytest.approx(float(expected), abs=1e-10)
    assert float(ld.abs().max()) > 0.1


def test_truncated_series_with_exact_traces_converges() -> None:
    block = _block("mlp", coeff=0.9)
    x = torch.randn(20, D, dtype=torch.float64)
    jac = _jac_g(block, x)
    exact = torch.linalg.slogdet(torch.eye(D, dtype=torch.float64) + jac)[1]
    lip = float(torch.linalg.matrix_norm(jac, ord=2).max())
    assert 0.7 < lip < 0.9
    traces = _trace_powers(jac, 120)
    k = torch.arange(1, 121, dtype=torch.float64)
    partial = torch.cumsum((-1) ** (k + 1) / k * traces, dim=1)
    errors = (partial - exact.unsqueeze(1)).abs().max(dim=0).values
    for n in (1, 2, 5, 10, 20, 40, 80):
        # |tr(J^k)| ≤ D ||J||^k, so the tail after n terms is ≤ D Σ_{k>n} L^k / k.
        tail = D * sum(lip**j / j for j in range(n + 1, 2000))
        assert float(errors[n - 1]) <= tail
    assert float(errors[119]) < 1e-10 and float(errors[0]) > 0.1


def test_hutchinson_series_estimate_close_to_exact() -> None:
    n_terms, draws = 6, 2000
    block = _block("densenet", coeff=0.9, logdet="series", eval_logdet="series",
                   n_terms=n_terms)
    x = torch.randn(1, D, dtype=torch.float64).expand(draws, D)
    with torch.no_grad():
        est = block(x)[1]  # one independent Rademacher probe per row
    jac = _jac_g(block, x[:1])
    k = torch.arange(1, n_terms + 1, dtype=torch.float64)
    truncated = float(((-1) ** (k + 1) / k * _trace_powers(jac, n_terms)).sum())
    exact = float(torch.linalg.slogdet(torch.eye(D, dtype=torch.float64) + jac[0])[1])
    se = float(est.std()) / math.sqrt(draws)
    # Hutchinson is unbiased for the truncated series: within 4 standard errors of it ...
    assert abs(float(est.mean()) - truncated) < 4 * se
    # ... and the truncation bias is bounded by D Σ_{k>n} L^k / k.
    lip = float(torch.linalg.matrix_norm(jac[0], ord=2))
    assert abs(truncated - exact) <= D * sum(lip**j / j for j in range(n_terms + 1, 2000))
    assert abs(float(est.mean()) - exact) < 0.05 * abs(exact) + 4 * se


def test_russian_roulette_is_unbiased() -> None:
    # ||J_g|| ≈ 0.6 < 1/√2: the reweighted terms 2^k tr(J^k)/k have finite variance.
    block = _block("mlp", coeff=0.8, logdet="roulette", eval_logdet="roulette",
                   n_exact_terms=1, roulette_p=0.5)
    x = torch.randn(100, D, dtype=torch.float64)
    jac = _jac_g(block, x)
    exact = torch.linalg.slogdet(torch.eye(D, dtype=torch.float64) + jac)[1]
    calls = 400  # N is drawn once per call: one call = one sample of the mean error
    with torch.no_grad():
        errs = torch.stack([(block(x)[1] - exact).mean() for _ in range(calls)])
    se = float(errs.std()) / math.sqrt(calls)
    assert abs(float(errs.mean())) < 3 * se
    # The test has power: the one-term series (with exact traces) is biased by many SEs.
    biased = (_trace_powers(jac, 1)[:, 0] - exact).mean()
    assert abs(float(biased)) > 10 * se


def test_eval_mode_is_deterministic_and_train_mode_estimates_vary() -> None:
    block = ResidualBlock.mlp(D, 32, logdet="roulette").double()
    x = torch.randn(8, D, dtype=torch.float64)
    block.eval()
    z1, ld1 = block(x)
    z2, ld2 = block(x)
    assert torch.equal(z1, z2) and torch.equal(ld1, ld2)
    block.eval_logdet = "series"  # stochastic log-det, but z is still deterministic
    z3, ld3 = block(x)
    z4, ld4 = block(x)
    assert torch.equal(z3, z1) and torch.equal(z4, z1) and not torch.equal(ld3, ld4)
    with torch.no_grad():
        z5, ld5 = block(x)
    assert not z5.requires_grad and not ld5.requires_grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["mlp", "densenet"])
def test_extreme_inputs_give_finite_outputs(kind: str, dtype: torch.dtype) -> None:
    block = _block(kind).to(dtype)
    x = torch.tensor([[1e4] * D, [-1e4] * D, [1e4, -1e4, 0.0, 1e4, -1e4]], dtype=dtype)
    for method in ("exact", "series"):
        block.eval_logdet = method
        z, ld = block(x)
        assert torch.isfinite(z).all() and torch.isfinite(ld).all()
        x_back, inv_ld = block.inverse(z)
        assert torch.isfinite(x_back).all() and torch.isfinite(inv_ld).all()
    tol = 1e-9 if dtype == torch.float64 else 1e-3
    assert torch.allclose(x_back, x, rtol=tol, atol=tol)


@pytest.mark.parametrize("logdet", ["series", "roulette", "exact"])
def test_training_lowers_exact_nll(logdet: str) -> None:
    torch.manual_seed(1)
    data = torch.randn(256, 2, dtype=torch.float64) @ torch.tensor([[2.0, 0.0], [1.5, 0.3]],
                                                                    dtype=torch.float64)
    flow = Compose([ResidualBlock.mlp(2, 16, logdet=logdet, n_terms=4) for _ in range(2)])
    flow = flow.double()

    def nll() -> Tensor:
        z, ld = flow(data)
        return (0.5 * (z**2).sum(1) + math.log(2 * math.pi) - ld).mean()

    flow.eval()
    with torch.no_grad():
        before = float(nll())
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    flow.train()
    for _ in range(40):
        opt.zero_grad()
        loss = nll()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)
        opt.step()
    flow.eval()
    with torch.no_grad():
        assert float(nll()) < before - 0.1


def test_conditional_residual_flow_in_compose() -> None:
    flow = Compose([_block("mlp", context=CTX), _block("densenet", context=CTX)])
    x = torch.randn(10, D, dtype=torch.float64)
    c = torch.randn(10, CTX, dtype=torch.float64)
    z, ld = flow(x, c)
    z_other, _ = flow(x, c + 1)
    assert not torch.allclose(z, z_other)  # the context matters
    x_back, inv_ld = flow.inverse(z, c)
    assert torch.allclose(x_back, x, atol=1e-8) and torch.allclose(ld, -inv_ld, atol=1e-10)
    with pytest.raises(DataError):
        flow(x)
    with pytest.raises(DataError):
        flow(x[:, :3], c)


def test_bad_options_raise() -> None:
    with pytest.raises(ConfigError):
        ResidualBlock.mlp(D, coeff=1.0)
    with pytest.raises(ConfigError):
        ResidualBlock.mlp(D, logdet="taylor")
    with pytest.raises(ConfigError):
        ResidualBlock.densenet(D, eval_logdet="fast")
    with pytest.raises(ConfigError):
        ResidualBlock.mlp(D, activation="relu")
    with pytest.raises(ConfigError):
        ResidualBlock.mlp(D, roulette_p=1.0)


def test_auto_eval_logdet_switches_to_estimator_for_large_dim() -> None:
    block = ResidualBlock.mlp(70, 8, logdet="series").eval()
    assert block.current_method() == "series"
    small = ResidualBlock.mlp(70, 8, logdet="series", exact_max_dim=70).eval()
    assert small.current_method() == "exact"
    assert block.train().current_method() == "series"
