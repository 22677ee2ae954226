"""Neural spline flows (float64): the rational-quadratic spline's knots, monotonicity, tails and
numerics, and the coupling and autoregressive spline layers' inverses and log-dets."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.transforms import Compose, Permutation, alternating_mask, half_mask
from dgm.core.transforms.base import Transform
from dgm.core.transforms.spline import (
    MaskedAutoregressiveSpline,
    SplineCoupling,
    rational_quadratic_spline,
    spline_params_per_dim,
)

D, K, B, C = 5, 6, 3.0, 3
DT = torch.float64
MIN = 1e-3  # the default minimum bin width, bin height and derivative


def _randomize(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Replace every parameter with random values so no layer is the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module


def _raw(shape: tuple[int, ...], scale: float = 1.0) -> tuple[torch.Tensor, ...]:
    """Random raw widths, heights (shape + (K,)) and interior derivatives (shape + (K-1,))."""
    return (
        scale * torch.randn(*shape, K, dtype=DT),
        scale * torch.randn(*shape, K, dtype=DT),
        scale * torch.randn(*shape, K - 1, dtype=DT),
    )


def _expected_knots(raw: torch.Tensor, bound: float = B) -> torch.Tensor:
    """The documented parametrization, written out independently: knots (..., K+1)."""
    sizes = MIN + (1 - MIN * raw.shape[-1]) * torch.softmax(raw, dim=-1)
    cum = torch.cat([torch.zeros_like(sizes[..., :1]), torch.cumsum(sizes, dim=-1)], dim=-1)
    return -bound + 2 * bound * cum


def _coupling(mask: torch.Tensor, context: int = 0) -> SplineCoupling:
    layer = SplineCoupling.with_mlp(mask, 16, 2, num_bins=K, bound=B, context=context)
    return _randomize(layer, 0.4).double()


def _made(context: int = 0) -> MaskedAutoregressiveSpline:
    gen = torch.Generator().manual_seed(1)
    layer = MaskedAutoregressiveSpline(D, 24, 2, num_bins=K, bound=B, context=context,
                                       generator=gen)
    return _randomize(layer, 0.3).double()


with torch.random.fork_rng():  # fixed layers, whatever the test order
    torch.manual_seed(1234)
    LAYERS: dict[str, tuple[Transform, int]] = {
        "coupling_half": (_coupling(half_mask(D)), 0),
        "coupling_alternating": (_coupling(alternating_mask(D, even=False)), 0),
        "coupling_context": (_coupling(half_mask(D, first=False), context=C), C),
        "autoregressive": (_made(), 0),
        "autoregressive_context": (_made(context=C), C),
        "compose": (Compose([_coupling(half_mask(D)), Permutation.reverse(D), _made()]), 0),
    }


@pytest.fixture(params=sorted(LAYERS))
def layer(request: pytest.FixtureRequest) -> tuple[Transform, int]:
    return LAYERS[request.param]


def _context(n: int, width: int) -> torch.Tensor | None:
    if width == 0:
        return None
    return nn.functional.one_hot(torch.randint(width, (n,)), width).to(DT)


def _points(n: int) -> torch.Tensor:
    """Mostly inside [-B, B], some in the tails."""
    return 2.0 * torch.randn(n, D, dtype=DT)


def _jacobian(f, x: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The full D x D Jacobian of f(·, c) at a single example x (D,)."""
    return torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0), c)[0][0], x)


# --- the layers ------------------------------------------------------------------------------


def test_inverse_undoes_forward(layer: tuple[Transform, int]) -> None:
    t, width = layer
    x, c = _points(16), _context(16, width)
    z, ld = t(x, c)
    assert not torch.allclose(z, x, atol=1e-3)  # a real map, not the identity
    x_back, ld_inv = t.inverse(z, c)
    torch.testing.assert_close(x_back, x, atol=1e-8, rtol=0)
    assert ld.shape == ld_inv.shape == (16,)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(16, dtype=DT), atol=1e-8, rtol=0)


