"""Every prior with the posteriors in one VAE: the ELBO and IWAE(k) against the exact log p(x)
by 2-D quadrature, IWAE(1) = ELBO, and the training objectives (β, KL warm-up, free bits,
IWAE training)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical
from util import loss_drop

from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.objectives import free_bits, iwae_loss, kl_weight
from dgm.core.spec import DataKind, DataSpec
from dgm.models.latent.posteriors import PosteriorConfig
from dgm.models.latent.priors import PriorConfig
from dgm.models.latent.vae import VAE, VAEConfig

TINY = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=3)
COMBOS = [
    ("standard", {"kind": "gaussian"}),
    ("mog", {"kind": "householder", "num_flows": 2}),
    ("vamp", {"kind": "sylvester", "variant": "orthogonal", "num_flows": 2}),
    ("gtm", {"kind": "sylvester", "variant": "triangular", "num_flows": 2}),
    ("gtm_vamp", {"kind": "iaf", "num_flows": 2, "hidden": 8, "context_dim": 4}),
    ("flow", {"kind": "sylvester", "variant": "householder", "num_flows": 2}),
]


def _vae(prior: str, posterior: dict, spec: DataSpec = TINY, **fields: object) -> VAE:
    config = VAEConfig(**({
        "latent_dim": 2, "hidden": 8, "num_hidden": 1,
        "prior": PriorConfig(kind=prior, num_components=4, hidden=8, num_flows=2),
        "posterior": PosteriorConfig(**posterior),
    } | fields))
    return VAE(spec, config)


def _random_model(prior: str, posterior: dict) -> VAE:
    torch.manual_seed(0)
    model = _vae(prior, posterior).double().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            # Strongly perturbed IAF steps scale some directions by up to e^±4: keep them milder.
            p.add_((0.1 if name.startswith("posterior.") else 0.3) * torch.randn_like(p))
        # A posterior wider than the true one keeps the importance weights light-tailed, so
        # that IWAE with 1e5 draws is close to log p(x) (a narrow one can miss by ~0.1 nats).
        model.encoder[-1].bias[2:4] += 1.5
    return model


def _exact_log_px(model: VAE, x: torch.Tensor) -> torch.Tensor:
    """log ∫ p(x | z) p(z) dz on a 2-D grid; the decoder scored by torch.distributions."""
    axis = torch.linspace(-25.0, 25.0, 801, dtype=torch.float64)
    z = torch.cartesian_prod(axis, axis)
    cell = float(axis[1] - axis[0]) ** 2
    with torch.no_grad():
        logits = model.decode(z)  # (G, 2, 3)
        log_joint = Categorical(logits=logits.unsqueeze(1)).log_prob(x).sum(-1)
        log_joint = log_joint + model.prior.log_prob(z).unsqueeze(1)
    return torch.logsumexp(log_joint, dim=0) + math.log(cell)


@pytest.mark.parametrize(("prior", "posterior"), COMBOS, ids=[c[0] for c in COMBOS])
def test_elbo_below_and_iwae_towards_the_exact_likelihood(prior: str, posterior: dict) -> None:
    model = _random_model(prior, posterior)
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    log_px = _exact_log_px(model, x)
    assert float(log_px.exp().sum()) == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        log_w = model.log_weights(x, 2000 * 50, generator=torch.Generator().manual_seed(1))
    elbo = log_w.mean(0)
    stderr = log_w.std(0) / math.sqrt(log_w.shape[0])
    assert bool((elbo < log_px + 3 * stderr).all())
    blocks = log_w.reshape(2000, 50, -1)
    curve = torch.stack([
        (torch.logsumexp(blocks[:, :k], 1) - math.log(k)).mean(0) for k in (1, 5, 50)
    ])
    assert bool((curve[1:] >= curve[:-1] - 1e-9).all())
    big = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    # The estimate's relative error is about 1/sqrt(ESS), the effective sample size of the
    # self-normalized weights: a random posterior can be far from the true one.
    ess = 1.0 / (torch.softmax(log_w, 0) ** 2).sum(0)
    assert bool(((big - log_px).abs() < 3.0 / ess.sqrt() + 0.01).all()), (big - log_px, ess)


@pytest.mark.parametrize(("prior", "posterior"), COMBOS, ids=[c[0] for c in COMBOS])
def test_iwae_with_one_sample_is_the_monte_carlo_elbo(prior: str, posterior: dict) -> None:
    model = _random_model(prior, posterior)
    mc = VAE(TINY, VAEConfig(**(vars(model.config) | {"analytic_kl": False}))).double()
    mc.load_state_dict(model.state_dict())
    x = torch.randint(0, 3, (7, 2))
    log_w = mc.log_weights(x, 1, generator=torch.Generator().manual_seed(5))[0]
    terms = mc.elbo_terms(x, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(log_w, -(terms.reconstruction + terms.kl))


def test_every_combination_trains_on_digits(digits) -> None:
    x, _ = digits.train.all(digits.spec)
    x = x[:128]
    for prior, posterior in [*COMBOS, ("standard", {"kind": "vmf"})]:
        model = _vae(prior, posterior, digits.spec, latent_dim=3, hidden=32)
        model.initialize_from_data(x, torch.Generator().manual_seed(0))
        assert loss_drop(model, x, steps=25, lr=3e-3) > 2.0, prior
        samples = model.sample(5, generator=torch.Generator().manual_seed(0))
        assert samples.dtype == torch.int64 and samples.shape == (5, 1, 8, 8)
        assert int(samples.min()) >= 0 and int(samples.max()) <= 16


# --------------------------------------------------------------------------- objectives


def test_kl_warmup_ramps_and_is_checkpointed() -> None:
    assert kl_weight(0, 1.0, 0) == 1.0
    assert kl_weight(0, 1.0, 4) == 0.25 and kl_weight(9, 2.0, 4) == 2.0
    model = _vae("standard", {"kind": "gaussian"}, warmup_steps=10)
    x = torch.randint(0, 3, (4, 2))
    model.train()
    weights = []
    for t in range(3):
        weights.append(model.kl_weight())
        model.loss(x).mean().backward()
        model.after_step(StepInfo(step=t + 1))  # the trainer's hook after a step it took
    assert weights == pytest.approx([0.1, 0.2, 0.3])
    assert int(model.state_dict()["num_updates"]) == 3
    model.loss(x).mean().backward()  # a loss without a step (skipped by the guard) does not count
    model.eval()
    with torch.no_grad():
        model.loss(x)
    assert int(model.num_updates) == 3


def test_free_bits_floor_and_gradient() -> None:
    kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]], requires_grad=True)
    out = free_bits(kl, 0.5)
    # Batch means 0.2 (below λ) and 3.0 (above): the mean loss is 0.5 + 3.0.
    assert float(out.mean().detach()) == pytest.approx(3.5)
    out.sum().backward()
    assert kl.grad is not None
    torch.testing.assert_close(kl.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))


def test_loss_is_the_configured_objective() -> None:
    x = torch.randint(0, 3, (6, 2))
    base = _vae("standard", {"kind": "gaussian"})
    beta = _vae("standard", {"kind": "gaussian"}, beta=0.3)
    beta.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(0)
    terms = base.elbo_terms(x, generator=g)
    torch.manual_seed(3)
    loss_beta = beta.loss(x)
    torch.manual_seed(3)
    terms_b = beta.elbo_terms(x)
    torch.testing.assert_close(loss_beta, terms_b.reconstruction + 0.3 * terms_b.kl)
    assert terms.kl_groups.shape == (6, 2)  # closed form per unit
    iwae = _vae("standard", {"kind": "gaussian"}, iwae_k=8)
    iwae.load_state_dict(base.state_dict())
    torch.manual_seed(4)
    loss = iwae.loss(x)
    torch.manual_seed(4)
    expected = iwae_loss(iwae.log_weights(x, 8))
    torch.testing.assert_close(loss, expected)


def test_bad_combinations_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="iwae_k"):
        VAEConfig(iwae_k=4, beta=0.5)
    with pytest.raises(ConfigError, match="vMF"):
        VAEConfig(posterior=PosteriorConfig(kind="vmf"), prior=PriorConfig(kind="mog"))
    with pytest.raises(ConfigError, match="latent_dim"):
        VAE(TINY, VAEConfig(latent_dim=1, posterior=PosteriorConfig(kind="iaf")))


def test_hyperspherical_vae_bounds_on_the_circle() -> None:
    """A vMF posterior on S¹ with the uniform prior: log p(x) = log ∫ p(x | z(θ)) dθ / 2π by
    quadrature over the angle; the ELBO is below it and IWAE(k) approaches it."""
    torch.manual_seed(0)
    model = _vae("standard", {"kind": "vmf"}).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.cartesian_prod(torch.arange(3), torch.arange(3))
    theta = torch.linspace(0.0, 2 * math.pi, 20001, dtype=torch.float64)[:-1]
    z = torch.stack([theta.cos(), theta.sin()], dim=1)
    with torch.no_grad():
        log_px_z = Categorical(logits=model.decode(z).unsqueeze(1)).log_prob(x).sum(-1)
        log_w = model.log_weights(x, 50_000, generator=torch.Generator().manual_seed(2))
    log_px = torch.logsumexp(log_px_z, 0) - math.log(z.shape[0])
    assert float(log_px.exp().sum()) == pytest.approx(1.0, abs=1e-9)
    elbo, stderr = log_w.mean(0), log_w.std(0) / math.sqrt(log_w.shape[0])
    assert bool((elbo < log_px + 3 * stderr).all())
    big = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    torch.testing.assert_close(big, log_px, atol=0.02, rtol=0.0)
    assert bool((big > elbo).all())


def test_hyperspherical_closed_form_kl_matches_the_weights() -> None:
    torch.manual_seed(1)
    model = _vae("standard", {"kind": "vmf"}, latent_dim=5).double().eval()
    x = torch.randint(0, 3, (4, 2))
    params = model._params(x)
    draw = model.posterior.rsample(params, 100_000, generator=torch.Generator().manual_seed(0))
    mc = (draw.log_q - model.prior.log_prob(draw.z)).mean(0)
    kl = model.posterior.closed_form_kl(params, model.prior)
    assert kl is not None
    torch.testing.assert_close(kl[:, 0], mc, atol=0.01, rtol=0.0)
    assert torch.allclose(draw.z.norm(dim=-1), torch.ones(1, dtype=torch.float64))
