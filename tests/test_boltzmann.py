"""The fully visible Boltzmann machine, checked by brute force, and the 4x4 binary digits."""

from __future__ import annotations

import itertools

import pytest
import torch

import dgm  # noqa: F401
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data import load


def tiny(dim: int = 4):
    model = build_model("fvbm", DataSpec((dim,), DataKind.BINARY, num_levels=2),
                        {"init_std": 1.0})
    with torch.no_grad():
        model.bias.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    return model


def states(dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0, 1], repeat=dim)))


def test_weight_is_symmetric_with_zero_diagonal_and_energy_matches_the_definition():
    model = tiny()
    w = model.weight.detach()
    assert torch.equal(w, w.T) and bool((w.diagonal() == 0).all())
    x = states(4)
    by_hand = torch.stack([-(v.float() @ w @ v.float() + model.bias.detach() @ v.float())
                           for v in x])
    assert torch.allclose(model.energy(x).detach(), by_hand, atol=1e-5)


def test_pmf_sums_to_one_and_conditionals_match_brute_force():
    model = tiny()
    x = states(4)
    logp = model.log_prob(x).detach()
    assert float(logp.exp().sum()) == pytest.approx(1.0, abs=1e-5)
    p = logp.exp()
    cond = model.conditional(x).detach()
    for n, v in enumerate(x):
        for i in range(4):
            on, off = v.clone(), v.clone()
            on[i], off[i] = 1, 0
            idx_on = int("".join(map(str, on.tolist())), 2)
            idx_off = int("".join(map(str, off.tolist())), 2)
            assert float(cond[n, i]) == pytest.approx(
                float(p[idx_on] / (p[idx_on] + p[idx_off])), abs=1e-5)


def test_gradient_is_data_minus_model_statistics():
    """∂(-mean log p)/∂b = E_model[x] - E_data[x] (deck 004's ML gradient)."""
    model = tiny()
    data = torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0], [1, 1, 1, 0]])
    model.loss(data).mean().backward()
    x = states(4).float()
    p = model.log_prob(states(4)).detach().exp()
    expected = (p[:, None] * x).sum(0) - data.float().mean(0)
    assert torch.allclose(model.bias.grad, expected, atol=1e-5)


