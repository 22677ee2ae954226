"""Annealed importance sampling: log Z against closed forms and exact enumeration, and the
evaluator's treatment of an error common to every example."""

from __future__ import annotations

import math

import pytest
import torch

import dgm
from dgm.core.ais import ais_temperatures, annealed_importance_sampling, geometric_path
from dgm.core.base import Likelihood
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data.dataset import Split
from dgm.eval.likelihood import evaluate


def test_temperatures_run_from_zero_to_one_and_increase():
    betas = ais_temperatures(1000)
    assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 1001
    assert bool((betas[1:] > betas[:-1]).all())
    # denser near 1: the last tenth of the range holds most of the steps
    assert int((betas > 0.9).sum()) > 600
    with pytest.raises(ConfigError):
        ais_temperatures(2)


def test_gaussian_log_partition_by_metropolis_transitions():
    """Base N(0, 1), target exp(-(x - 2)² / (2 · 0.5²)): log Z = log(sqrt(2π) · 0.5)."""
    mu, s = 2.0, 0.5
    log_base = lambda x: -0.5 * x.squeeze(1) ** 2  # noqa: E731
    log_target = lambda x: -0.5 * ((x.squeeze(1) - mu) / s) ** 2  # noqa: E731
    log_f = geometric_path(log_base, log_target)

    def mh(x, beta, gen):
        prop = x + 0.5 * torch.randn(x.shape, generator=gen, dtype=x.dtype)
        accept = torch.rand(x.shape[0], generator=gen, dtype=x.dtype).log() < (
            log_f(prop, beta) - log_f(x, beta))
        return torch.where(accept[:, None], prop, x)

    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(500, 1, generator=gen, dtype=torch.float64)
    result = annealed_importance_sampling(x0, log_f, mh, ais_temperatures(2000),
                                          log_z_base=0.5 * math.log(2 * math.pi), generator=gen)
    exact = math.log(math.sqrt(2 * math.pi) * s)
    assert abs(result.log_z - exact) < 4 * result.stderr + 1e-3
    assert result.stderr < 0.1
    low, high = result.band()
    assert low < result.log_z < high


def test_one_temperature_is_plain_importance_sampling_and_unbiased_in_z():
    """With K = 1 the weights are f_1(x)/f_0(x) for x ~ p_0: E[w] = Z_1 / Z_0 exactly."""
    log_base = lambda x: torch.zeros(x.shape[0], dtype=x.dtype)  # noqa: E731 (uniform on 4)
    values = torch.tensor([0.1, 1.0, 2.0, 0.5], dtype=torch.float64)
    log_target = lambda x: values[x].log()  # noqa: E731
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randint(4, (200_000,), generator=gen)
    result = annealed_importance_sampling(
        x0, geometric_path(log_base, log_target), lambda x, b, g: x,
        torch.tensor([0.0, 1.0], dtype=torch.float64), log_z_base=math.log(4), generator=gen)
    assert result.log_z == pytest.approx(math.log(values.sum()), abs=4 * result.stderr)


def random_rbm(levels: int, dim: int, hidden: int, **options):
    kind = DataKind.BINARY if levels == 2 else DataKind.DISCRETE
    model = build_model("rbm", DataSpec((dim,), kind, num_levels=levels),
                        {"hidden": hidden, "init_std": 1.0, **options})
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        model.visible_bias.normal_(0, 1, generator=gen)
        model.hidden_bias.normal_(0, 1, generator=gen)
        model.base_logits.copy_(model.visible_bias)
    return model


@pytest.mark.parametrize("levels", [2, 3])
def test_rbm_ais_matches_exact_log_partition_within_its_band(levels):
    model = random_rbm(levels, dim=10, hidden=8)
    gen = torch.Generator().manual_seed(0)
    result = model.log_partition_ais(chains=200, temperatures=1000, generator=gen)
    exact = float(model.log_partition().detach())
    assert abs(result.log_z - exact) < 4 * result.stderr + 0.01
    assert result.stderr < 0.1
    assert result.effective_chains > 50


def test_rbm_beyond_enumeration_is_an_estimate_with_a_shared_error():
    model = random_rbm(2, dim=6, hidden=5, exact_max_hidden=4, ais_chains=64,
                       ais_temperatures=300)
    assert model.likelihood_on(DataKind.BINARY) is Likelihood.ESTIMATE
    assert type(model).likelihood_on(DataKind.BINARY) is Likelihood.EXACT  # the declaration
    x = torch.randint(2, (40, 6))
    result = evaluate(model, Split(x, None))
    assert result.kind == "estimate" and "AIS" in result.label
    ais = model.log_partition_ais()
    # the log Z error does not average away over the 40 examples
    assert result.estimator_stderr_nats == pytest.approx(ais.stderr, rel=1e-6)
    # and the estimate is close to the truth, computed by enumerating 2^5 hidden states
    small = random_rbm(2, dim=6, hidden=5)
    small.load_state_dict(model.state_dict())
    exact = -float(small.log_prob(x).mean().detach())
    assert result.nll_nats == pytest.approx(exact, abs=4 * ais.stderr + 0.02)


def test_rbm_ais_is_cached_until_the_parameters_change():
    model = random_rbm(2, dim=6, hidden=5, exact_max_hidden=4, ais_chains=16,
                       ais_temperatures=30)
    first = model.log_partition_ais()
    assert model.log_partition_ais() is first
    with torch.no_grad():
        model.hidden_bias.add_(1.0)
    assert model.log_partition_ais() is not first


def test_dgm_exports_still_import():
    assert dgm.evaluate is evaluate


def test_autoregressive_chain_has_the_known_integrated_time():
    """AR(1) x_t = φ x_{t-1} + ε: ρ(s) = φ^s and τ = (1 + φ) / (1 - φ) (= 3 for φ = 0.5)."""
    from dgm.core.chains import diagnose

    gen = torch.Generator().manual_seed(0)
    phi, steps, chains = 0.5, 4000, 20
    x = torch.zeros(steps, chains, dtype=torch.float64)
    noise = torch.randn(steps, chains, generator=gen, dtype=torch.float64)
    for t in range(1, steps):
        x[t] = phi * x[t - 1] + noise[t]
    d = diagnose(x, max_lag=200)
    assert float(d.autocorrelation[1]) == pytest.approx(phi, abs=0.02)
    assert float(d.autocorrelation[3]) == pytest.approx(phi**3, abs=0.02)
    assert d.integrated_time == pytest.approx(3.0, rel=0.1)
    assert d.effective_draws == pytest.approx(steps * chains / d.integrated_time)
    independent = diagnose(torch.randn(4000, 5, generator=gen))
    assert independent.integrated_time == pytest.approx(1.0, abs=0.15)


def test_rbm_mixing_reports_chain_age_and_slower_mixing_for_stronger_weights():
    weak = random_rbm(2, dim=12, hidden=6)
    with torch.no_grad():
        weak.weight.mul_(0.1)
    strong = random_rbm(2, dim=12, hidden=6)
    with torch.no_grad():
        strong.weight.mul_(10.0)
    gen = torch.Generator().manual_seed(0)
    fast = weak.mixing(400, generator=gen)
    slow = strong.mixing(400, generator=gen)
    assert fast.integrated_time < 1.5 and slow.integrated_time > 10
    x = torch.randint(2, (8, 12))
    weak.loss(x)
    weak.after_step(dgm.core.fitting.StepInfo())
    assert weak.mixing(10).age == weak.config.cd_k
