"""Mixture of Gaussians (Book §2.3): density, sampling, EM, dequantized bounds, floors."""

import math

import pytest
import torch
from torch import distributions as td

from dgm.core.base import ExpectationMaximization, ImportanceWeighted, Likelihood
from dgm.core.fitting import EMFit, GradientFit
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data.toys import sample_toy
from dgm.models.mixtures.mog import MoG, MoGConfig


def continuous(dim: int) -> DataSpec:
    return DataSpec((dim,), DataKind.CONTINUOUS)


def set_params(model: MoG, loc, var, logits=None) -> MoG:
    """Put explicit μ (K, D), σ² (K, D) and logits (K,) into a float64 model."""
    model.double()
    with torch.no_grad():
        loc = torch.as_tensor(loc, dtype=torch.float64)
        var = torch.as_tensor(var, dtype=torch.float64)
        model.loc.copy_(loc)
        model.log_excess_var.copy_(torch.log(var - model.config.min_var))
        if logits is not None:
            model.logits.copy_(torch.as_tensor(logits, dtype=torch.float64))
    return model


def random_model(dim: int = 3, k: int = 4, **cfg) -> MoG:
    model = MoG(continuous(dim), MoGConfig(num_components=k, **cfg))
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(k, dim, generator=g, dtype=torch.float64) * 2
    var = torch.rand(k, dim, generator=g, dtype=torch.float64) + 0.1
    logits = None if model.config.uniform_weights else torch.randn(k, generator=g).double()
    return set_params(model, loc, var, logits)


def em_step(model: MoG, *batches: torch.Tensor) -> torch.Tensor:
    """One EM iteration over the batches; returns the log-likelihoods before the M-step."""
    model.em_begin()
    ll = torch.cat([model.em_accumulate(b) for b in batches])
    model.em_maximize()
    return ll


# -- exact density ------------------------------------------------------------------------------
def test_log_prob_equals_mixture_same_family():
    model = random_model(dim=3, k=4)
    x = torch.randn(50, 3, dtype=torch.float64) * 3
    ref = td.MixtureSameFamily(
        td.Categorical(logits=model.logits.detach()),
        td.Independent(td.Normal(model.loc.detach(), model.variance.detach().sqrt()), 1),
    )
    assert torch.allclose(model.log_prob(x), ref.log_prob(x), atol=1e-12, rtol=0)
    assert torch.allclose(model.log_density(x), ref.log_prob(x), atol=1e-12, rtol=0)


def test_density_integrates_to_one_on_a_grid():
    model = random_model(dim=2, k=3)
    with torch.no_grad():
        model.loc.clamp_(-2, 2)
    step = 0.04
    axis = torch.arange(-9, 9, step, dtype=torch.float64) + step / 2
    grid = torch.cartesian_prod(axis, axis)
    mass = model.log_prob(grid).exp().sum().item() * step**2
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_uniform_weights_are_fixed_at_one_over_k():
    model = random_model(dim=2, k=5, uniform_weights=True)
    assert not model.logits.requires_grad
    assert all(p is not model.logits for p in model.parameters())
    assert torch.allclose(model.log_mixture_weights.exp(), torch.full((5,), 0.2).double())
    x = torch.randn(64, 2, dtype=torch.float64)
    model.loss(x).mean().backward()
    assert model.logits.grad is None
    em_step(model, x)
    assert torch.allclose(model.log_mixture_weights.exp(), torch.full((5,), 0.2).double())
    learned = random_model(dim=2, k=5)
    learned.loss(x).mean().backward()
    assert learned.logits.grad is not None and learned.logits.grad.abs().sum() > 0


def test_gradient_reaches_every_parameter_and_adam_lowers_the_nll():
    model = MoG(continuous(2), MoGConfig(num_components=6))
    x = sample_toy("moons", 512, seed=0)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    loss = model.loss(x)
    assert loss.shape == (512,) and torch.isfinite(loss).all()
    loss.mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    before = model.loss(x).mean().item()
    for _ in range(30):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
    assert model.loss(x).mean().item() < before - 0.1


