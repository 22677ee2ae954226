"""The restricted Boltzmann machine: its pmf, free energies, conditionals, Gibbs chains and
contrastive-divergence training, checked by brute force on spaces small enough to enumerate."""

from __future__ import annotations

import itertools

import pytest
import torch

import dgm
from dgm.core.fitting import StepInfo
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec


def tiny(levels: int = 3, dim: int = 3, hidden: int = 4, **options) -> dgm.core.base.GenerativeModel:
    kind = DataKind.BINARY if levels == 2 else DataKind.DISCRETE
    spec = DataSpec((dim,), kind, num_levels=levels)
    model = build_model("rbm", spec, {"hidden": hidden, "init_std": 1.0, **options})
    with torch.no_grad():
        model.visible_bias.normal_(0, 1, generator=torch.Generator().manual_seed(1))
        model.hidden_bias.normal_(0, 1, generator=torch.Generator().manual_seed(2))
    return model


def all_states(levels: int, dim: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)))


def energy(model, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """E(v, h) written out from the definition, for one v (D,) and one h (H,)."""
    e = -(h * model.hidden_bias).sum()
    for i, k in enumerate(v.tolist()):
        if k > 0:
            e = e - model.visible_bias[i, k - 1] - (model.weight[i, k - 1] * h).sum()
    return e


@pytest.mark.parametrize("levels", [2, 3])
def test_pmf_sums_to_one_and_free_energy_is_the_sum_over_hidden_states(levels: int) -> None:
    model = tiny(levels)
    vs, hs = all_states(levels, 3), all_states(2, 4).float()
    with torch.no_grad():
        joint = torch.stack([torch.stack([-energy(model, v, h) for h in hs]) for v in vs])
        log_z = torch.logsumexp(joint.reshape(-1), 0)
        assert torch.allclose(model.log_partition(), log_z, atol=1e-5)
        assert torch.allclose(model.free_energy(vs), -torch.logsumexp(joint, 1), atol=1e-5)
        assert torch.allclose(model.hidden_free_energy(hs), -torch.logsumexp(joint, 0),
                              atol=1e-5)
        assert torch.allclose(model.log_prob(vs).exp().sum(), torch.tensor(1.0), atol=1e-5)


def test_conditionals_match_brute_force() -> None:
    model = tiny(3)
    vs, hs = all_states(3, 3), all_states(2, 4).float()
    with torch.no_grad():
        joint = torch.stack([torch.stack([-energy(model, v, h) for h in hs]) for v in vs])
        p_h_given_v = torch.softmax(joint, 1)  # (V, H states)
        marg = (p_h_given_v[:, :, None] * hs[None]).sum(1)  # P(h_j = 1 | v)
        assert torch.allclose(torch.sigmoid(model.hidden_input(vs)), marg, atol=1e-5)
        p_v_given_h = torch.softmax(joint, 0)  # (V, H states)
        h = hs[5:6]
        logits = model.visible_logits(h)[0]  # (D, L)
        for i in range(3):
            brute = torch.stack([p_v_given_h[vs[:, i] == k, 5].sum() for k in range(3)])
            assert torch.allclose(torch.softmax(logits[i], -1), brute, atol=1e-5)


def test_long_gibbs_chains_reach_the_exact_distribution() -> None:
    model = tiny(2, dim=3, hidden=3)
    vs = all_states(2, 3)
    exact = model.log_prob(vs).exp().detach()
    start = torch.zeros(4000, 3, dtype=torch.long)
    draws = model.gibbs(start, 50, torch.Generator().manual_seed(0))
    codes = (draws * torch.tensor([4, 2, 1])).sum(1)
    freq = torch.bincount(codes, minlength=8).float() / len(codes)
    tv = 0.5 * (freq - exact).abs().sum()
    assert tv < 0.03, tv


def test_cd_gradient_approaches_the_exact_gradient_as_k_grows() -> None:
    """The exact gradient of the mean NLL is E_data[∇F] - E_model[∇F]; CD-k's loss has it in
    expectation once its chains mix, and CD-1 from the data does not."""
    model = tiny(2, dim=3, hidden=3)
    vs = all_states(2, 3)
    data = vs[torch.tensor([0, 3, 3, 5, 6, 7, 7, 7])]
    model.zero_grad()
    (-model.log_prob(data).mean()).backward()
    exact = model.weight.grad.clone()

    def cd(k: int, reps: int = 300) -> torch.Tensor:
        m = tiny(2, dim=3, hidden=3, cd_k=k, persistent=False)
        total = torch.zeros_like(exact)
        torch.manual_seed(0)
        for _ in range(reps):
            m.zero_grad()
            m.loss(data.repeat(8, 1)).mean().backward()
            total += m.weight.grad
        return total / reps

    err_1 = (cd(1) - exact).norm()
    err_20 = (cd(20) - exact).norm()
    assert err_20 < 0.5 * err_1 and err_20 < 0.05 * exact.norm() + 0.02


def test_persistent_chains_move_only_after_a_step_and_are_checkpointed() -> None:
    model = tiny(2, dim=6, hidden=3, chains=16)
    before = model.chains.clone()
    x = torch.randint(2, (8, 6))
    torch.manual_seed(0)
    model.loss(x)
    assert torch.equal(model.chains, before)  # loss() leaves the state alone
    model.after_step(StepInfo(step=1))
    assert not torch.equal(model.chains, before)
    assert "chains" in model.state_dict()


def test_pcd_training_on_binary_digits_raises_the_exact_likelihood() -> None:
    data = dgm.datasets.load("binary_digits")
    x, _ = data.train.all(data.spec)
    test, _ = data.test.all(data.spec)
    model = build_model("rbm", data.spec, {"hidden": 12, "chains": 64})
    model.initialize_from_data(x, torch.Generator().manual_seed(0))
    with torch.no_grad():
        start = float(-model.log_prob(test).mean())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    torch.manual_seed(0)
    for step in range(300):
        batch = x[torch.randint(len(x), (64,))]
        opt.zero_grad()
        model.loss(batch).mean().backward()
        opt.step()
        model.after_step(StepInfo(step=step))
    with torch.no_grad():
        end = float(-model.log_prob(test).mean())
    assert end < start - 2.0, (start, end)  # 24.9 -> 22.3 nats per image
    samples = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (4, 1, 8, 8) and set(samples.unique().tolist()) <= {0, 1}
