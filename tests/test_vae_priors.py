"""VAE priors: every one a normalized density over the whole latent vector whose sampler agrees
with its log-density (Book §5.4.1, with the listings' per-coordinate mixture and broadcast
log-det bugs as the failure modes these tests catch)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from dgm.core.errors import ConfigError
from dgm.core.nn import mlp
from dgm.models.latent.priors import (
    PRIORS,
    FlowPrior,
    GTMPrior,
    GTMVampPrior,
    MixturePrior,
    PriorConfig,
    VampPrior,
    build_prior,
)

INPUT_DIM = 6


def _encoder(latent_dim: int) -> nn.Module:
    torch.manual_seed(1)
    return mlp(INPUT_DIM, 16, 2 * latent_dim, num_hidden=1).double()


def _gaussian_fn(net: nn.Module):
    def fn(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = net(u).chunk(2, dim=-1)
        return mean, log_var

    return fn


def _prior(kind: str, latent_dim: int, **fields: object):
    net = _encoder(latent_dim)
    config = PriorConfig(**({"kind": kind, "num_components": 4, "hidden": 16} | fields))
    prior = build_prior(
        config, latent_dim, input_dim=INPUT_DIM, encoder=_gaussian_fn(net), bounded_inputs=True
    ).double()
    with torch.no_grad():  # move every learnable prior away from its initialization
        for name, p in prior.named_parameters():
            p.add_(0.3 * torch.randn_like(p))
    return prior, net


def _grid(half_width: float, n: int) -> tuple[torch.Tensor, float]:
    axis = torch.linspace(-half_width, half_width, n, dtype=torch.float64)
    pts = torch.cartesian_prod(axis, axis)
    return pts, float(axis[1] - axis[0]) ** 2


@pytest.mark.parametrize("kind", PRIORS)
def test_every_prior_integrates_to_one_in_2d(kind: str) -> None:
    prior, _ = _prior(kind, 2)
    pts, cell = _grid(30.0, 1201)  # the flow's tails reach past ±12
    with torch.no_grad():
        mass = float(prior.log_prob(pts).exp().sum()) * cell
    assert mass == pytest.approx(1.0, abs=2e-3)


@pytest.mark.parametrize("kind", PRIORS)
def test_every_prior_integrates_to_one_in_5d_by_importance_sampling(kind: str) -> None:
    prior, _ = _prior(kind, 5)
    proposal = Normal(torch.zeros(5, dtype=torch.float64), 3.0 * torch.ones(5, dtype=torch.float64))
    z = proposal.sample((200_000,))
    with torch.no_grad():
        ratio = (prior.log_prob(z) - proposal.log_prob(z).sum(-1)).exp()
    mean, se = float(ratio.mean()), float(ratio.std() / math.sqrt(ratio.numel()))
    assert abs(mean - 1.0) < max(4 * se, 0.01), (mean, se)


@pytest.mark.parametrize("kind", PRIORS)
def test_sampler_agrees_with_the_density(kind: str) -> None:
    """The quadrant mass from 20k draws matches the quadrature of exp(log_prob): a sampler with
    exp(log σ²) as its scale (the book's mixture samplers) fails this."""
    prior, _ = _prior(kind, 2)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        z = prior.sample(20_000, generator=gen)
        pts, cell = _grid(12.0, 601)
        dens = prior.log_prob(pts).exp() * cell
    for box in [(0.0, 0.0), (-1.0, 0.5)]:
        inside = (pts[:, 0] > box[0]) & (pts[:, 1] > box[1])
        expected = float(dens[inside].sum())
        observed = float(((z[:, 0] > box[0]) & (z[:, 1] > box[1])).double().mean())
        se = math.sqrt(expected * (1 - expected) / z.shape[0])
        assert abs(observed - expected) < 4 * se + 2e-3, (box, observed, expected)


def test_mixture_is_one_mixture_of_whole_vectors() -> None:
    prior, _ = _prior("mog", 3)
    means, log_vars = prior.components()
    reference = MixtureSameFamily(
        Categorical(logits=prior.weight_logits),
        Independent(Normal(means, torch.exp(0.5 * log_vars)), 1),
    )
    z = torch.randn(50, 3, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), reference.log_prob(z))
    # A product of per-coordinate mixtures (the listings' bug) is a different density.
    per_coord = torch.logsumexp(
        Normal(means, torch.exp(0.5 * log_vars)).log_prob(z.unsqueeze(-2))
        + torch.log_softmax(prior.weight_logits, 0).unsqueeze(-1), dim=-2
    ).sum(-1)
    assert not torch.allclose(prior.log_prob(z), per_coord)


