"""VAE: the ELBO and IWAE bounds against a marginal computed by quadrature (1-D latent), the
closed-form KL against Monte Carlo, the decoder likelihoods, and the model contract."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from util import loss_drop
from torch.distributions import Categorical, Normal

from dgm.core import Likelihood, build_model
from dgm.core.errors import ConfigError, DataError
from dgm.core.spec import DataKind, DataSpec
from dgm.core.heads import BernoulliHead, CategoricalHead, GaussianHead
from dgm.models.latent.vae import VAE, GaussianPosterior, VAEConfig

TINY = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=3)
SPECS = {
    "categorical": DataSpec(event_shape=(1, 3, 3), kind=DataKind.DISCRETE, num_levels=5),
    "bernoulli": DataSpec(event_shape=(1, 3, 3), kind=DataKind.BINARY),
    "gaussian": DataSpec(event_shape=(2,), kind=DataKind.CONTINUOUS),
    "discretized_logistic": DataSpec(event_shape=(4,), kind=DataKind.DISCRETE, num_levels=256),
}
CONFIGS = {name: {"likelihood": name} for name in SPECS} | {
    "discretized_logistic_mixture": {"likelihood": "discretized_logistic", "num_components": 3}
}


def _data(spec: DataSpec, n: int) -> torch.Tensor:
    if spec.kind is DataKind.CONTINUOUS:
        return torch.randn(n, *spec.event_shape)
    assert spec.num_levels is not None
    return torch.randint(0, spec.num_levels, (n, *spec.event_shape))


def _vae(spec: DataSpec, **fields: object) -> VAE:
    config = VAEConfig(**({"latent_dim": 2, "hidden": 16} | fields))  # type: ignore[arg-type]
    return VAE(spec, config)


# ------------------------------------------------------------ bounds against exact log p(x)


@pytest.fixture(scope="module")
def tiny_vae() -> tuple[VAE, torch.Tensor, torch.Tensor]:
    """A random VAE with a 1-D latent on {0,1,2}^2, all 9 points and their exact log p(x)."""
    torch.manual_seed(0)
    model = _vae(TINY, latent_dim=1, hidden=8, num_hidden=1).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn_like(p))
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    # log p(x) = log ∫ p(x | z) N(z; 0, 1) dz by the trapezoid rule on [-10, 10]; the
    # decoder is scored with torch.distributions, independently of the model's head.
    z = torch.linspace(-10.0, 10.0, 20001, dtype=torch.float64).unsqueeze(1)
    with torch.no_grad():
        logits = model.decode(z)  # (G, 2, 3)
    log_px_z = Categorical(logits=logits.unsqueeze(1)).log_prob(x).sum(-1)  # (G, 9)
    log_joint = log_px_z + Normal(0.0, 1.0).log_prob(z)
    dz = float(z[1, 0] - z[0, 0])
    weights = torch.full((z.shape[0], 1), dz, dtype=torch.float64)
    weights[[0, -1]] = dz / 2
    log_px = torch.logsumexp(log_joint + weights.log(), dim=0)
    return model, x, log_px


def test_quadrature_marginal_is_normalized(tiny_vae) -> None:
    _, _, log_px = tiny_vae
    assert float(log_px.exp().sum()) == pytest.approx(1.0, abs=1e-9)


def test_elbo_is_below_exact_log_likelihood(tiny_vae) -> None:
    model, x, log_px = tiny_vae
    with torch.no_grad():
        log_w = model.log_weights(x, 50000, generator=torch.Generator().manual_seed(0))
    elbo = log_w.mean(0)
    stderr = log_w.std(0) / math.sqrt(log_w.shape[0])
    assert bool((stderr < 0.01).all())
    assert bool((elbo < log_px - 3 * stderr).all())  # a real gap: q is not the posterior
    # log p(x) - ELBO = KL(q || posterior) is finite and moderate for this model.
    assert bool((log_px - elbo < 5.0).all())


def test_iwae_rises_with_k_towards_exact_log_likelihood(tiny_vae) -> None:
    model, x, log_px = tiny_vae
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        log_w = model.log_weights(x, 64 * 1000, generator=g).reshape(1000, 64, -1)
        big_k = model.log_weights(x, 100000, generator=g)
    curve = []
    for k in (1, 4, 16, 64):
        # Disjoint blocks of the same draws: every k sees the same weights (low-noise diffs).
        blocks = log_w.reshape(-1, k, x.shape[0])
        curve.append((torch.logsumexp(blocks, 1) - math.log(k)).mean(0))
    iwae = torch.stack(curve)
    assert bool((iwae[1:] >= iwae[:-1]).all())
    assert bool((iwae[-1] - iwae[0] > 0.01).all())
    assert bool((iwae[-1] <= log_px + 5e-3).all())
    tight = torch.logsumexp(big_k, 0) - math.log(big_k.shape[0])
    torch.testing.assert_close(tight, log_px, atol=1e-2, rtol=0)


def test_iwae_with_one_sample_is_the_single_sample_elbo(tiny_vae) -> None:
    model, x, _ = tiny_vae
    mc_model = VAE(TINY, dataclasses.replace(model.config, analytic_kl=False))
    mc_model.load_state_dict(model.state_dict())
    mc_model.double().eval()
    log_w = mc_model.log_weights(x, 1, generator=torch.Generator().manual_seed(5))
    iwae_1 = torch.logsumexp(log_w, 0) - math.log(1)
    terms = mc_model.elbo_terms(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(iwae_1, -(terms.reconstruction + terms.kl))
    torch.manual_seed(9)
    a = mc_model.log_prob(x)
    torch.manual_seed(9)
    torch.testing.assert_close(a, mc_model.log_weights(x, 1)[0])


# -------------------------------------------------------------------------------------- KL


def test_analytic_kl_equals_monte_carlo() -> None:
    q = GaussianPosterior(
        mean=torch.randn(3, 4, dtype=torch.float64),
        log_var=0.5 * torch.randn(3, 4, dtype=torch.float64),
    )
    z = q.rsample(200000, generator=torch.Generator().manual_seed(0))
    samples = q.log_prob(z) - Normal(0.0, 1.0).log_prob(z).sum(-1)  # (k, 3)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    # 4 standard errors: a false alarm is a 1-in-15,000 event per entry.
    assert bool(((samples.mean(0) - q.kl_standard_normal()).abs() < 4 * stderr).all())
    zero = GaussianPosterior(torch.zeros(2, 3), torch.zeros(2, 3))
    assert torch.equal(zero.kl_standard_normal(), torch.zeros(2))
    assert bool((q.kl_standard_normal() > 0).all())


def test_posterior_log_prob_matches_torch_normal() -> None:
    q = GaussianPosterior(torch.randn(5, 3), torch.randn(5, 3))
    z = torch.randn(7, 5, 3)
    expected = Normal(q.mean, torch.exp(0.5 * q.log_var)).log_prob(z).sum(-1)
    torch.testing.assert_close(q.log_prob(z), expected)


def test_analytic_and_monte_carlo_losses_agree_in_expectation() -> None:
    spec = SPECS["categorical"]
    x = _data(spec, 4)
    model = _vae(spec, analytic_kl=True).double().eval()
    mc = _vae(spec, analytic_kl=False).double().eval()
    mc.load_state_dict(model.state_dict())
    big = x.repeat(20000, 1, 1, 1)
    kl_mc = mc.elbo_terms(big).kl.reshape(20000, 4)
    kl_exact = model.elbo_terms(x).kl
    stderr = kl_mc.std(0) / math.sqrt(20000)
    assert bool(((kl_mc.mean(0) - kl_exact).abs() < 4 * stderr).all())


# ---------------------------------------------------------------------------- likelihoods


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_and_dtypes(name: str) -> None:
    fields = CONFIGS[name]
    spec = SPECS[str(fields["likelihood"])]
    model = _vae(spec, **fields).eval()
    model.initialize_from_data(_data(spec, 50), torch.Generator().manual_seed(0))
    x = _data(spec, 5)
    q = model.encode(x)
    assert q.mean.shape == (5, 2) and q.log_var.shape == (5, 2)
    params = model.decode(q.mean)
    assert params.shape == (5, *spec.event_shape, model.head.num_params)
    for out in (model.sample(7), model.reconstruct(x)):
        assert out.dtype == spec.dtype
        assert out.shape[1:] == spec.event_shape
        model.check_input(out)  # in the data space: right dtype and range
    assert model.log_weights(x, 3).shape == (3, 5)
    assert model.log_prob(x).shape == (5,) and model.loss(x).shape == (5,)
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(model.sample(6, generator=g1), model.sample(6, generator=g2))


def test_auto_likelihood_follows_the_data_kind() -> None:
    assert isinstance(_vae(SPECS["categorical"]).head, CategoricalHead)
    assert isinstance(_vae(SPECS["bernoulli"]).head, BernoulliHead)
    assert isinstance(_vae(SPECS["gaussian"]).head, GaussianHead)
    with pytest.raises(ConfigError, match="likelihood"):
        _vae(SPECS["categorical"], likelihood="bernoulli")
    with pytest.raises(ConfigError, match="likelihood"):
        _vae(SPECS["gaussian"], likelihood="categorical")


# ------------------------------------------------------------------------------- contract


def test_loss_terms_sum_to_the_loss() -> None:
    spec = SPECS["categorical"]
    x = _data(spec, 8)
    for beta in (1.0, 2.5):
        model = _vae(spec, analytic_kl=False, beta=beta).eval()
        torch.manual_seed(3)
        loss = model.loss(x)
        torch.manual_seed(3)
        terms = model.loss_terms(x)
        assert set(terms) == {"reconstruction", "kl"}
        torch.testing.assert_close(terms["reconstruction"] + terms["kl"], loss)
    torch.manual_seed(3)
    plain = model.elbo_terms(x)  # unweighted parts; model has beta = 2.5
    torch.testing.assert_close(terms["kl"], 2.5 * plain.kl)
    torch.testing.assert_close(terms["reconstruction"], plain.reconstruction)


def test_registered_and_is_a_lower_bound() -> None:
    model = build_model("vae", SPECS["bernoulli"], {"latent_dim": 3, "hidden": 8})
    assert isinstance(model, VAE)
    assert VAE.likelihood_on(DataKind.DISCRETE) is Likelihood.LOWER_BOUND


@pytest.mark.parametrize(
    "fields",
    [{"latent_dim": 0}, {"hidden": 0}, {"num_hidden": -1}, {"dropout": 1.0},
     {"likelihood": "poisson"}, {"beta": -1.0}, {"num_components": 0}],
)
def test_config_validation_names_the_field(fields: dict) -> None:
    with pytest.raises(ConfigError, match=next(iter(fields))):
        VAEConfig(**fields)


def test_wrong_input_gives_data_error() -> None:
    model = _vae(SPECS["categorical"])
    with pytest.raises(DataError):
        model.loss(torch.rand(2, 1, 3, 3))
    with pytest.raises(DataError):
        model.encode(torch.full((2, 1, 3, 3), 5))
    with pytest.raises(DataError):
        model.log_weights(torch.zeros(2, 9, dtype=torch.long), 2)


def test_gradient_reaches_every_parameter() -> None:
    for name in ("categorical", "gaussian"):
        model = _vae(SPECS[name], dropout=0.1)
        model.loss(_data(SPECS[name], 16)).mean().backward()
        for pname, p in model.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), (name, pname)


def test_initialize_from_data_fits_the_marginals() -> None:
    spec = SPECS["categorical"]
    x = _data(spec, 300)
    x[:, 0, 0, 0] = 2  # one pixel always takes the same value
    model = _vae(spec)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    bias = model.decoder[-1].bias.detach().reshape(9, 5)
    probs = torch.softmax(bias, -1)
    counts = torch.nn.functional.one_hot(x.reshape(300, 9), 5).sum(0) + 1.0
    torch.testing.assert_close(probs, counts / counts.sum(-1, keepdim=True))
    cont = SPECS["gaussian"]
    xc = 3.0 + 2.0 * torch.randn(2000, 2)
    gauss = _vae(cont)
    gauss.initialize_from_data(xc, torch.Generator().manual_seed(0))
    torch.testing.assert_close(gauss.inputs.loc, xc.mean(0))
    torch.testing.assert_close(gauss.head.log_var.detach(), torch.log(xc.var(0)))


def test_training_lowers_the_loss_on_digits(digits) -> None:
    x, _ = digits.train.all(digits.spec)
    x = x[:256]
    model = _vae(digits.spec, latent_dim=4, hidden=64)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert loss_drop(model, x, steps=60, lr=3e-3) > 5.0
