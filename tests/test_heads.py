"""Likelihood heads: against torch.distributions, normalized over the levels, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

from dgm.core.errors import ConfigError
from dgm.core.heads import (
    BernoulliHead,
    CategoricalHead,
    DiscretizedLogisticHead,
    GaussianHead,
    likelihood_head,
)
from dgm.core.spec import DataKind, DataSpec


def test_heads_match_torch_distributions() -> None:
    logits = torch.randn(6, 4, 5)
    x = torch.randint(0, 5, (6, 4))
    torch.testing.assert_close(
        CategoricalHead(5).log_prob(x, logits), Categorical(logits=logits).log_prob(x).sum(-1)
    )
    b_logits = torch.randn(6, 4, 1)
    xb = torch.randint(0, 2, (6, 4))
    torch.testing.assert_close(
        BernoulliHead().log_prob(xb, b_logits),
        Bernoulli(logits=b_logits[..., 0]).log_prob(xb.float()).sum(-1),
    )
    head = GaussianHead(4)
    with torch.no_grad():
        head.log_var.copy_(torch.randn(4))
    mean = torch.randn(6, 4, 1)
    xg = torch.randn(6, 4)
    expected = Normal(mean[..., 0], torch.exp(0.5 * head.log_var)).log_prob(xg).sum(-1)
    torch.testing.assert_close(head.log_prob(xg, mean), expected)


@pytest.mark.parametrize("num_components", [1, 3])
def test_discretized_logistic_head_sums_to_one_over_the_levels(num_components: int) -> None:
    head = DiscretizedLogisticHead(256, num_components)
    p = head.num_params
    params = torch.randn(5, p, dtype=torch.float64)
    if num_components == 1:
        params[:, 1] -= 2.0  # narrow enough that the edge bins do not hold all the mass
    else:
        params[:, num_components : 2 * num_components] = torch.rand(5, num_components)
        params[:, 2 * num_components :] -= 2.0
    # One "example" per (value, coordinate) pair with a single coordinate each, so that
    # log_prob's sum over coordinates is the log-mass of that one value.
    values = torch.arange(256).repeat_interleave(5).unsqueeze(1)  # (1280, 1)
    log_p = head.log_prob(values, params.repeat(256, 1).unsqueeze(1)).reshape(256, 5)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(torch.logsumexp(log_p, 0), torch.zeros(5, dtype=torch.float64))
    draws = head.sample(params.unsqueeze(0).expand(4000, 5, p))  # (4000, 5)
    assert draws.dtype == torch.long and 0 <= int(draws.min()) and int(draws.max()) <= 255
    # The empirical mean of the draws matches the mean of the pmf (tolerance: 5 stderr).
    pmf = log_p.exp()
    mean = (pmf * torch.arange(256, dtype=torch.float64).unsqueeze(1)).sum(0)
    std = ((pmf * (torch.arange(256).unsqueeze(1) - mean) ** 2).sum(0)).sqrt()
    assert bool(((draws.double().mean(0) - mean).abs() < 5 * std / math.sqrt(4000) + 1e-9).all())


def test_likelihood_head_follows_the_data_kind_and_refuses_misfits():
    binary = DataSpec(event_shape=(4,), kind=DataKind.BINARY)
    discrete = DataSpec(event_shape=(4,), kind=DataKind.DISCRETE, num_levels=7)
    assert isinstance(likelihood_head(binary), BernoulliHead)
    assert isinstance(likelihood_head(discrete), CategoricalHead)
    assert likelihood_head(discrete, "discretized_logistic", 3).num_params == 9
    with pytest.raises(ConfigError, match="does not fit"):
        likelihood_head(discrete, "bernoulli")