def test_vamp_prior_is_the_encoder_at_the_pseudo_inputs() -> None:
    prior, net = _prior("vamp", 2)
    assert isinstance(prior, VampPrior)
    u = prior.pseudo_inputs()
    assert bool(((u > 0) & (u < 1)).all())
    mean, log_var = net(u).chunk(2, dim=-1)
    z = torch.randn(20, 2, dtype=torch.float64)
    manual = torch.logsumexp(
        Normal(mean, torch.exp(0.5 * log_var)).log_prob(z.unsqueeze(1)).sum(-1), dim=1
    ) - math.log(4)
    torch.testing.assert_close(prior.log_prob(z), manual)
    # Uniform weights by default (Eq. 5.48): not a parameter; learnable with weights: learned.
    assert "weight_logits" not in dict(prior.named_parameters())
    learned, _ = _prior("vamp", 2, weights="learned")
    assert "weight_logits" in dict(learned.named_parameters())
    # The gradient reaches the pseudo-inputs and the (shared, unregistered) encoder.
    prior.log_prob(z).sum().backward()
    assert prior.pseudo_raw.grad is not None and prior.pseudo_raw.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    assert not any(p is q for p in prior.parameters() for q in net.parameters())


def test_vamp_prior_with_one_component_is_one_posterior() -> None:
    net = _encoder(2)
    prior = VampPrior(2, INPUT_DIM, _gaussian_fn(net), 1).double()
    mean, log_var = net(prior.pseudo_inputs()).chunk(2, dim=-1)
    z = torch.randn(10, 2, dtype=torch.float64)
    expected = Normal(mean[0], torch.exp(0.5 * log_var[0])).log_prob(z).sum(-1)
    torch.testing.assert_close(prior.log_prob(z), expected)


def test_vamp_pseudo_inputs_start_at_training_examples() -> None:
    net = _encoder(2)
    prior = VampPrior(2, INPUT_DIM, _gaussian_fn(net), 3).double()
    x = torch.rand(50, INPUT_DIM, dtype=torch.float64)
    prior.initialize_from_data(x, torch.Generator().manual_seed(0))
    u = prior.pseudo_inputs()
    # Each pseudo-input is a training example squeezed into (0.05, 0.95).
    dist = torch.cdist(u, x * 0.9 + 0.05).min(dim=1).values
    assert float(dist.detach().max()) < 1e-6


def test_gtm_grid_is_fixed_and_covers_the_square() -> None:
    prior, _ = _prior("gtm", 2, num_components=9, grid_range=2.0)
    assert isinstance(prior, GTMPrior)
    grid = prior.grid
    assert grid.shape == (9, 2)
    assert torch.unique(grid, dim=0).shape[0] == 9  # no duplicated points (the book's typo)
    assert float(grid.min()) == -2.0 and float(grid.max()) == 2.0
    assert all(p is not grid for p in prior.parameters())
    assert "grid" in prior.state_dict()


def test_gtm_vamp_prior_is_a_vamp_prior_at_generated_inputs() -> None:
    prior, net = _prior("gtm_vamp", 2)
    assert isinstance(prior, GTMVampPrior)
    mean, log_var = net(prior.pseudo_inputs()).chunk(2, dim=-1)
    manual = MixturePrior(2, 4, create_components=False).double()
    manual.weight_logits.data.copy_(prior.weight_logits.data)
    manual.components = lambda: (mean, log_var)  # type: ignore[method-assign]
    z = torch.randn(10, 2, dtype=torch.float64)
    torch.testing.assert_close(prior.log_prob(z), manual.log_prob(z))
    prior.log_prob(z).sum().backward()
    assert all(p.grad is not None for p in prior.net.parameters())
    assert all(p.grad is not None for p in net.parameters())


def test_flow_prior_inverts_and_counts_the_log_det_once() -> None:
    prior, _ = _prior("flow", 4)
    assert isinstance(prior, FlowPrior)
    eps = torch.randn(30, 4, dtype=torch.float64)
    z = prior.flow.inverse(eps)[0]
    torch.testing.assert_close(prior.flow(z)[0], eps)
    jac = torch.stack([
        torch.autograd.functional.jacobian(lambda v: prior.flow(v.unsqueeze(0))[0][0], zi)
        for zi in z[:5]
    ])
    expected = Normal(0.0, 1.0).log_prob(eps[:5]).sum(-1) + torch.linalg.slogdet(jac).logabsdet
    torch.testing.assert_close(prior.log_prob(z[:5]), expected)


def test_bad_prior_configs_name_the_field() -> None:
    with pytest.raises(ConfigError, match="kind"):
        PriorConfig(kind="laplace")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="square"):
        PriorConfig(kind="gtm", num_components=10)
    with pytest.raises(ConfigError, match="latent_dim"):
        FlowPrior(1)
