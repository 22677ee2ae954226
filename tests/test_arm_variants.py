"""The finite-memory (MLP) and recurrent ARMs: normalization, causality, sampling."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from dgm import build_model
from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind, DataSpec

MODELS = ["arm_mlp", "arm_rnn"]


def _model(name: str, spec: DataSpec, **overrides):
    return build_model(name, spec, hidden=16, **overrides).double().eval()


def _all(levels: int, dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.long)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(
    "kind, levels, extra",
    [
        (DataKind.DISCRETE, 3, {}),
        (DataKind.DISCRETE, 3, {"input_encoding": "one_hot"}),
        (DataKind.BINARY, 2, {}),
        (DataKind.DISCRETE, 4, {"likelihood": "discretized_logistic", "num_components": 2}),
    ],
)
def test_pmf_sums_to_one(name, kind, levels, extra):
    spec = DataSpec((4,), kind, num_levels=levels)
    model = _model(name, spec, **extra)
    log_p = model.log_prob(_all(levels, 4))
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
    assert log_p.std() > 1e-3


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("j", [0, 2, 4])
def test_theta_d_ignores_x_j_for_d_up_to_j(name, j):
    spec = DataSpec((6,), DataKind.DISCRETE, num_levels=5)
    model = _model(name, spec)
    x = torch.randint(0, 5, (3, 6))
    x2 = x.clone()
    x2[:, j] = (x[:, j] + 2) % 5
    diff = (model.params(x) - model.params(x2)).abs().amax(dim=(0, 2))  # (6,)
    assert bool((diff[: j + 1] == 0).all())
    assert bool(diff[j + 1] > 0)


def test_finite_memory_reads_exactly_m_previous_values():
    spec = DataSpec((8,), DataKind.DISCRETE, num_levels=4)
    model = _model("arm_mlp", spec, memory=3)
    x = torch.randint(0, 4, (1, 8))
    x2 = x.clone()
    x2[0, 2] = (x[0, 2] + 1) % 4
    a, b = model.params(x), model.params(x2)
    changed = (a - b).abs().amax(-1)[0] > 1e-12
    assert changed.tolist() == [False, False, False, True, True, True, False, False]


@pytest.mark.parametrize("name", MODELS)
def test_samples_follow_the_model_distribution(name):
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    model = _model(name, spec)
    n = 20000
    draws = model.sample(n, generator=torch.Generator().manual_seed(1))
    codes = draws[:, 0] * 3 + draws[:, 1]
    freq = torch.bincount(codes, minlength=9).double() / n
    p = model.log_prob(_all(3, 2)).exp()
    # 5 standard errors of a frequency: sqrt(p (1 - p) / n).
    assert bool(((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / n) + 1e-4).all())


@pytest.mark.parametrize("name", MODELS)
def test_generator_makes_sampling_reproducible(name):
    model = _model(name, DataSpec((1, 2, 3), DataKind.BINARY))
    a = model.sample(5, generator=torch.Generator().manual_seed(3))
    b = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (5, 1, 2, 3) and a.dtype == torch.long


def test_bad_configs_name_the_field():
    spec = DataSpec((4,), DataKind.DISCRETE, num_levels=3)
    with pytest.raises(ConfigError, match="memory"):
        build_model("arm_mlp", spec, memory=0)
    with pytest.raises(ConfigError, match="cell"):
        build_model("arm_rnn", spec, cell="transformer")
    tokens = DataSpec((4,), DataKind.TOKENS, num_levels=10)
    with pytest.raises(ConfigError, match="one_hot"):
        build_model("arm_rnn", tokens)
    assert math.isfinite(float(build_model("arm_rnn", tokens, input_encoding="one_hot")
                              .log_prob(torch.randint(0, 10, (2, 4))).sum().detach()))


MASKED = [("made", {}), ("made", {"num_hidden": 0}), ("made", {"num_hidden": 2}), ("nade", {})]


@pytest.mark.parametrize("name, extra", MASKED)
@pytest.mark.parametrize(
    "kind, levels, head",
    [(DataKind.DISCRETE, 3, {}), (DataKind.BINARY, 2, {}),
     (DataKind.DISCRETE, 4, {"likelihood": "discretized_logistic", "num_components": 2})],
)
def test_made_fvsbn_nade_pmf_sums_to_one(name, extra, kind, levels, head):
    model = _model(name, DataSpec((4,), kind, num_levels=levels), **extra, **head)
    log_p = model.log_prob(_all(levels, 4))
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
    assert log_p.std() > 1e-3


@pytest.mark.parametrize("name, extra", MASKED)
@pytest.mark.parametrize("j", [0, 3])
def test_made_fvsbn_nade_theta_d_ignores_x_j_for_d_up_to_j(name, extra, j):
    model = _model(name, DataSpec((6,), DataKind.DISCRETE, num_levels=5), **extra)
    x = torch.randint(0, 5, (3, 6))
    x2 = x.clone()
    x2[:, j] = (x[:, j] + 2) % 5
    diff = (model.params(x) - model.params(x2)).abs().amax(dim=(0, 2))
    assert bool((diff[: j + 1] == 0).all()) and bool(diff[j + 1 :].max() > 0)


def test_fvsbn_is_a_strictly_lower_triangular_linear_map():
    model = _model("made", DataSpec((5,), DataKind.BINARY), num_hidden=0)
    mask = model.net[-1].mask  # (D * P, D) with P = 1
    assert torch.equal(mask, torch.tril(torch.ones(5, 5), diagonal=-1).to(mask.dtype))


@pytest.mark.parametrize("name, extra", [("made", {}), ("nade", {})])
def test_made_nade_samples_follow_the_pmf(name, extra):
    model = _model(name, DataSpec((2,), DataKind.DISCRETE, num_levels=3), **extra)
    n = 20000
    draws = model.sample(n, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(draws[:, 0] * 3 + draws[:, 1], minlength=9).double() / n
    p = model.log_prob(_all(3, 2)).exp()
    assert bool(((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / n) + 1e-4).all())
