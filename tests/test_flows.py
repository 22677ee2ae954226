"""RealNVP: invertibility and log-dets of the whole flow, normalization on continuous data, and
the dequantization bounds against exact bin masses computed by quadrature on a tiny space."""

from __future__ import annotations

import math

import pytest
import torch
from util import loss_drop

from dgm.core import Likelihood, build_model
from dgm.core.distributions import log_standard_normal
from dgm.core.errors import ConfigError, DataError
from dgm.core.spec import DataKind, DataSpec
from dgm.models.flows import FlowModel, RealNVPConfig, realnvp

CONTINUOUS_2D = DataSpec(event_shape=(2,), kind=DataKind.CONTINUOUS)
TINY_DISCRETE = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=3)


def _random_flow(spec: DataSpec, scale: float = 0.4, **overrides: object) -> FlowModel:
    """A small float64 RealNVP whose couplings are far from the identity."""
    fields = dict(num_flows=4, hidden=16, num_hidden=1, zero_init=False) | overrides
    model = realnvp(spec, RealNVPConfig(**fields)).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conditioner" in name:
                p.copy_(scale * torch.randn_like(p))
    return model.eval()


def test_registered_and_declares_likelihood_per_kind() -> None:
    model = build_model("realnvp", TINY_DISCRETE, {"num_flows": 2, "hidden": 8})
    assert isinstance(model, FlowModel)
    assert FlowModel.likelihood_on(DataKind.CONTINUOUS) is Likelihood.EXACT
    assert FlowModel.likelihood_on(DataKind.DISCRETE) is Likelihood.LOWER_BOUND
    assert FlowModel.likelihood_on(DataKind.BINARY) is Likelihood.LOWER_BOUND


@pytest.mark.parametrize(
    "fields",
    [{"num_flows": 0}, {"hidden": 0}, {"permutation": "shuffle"}, {"mask": "checker"},
     {"dropout": 1.0}, {"scale_bound": 0.0}, {"logit_alpha": 0.5}],
)
def test_config_validation_names_the_field(fields: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(fields))):
        RealNVPConfig(**fields)


@pytest.mark.parametrize("permutation,mask", [("flip", "half"), ("random", "alternate")])
def test_flow_inverts_and_logdet_matches_autograd(permutation: str, mask: str) -> None:
    spec = DataSpec(event_shape=(5,), kind=DataKind.CONTINUOUS)
    model = _random_flow(spec, permutation=permutation, mask=mask)
    model.standardize.fit(2.0 + 3.0 * torch.randn(100, 5, dtype=torch.float64))
    x = torch.randn(4, 5, dtype=torch.float64)
    z, logabsdet = model.flow(x)
    x_back, inv_logabsdet = model.flow.inverse(z)
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(logabsdet + inv_logabsdet, torch.zeros(4, dtype=torch.float64))
    for n in range(4):
        jac = torch.autograd.functional.jacobian(lambda v: model.flow(v.unsqueeze(0))[0][0], x[n])
        torch.testing.assert_close(logabsdet[n], torch.linalg.slogdet(jac).logabsdet)
    expected = log_standard_normal(z).sum(1) + logabsdet
    torch.testing.assert_close(model.log_prob(x), expected)


@pytest.mark.parametrize("scale", [0.2, 0.5])
def test_density_integrates_to_the_sampled_mass_on_continuous_data(scale: float) -> None:
    """∫_box p(x) dx on a grid equals the fraction of samples in the box; with light tails
    (scale 0.2) that is 1; with heavy ones (0.5) it is less: a check of density and sampler."""
    model = _random_flow(CONTINUOUS_2D, scale=scale)
    model.initialize_from_data(
        torch.tensor([[0.5, -0.5]]) + 1.5 * torch.randn(500, 2, dtype=torch.float64),
        torch.Generator().manual_seed(0),
    )
    n, half_width = 801, 14.0
    grid = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)
    with torch.no_grad():
        density = model.log_prob(points).exp()
        x, _ = model.flow.inverse(torch.randn(200000, 2, dtype=torch.float64))
    integral = float(density.sum() * (grid[1] - grid[0]) ** 2)
    inside = float((x.abs() <= half_width).all(dim=1).double().mean())
    # Binomial standard error of `inside` is at most 0.5 / sqrt(200000) ≈ 0.0011.
    assert integral == pytest.approx(inside, abs=4e-3)
    if scale == 0.2:
        assert integral == pytest.approx(1.0, abs=2e-3)
    else:
        assert inside < 0.99  # the heavy-tailed case really tests a partial mass


def test_standardization_is_fitted_and_zero_init_couplings_are_identity() -> None:
    spec = DataSpec(event_shape=(1, 2, 2), kind=DataKind.DISCRETE, num_levels=17)
    model = realnvp(spec, RealNVPConfig(num_flows=2, hidden=8))  # zero_init by default
    x = torch.randint(0, 17, (4000, 1, 2, 2))
    x[:, 0, 0, 0] = 0  # a constant pixel still gets a finite scale from the noise
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    y = model._to_flow_space(x, torch.rand(4000, 4, generator=torch.Generator().manual_seed(1)))
    z, logabsdet = model.flow(y)
    torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=0.05, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4), atol=0.05, rtol=0)
    # Identity couplings: the only log-det left is the standardization's.
    expected = -model.standardize.log_scale.sum().expand(4000)
    torch.testing.assert_close(logabsdet, expected)
    assert torch.isfinite(model.loss(x)).all()


