"""Planar, radial and Sylvester flows (float64): inverses, log-dets against the autograd
Jacobian, the invertibility constraints, orthogonality of Q and normalization of densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.transforms.base import Compose, Transform
from dgm.core.transforms.sylvester import Planar, Radial, Sylvester

D = 5


def _randomize(module: nn.Module, scale: float = 1.0) -> nn.Module:
    """Replace every parameter with random values so no layer is the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module.double()


def _layers() -> dict[str, Transform]:
    return {
        "planar": _randomize(Planar(D)),
        "radial": _randomize(Radial(D)),
        "orthogonal": _randomize(Sylvester(D, variant="orthogonal")),
        "orthogonal_m3": _randomize(Sylvester(D, 3, variant="orthogonal")),
        "householder": _randomize(Sylvester(D, variant="householder", num_reflections=3)),
        "triangular": _randomize(Sylvester(D, variant="triangular")),
        "triangular_reverse": _randomize(Sylvester(D, variant="triangular", reverse=True)),
    }


torch.manual_seed(1)
LAYERS = _layers()


@pytest.fixture(params=sorted(LAYERS))
def layer(request: pytest.FixtureRequest) -> Transform:
    return LAYERS[request.param]


def _jacobians(f, x: torch.Tensor) -> torch.Tensor:
    """∂f(x_n)/∂x_n per example, (N, D, D), by brute-force autograd."""
    return torch.stack(
        [torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0))[0][0], xn) for xn in x]
    )


def _points(n: int) -> torch.Tensor:
    return 2.0 * torch.randn(n, D, dtype=torch.float64)


def test_inverse_undoes_forward(layer: Transform) -> None:
    x = _points(16)
    z, _ = layer(x)
    x_back, _ = layer.inverse(z)
    assert (z - x).abs().max() > 1e-2  # a real map, not the identity
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)


def test_forward_undoes_inverse(layer: Transform) -> None:
    z = _points(16)
    x, _ = layer.inverse(z)
    torch.testing.assert_close(layer(x)[0], z, atol=1e-10, rtol=1e-10)


def test_forward_logabsdet_equals_autograd_slogdet(layer: Transform) -> None:
    x = _points(4)
    _, logabsdet = layer(x)
    assert logabsdet.shape == (4,)
    sign, expected = torch.linalg.slogdet(_jacobians(layer, x))
    assert bool((sign > 0).all())
    torch.testing.assert_close(logabsdet, expected)


def test_inverse_logabsdet_equals_autograd_slogdet(layer: Transform) -> None:
    z = _points(4)
    _, logabsdet = layer.inverse(z)
    sign, expected = torch.linalg.slogdet(_jacobians(layer.inverse, z))
    assert bool((sign > 0).all())
    torch.testing.assert_close(logabsdet, expected)


def test_forward_and_inverse_logabsdets_sum_to_zero(layer: Transform) -> None:
    x = _points(8)
    z, ld_forward = layer(x)
    _, ld_inverse = layer.inverse(z)
    assert ld_forward.abs().max() > 1e-3
    torch.testing.assert_close(ld_forward + ld_inverse, torch.zeros(8, dtype=torch.float64))


def test_inverse_gradient_in_parameters_matches_finite_differences(layer: Transform) -> None:
    """The implicit-function gradient of the iterative inverse, along a random direction."""
    z = _points(6)
    params = list(layer.parameters())
    directions = [torch.randn_like(p) for p in params]

    def loss() -> torch.Tensor:
        x, logabsdet = layer.inverse(z)
        return (x.sin()).sum() + logabsdet.sum()

    grads = torch.autograd.grad(loss(), params)
    analytic = sum((g * d).sum() for g, d in zip(grads, directions))
    eps = 1e-6
    with torch.no_grad():
        for p, d in zip(params, directions):
            p.add_(eps * d)
        plus = loss()
        for p, d in zip(params, directions):
            p.sub_(2 * eps * d)
        minus = loss()
        for p, d in zip(params, directions):
            p.add_(eps * d)
    torch.testing.assert_close(analytic, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-6)


