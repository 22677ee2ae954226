"""Every registered flow model: a density that integrates to 1, an exact inverse with the
autograd log-det, class conditioning, variational dequantization as a valid bound, and finite
values at extreme inputs."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.core import build_model
from dgm.core.errors import ConfigError, DataError
from dgm.core.transforms import ActNorm
from dgm.core.spec import DataKind, DataSpec
from dgm.models.flows.model import FlowModel

# Small, fast settings of every flat flow (the image flow, glow, is tested on images below).
FLAT = {
    "realnvp": {"num_flows": 4, "hidden": 16, "num_hidden": 1, "zero_init": False},
    "nice": {"num_flows": 4, "hidden": 16, "num_hidden": 1},
    "maf": {"num_flows": 3, "hidden": 16, "num_hidden": 1},
    "iaf": {"num_flows": 3, "hidden": 16, "num_hidden": 1},
    "nsf": {"num_flows": 3, "hidden": 16, "num_hidden": 1, "permutation": "lu", "zero_init": False},
    "nsf_ar": {"num_flows": 2, "hidden": 16, "num_hidden": 1, "zero_init": False},
    "planar": {"num_flows": 6},
    "radial": {"num_flows": 6},
    "sylvester": {"num_flows": 3},
    "sylvester_householder": {"num_flows": 3, "variant": "householder"},
    "sylvester_triangular": {"num_flows": 3, "variant": "triangular"},
    "resflow": {"num_blocks": 2, "hidden": 16, "eval_logdet": "exact"},
    "densenet_flow": {"num_blocks": 2, "growth": 8, "depth": 2, "eval_logdet": "exact"},
}
CONDITIONAL = ["realnvp", "maf", "nsf", "nsf_ar", "resflow", "glow"]


def _build(key: str, spec: DataSpec, **extra: object) -> FlowModel:
    name = key.split("_householder")[0].split("_triangular")[0]
    fields = dict(FLAT.get(key, {"levels": 2, "steps": 2, "hidden": 8})) | extra
    model = build_model(name, spec, fields)
    assert isinstance(model, FlowModel)
    return model


def _perturb(model: FlowModel, scale: float, seed: int = 0) -> FlowModel:
    """Move every parameter away from its (often identity) initial value, in float64."""
    model = model.double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    for m in model.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return model.eval()


def _grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    g = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), float(g[1] - g[0]) ** 2


@pytest.mark.parametrize("key", sorted(FLAT))
def test_density_integrates_to_one_on_a_2d_grid(key: str) -> None:
    """∫_box p = 1 up to the mass the model's own samples put outside the box, which is small:
    a check of the density and of the sampler against each other."""
    spec = DataSpec((2,), DataKind.CONTINUOUS)
    model = _perturb(_build(key, spec), 0.15)
    half_width = 12.0
    points, cell = _grid(half_width, 601)
    with torch.no_grad():
        log_p = model.log_prob(points)
        x = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(log_p).all()
    inside = float((x.abs() <= half_width).all(dim=1).double().mean())
    assert inside > 0.95
    # The binomial standard error of `inside` is below 0.0016.
    assert float(log_p.exp().sum() * cell) == pytest.approx(inside, abs=1e-2)


@pytest.mark.parametrize("key", sorted(FLAT) + ["glow"])
def test_whole_flow_inverts_and_its_logdet_equals_the_autograd_jacobian(key: str) -> None:
    spec = DataSpec((1, 4, 4), DataKind.CONTINUOUS)
    model = _perturb(_build(key, spec), 0.05)
    model.standardize.fit(1.0 + 2.0 * torch.randn(100, 16, dtype=torch.float64).reshape(
        (100, *model.flow_shape)))
    x = torch.randn(3, *model.flow_shape, dtype=torch.float64)
    with torch.no_grad():
        z, logabsdet = model.flow(x)
        back, inv_logabsdet = model.flow.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(logabsdet + inv_logabsdet, torch.zeros(3, dtype=torch.float64))
    for n in range(2):
        jac = torch.autograd.functional.jacobian(lambda v: model.flow(v.unsqueeze(0))[0][0], x[n])
        expected = torch.linalg.slogdet(jac.reshape(16, 16)).logabsdet
        torch.testing.assert_close(logabsdet[n], expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("key", CONDITIONAL)
def test_conditional_flow_is_a_density_per_class_and_depends_on_the_label(key: str) -> None:
    if key == "glow":
        spec = DataSpec((1, 4, 4), DataKind.CONTINUOUS, num_classes=3)
    else:
        spec = DataSpec((2,), DataKind.CONTINUOUS, num_classes=3)
    model = _perturb(_build(key, spec, conditional=True), 0.15)
    x = torch.randn(64, *spec.event_shape, dtype=torch.float64)
    with torch.no_grad():
        lp0 = model.log_prob(x, torch.zeros(64, dtype=torch.long))
        lp1 = model.log_prob(x, torch.ones(64, dtype=torch.long))
    assert not torch.allclose(lp0, lp1)
    with pytest.raises(DataError, match="labels"):
        model.log_prob(x)
    samples = model.sample(6, y=torch.tensor([0, 1, 2, 0, 1, 2]))
    assert samples.shape == (6, *spec.event_shape)
    assert model.sample(5).shape == (5, *spec.event_shape)  # cycles through the classes
    if key != "glow":
        points, cell = _grid(12.0, 401)
        for label in range(3):
            labels = torch.full((20000,), label)
            with torch.no_grad():
                lp = model.log_prob(points, labels[:1].expand(len(points)))
                xs = model.sample(20000, y=labels, generator=torch.Generator().manual_seed(0))
            inside = float((xs.abs() <= 12.0).all(dim=1).double().mean())
            assert inside > 0.9
            assert float(lp.exp().sum() * cell) == pytest.approx(inside, abs=1e-2)


def test_unconditional_flow_refuses_labels_for_sampling() -> None:
    model = _build("realnvp", DataSpec((2,), DataKind.CONTINUOUS))
    with pytest.raises(ConfigError):
        model.sample(3, y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ConfigError, match="labelled"):
        _build("realnvp", DataSpec((2,), DataKind.CONTINUOUS), conditional=True)


TINY = DataSpec((2,), DataKind.DISCRETE, num_levels=3)


def _exact_log_mass(model: FlowModel, x: torch.Tensor, n: int = 150) -> torch.Tensor:
    """log P(x) = log ∫_{[0,1)^2} p_Y((x + u)/L) L^{-2} du by the midpoint rule."""
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    uu, vv = torch.meshgrid(mid, mid, indexing="ij")
    u = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    with torch.no_grad():
        return torch.stack([
            torch.logsumexp(model.log_density((xi + u) / 3), 0) - math.log(n * n) - 2 * math.log(3)
            for xi in x.to(torch.float64)
        ])


@pytest.fixture(scope="module")
def variational() -> tuple[FlowModel, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _build("realnvp", TINY, dequantization="variational", dequant_flows=2,
                   dequant_hidden=16)
    model.initialize_from_data(torch.randint(0, 3, (200, 2)), torch.Generator().manual_seed(0))
    model = _perturb(model, 0.1)
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    return model, x, _exact_log_mass(model, x)


def test_variational_noise_density_integrates_to_one_on_the_unit_square(variational) -> None:
    """q(u | x) integrates to 1 over (0, 1)^2 for every x, and the log q that sampling reports
    is the density evaluated in the other direction."""
    model, x, _ = variational
    q = model.dequantizer
    assert q is not None
    n = 400
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    uu, vv = torch.meshgrid(mid, mid, indexing="ij")
    u_grid = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for xi in x:
            mass = q.log_prob(u_grid, xi.expand(n * n, 2)).exp().mean()
            assert float(mass) == pytest.approx(1.0, abs=5e-3)
            u, log_q = q.sample(xi.expand(1000, 2), generator=g)
            assert bool(((u > 0) & (u < 1)).all())
            torch.testing.assert_close(q.log_prob(u, xi.expand(1000, 2)), log_q)


def test_variational_dequantization_bound_is_below_and_iwae_reaches_the_exact_mass(
    variational,
) -> None:
    model, x, log_mass = variational
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        log_w = model.log_weights(x, 20000, generator=g)
    bound = log_w.mean(0)
    assert bool((bound < log_mass).all())
    # Mean IWAE(k) over disjoint blocks of the same draws: it rises with k, stays below.
    iwae = [
        (torch.logsumexp(log_w.reshape(-1, k, 9), 1) - math.log(k)).mean(0) for k in (10, 20000)
    ]
    assert bool((iwae[0] > bound).all() and (iwae[1] > iwae[0]).all())
    assert bool((iwae[1] < log_mass + 0.01).all())


def test_variational_dequantization_is_trained_with_the_flow() -> None:
    model = _build("realnvp", TINY, dequantization="variational", dequant_flows=2)
    model.loss(torch.randint(0, 3, (32, 2))).mean().backward()
    assert model.dequantizer is not None
    grads = [p.grad for p in model.dequantizer.parameters()]
    assert all(gr is not None for gr in grads) and any(float(gr.abs().sum()) > 0 for gr in grads)


@pytest.mark.parametrize("key", sorted(FLAT) + ["glow"])
def test_extreme_inputs_give_finite_and_very_low_log_densities(key: str) -> None:
    spec = DataSpec((1, 2, 2), DataKind.CONTINUOUS)
    model = _build(key, spec, **({"levels": 1} if key == "glow" else {})).eval()
    model.initialize_from_data(torch.randn(256, 1, 2, 2), torch.Generator().manual_seed(0))
    x = torch.zeros(3, 1, 2, 2)
    x[0, 0, 0, 0] = 1e4
    x[1, 0, 1, 1] = -1e4
    x[2] = 50.0
    with torch.no_grad():
        log_p = model.log_prob(x)
    assert torch.isfinite(log_p).all()
    assert bool((log_p < -1000).all())


@pytest.mark.parametrize("key", sorted(FLAT) + ["glow"])
def test_discrete_samples_are_integers_in_range(key: str) -> None:
    spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=17)
    model = _build(key, spec, logit_alpha=0.05)
    model.initialize_from_data(torch.randint(0, 17, (64, 1, 4, 4)),
                               torch.Generator().manual_seed(0))
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 4, 4) and s.dtype == torch.long
    assert 0 <= int(s.min()) and int(s.max()) <= 16
    with torch.no_grad():
        assert torch.isfinite(model.loss(s)).all()


def test_actnorm_layers_are_initialized_from_data() -> None:
    spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=17)
    model = _build("glow", spec, logit_alpha=0.05)
    assert not any(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
    model.initialize_from_data(torch.randint(0, 17, (64, 1, 4, 4)),
                               torch.Generator().manual_seed(0))
    assert all(bool(m.initialized) for m in model.modules() if isinstance(m, ActNorm))