def _exact_log_mass(model: RealNVP, x: torch.Tensor, n: int = 200) -> torch.Tensor:
    """log P(x) = log ∫_{[0,1)^2} p_Y((x + u)/L) L^{-2} du by the midpoint rule."""
    num_levels = model.spec.num_levels
    mid = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    uu, vv = torch.meshgrid(mid, mid, indexing="ij")
    u = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)  # (n², 2)
    out = []
    with torch.no_grad():
        for xi in x.to(torch.float64):
            log_p = model.log_density((xi + u) / num_levels)
            out.append(torch.logsumexp(log_p, 0) - math.log(n * n) - 2 * math.log(num_levels))
    return torch.stack(out)


@pytest.fixture(scope="module", params=[None, 0.05], ids=["plain", "logit"])
def tiny_discrete(request: pytest.FixtureRequest) -> tuple[RealNVP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = _random_flow(TINY_DISCRETE, scale=0.25, logit_alpha=request.param)
    model.initialize_from_data(torch.randint(0, 3, (200, 2)), torch.Generator().manual_seed(0))
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))  # all 9 points of the space
    return model, x, _exact_log_mass(model, x)


def test_bin_masses_are_a_subprobability(tiny_discrete) -> None:
    _, _, log_mass = tiny_discrete
    total = float(log_mass.exp().sum())
    assert 0.2 < total < 1.0  # the flow also puts mass outside [0, 1)^2


def test_dequantization_bound_is_below_exact_log_mass(tiny_discrete) -> None:
    model, x, log_mass = tiny_discrete
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        log_w = model.log_weights(x, 50000, generator=g)  # (k, 9)
    bound = log_w.mean(0)
    stderr = log_w.std(0) / math.sqrt(50000)
    assert bool((stderr < 0.02).all())  # precise enough for the comparison below
    assert bool((bound < log_mass - 3 * stderr).all())  # Jensen's gap is real here
    assert bool((log_mass - bound < 3.0).all())  # ... and not absurdly large


def _iwae_curve(log_w: torch.Tensor, ks: tuple[int, ...]) -> torch.Tensor:
    """Mean IWAE(k) bound per example for each k, from (R, K, N) log-weights in disjoint
    blocks of k; every k uses the same draws, so the differences have little noise."""
    repeats, big, n = log_w.shape
    out = []
    for k in ks:
        blocks = log_w.reshape(repeats * (big // k), k, n)
        out.append((torch.logsumexp(blocks, 1) - math.log(k)).mean(0))
    return torch.stack(out)  # (len(ks), N)


def test_iwae_rises_with_k_towards_exact_log_mass(tiny_discrete) -> None:
    model, x, log_mass = tiny_discrete
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        log_w = model.log_weights(x, 64 * 1000, generator=g).reshape(1000, 64, -1)
        big_k = model.log_weights(x, 100000, generator=g)
    iwae = _iwae_curve(log_w, (1, 4, 16, 64))
    assert bool((iwae[1:] >= iwae[:-1]).all())
    assert bool((iwae[-1] - iwae[0] > 0.005).all())
    assert bool((iwae[-1] <= log_mass + 5e-3).all())
    tight = torch.logsumexp(big_k, 0) - math.log(big_k.shape[0])
    torch.testing.assert_close(tight, log_mass, atol=5e-3, rtol=0)


def test_samples_have_the_data_dtype_shape_and_range() -> None:
    spec = DataSpec(event_shape=(1, 3, 3), kind=DataKind.DISCRETE, num_levels=5)
    model = _random_flow(spec).float()
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    s = model.sample(200, generator=g1)
    assert s.shape == (200, 1, 3, 3) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) <= 4
    assert torch.equal(s, model.sample(200, generator=g2))  # the generator is honored
    binary = _random_flow(DataSpec(event_shape=(4,), kind=DataKind.BINARY)).float()
    b = binary.sample(50)
    assert b.dtype == torch.long and set(b.unique().tolist()) <= {0, 1}
    cont = _random_flow(CONTINUOUS_2D).float().sample(10)
    assert cont.shape == (10, 2) and cont.dtype == torch.float32


def test_wrong_input_gives_data_error() -> None:
    model = _random_flow(TINY_DISCRETE)
    with pytest.raises(DataError):
        model.loss(torch.rand(4, 2))  # floats for discrete data
    with pytest.raises(DataError):
        model.log_weights(torch.full((4, 2), 3), 2)  # out of range
    with pytest.raises(DataError):
        model.log_prob(torch.zeros(4, 3, dtype=torch.long))  # wrong shape
    with pytest.raises(DataError):
        _random_flow(CONTINUOUS_2D).loss(torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ConfigError, match="logit_alpha"):
        realnvp(CONTINUOUS_2D, RealNVPConfig(logit_alpha=0.05))


def test_gradient_reaches_every_parameter() -> None:
    model = _random_flow(TINY_DISCRETE).float().train()
    model.loss(torch.randint(0, 3, (16, 2))).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_training_lowers_the_loss_on_moons() -> None:
    from dgm.data.toys import sample_toy

    x = sample_toy("moons", 256, seed=0)
    model = realnvp(CONTINUOUS_2D, RealNVPConfig(num_flows=4, hidden=32))
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert loss_drop(model, x, steps=40, lr=3e-3) > 0.3