def test_logabsdets_equal_autograd_slogdet(layer: tuple[Transform, int]) -> None:
    t, width = layer
    x, c = _points(3), _context(3, width)
    z, ld = t(x, c)
    _, ld_inv = t.inverse(z, c)
    for n in range(3):
        cn = None if c is None else c[n : n + 1]
        jac = _jacobian(t.forward, x[n], cn)
        torch.testing.assert_close(ld[n], torch.linalg.slogdet(jac).logabsdet)
        jac_inv = _jacobian(t.inverse, z[n], cn)
        torch.testing.assert_close(ld_inv[n], torch.linalg.slogdet(jac_inv).logabsdet)
        torch.testing.assert_close(jac_inv @ jac, torch.eye(D, dtype=DT))


def test_zero_conditioner_output_is_identity() -> None:
    x = 3.0 * torch.randn(32, D, dtype=DT)
    c = _context(32, C)
    layers = [
        SplineCoupling.with_mlp(half_mask(D), 8, num_bins=K, context=C).double(),
        MaskedAutoregressiveSpline(D, 8, num_bins=K, context=C, zero_init=True).double(),
    ]
    for t in layers:
        for method in (t.forward, t.inverse):
            y, ld = method(x, c)
            torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
            torch.testing.assert_close(ld, torch.zeros(32, dtype=DT), atol=1e-12, rtol=0)


def test_coupling_keeps_conditioning_part() -> None:
    mask = alternating_mask(D)
    t, _ = LAYERS["coupling_alternating"]
    x = _points(8)
    z, _ = t(x)
    assert torch.equal(z[:, ~mask], x[:, ~mask])  # "coupling_alternating" uses odd coordinates
    assert not torch.allclose(z[:, mask], x[:, mask])


def test_autoregressive_jacobian_is_lower_triangular() -> None:
    t, _ = LAYERS["autoregressive"]
    x = 0.5 * torch.randn(D, dtype=DT)  # inside [-B, B], where the spline is not the identity
    jac = _jacobian(t.forward, x, None)
    assert torch.equal(torch.triu(jac, diagonal=1), torch.zeros_like(jac))
    assert bool((torch.diagonal(jac) > 0).all())
    assert torch.tril(jac, diagonal=-1).abs().sum() > 1e-3  # really autoregressive


def test_context_changes_every_output() -> None:
    x = 0.5 * torch.randn(1, D, dtype=DT).expand(C, D)
    c = torch.eye(C, dtype=DT)  # the same x under each class
    t, _ = LAYERS["autoregressive_context"]
    z, _ = t(x, c)
    for d in range(D):  # including d = 0, which reads no x at all
        assert (z[0, d] - z[1, d]).abs() > 1e-6 and (z[1, d] - z[2, d]).abs() > 1e-6
    coupling, _ = LAYERS["coupling_context"]
    z, _ = coupling(x, c)
    moved = ~half_mask(D, first=False)
    assert bool(((z[0, moved] - z[1, moved]).abs() > 1e-6).all())


def test_layers_finite_for_extreme_inputs(layer: tuple[Transform, int]) -> None:
    t, width = layer
    x = torch.tensor([[1e6, -1e6, 1e3, -1e3, B], [-B, 0.0, B, -1e6, 1e3]], dtype=DT)
    x.requires_grad_(True)
    c = _context(2, width)
    for method in (t.forward, t.inverse):
        y, ld = method(x, c)
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ld).all())
        (grad,) = torch.autograd.grad((y.sum() + ld.sum()), x)
        assert bool(torch.isfinite(grad).all())


