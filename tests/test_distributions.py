"""The log-density helpers against torch.distributions and against their own normalization."""

import math

import torch
from torch.distributions import Bernoulli, Categorical, Normal

from dgm.core.distributions import (
    log_bernoulli,
    log_categorical,
    log_discretized_logistic,
    log_min_exp,
    log_mix_discretized_logistic,
    log_normal_diag,
    log_standard_normal,
    sum_except_batch,
)


def test_categorical_matches_torch():
    logits = torch.randn(5, 7, 4, dtype=torch.float64)
    x = torch.randint(0, 4, (5, 7))
    assert torch.allclose(log_categorical(x, logits), Categorical(logits=logits).log_prob(x))


def test_bernoulli_matches_torch():
    logits = torch.randn(6, 3, dtype=torch.float64) * 3
    x = torch.randint(0, 2, (6, 3))
    assert torch.allclose(log_bernoulli(x, logits), Bernoulli(logits=logits).log_prob(x.double()))


def test_normal_matches_torch():
    x, mu, log_var = torch.randn(3, 8, 5, dtype=torch.float64).unbind(0)
    ref = Normal(mu, torch.exp(0.5 * log_var)).log_prob(x)
    assert torch.allclose(log_normal_diag(x, mu, log_var), ref)
    assert torch.allclose(log_standard_normal(x), Normal(0.0, 1.0).log_prob(x))


def test_sum_except_batch():
    t = torch.arange(24.0).reshape(2, 3, 4)
    assert torch.equal(sum_except_batch(t), torch.tensor([66.0, 210.0]))


def test_log_min_exp():
    a, b = torch.tensor([0.0, -3.0, 50.0]), torch.tensor([-1.0, -3.5, 49.0])
    assert torch.allclose(log_min_exp(a, b), torch.log(torch.exp(a.double()) - torch.exp(b.double())).float())


def test_discretized_logistic_sums_to_one_on_finite_support():
    mean = torch.tensor([[0.3], [7.9], [-5.0], [20.0]], dtype=torch.float64)
    log_scale = torch.tensor([[-1.0], [0.5], [0.0], [-3.0]], dtype=torch.float64)
    x = torch.arange(17).expand(4, 17)
    p = torch.exp(log_discretized_logistic(x, mean, log_scale, num_levels=17))
    assert torch.allclose(p.sum(1), torch.ones(4, dtype=torch.float64), atol=1e-9)


def test_discretized_logistic_sums_to_one_over_integers_and_is_stable():
    mean = torch.tensor([[2.5]], dtype=torch.float64)
    x = torch.arange(-300, 300).unsqueeze(0)
    p = torch.exp(log_discretized_logistic(x, mean, torch.tensor([[1.0]], dtype=torch.float64)))
    assert math.isclose(float(p.sum()), 1.0, abs_tol=1e-9)
    far = log_discretized_logistic(torch.tensor([1000, -1000]), torch.zeros(2), torch.full((2,), -4.0))
    assert torch.isfinite(far).all()


def test_mixture_of_discretized_logistics_normalizes():
    x = torch.arange(256).unsqueeze(0).expand(3, 256)
    w, m, s = (torch.randn(3, 1, 5, dtype=torch.float64) for _ in range(3))
    lp = log_mix_discretized_logistic(x, w.expand(3, 256, 5), (m * 60 + 128).expand(3, 256, 5), s.expand(3, 256, 5), 256)
    assert torch.allclose(lp.exp().sum(1), torch.ones(3, dtype=torch.float64), atol=1e-9)