def test_extreme_inputs_are_finite(layer: Transform) -> None:
    x = torch.tensor([[1e4] * D, [-1e4] * D, [1e4, -1e4, 1e4, -1e4, 0.0]], dtype=torch.float64)
    z, ld = layer(x)
    x_back, ld_inv = layer.inverse(z)
    for t in (z, ld, x_back, ld_inv):
        assert bool(torch.isfinite(t).all())
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-8)
    x_big, ld_big = layer.inverse(x)
    assert bool(torch.isfinite(x_big).all() and torch.isfinite(ld_big).all())


def test_float32_round_trip(layer: Transform) -> None:
    single = _layers_float32()[_name(layer)]
    x = _points(32).float()
    z, ld = single(x)
    x_back, ld_inv = single.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ld + ld_inv, torch.zeros(32), atol=1e-4, rtol=0)


def _name(layer: Transform) -> str:
    return next(k for k, v in LAYERS.items() if v is layer)


def _layers_float32() -> dict[str, Transform]:
    import copy

    return {k: copy.deepcopy(v).float() for k, v in LAYERS.items()}


# ---- invertibility constraints under adversarial raw parameters ----------------------------


def _near_kink(w: torch.Tensor, b: float, n: int) -> torch.Tensor:
    """Random points with wᵀx + b close to 0, where h' = tanh' is largest."""
    x = _points(n)
    a = x @ w + b
    return x - ((a - 0.01 * torch.randn(n, dtype=torch.float64)) / (w @ w)).unsqueeze(1) * w


def _assert_positive_jacobians(t: Transform, x: torch.Tensor) -> None:
    jac = _jacobians(t, x)
    assert bool((torch.linalg.det(jac) > 0).all())
    _, ld = t(x)
    assert bool(torch.isfinite(ld).all())
    # The autograd reference loses digits to cancellation when det J is tiny: compare loosely.
    torch.testing.assert_close(ld, torch.linalg.slogdet(jac).logabsdet, atol=1e-4, rtol=1e-5)
    # Near the constraint boundary the inverse is ill-conditioned (|det J| ~ 1e-10 for the
    # Sylvester case), so test the backward error z -> x -> z tightly, the forward error loosely.
    z = t(x)[0]
    x_back = t.inverse(z)[0]
    torch.testing.assert_close(t(x_back)[0], z, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(x_back, x, atol=1e-6, rtol=1e-6)


def test_planar_constraint_with_u_anti_aligned_with_w() -> None:
    t = Planar(D).double()
    with torch.no_grad():
        t.w.copy_(torch.randn(D))
        t.u.copy_(-8.0 * t.w / t.w.norm())  # wᵀu = -8 |w|: the raw map is not invertible
        t.b.fill_(0.3)
    w, u = t.w.detach(), t.u.detach()
    x = _near_kink(w, 0.3, 6)
    a = x @ w + 0.3
    raw_det = 1.0 + (1.0 - torch.tanh(a) ** 2) * (w @ u)  # det of the unprojected map
    assert bool((raw_det < 0).all())
    u_hat, _ = t.u_hat()
    assert float((w @ u_hat).detach()) > -1.0
    _assert_positive_jacobians(t, x)


def test_radial_constraint_with_very_negative_beta() -> None:
    t = Radial(D).double()
    with torch.no_grad():
        t.x0.copy_(torch.randn(D))
        t.alpha_raw.fill_(1.5)
        t.beta_raw.fill_(-30.0)  # β ≈ -α, the boundary of invertibility
    alpha, beta = t.alpha_beta()
    alpha, beta = float(alpha.detach()), float(beta.detach())
    assert -alpha <= beta < -0.99 * alpha
    x = t.x0.detach() + 0.05 * torch.randn(6, D, dtype=torch.float64)  # near x0: det smallest
    _assert_positive_jacobians(t, torch.cat([x, _points(4)]))


@pytest.mark.parametrize("variant", ["orthogonal", "householder", "triangular"])
def test_sylvester_constraint_with_opposite_diagonals(variant: str) -> None:
    t = _randomize(Sylvester(D, variant=variant))
    with torch.no_grad():
        t.r_diag_raw.fill_(3.0)
        t.r_tilde_diag_raw.fill_(-3.0)  # R_mm R̃_mm = -tanh(3)² ≈ -0.990 > -1
        t.b.zero_()
    r, rt = t.triangular_matrices()
    products = torch.diagonal(r) * torch.diagonal(rt)
    assert bool((products > -1).all() and (products < -0.98).all())
    _assert_positive_jacobians(t, 0.01 * _points(6))  # ã ≈ 0: h' ≈ 1


# ---- structure of Q ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "m"),
    [
        ("orthogonal", D),
        ("orthogonal_m3", 3),
        ("householder", D),
        ("triangular", D),
        ("triangular_reverse", D),
    ],
)
def test_q_has_orthonormal_columns(name: str, m: int) -> None:
    q = LAYERS[name].orthogonal_matrix()
    assert q.shape == (D, m)
    torch.testing.assert_close(q.T @ q, torch.eye(m, dtype=torch.float64))
    if name.startswith("triangular"):
        assert bool(((q == 0) | (q == 1)).all())  # a permutation
    else:
        assert (q.abs() - (q.abs() > 0.5).double()).abs().max() > 1e-3  # not a permutation