# -- sampling -----------------------------------------------------------------------------------
def test_sample_moments_match_the_mixture():
    model = random_model(dim=2, k=3)
    w = model.log_mixture_weights.exp().detach()
    mu, var = model.loc.detach(), model.variance.detach()
    mean = w @ mu
    second = torch.einsum("k,ki,kj->ij", w, mu, mu) + torch.diag(w @ var)
    cov = second - torch.outer(mean, mean)
    n = 200_000
    s = model.sample(n, generator=torch.Generator().manual_seed(0)).double()
    assert s.shape == (n, 2) and model.sample(3).dtype == torch.float32
    # Tolerances: 5 standard errors of the sample mean and of the sample covariance entries.
    se_mean = (cov.diagonal() / n).sqrt()
    assert ((s.mean(0) - mean).abs() < 5 * se_mean).all()
    c = s - s.mean(0)
    prods = c.unsqueeze(2) * c.unsqueeze(1)  # (n, 2, 2)
    se_cov = prods.std(0) / math.sqrt(n)
    assert ((prods.mean(0) - cov).abs() < 5 * se_cov).all()


def test_component_frequencies_match_the_weights():
    model = random_model(dim=2, k=4)
    with torch.no_grad():  # far-apart, narrow components: each sample's component is readable
        model.loc.copy_(torch.tensor([[0.0, 0], [100, 0], [0, 100], [100, 100]]))
        model.log_excess_var.fill_(math.log(1e-2))
    n = 40_000
    s = model.sample(n, generator=torch.Generator().manual_seed(2)).double()
    comp = torch.cdist(s, model.loc.detach()).argmin(1)
    freq = torch.bincount(comp, minlength=4).double() / n
    w = model.log_mixture_weights.exp().detach()
    assert ((freq - w).abs() < 5 * (w * (1 - w) / n).sqrt()).all()  # 5 binomial std errors


