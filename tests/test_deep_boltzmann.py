"""Deep belief networks and deep Boltzmann machines, checked by enumeration on tiny sizes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import dgm  # noqa: F401
from dgm.core.fitting import StepInfo
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.energy.rbm import level_indicators


def spec(levels: int, dim: int) -> DataSpec:
    kind = DataKind.BINARY if levels == 2 else DataKind.DISCRETE
    return DataSpec((dim,), kind, num_levels=levels)


def randomize(model, seed: int = 0, scale: float = 1.0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, scale, generator=gen)


def grid(levels: int, dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)))


def bits(n: int) -> torch.Tensor:
    return grid(2, n).float()


# --- DBM ---------------------------------------------------------------------------------------


def tiny_dbm(levels: int = 2):
    model = build_model("dbm", spec(levels, 3), {"hidden": [3, 2], "init_std": 1.0,
                                                 "ais_chains": 20, "ais_temperatures": 100})
    randomize(model)
    with torch.no_grad():
        model.base_logits.copy_(model.visible_bias)
    return model


def dbm_energy(model, v, h1, h2):
    """E(v, h¹, h²) written out, for batches v (N, D), h1 (N, H1), h2 (N, H2)."""
    one_hot = level_indicators(v, model.levels, torch.float32)
    return -((one_hot * model.visible_bias).sum((1, 2))
             + torch.einsum("ndk,dkh,nh->n", one_hot, model.weight, h1)
             + h1 @ model.hidden_bias + torch.einsum("ni,ij,nj->n", h1, model.top_weight, h2)
             + h2 @ model.top_bias)


def summed_out(model, v, h1s, h2s):
    """-log Σ e^{-E(v, h¹, h²)} over the given h¹ and h² states, per row of v."""
    n, a, b = len(v), len(h1s), len(h2s)
    vv = v.repeat_interleave(a * b, 0)
    hh1 = h1s.repeat_interleave(b, 0).repeat(n, 1)
    hh2 = h2s.repeat(n * a, 1)
    return -torch.logsumexp(-dbm_energy(model, vv, hh1, hh2).reshape(n, a * b), 1)


@pytest.mark.parametrize("levels", [2, 3])
def test_dbm_free_energy_and_ais_match_enumeration(levels):
    model = tiny_dbm(levels)
    vs = grid(levels, 3)
    with torch.no_grad():
        exact_f = summed_out(model, vs, bits(3), bits(2))
        assert torch.allclose(model.free_energy(vs), exact_f, atol=1e-4)
        # chain energy: h¹ summed out only
        v, h2 = vs[5], bits(2)[1]
        f_joint = summed_out(model, v[None], bits(3), h2[None])[0]
        state = torch.cat([v, h2.long()])[None]
        assert float(model.chain_energy(state)[0]) == pytest.approx(float(f_joint), abs=1e-4)
        log_z = float(torch.logsumexp(-exact_f, 0))
        ais = model.log_partition_ais(chains=200, temperatures=500,
                                      generator=torch.Generator().manual_seed(0))
    assert abs(ais.log_z - log_z) < 4 * ais.stderr + 0.01
    est = model.log_prob_estimate(vs)
    assert est.shared_stderr > 0


def test_dbm_gibbs_chain_reaches_the_exact_marginal():
    model = tiny_dbm()
    vs = grid(2, 3)
    with torch.no_grad():
        p = torch.softmax(-model.free_energy(vs), 0)
        state = model.gibbs(model.random_visible(6000, torch.Generator().manual_seed(1)), 80,
                            torch.Generator().manual_seed(2))
    idx = (state[:, :3] * torch.tensor([4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=8).float() / len(idx)
    assert float((freq - p).abs().sum()) / 2 < 0.03


def test_dbm_loss_moves_chains_in_after_step_and_samples_are_visible_only():
    model = build_model("dbm", spec(2, 6), {"hidden": [4, 3], "chains": 7, "sample_steps": 3})
    before = model.chains.clone()
    model.loss(torch.randint(2, (5, 6)))
    assert torch.equal(model.chains, before)
    model.after_step(StepInfo())
    assert not torch.equal(model.chains, before) and int(model.chain_age) == 1
    s = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 6) and int(s.max()) <= 1


# --- DBN ---------------------------------------------------------------------------------------


def tiny_dbn():
    model = build_model("dbn", spec(2, 3), {"hidden": [2, 2], "layer_steps": 3,
                                            "rbm": {"init_std": 1.0, "chains": 5}})
    randomize(model, seed=1)
    return model


def dbn_exact_log_prob(model, v: torch.Tensor) -> torch.Tensor:
    """log Σ_{h1} p(v | h1) p_top(h1), the DBN's marginal by enumeration."""
    low, top = model.layers
    h1 = bits(2)
    log_top = -top.free_energy(h1.long()) - top.log_partition()
    log_px = torch.log_softmax(low.visible_logits(h1), -1)  # (S, D, L)
    rows = log_px.gather(-1, v.expand(len(h1), -1)[..., None]).squeeze(-1).sum(-1)
    return torch.logsumexp(rows + log_top, 0)


def test_dbn_bound_is_below_the_exact_marginal_and_iwae_closes_the_gap():
    model = tiny_dbn()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for v in grid(2, 3)[[0, 3, 6]]:
            exact = float(dbn_exact_log_prob(model, v))
            lw = model.log_weights(v[None], 20_000, generator=gen)[:, 0].double()
            elbo = float(lw.mean())
            iwae = float(torch.logsumexp(lw, 0) - math.log(len(lw)))
            assert elbo < exact + 1e-6
            assert iwae == pytest.approx(exact, abs=0.01)


def test_dbn_trains_one_layer_at_a_time_and_starts_the_next_from_the_features():
    model = tiny_dbn()
    x = torch.randint(2, (8, 3))
    top = model.layers[1]
    top_before = top.weight.detach().clone()
    for step in range(3):
        assert model.active_layer == 0
        loss = model.loss(x).mean()
        loss.backward()
        assert top.weight.grad is None
        model.after_step(StepInfo(step=step + 1))
    assert model.active_layer == 1
    assert torch.equal(top.weight.detach(), top_before)  # weights untouched, biases set
    assert int(top.chains.max()) <= 1
    model.zero_grad()
    model.loss(x).mean().backward()
    assert model.layers[0].weight.grad is None and top.weight.grad is not None
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 3)


def test_chain_models_have_the_mixing_capability_and_others_do_not():
    from dgm.core.capabilities import MarkovChains

    binary = spec(2, 4)
    for name, options in [("rbm", {"hidden": 3}), ("subspace_rbm", {"gates": 2, "subspace": 2}),
                          ("dbm", {"hidden": [3, 2]})]:
        assert isinstance(build_model(name, binary, options), MarkovChains), name
    assert not isinstance(build_model("fvbm", binary, {}), MarkovChains)
    assert not isinstance(build_model("dbn", binary, {"hidden": [3, 2]}), MarkovChains)