def test_exact_sampling_matches_the_pmf():
    model = tiny(3)
    draws = model.sample(40_000, generator=torch.Generator().manual_seed(0))
    idx = (draws.long() * torch.tensor([4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=8).float() / len(idx)
    p = model.log_prob(states(3)).detach().exp()
    assert float((freq - p).abs().sum()) / 2 < 0.015


def test_refuses_data_too_large_to_enumerate():
    with pytest.raises(ConfigError, match="max_dim"):
        build_model("fvbm", DataSpec((64,), DataKind.BINARY, num_levels=2), {})


def test_binary_digits_4x4_pools_the_binarized_digits():
    small, big = load("binary_digits_4x4"), load("binary_digits")
    assert small.train.x.shape == (1000, 1, 4, 4) and small.spec.kind is DataKind.BINARY
    block = big.train.x[0, 0, :2, :2].sum()
    assert int(small.train.x[0, 0, 0, 0]) == int(block >= 2)
    assert torch.equal(small.train.y, big.train.y)


# --- the subspace RBM (Book §7.5.3) --------------------------------------------------------


def tiny_subspace(dim: int = 3, gates: int = 2, subspace: int = 2):
    model = build_model("subspace_rbm", DataSpec((dim,), DataKind.BINARY, num_levels=2),
                        {"gates": gates, "subspace": subspace, "init_std": 1.0})
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in (model.visible_bias, model.gate_bias, model.subspace_bias):
            p.normal_(0, 1, generator=gen)
    return model


def subspace_energy(model, x, h, s):
    """E(x, h, S) of eq. 7.44 written out."""
    w, b, c, d = (model.weight.detach(), model.visible_bias.detach(), model.gate_bias.detach(),
                  model.subspace_bias.detach())
    x, h, s = x.float(), h.float(), s.float()
    return -(torch.einsum("i,j,jk,ijk->", x, h, s, w) + b @ x + c @ h + (h[:, None] * d * s).sum())


def joint_table(model):
    """exp(-E) over every (x, h, S) of the tiny model: keys (x, h, s)."""
    dim, m, k = model.spec.dim, model.config.gates, model.config.subspace
    table = {}
    for x in itertools.product([0, 1], repeat=dim):
        for h in itertools.product([0, 1], repeat=m):
            for s in itertools.product([0, 1], repeat=m * k):
                xt, ht, st = torch.tensor(x), torch.tensor(h), torch.tensor(s).reshape(m, k)
                table[(x, h, s)] = float(torch.exp(-subspace_energy(model, xt, ht, st)))
    return table


def test_subspace_free_energy_log_partition_and_conditionals_match_brute_force():
    model = tiny_subspace()
    table = joint_table(model)
    z = sum(table.values())
    assert float(model.log_partition().detach()) == pytest.approx(float(torch.tensor(z).log()),
                                                                   abs=1e-4)
    xs = states(3)
    assert float(model.log_prob(xs).detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    for x in xs:
        key = tuple(x.tolist())
        marginal = sum(v for (xx, _, _), v in table.items() if xx == key)
        assert float(model.free_energy(x[None]).detach()) == pytest.approx(
            -float(torch.tensor(marginal).log()), abs=1e-4)
        # p(h_j = 1 | x), eq. 7.47, with the -K log 2 penalty
        gate = model.gate_probability(x[None]).detach()[0]
        for j in range(2):
            on = sum(v for (xx, h, _), v in table.items() if xx == key and h[j] == 1)
            assert float(gate[j]) == pytest.approx(on / marginal, abs=1e-5)
    # p(s_jk = 1 | x, h) and p(x_i = 1 | h, S), eqs. 7.46 and 7.45, at one configuration
    x, h = (1, 0, 1), (1, 0)
    sub = model.subspace_probability(torch.tensor([x]), torch.tensor([h]).float()).detach()[0]
    cond = {s: v for (xx, hh, s), v in table.items() if xx == x and hh == h}
    total = sum(cond.values())
    for j in range(2):
        for k in range(2):
            on = sum(v for s, v in cond.items() if s[j * 2 + k] == 1)
            assert float(sub[j, k]) == pytest.approx(on / total, abs=1e-5)
    h, s = (1, 1), (0, 1, 1, 0)
    vis = model.visible_probability(torch.tensor([h]).float(),
                                    torch.tensor([s]).float().reshape(1, 2, 2)).detach()[0]
    cond = {xx: v for (xx, hh, ss), v in table.items() if hh == h and ss == s}
    for i in range(3):
        on = sum(v for xx, v in cond.items() if xx[i] == 1)
        assert float(vis[i]) == pytest.approx(on / sum(cond.values()), abs=1e-5)


def test_subspace_gibbs_chain_reaches_the_exact_distribution():
    model = tiny_subspace()
    gen = torch.Generator().manual_seed(0)
    v = model.gibbs(torch.zeros(4000, 3, dtype=torch.long), 60, gen)
    idx = (v * torch.tensor([4, 2, 1])).sum(1)
    freq = torch.bincount(idx, minlength=8).float() / len(idx)
    p = model.log_prob(states(3)).detach().exp()
    assert float((freq - p).abs().sum()) / 2 < 0.03


# --- the Gaussian-Bernoulli RBM ------------------------------------------------------------


def tiny_gaussian(dim: int = 2, hidden: int = 3):
    model = build_model("gaussian_rbm", DataSpec((dim,), DataKind.CONTINUOUS),
                        {"hidden": hidden, "init_std": 0.7})
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        model.visible_bias.normal_(0, 1, generator=gen)
        model.hidden_bias.normal_(0, 1, generator=gen)
        model.log_std.copy_(torch.tensor([0.2, -0.3][:dim]))
    return model


def test_gaussian_rbm_density_integrates_to_one_and_free_energy_sums_hidden_states():
    model = tiny_gaussian()
    grid = torch.linspace(-9, 9, 721)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    pts = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
    density = model.log_prob(pts).detach().exp()
    cell = float(grid[1] - grid[0]) ** 2
    assert float(density.sum()) * cell == pytest.approx(1.0, abs=2e-3)
    # F(v) = -log Σ_h e^{-E(v, h)} with E written out
    v = pts[::9973][:5]
    std, b, c, w = (model.log_std.exp().detach(), model.visible_bias.detach(),
                    model.hidden_bias.detach(), model.weight.detach())
    for row in v:
        total = 0.0
        for h in itertools.product([0, 1], repeat=3):
            h = torch.tensor(h, dtype=torch.float32)
            e = ((row - b) ** 2 / (2 * std**2)).sum() - c @ h - (row / std) @ w @ h
            total += float(torch.exp(-e))
        assert float(model.free_energy(row[None]).detach()) == pytest.approx(
            -float(torch.tensor(total).log()), abs=1e-4)


def test_gaussian_rbm_gibbs_recovers_the_exact_mean_and_variance():
    model = tiny_gaussian(dim=1, hidden=2)
    grid = torch.linspace(-12, 12, 20001)[:, None]
    p = model.log_prob(grid).detach().exp()
    p = p / p.sum()
    mean = float((p * grid[:, 0]).sum())
    var = float((p * (grid[:, 0] - mean) ** 2).sum())
    gen = torch.Generator().manual_seed(0)
    v = model.gibbs(torch.zeros(20000, 1), 50, gen)
    assert float(v.mean()) == pytest.approx(mean, abs=0.04)
    assert float(v.var()) == pytest.approx(var, rel=0.05)
