"""The energy-based model: its Langevin sampler's stationary law, the replay buffer (restarts,
after_step, checkpoints and resume), the energy blow-up rollback, samples in the data space,
config checks, and AIS against an enumerated lattice."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dgm.config import load_config
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.mcmc import ReplayBuffer, ula_stationary_variance
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.mixtures.categorical import CategoricalMixture, CategoricalMixtureConfig
from dgm.models.energy.ebm import (EBM, EBMConfig, lattice_block_mh_step,
                                   lattice_gibbs_step)
from dgm.train.trainer import train

DIGITS = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17, num_classes=10)
SMALL = {"network": "mlp", "hidden": 32, "num_hidden": 1, "langevin_steps": 5,
         "buffer_size": 200, "sample_steps": 5}


class _Quadratic(nn.Module):
    """E(u) = u² / (2 s²): the energy of N(0, s²)."""

    def __init__(self, s2: float) -> None:
        super().__init__()
        self.s2 = s2

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return (u**2).sum(-1, keepdim=True) / (2 * self.s2)


@pytest.mark.parametrize("noise", ["tied", 0.05])
def test_langevin_through_the_model_reaches_the_ula_stationary_law(noise) -> None:
    spec = DataSpec((1,), DataKind.CONTINUOUS)
    model = build_model("ebm", spec, step_size=0.01, noise=noise, buffer_size=10)
    model.net = _Quadratic(2.0)
    gen = torch.Generator().manual_seed(0)
    u = model.langevin(torch.zeros(4000, 1), 600, generator=gen)
    expected = ula_stationary_variance(2.0, 0.01, None if noise == "tied" else noise)
    # tied: ≈ 2.005 (p itself); decoupled η = 0.05: ≈ 0.25, the sharpened p^(2α/η²) = p^8.
    assert abs(float(u.mean())) < 4 * math.sqrt(expected / 4000) + 0.01
    assert float(u.var()) == pytest.approx(expected, rel=0.08)


def test_replay_buffer_restarts_a_fraction_of_the_chains() -> None:
    buffer = ReplayBuffer(100, (3,), reinit_prob=0.05)
    x, index = buffer.draw(20000, lambda n: torch.ones(n, 3),
                           torch.Generator().manual_seed(0))
    restarted = float((x == 1).all(1).double().mean())
    assert restarted == pytest.approx(0.05, abs=0.006)
    assert index.min() >= 0 and index.max() < 100
    with pytest.raises(ConfigError, match="reinit_prob"):
        ReplayBuffer(10, (3,), reinit_prob=1.5)


def test_after_step_writes_the_moved_chains_back_and_only_those() -> None:
    model = build_model("ebm", DIGITS, **SMALL)
    before = model.buffer.states.clone()
    x = torch.randint(17, (16, 1, 8, 8))
    model.loss(x)
    index, negative = model._pending
    assert torch.equal(model.buffer.states, before)  # loss never moves the buffer
    model.after_step(StepInfo(step=1))
    assert torch.equal(model.buffer.states[index], negative)
    untouched = torch.ones(len(before), dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(model.buffer.states[untouched], before[untouched])
    assert "buffer.states" in model.state_dict()


def _cfg(tmp_epochs: int, *extra: str):
    opts = [f"model.{k}={v}" for k, v in SMALL.items()]
    return load_config(overrides=[
        "model.name=ebm", "data.name=digits", f"train.epochs={tmp_epochs}",
        "train.batch_size=500", "train.progress=false", "train.threads=1",
        "train.monitor=objective", "train.checkpoint_every_s=0", *opts, *extra,
    ])


def test_buffer_persists_across_steps_and_a_checkpoint_resume(tmp_path) -> None:
    train(_cfg(2), tmp_path / "full")
    train(_cfg(1), tmp_path / "part")
    one = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    train(_cfg(2), tmp_path / "part", resume=True)
    a = load_file(str(tmp_path / "full" / "checkpoints" / "last.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoints" / "last.safetensors"))
    key = "model.buffer.states"
    assert torch.equal(a[key], b[key])  # the resumed run continued the same chains
    assert not torch.equal(one[key], a[key])  # and the chains moved in epoch 2
    assert a[key].abs().max() <= 1.0  # clipped to the model space of discrete data


def test_energy_blowup_is_named_rolled_back_and_the_buffer_reseeded(tmp_path, monkeypatch):
    force = {"on": True, "reseeded": 0}
    energy, after_rollback = EBM.energy, EBM.after_rollback

    def exploding(self, u):
        e = energy(self, u)
        return e * 1e9 if force["on"] else e

    def spy(self):
        before = self.buffer.states.clone()
        after_rollback(self)
        changed = (self.buffer.states != before).flatten(1).any(1).double().mean()
        force["reseeded"] += 1
        force["changed"] = float(changed)
        force["on"] = False

    monkeypatch.setattr(EBM, "energy", exploding)
    monkeypatch.setattr(EBM, "after_rollback", spy)
    train(_cfg(2, "train.max_bad_steps=2"), tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    events = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    bad = [e for e in events if e.get("event") == "non_finite"]
    assert len(bad) == 2 and all("energy_blowup" in e["terms"] for e in bad)
    assert [e["event"] for e in events if e.get("event") == "rollback"] == ["rollback"]
    assert force["reseeded"] == 1 and force["changed"] > 0.99
    assert info["rollbacks"] == 1 and info["status"] == "finished"
    weights = load_file(str(tmp_path / "r" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_samples_are_in_the_data_space_and_dtype() -> None:
    model = build_model("ebm", DIGITS, **SMALL)
    x = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert x.shape == (7, 1, 8, 8) and x.dtype == torch.long
    assert 0 <= int(x.min()) and int(x.max()) <= 16
    toy = build_model("ebm", DataSpec((2,), DataKind.CONTINUOUS), **SMALL,
                      sample_init="noise")
    toy.initialize_from_data(torch.randn(100, 2) * 5 + 10, torch.Generator().manual_seed(0))
    y = toy.sample(7)
    assert y.shape == (7, 2) and y.dtype == torch.float32
    assert float(y.mean()) > 3  # mapped back through the data's standardization
    v = torch.randint(17, (5, 1, 8, 8))
    assert torch.equal(model.to_data(model.to_model_space(v)), v)


@pytest.mark.parametrize("side", [8, 28, 7, 5])
def test_conv_energy_fits_images_of_every_side(side) -> None:
    # 28x28 MNIST halves to 14, 7, then 3 (not 4): the dense head must be sized to that
    spec = DataSpec((1, side, side), DataKind.DISCRETE, num_levels=256)
    model = build_model("ebm", spec, network="conv", channels=4, hidden=8, buffer_size=10,
                        langevin_steps=2, sample_steps=2)
    x = torch.randint(256, (3, 1, side, side))
    energy = model.energy(model.to_model_space(x))
    assert energy.shape == (3,) and torch.isfinite(energy).all()
    assert model.sample(2, generator=torch.Generator().manual_seed(0)).shape == (2, 1, side, side)


@pytest.mark.parametrize("bad", [
    {"noise": "hot"}, {"noise": -0.1}, {"reinit_prob": 1.5}, {"step_size": 0.0},
    {"buffer_size": 0}, {"energy_reg": -1.0}, {"ais_temperatures": 2}, {"network": "rnn"},
])
def test_config_refuses_bad_values(bad) -> None:
    with pytest.raises(ConfigError):
        build_model("ebm", DIGITS, **bad)


def test_noise_given_as_text_is_read_as_a_number() -> None:
    assert EBMConfig(noise="0.02").noise == 0.02
    with pytest.raises(ConfigError, match="conv needs"):
        build_model("ebm", DataSpec((2,), DataKind.CONTINUOUS), network="conv")


def test_ais_log_partition_matches_enumeration_on_a_tiny_lattice() -> None:
    spec = DataSpec((3,), DataKind.DISCRETE, num_levels=3)
    torch.manual_seed(3)
    model = build_model("ebm", spec, network="mlp", hidden=16, num_hidden=1, buffer_size=10,
                        ais_block=2, ais_sweeps=2)
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(3.0)  # a rugged energy, far from the base
    data = torch.randint(3, (50, 3))
    model.initialize_from_data(data, torch.Generator().manual_seed(0))
    states = torch.tensor(list(itertools.product(range(3), repeat=3)))
    with torch.no_grad():
        log_f = model.log_prob(states)
        exact = float(torch.logsumexp(log_f, 0))
        log_q = torch.log_softmax(model.base_logits, -1)[torch.arange(3), states].sum(1)
    ais = model.log_partition_ais(chains=400, temperatures=200,
                                  generator=torch.Generator().manual_seed(0))
    # the target is far from the base: AIS has work to do
    assert float((log_f - exact - log_q).abs().max()) > 1.5
    assert abs(ais.log_z - exact) < 4 * ais.stderr + 0.02, (ais.log_z, exact, ais.stderr)
    est = model.log_prob_estimate(states, generator=torch.Generator().manual_seed(0))
    assert est.log_prob.exp().sum().item() == pytest.approx(1.0, abs=0.1)
    assert "AIS" in est.note and est.shared_stderr > 0 and torch.all(est.stderr == 0)


def _enumerate(dim: int, levels: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)))


def test_the_ais_base_mixture_is_normalized_sampled_exactly_and_fitted_by_em() -> None:
    gen = torch.Generator().manual_seed(0)
    flat = DataSpec((3,), DataKind.DISCRETE, num_levels=3)
    true = CategoricalMixture(flat, CategoricalMixtureConfig(num_components=2)).double()
    with torch.no_grad():
        true.weight_logits.copy_(torch.tensor([0.0, 1.0]))
        true.theta_logits.copy_(3 * torch.randn(2, 3, 3, generator=gen))
    states = _enumerate(3, 3)
    with torch.no_grad():
        log_q = true.log_prob(states)
    assert float(torch.logsumexp(log_q, 0)) == pytest.approx(0.0, abs=1e-9)
    draws = true.sample(40000, generator=gen)
    index = (draws * torch.tensor([9, 3, 1])).sum(1)
    freq = torch.bincount(index, minlength=27).double() / 40000
    assert torch.allclose(freq, log_q.exp(), atol=4 * math.sqrt(0.25 / 40000) + 1e-3)
    fitted = CategoricalMixture(flat, CategoricalMixtureConfig(num_components=2)).double()
    fitted.fit_em(draws[:5000], 50, generator=gen)
    # EM reaches (nearly) the likelihood of the true mixture on its own draws
    with torch.no_grad():
        gap = float(true.log_prob(draws[:5000]).mean() - fitted.log_prob(draws[:5000]).mean())
    assert abs(gap) < 0.02, gap


@pytest.mark.parametrize("move", ["gibbs", "block_mh"])
def test_lattice_moves_leave_the_target_invariant_and_mix(move) -> None:
    gen = torch.Generator().manual_seed(1)
    states = _enumerate(3, 4)
    table = 2 * torch.randn(len(states), generator=gen, dtype=torch.float64)
    target = torch.softmax(table, 0)

    def log_p(v: torch.Tensor) -> torch.Tensor:
        return table[(v * torch.tensor([16, 4, 1])).sum(1)]

    n = 12000
    v = torch.zeros(n, 3, dtype=torch.long)  # a point mass, far from the target
    for _ in range(30 if move == "gibbs" else 150):  # MH from a uniform proposal mixes slower
        if move == "gibbs":
            v = lattice_gibbs_step(v, log_p, 4, 2, gen)
        else:
            v = lattice_block_mh_step(v, log_p, torch.zeros(3, 4), 2, gen)
    freq = torch.bincount((v * torch.tensor([16, 4, 1])).sum(1), minlength=64).double() / n
    assert float((freq - target).abs().max()) < 4 * math.sqrt(float(target.max()) / n) + 2e-3


def test_ais_from_a_base_fitted_to_the_models_samples_with_gibbs_matches_enumeration() -> None:
    spec = DataSpec((4,), DataKind.DISCRETE, num_levels=3)
    torch.manual_seed(4)
    model = build_model("ebm", spec, network="mlp", hidden=16, num_hidden=1, buffer_size=64,
                        ais_base="samples", ais_components=3, ais_base_steps=20,
                        ais_gibbs_sites=2, ais_block=2, step_size=0.01)
    with torch.no_grad():
        for p in model.net.parameters():
            p.mul_(3.0)
    model.initialize_from_data(torch.randint(3, (50, 4)), torch.Generator().manual_seed(0))
    states = _enumerate(4, 3)
    with torch.no_grad():
        exact = float(torch.logsumexp(model.log_prob(states), 0))
    base = model.ais_base(torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert float(torch.logsumexp(base.log_prob(states), 0)) == pytest.approx(0.0, abs=1e-9)
    ais = model.log_partition_ais(chains=300, temperatures=50,
                                  generator=torch.Generator().manual_seed(0))
    assert abs(ais.log_z - exact) < 4 * ais.stderr + 0.02, (ais.log_z, exact, ais.stderr)
    assert ais.effective_chains > 100


def test_ais_likelihood_option_makes_an_estimate_the_evaluator_reports() -> None:
    from dgm.core.base import Likelihood
    from dgm.eval.likelihood import resolve_method

    spec = DataSpec((3,), DataKind.DISCRETE, num_levels=3)
    model = build_model("ebm", spec, network="mlp", hidden=8, num_hidden=1, buffer_size=10,
                        likelihood="ais", ais_chains=50, ais_temperatures=50)
    assert model.likelihood_on(spec.kind) is Likelihood.ESTIMATE
    assert EBM.likelihood_on(spec.kind) is Likelihood.UNNORMALIZED  # the class's default
    assert resolve_method(model, "auto") == "estimate"
    x = torch.randint(3, (4, 3))
    first = model.log_prob_estimate(x)
    assert model.log_prob_estimate(x).log_prob.equal(first.log_prob)  # one Ẑ per state
    assert torch.allclose(model.log_prob(x), first.log_prob)
    with pytest.raises(ConfigError, match="discrete"):
        build_model("ebm", DataSpec((2,), DataKind.CONTINUOUS), likelihood="ais")


def test_evaluator_does_not_report_the_unnormalized_log_prob_as_an_nll() -> None:
    from dgm.eval.likelihood import resolve_method

    model = build_model("ebm", DIGITS, **SMALL)
    with pytest.raises(ConfigError, match="no normalized likelihood"):
        resolve_method(model, "auto")