def test_generator_makes_sampling_reproducible():
    model = random_model(dim=2, k=3)
    a = model.sample(10, generator=torch.Generator().manual_seed(5))
    b = model.sample(10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert not torch.equal(a, model.sample(10, generator=torch.Generator().manual_seed(6)))


# -- EM -----------------------------------------------------------------------------------------
def test_em_never_lowers_the_training_log_likelihood():
    x = sample_toy("moons", 1000, seed=1).double()
    model = MoG(continuous(2), MoGConfig(num_components=8, fit="em")).double()
    assert model.fit == EMFit() and isinstance(model, ExpectationMaximization)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    totals = [em_step(model, *x.split(300)).sum().item() for _ in range(20)]
    diffs = torch.tensor(totals).diff()
    assert (diffs >= -1e-9 * abs(totals[0])).all(), totals
    assert totals[-1] > totals[0] + 100  # and it did improve


def test_em_statistics_add_up_over_batches():
    x = sample_toy("circles", 600, seed=2).double()
    one = MoG(continuous(2), MoGConfig(num_components=5, fit="em")).double()
    one.initialize_from_data(x, torch.Generator().manual_seed(0))
    many = MoG(continuous(2), MoGConfig(num_components=5, fit="em")).double()
    many.load_state_dict(one.state_dict())
    em_step(one, x)
    em_step(many, *x.split(97))
    for a, b in zip(one.state_dict().values(), many.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-10)
    assert [s.shape for s in one.em_statistics()] == [(5,), (5, 2), (5, 2)]


def test_em_recovers_two_separated_gaussians():
    g = torch.Generator().manual_seed(0)
    n = 4000
    z = torch.rand(n, generator=g) < 0.3
    x = torch.where(z, -5 + torch.randn(n, generator=g), 5 + 0.5 * torch.randn(n, generator=g))
    x = x.double().unsqueeze(1)
    model = MoG(continuous(1), MoGConfig(num_components=2, fit="em")).double()
    set_params(model, [[-1.0], [1.0]], [[4.0], [4.0]])
    for _ in range(30):
        em_step(model, x)
    order = model.loc.detach().squeeze(1).argsort()
    mu = model.loc.detach().squeeze(1)[order]
    sd = model.variance.detach().squeeze(1)[order].sqrt()
    w = model.log_mixture_weights.exp().detach()[order]
    # Tolerances: about 5 standard errors with n = 4000 (1200 and 2800 points per component).
    assert torch.allclose(mu, torch.tensor([-5.0, 5.0]).double(), atol=0.15)
    assert torch.allclose(sd, torch.tensor([1.0, 0.5]).double(), atol=0.1)
    assert torch.allclose(w, torch.tensor([0.3, 0.7]).double(), atol=0.04)


def test_variance_floor_holds_after_em_on_a_collapsed_component():
    x = torch.cat([torch.full((30, 1), 3.0), torch.randn(200, 1)]).double()

    def fit(min_var: float) -> tuple[MoG, torch.Tensor]:
        model = MoG(continuous(1), MoGConfig(num_components=2, fit="em", min_var=min_var))
        set_params(model, [[3.0], [0.0]], [[1e-2], [1.0]])
        lls = torch.stack([em_step(model, x).sum() for _ in range(10)])
        return model, lls

    model, lls = fit(1e-3)
    var = model.variance.detach()
    assert (var >= 1e-3).all()
    assert var[0, 0].item() == pytest.approx(1e-3, rel=1e-6)  # the floor is what holds it
    assert torch.isfinite(lls).all() and (lls.diff() >= -1e-9 * lls.abs().max()).all()
    # Bounded: at best the 30 spikes get log ω_0 - ½ log(2π σ²_min) each.
    _, lls_small_floor = fit(1e-8)
    assert lls_small_floor[-1] > lls[-1] + 30 * 0.5 * math.log(1e-3 / 1e-8) - 1.0


def test_variance_floor_holds_under_gradients():
    model = random_model(dim=2, k=2, min_var=1e-3)
    with torch.no_grad():
        model.log_excess_var.fill_(-1e3)
        model.loc[0] = 0.0
    assert (model.variance >= 1e-3).all()
    assert torch.allclose(model.log_var, torch.full((2, 2), math.log(1e-3)).double())
    log_p = model.log_prob(torch.zeros(1, 2, dtype=torch.float64))
    assert torch.isfinite(log_p).all() and log_p.item() < -math.log(2 * math.pi * 1e-3) + 1e-9


# -- discrete data: dequantized bounds ----------------------------------------------------------
def exact_log_mass(model: MoG, x: torch.Tensor, levels: int) -> torch.Tensor:
    """log P(x) = log Σ_k ω_k [Φ((x+1)/L) - Φ(x/L)] for 1-D x: the mixture's mass on the bin."""
    mu = model.loc.detach()[:, 0]
    sd = model.variance.detach()[:, 0].sqrt()
    a = (x.double() / levels - mu) / sd  # (N, K)
    b = ((x.double() + 1) / levels - mu) / sd
    mass = torch.special.ndtr(b) - torch.special.ndtr(a)
    return torch.logsumexp(model.log_mixture_weights.detach() + mass.log(), dim=1)


def test_dequantized_bounds_on_a_tiny_discrete_space():
    levels = 5
    spec = DataSpec((1,), DataKind.DISCRETE, num_levels=levels)
    model = MoG(spec, MoGConfig(num_components=3))
    assert model.likelihood_on(spec.kind) is Likelihood.LOWER_BOUND
    assert isinstance(model, ImportanceWeighted)
    set_params(model, [[0.15], [0.5], [0.8]], [[0.01], [0.02], [0.005]], [0.0, 0.5, -0.3])
    x = torch.arange(levels).unsqueeze(1)  # every value, (5, 1)
    log_p = exact_log_mass(model, x, levels)
    assert log_p.exp().sum() < 1  # some mass lies outside [0, 1)

    m = 2**16
    with torch.no_grad():
        lw = model.log_weights(x, m, generator=torch.Generator().manual_seed(0))  # (m, 5)
    assert lw.shape == (m, levels) and lw.dtype == torch.float64
    # Monte Carlo noise shared by every estimate below: the relative standard error of the
    # mean importance weight over all m draws (delta method for its log).
    noise = (lw - log_p).exp().std(0) / math.sqrt(m)
    estimates, errors = [], []
    for k in (1, 4, 16, 64, 256, 1024):
        groups = torch.logsumexp(lw.reshape(m // k, k, levels), dim=1) - math.log(k)
        estimates.append(groups.mean(0))
        errors.append(groups.std(0) / math.sqrt(m // k) + noise)
    # E[single-draw bound] <= log P(x), with a visible Jensen gap where p_Y varies over the bin.
    assert (estimates[0] <= log_p + 4 * errors[0]).all()
    assert (estimates[0] < log_p - 5 * errors[0]).sum() >= 3
    # IWAE(k) does not decrease with k (up to 4 standard errors) ...
    for (a, ea), (b, eb) in zip(zip(estimates, errors), zip(estimates[1:], errors[1:])):
        assert (b >= a - 4 * (ea**2 + eb**2).sqrt()).all()
        assert (b <= log_p + 4 * eb).all()
    # ... and tends to log P(x).
    assert ((estimates[-1] - log_p).abs() < 4 * errors[-1]).all()
    assert ((log_p - estimates[0]) > 0.02).any()  # where k = 1 is far from it
    # log_prob is one draw of the same bound.
    with torch.no_grad():
        single = torch.stack([model.log_prob(x) for _ in range(4000)]).mean(0)
    assert torch.allclose(single, estimates[0], atol=0.05)


def test_log_weights_use_the_generator_and_match_log_prob_on_continuous_data():
    spec = DataSpec((1, 2, 2), DataKind.DISCRETE, num_levels=17)
    model = MoG(spec, MoGConfig(num_components=3))
    x = torch.randint(0, 17, (6, 1, 2, 2))
    a = model.log_weights(x, 4, generator=torch.Generator().manual_seed(1))
    b = model.log_weights(x, 4, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 6) and torch.equal(a, b)
    assert not torch.equal(a[0], a[1])  # independent draws
    cont = random_model(dim=2, k=3)
    xc = torch.randn(5, 2, dtype=torch.float64)
    assert torch.equal(cont.log_weights(xc, 3), cont.log_prob(xc).expand(3, 5))
    assert cont.likelihood_on(DataKind.CONTINUOUS) is Likelihood.EXACT


@pytest.mark.parametrize("kind,levels", [(DataKind.DISCRETE, 17), (DataKind.BINARY, 2)])
def test_discrete_samples_are_integers_in_range(kind, levels):
    spec = DataSpec((1, 3, 3), kind, num_levels=levels)
    model = MoG(spec, MoGConfig(num_components=4))
    s = model.sample(500, generator=torch.Generator().manual_seed(0))
    assert s.shape == (500, 1, 3, 3) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) <= levels - 1
    assert len(s.unique()) == levels
    assert torch.isfinite(model.log_prob(s)).all()


def test_initialize_from_data_puts_means_on_training_points(digits):
    spec = digits.spec
    x, _ = digits.train.all(spec)
    model = MoG(spec, MoGConfig(num_components=10))
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    means = model.loc.detach().reshape(10, *spec.event_shape)
    bins = torch.floor(means * spec.num_levels).long()  # each mean lies in a training point's bins
    flat = x.reshape(len(x), -1)
    assert all((flat == b.reshape(1, -1)).all(1).any() for b in bins)
    y = (x.double() + 0.5) / spec.num_levels
    data_var = y.reshape(len(x), -1).var(0)
    # The dequantized variance is the data variance plus about 1/(12 L²) from the noise.
    expected = (data_var + 1 / (12 * spec.num_levels**2)).clamp_min(model.config.min_var)
    assert torch.allclose(model.variance.detach()[0].double(), expected, rtol=0.1, atol=2e-4)
    em = MoG(spec, MoGConfig(num_components=10, fit="em"))
    em.initialize_from_data(x, torch.Generator().manual_seed(0))
    before = em_step(em, x).mean()
    after = em_step(em, x).mean()
    assert after > before  # EM improves the dequantized bound on digits


# -- contract -----------------------------------------------------------------------------------
def test_registry_builds_from_a_mapping():
    spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
    model = build_model("mog", spec, {"num_components": 7, "fit": "em"})
    assert isinstance(model, MoG) and model.loc.shape == (7, 64) and model.fit == EMFit()
    assert build_model("mog", spec).fit == GradientFit()
    with pytest.raises(ConfigError):
        MoG(DataSpec((4,), DataKind.TOKENS, num_levels=3), MoGConfig())


def test_bad_input_raises_data_error():
    disc = MoG(DataSpec((1, 2, 2), DataKind.DISCRETE, num_levels=5), MoGConfig(num_components=2))
    with pytest.raises(DataError, match="integer"):
        disc.log_prob(torch.zeros(3, 1, 2, 2))
    with pytest.raises(DataError, match="shape"):
        disc.loss(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(DataError, match="0..4"):
        disc.log_weights(torch.full((3, 1, 2, 2), 5), 2)
    cont = MoG(continuous(2), MoGConfig(num_components=2))
    with pytest.raises(DataError, match="floating"):
        cont.log_prob(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(DataError, match="shape"):
        cont.em_begin() or cont.em_accumulate(torch.zeros(3, 3))


@pytest.mark.parametrize(
    "fields",
    [
        {"num_components": 0},
        {"fit": "adam"},
        {"min_var": 0.0},
        {"min_var": -1.0},
        {"init_log_var": -20.0},
    ],
)
def test_bad_config_is_rejected_with_the_field_name(fields):
    with pytest.raises(ConfigError, match=next(iter(fields))):
        MoGConfig(**fields)