def test_householder_q_matches_reflections() -> None:
    t = LAYERS["householder"]
    x = _points(3)
    torch.testing.assert_close(x @ t.orthogonal_matrix().T, t.householder(x)[0])


def test_q_gradient_flows_to_raw_parameters() -> None:
    for name in ("orthogonal_m3", "householder"):
        t = LAYERS[name]
        q = t.orthogonal_matrix()
        (grad,) = torch.autograd.grad((q * torch.randn_like(q)).sum(), [next(
            p for n, p in t.named_parameters() if n in ("q_raw", "householder.vectors"))])
        assert bool(torch.isfinite(grad).all()) and grad.abs().max() > 0


# ---- a density integrates to one ---------------------------------------------------------


def _stacks() -> dict[str, Compose]:
    torch.manual_seed(2)
    return {
        "planar": Compose([_randomize(Planar(2), 1.5) for _ in range(4)]),
        "radial": Compose([_randomize(Radial(2), 1.0) for _ in range(4)]),
        "orthogonal": Compose([_randomize(Sylvester(2, variant="orthogonal")) for _ in range(3)]),
        "orthogonal_m1": Compose([_randomize(Sylvester(2, 1)) for _ in range(3)]),
        "householder": Compose(
            [_randomize(Sylvester(2, variant="householder")) for _ in range(3)]
        ),
        "triangular": Compose(
            [_randomize(Sylvester(2, variant="triangular", reverse=k % 2 == 1)) for k in range(4)]
        ),
    }


@pytest.mark.parametrize("name", sorted(_stacks()))
def test_two_dimensional_density_integrates_to_one(name: str) -> None:
    flow = _stacks()[name]
    grid = torch.linspace(-8.0, 8.0, 400, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    x = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    with torch.no_grad():
        z, logabsdet = flow(x)
    log_base = -0.5 * (z * z).sum(1) - math.log(2 * math.pi)
    density = (log_base + logabsdet).exp().reshape(400, 400)
    mass = torch.trapezoid(torch.trapezoid(density, grid, dim=1), grid)
    assert abs(float(mass) - 1.0) < 1e-2
    without_logdet = torch.trapezoid(
        torch.trapezoid(log_base.exp().reshape(400, 400), grid, dim=1), grid
    )
    assert abs(float(without_logdet) - 1.0) > 2e-2  # the log-det matters for this flow


# ---- errors ---------------------------------------------------------------------------------


def test_bad_configurations_raise() -> None:
    with pytest.raises(ConfigError):
        Sylvester(D, variant="nope")
    with pytest.raises(ConfigError):
        Sylvester(D, D + 1)
    with pytest.raises(ConfigError):
        Sylvester(D, 3, variant="householder")
    with pytest.raises(ConfigError):
        Sylvester(D, variant="orthogonal", reverse=True)
    with pytest.raises(ConfigError):
        Planar(0)


def test_wrong_shape_raises(layer: Transform) -> None:
    with pytest.raises(DataError):
        layer(torch.randn(3, D + 1, dtype=torch.float64))
    with pytest.raises(DataError):
        layer.inverse(torch.randn(D, dtype=torch.float64))
