"""The density network of Book §8.1: its importance-sampled likelihood is a lower bound that
approaches the exact marginal of a linear-Gaussian model as the number of draws grows."""

from __future__ import annotations

import math

import pytest
import torch

import dgm  # noqa: F401
from dgm.core.base import Likelihood
from dgm.core.capabilities import ImportanceWeighted
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec


def linear_gaussian():
    model = build_model("density_network", DataSpec((2,), DataKind.CONTINUOUS),
                        {"latent_dim": 1, "num_hidden": 0, "train_samples": 8})
    with torch.no_grad():
        model.decoder[0].weight.copy_(torch.tensor([[1.5], [-0.8]]))
        model.decoder[0].bias.copy_(torch.tensor([0.3, -0.2]))
        model.head.log_var.fill_(math.log(0.25))
    return model


def exact_log_prob(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([[1.5], [-0.8]], dtype=torch.float64)
    cov = w @ w.T + 0.25 * torch.eye(2, dtype=torch.float64)
    mvn = torch.distributions.MultivariateNormal(torch.tensor([0.3, -0.2], dtype=torch.float64), cov)
    return mvn.log_prob(x.double())


def test_estimate_approaches_the_exact_marginal_and_stays_below_it_on_average():
    model = linear_gaussian()
    x = torch.tensor([[0.5, 0.1], [2.0, -1.2], [-1.0, 0.4]])
    exact = exact_log_prob(x)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        big = torch.logsumexp(model.log_weights(x, 50_000, generator=gen).double(), 0)
        big -= math.log(50_000)
        assert torch.allclose(big, exact, atol=0.01)
        draws = model.log_weights(x, 4 * 2000, generator=gen).double().reshape(2000, 4, -1)
        small = (torch.logsumexp(draws, 1) - math.log(4)).mean(0)
    gap = exact - small
    assert bool((gap > 0.005).all())  # Jensen: E[log p̂] < log p
    assert bool((gap < 3.0).all())


def test_is_an_importance_weighted_lower_bound_and_samples_have_the_data_shape():
    model = build_model("density_network", DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17),
                        {"latent_dim": 2, "hidden": 16, "train_samples": 4})
    assert model.likelihood is Likelihood.LOWER_BOUND
    assert isinstance(model, ImportanceWeighted)
    x = torch.randint(17, (5, 1, 8, 8))
    assert model.log_weights(x, 3).shape == (3, 5)
    loss = model.loss(x)
    assert loss.shape == (5,) and bool(torch.isfinite(loss).all())
    s = model.sample(6, generator=torch.Generator().manual_seed(0))
    assert s.shape == (6, 1, 8, 8) and s.dtype == model.spec.dtype and int(s.max()) <= 16


def test_training_raises_the_bound_on_a_toy():
    torch.manual_seed(0)
    model = build_model("density_network", DataSpec((2,), DataKind.CONTINUOUS),
                        {"latent_dim": 1, "hidden": 32, "train_samples": 64})
    x = torch.randn(256, 1) * torch.tensor([[2.0, 1.0]]) + 0.1 * torch.randn(256, 2)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = float(model.loss(x).mean().detach())
    for _ in range(150):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
    assert float(model.loss(x).mean().detach()) < before - 0.5