def test_layer_parameter_gradients_are_finite() -> None:
    t, _ = LAYERS["compose"]
    x = torch.cat([_points(8), torch.tensor([[1e6, -1e6, B, -B, 1e3]], dtype=DT)])
    t.zero_grad()
    z, ld = t(x)
    (0.5 * z.pow(2).clamp_max(1e3).sum() - ld.sum()).backward()
    grads = [p.grad for p in t.parameters() if p.grad is not None]
    assert grads and all(bool(torch.isfinite(g).all()) for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


# --- the spline itself ------------------------------------------------------------------------


def test_spline_is_monotonic_with_identity_tails() -> None:
    w, h, d = (r.expand(20001, -1) for r in _raw((1,), 2.0))
    x = torch.linspace(-2 * B, 2 * B, 20001, dtype=DT)
    y, ld = rational_quadratic_spline(x, w, h, d, bound=B)
    assert bool((y[1:] > y[:-1]).all())
    outside = x.abs() > B
    assert torch.equal(y[outside], x[outside])
    assert torch.equal(ld[outside], torch.zeros_like(ld[outside]))
    assert not torch.allclose(y[~outside], x[~outside], atol=1e-2)
    # unit slope at ±B, matching the tails, and continuity: g(±B) = ±B, g(±B ± ε) ≈ ±B ± ε
    edge = torch.tensor([-B, B], dtype=DT, requires_grad=True)
    y_edge, ld_edge = rational_quadratic_spline(edge, w[:2], h[:2], d[:2], bound=B)
    (slope,) = torch.autograd.grad(y_edge.sum(), edge)
    torch.testing.assert_close(y_edge.detach(), edge.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(slope, torch.ones(2, dtype=DT))
    torch.testing.assert_close(ld_edge.detach(), torch.zeros(2, dtype=DT), atol=1e-12, rtol=0)
    eps = 1e-7
    near = torch.tensor([-B - eps, -B + eps, B - eps, B + eps], dtype=DT)
    y_near, _ = rational_quadratic_spline(near, w[:4], h[:4], d[:4], bound=B)
    torch.testing.assert_close(y_near, near, atol=3e-7, rtol=0)


def test_spline_matches_knot_values_and_derivatives() -> None:
    w, h, d = _raw((1,), 1.5)
    knots_x, knots_y = _expected_knots(w)[0], _expected_knots(h)[0]
    derivs = torch.cat([torch.ones(1, dtype=DT),
                        MIN + nn.functional.softplus(d[0] + math.log(math.expm1(1 - MIN))),
                        torch.ones(1, dtype=DT)])
    n = K + 1
    x = knots_x.clone().requires_grad_(True)
    y, ld = rational_quadratic_spline(x, w.expand(n, -1), h.expand(n, -1), d.expand(n, -1))
    (slope,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y.detach(), knots_y, atol=1e-12, rtol=0)
    torch.testing.assert_close(slope, derivs)
    torch.testing.assert_close(ld.detach(), derivs.log())
    # the inverse maps knot heights back to knot positions, with the reciprocal slope
    x_back, ld_inv = rational_quadratic_spline(
        knots_y, w.expand(n, -1), h.expand(n, -1), d.expand(n, -1), inverse=True
    )
    torch.testing.assert_close(x_back, knots_x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_inv, -derivs.log())


def test_spline_zero_parameters_are_identity() -> None:
    x = torch.linspace(-2 * B, 2 * B, 101, dtype=DT)
    zeros = torch.zeros(101, K, dtype=DT)
    for inverse in (False, True):
        y, ld = rational_quadratic_spline(x, zeros, zeros, zeros[:, 1:], inverse=inverse)
        torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
        torch.testing.assert_close(ld, torch.zeros_like(x), atol=1e-12, rtol=0)


def test_spline_inverse_and_logabsdet() -> None:
    x = 2.0 * torch.randn(400, dtype=DT)
    w, h, d = _raw((400,), 1.5)
    y, ld = rational_quadratic_spline(x, w, h, d)
    x_back, ld_inv = rational_quadratic_spline(y, w, h, d, inverse=True)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld + ld_inv, torch.zeros_like(x), atol=1e-10, rtol=0)
    xg = x.clone().requires_grad_(True)
    (slope,) = torch.autograd.grad(rational_quadratic_spline(xg, w, h, d)[0].sum(), xg)
    torch.testing.assert_close(ld, slope.log())


def test_spline_density_integrates_to_one() -> None:
    w, h, d = _raw((1,), 2.0)
    x = torch.linspace(-12.0, 12.0, 200001, dtype=DT)
    n = x.numel()
    z, ld = rational_quadratic_spline(x, w.expand(n, -1), h.expand(n, -1), d.expand(n, -1))
    log_p = -0.5 * z**2 - 0.5 * math.log(2 * math.pi) + ld
    mass = torch.trapezoid(log_p.exp(), x)
    assert abs(float(mass) - 1.0) < 1e-3
    assert not torch.allclose(z[n // 2 - 1000 : n // 2 + 1000], x[n // 2 - 1000 : n // 2 + 1000])


def test_spline_finite_values_and_gradients_at_extremes() -> None:
    w0, h0, d0 = _raw((1,), 3.0)
    knots = _expected_knots(w0)[0]
    heights = _expected_knots(h0)[0]
    special = torch.tensor([1e6, -1e6, 1e3, -1e3, B, -B, 0.0], dtype=DT)
    for inverse, at_knots in ((False, knots), (True, heights)):
        x = torch.cat([special, at_knots]).requires_grad_(True)
        w, h, d = (r.expand(x.numel(), -1).clone().requires_grad_(True) for r in (w0, h0, d0))
        y, ld = rational_quadratic_spline(x, w, h, d, inverse=inverse)
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ld).all())
        assert torch.equal(y[:4], special[:4])  # far tails: the identity, exactly
        grads = torch.autograd.grad(y.sum() + ld.sum(), (x, w, h, d))
        assert all(bool(torch.isfinite(g).all()) for g in grads)
    # extreme raw parameters: bins at their minimum size, very steep or flat derivatives
    x = torch.linspace(-B, B, 9, dtype=DT)
    big = torch.tensor([1e3, -1e3, 0.0, 50.0, -50.0, 0.0], dtype=DT).expand(9, -1)
    for inverse in (False, True):
        y, ld = rational_quadratic_spline(x, big, big.flip(-1), 1e2 * big[:, 1:], inverse=inverse)
        assert bool(torch.isfinite(y).all()) and bool(torch.isfinite(ld).all())
        assert bool((y[1:] > y[:-1]).all())


# --- arguments --------------------------------------------------------------------------------


def test_bad_arguments_raise() -> None:
    x = torch.zeros(4, dtype=DT)
    w, h, d = _raw((4,))
    with pytest.raises(DataError):
        rational_quadratic_spline(x, w, h, d[:, :-1])
    with pytest.raises(DataError):
        rational_quadratic_spline(torch.zeros(3, dtype=DT), w, h, d)
    with pytest.raises(ConfigError):
        rational_quadratic_spline(x, w, h, d, bound=0.0)
    with pytest.raises(ConfigError):
        rational_quadratic_spline(x, w, h, d, min_bin_width=1.0 / K)
    with pytest.raises(ConfigError):
        SplineCoupling(torch.ones(D, dtype=torch.bool), mlp(D, 8, 1))
    with pytest.raises(ConfigError):
        SplineCoupling.with_mlp(half_mask(D), num_bins=0)
    with pytest.raises(ConfigError):
        MaskedAutoregressiveSpline(1)
    with pytest.raises(DataError):
        LAYERS["coupling_half"][0](torch.zeros(2, D + 1, dtype=DT))
    with pytest.raises(DataError):  # a conditional layer called without its context
        LAYERS["autoregressive_context"][0](torch.zeros(2, D, dtype=DT))
    assert spline_params_per_dim(K) == 3 * K - 1
