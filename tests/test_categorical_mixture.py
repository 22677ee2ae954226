"""Mixtures of categoricals (Book §2.3): an exact pmf, EM's monotone objective, exact sampling."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import distributions as D

from dgm.config import load_config
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.train.trainer import train

TINY = DataSpec((3,), DataKind.DISCRETE, num_levels=3)
BITS = DataSpec((4,), DataKind.BINARY, num_levels=2)


def _space(spec: DataSpec) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(spec.num_levels), repeat=spec.dim)))


def _randomized(spec: DataSpec, k: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("categorical_mixture", spec, num_components=k)
    with torch.no_grad():
        model.weight_logits.normal_()
        model.theta_logits.normal_(std=2.0)
    return model


@pytest.mark.parametrize("spec", [TINY, BITS])
def test_pmf_sums_to_one_and_equals_torch_mixture(spec) -> None:
    model = _randomized(spec)
    x = _space(spec)
    log_p = model.log_prob(x)
    assert torch.exp(log_p).sum().item() == pytest.approx(1.0, abs=1e-5)
    ref = D.MixtureSameFamily(D.Categorical(logits=model.weight_logits),
                              D.Independent(D.Categorical(logits=model.theta_logits), 1))
    torch.testing.assert_close(log_p, ref.log_prob(x), atol=1e-5, rtol=0)


def test_bernoulli_case_matches_the_closed_form() -> None:
    model = _randomized(BITS, k=2)
    x = _space(BITS).float()
    p = torch.softmax(model.theta_logits, -1)[..., 1]  # (K, D): P(x_d = 1 | k)
    pi = torch.softmax(model.weight_logits, -1)
    direct = (pi * torch.prod(p ** x[:, None] * (1 - p) ** (1 - x[:, None]), -1)).sum(-1)
    torch.testing.assert_close(model.log_prob(x.long()).exp(), direct, atol=1e-6, rtol=0)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_em_never_lowers_the_penalized_log_likelihood(alpha) -> None:
    torch.manual_seed(1)
    x = torch.randint(3, (200, 3))
    x[:100, 0] = 0  # some structure for the components to find
    model = build_model("categorical_mixture", TINY, num_components=4, pseudo_count=alpha)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))

    def objective() -> float:
        with torch.no_grad():
            prior = alpha * (model.log_weights.sum() + model.log_theta.sum())
            return float(model.log_prob(x).double().sum() + prior)

    values = [objective()]
    for _ in range(15):
        model.em_begin()
        for batch in x.split(64):  # statistics summed over batches: one M-step per epoch
            model.em_accumulate(batch)
        model.em_maximize()
        values.append(objective())
    assert all(b >= a - 1e-6 for a, b in zip(values, values[1:]))
    assert values[-1] > values[0] + 1.0


def test_em_statistics_count_levels_weighted_by_responsibility() -> None:
    model = _randomized(TINY, k=2)
    x = torch.tensor([[0, 1, 2], [2, 2, 0]])
    model.em_begin()
    model.em_accumulate(x)
    s0, s1 = model.em_statistics()
    assert s0.sum().item() == pytest.approx(2.0)
    # every example adds its responsibilities once per coordinate, at its own level
    torch.testing.assert_close(s1.sum(-1), s0[:, None].expand(2, 3).to(s1), atol=1e-9, rtol=0)
    assert s1[:, 0, 1].abs().max() == 0  # no example has level 1 at coordinate 0


def test_samples_follow_the_pmf() -> None:
    model = _randomized(TINY)
    x = model.sample(20000, generator=torch.Generator().manual_seed(0))
    assert x.shape == (20000, 3) and x.dtype == torch.long
    space = _space(TINY)
    index = (x * torch.tensor([9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=len(space)).double() / len(x)
    tv = 0.5 * (freq - model.log_prob(space).exp().double().detach()).abs().sum()
    assert tv < 0.03


def test_unseen_levels_keep_a_finite_nll_with_a_pseudo_count() -> None:
    x = torch.zeros(50, 3, dtype=torch.long)
    model = build_model("categorical_mixture", TINY, num_components=2, pseudo_count=0.5)
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert torch.isfinite(model.log_prob(torch.full((1, 3), 2))).all()


@pytest.mark.parametrize("fit", ["em", "gradient"])
def test_trains_through_the_trainer_below_the_independent_floor(fit, tmp_path) -> None:
    cfg = load_config(None, ["model.name=categorical_mixture", "data.name=binary_digits_4x4",
                             f"model.fit={fit}", "model.num_components=8", "train.epochs=15",
                             "train.progress=false", "train.threads=1", "optim.lr=0.05"])
    train(cfg, tmp_path / "r")
    from dgm.data import load
    from dgm.runs import open_run

    data = load("binary_digits_4x4")
    model = open_run(tmp_path / "r").load_model()
    with torch.no_grad():
        nll = -model.log_prob(data.test.x).mean().item()
    assert nll < 5.18  # the independent Bernoulli floor on these 16 bits (BENCHMARKS.md)
