"""Probabilistic circuits: every query against brute-force enumeration on tiny spaces."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily

from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind, DataSpec
from dgm.models.circuits import (Circuit, CircuitConfig, CircuitStructureError, Partition,
                                 RegionGraph, chow_liu_tree, hclt, poon_domingos, quad_graph,
                                 quad_tree, random_binary_trees, validate)

SHAPE = (1, 2, 3)
CASES = [(s, layer) for s in ("rat_spn", "quad_tree", "quad_graph", "poon_domingos", "hclt")
         for layer in ("cp", "tucker") if not (s == "hclt" and layer == "tucker")]


def _states(dim: int, levels: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(levels), repeat=dim)))


def _circuit(structure: str, layer: str, levels: int = 3, units: int = 3, shape=SHAPE,
             input: str = "auto", kind: DataKind = DataKind.DISCRETE, seed: int = 0) -> Circuit:
    torch.manual_seed(seed)
    spec = DataSpec(shape, kind, num_levels=None if kind is DataKind.CONTINUOUS else levels)
    pc = Circuit(spec, CircuitConfig(structure=structure, layer=layer, units=units, depth=2,
                                     repetitions=3, delta=1, init_scale=1.0, input=input))
    with torch.no_grad():  # random mixing and root weights, so that every sum matters
        pc.mix_logits.normal_()
        pc.root_logits.normal_()
    return pc


@pytest.mark.parametrize("structure,layer", CASES)
def test_the_pmf_sums_to_one_and_marginals_and_conditionals_equal_brute_force(structure, layer):
    pc = _circuit(structure, layer)
    states = _states(6, 3).reshape(-1, *SHAPE)
    with torch.no_grad():
        log_p = pc.log_prob(states).double()
    assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-5)
    observed = torch.tensor([[1, 0, 1], [0, 1, 0]], dtype=torch.bool).reshape(SHAPE)
    flat_obs = observed.reshape(-1)
    keys = states.reshape(len(states), -1)[:, flat_obs]
    index = (keys * torch.tensor([9, 3, 1])).sum(1)
    brute = torch.zeros(27, dtype=torch.float64).index_add(0, index, log_p.exp())
    with torch.no_grad():
        log_m = pc.log_marginal(states, observed).double()
    assert torch.allclose(log_m.exp(), brute[index], atol=1e-6)
    # P(x_A | x_B) with A = pixel 1, B = pixels 0 and 2
    query = torch.zeros(6, dtype=torch.bool)
    query[1] = True
    evidence = torch.zeros(6, dtype=torch.bool)
    evidence[[0, 2]] = True
    with torch.no_grad():
        log_c = pc.log_conditional(states, query.reshape(SHAPE), evidence.reshape(SHAPE))
    flat = states.reshape(len(states), -1)
    joint = torch.zeros(27, dtype=torch.float64).index_add(
        0, (flat[:, [0, 1, 2]] * torch.tensor([9, 3, 1])).sum(1), log_p.exp())
    ev = torch.zeros(9, dtype=torch.float64).index_add(
        0, (flat[:, [0, 2]] * torch.tensor([3, 1])).sum(1), log_p.exp())
    expected = (joint[(flat[:, [0, 1, 2]] * torch.tensor([9, 3, 1])).sum(1)]
                / ev[(flat[:, [0, 2]] * torch.tensor([3, 1])).sum(1)])
    assert torch.allclose(log_c.double().exp(), expected, atol=1e-5)


@pytest.mark.parametrize("input,levels,kind", [("binomial", 4, DataKind.DISCRETE),
                                               ("bernoulli", 2, DataKind.BINARY),
                                               ("categorical", 2, DataKind.BINARY)])
def test_every_discrete_input_kind_gives_a_normalized_circuit(input, levels, kind):
    pc = _circuit("quad_graph", "cp", levels=levels, input=input, kind=kind, shape=(1, 2, 2))
    states = _states(4, levels).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        total = torch.logsumexp(pc.log_prob(states).double(), 0)
    assert float(total) == pytest.approx(0.0, abs=1e-5)


def test_gaussian_inputs_give_a_density_that_integrates_to_one_with_exact_marginals():
    pc = _circuit("rat_spn", "cp", shape=(2,), kind=DataKind.CONTINUOUS, units=2)
    grid = torch.linspace(-8, 8, 321)
    step = float(grid[1] - grid[0])
    xy = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        density = pc.log_prob(xy).double().exp().reshape(321, 321)
        mass = density.sum() * step * step
        marginal = pc.log_marginal(xy[:321 * 321:321], torch.tensor([True, False])).exp()
    assert float(mass) == pytest.approx(1.0, abs=2e-3)
    assert torch.allclose(marginal.double(), density.sum(1) * step, atol=2e-3)


def test_a_one_region_circuit_is_torchs_mixture_of_independent_categoricals():
    spec = DataSpec((4,), DataKind.DISCRETE, num_levels=3)
    torch.manual_seed(0)
    pc = Circuit(spec, CircuitConfig(structure="rat_spn", depth=0, units=5, init_scale=1.0))
    with torch.no_grad():
        pc.root_logits.normal_()
    x = _states(4, 3)
    theta = pc.inputs.logits.detach()  # (slots = 4 variables, K, L)
    mixture = MixtureSameFamily(Categorical(logits=pc.root_logits.detach()),
                                Independent(Categorical(logits=theta.permute(1, 0, 2)), 1))
    assert torch.allclose(pc.log_prob(x).detach(), mixture.log_prob(x), atol=1e-5)


@pytest.mark.parametrize("structure,layer", [("rat_spn", "tucker"), ("quad_graph", "cp"),
                                             ("hclt", "cp")])
def test_samples_and_conditional_samples_follow_the_pmf(structure, layer):
    shape = (1, 2, 2)
    pc = _circuit(structure, layer, shape=shape)
    states = _states(4, 3)
    with torch.no_grad():
        p = pc.log_prob(states.reshape(-1, *shape)).double().exp()
    n = 40000
    gen = torch.Generator().manual_seed(1)
    draws = pc.sample(n, generator=gen).reshape(n, 4)
    counts = torch.bincount((draws * torch.tensor([27, 9, 3, 1])).sum(1), minlength=81).double()
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 80 + 4 * math.sqrt(2 * 80), chi2  # 80 degrees of freedom
    observed = torch.tensor([[[True, True], [False, False]]])
    x = torch.tensor([[[2, 1], [0, 0]]]).expand(n, 1, 2, 2)
    filled = pc.sample_conditional(x, observed, generator=gen).reshape(n, 4)
    assert torch.all(filled[:, :2] == torch.tensor([2, 1]))
    given = (states[:, 0] == 2) & (states[:, 1] == 1)
    target = p[given] / p[given].sum()
    counts = torch.bincount((filled[:, 2:] * torch.tensor([3, 1])).sum(1), minlength=9).double()
    chi2 = float(((counts - n * target) ** 2 / (n * target)).sum())
    assert chi2 < 8 + 4 * math.sqrt(16), chi2


@pytest.mark.parametrize("structure,layer", [("quad_tree", "tucker"), ("hclt", "cp")])
def test_mpe_is_exact_for_a_deterministic_circuit_and_a_lower_bound_otherwise(structure, layer):
    shape = (1, 2, 3)
    states = _states(6, 3).reshape(-1, *shape)
    exact = _circuit(structure, layer, units=1, shape=shape)
    with torch.no_grad():
        log_p = exact.log_prob(states)
    result = exact.mpe()
    assert result.exact
    assert torch.equal(result.x[0], states[int(log_p.argmax())])
    assert float(result.log_value) == pytest.approx(float(log_p.max()), abs=1e-5)
    approx = _circuit(structure, layer, units=3, shape=shape)
    with torch.no_grad():
        log_p = approx.log_prob(states)
    result = approx.mpe()
    assert not result.exact
    with torch.no_grad():
        best = float(approx.log_prob(result.x))
    assert float(result.log_value) <= best + 1e-5 <= float(log_p.max()) + 2e-5
    # with evidence: the observed pixels are kept, the rest maximized
    observed = torch.tensor([True, True, False, False, False, False]).reshape(shape)
    x = states[5:6]
    out = approx.mpe(x, observed)
    assert torch.equal(out.x.reshape(-1)[:2], x.reshape(-1)[:2])


@pytest.mark.parametrize("input,levels,kind", [("categorical", 3, DataKind.DISCRETE),
                                               ("binomial", 4, DataKind.DISCRETE),
                                               ("bernoulli", 2, DataKind.BINARY)])
@pytest.mark.parametrize("structure,layer", [("quad_graph", "tucker"), ("hclt", "cp")])
def test_em_never_lowers_the_training_likelihood(structure, layer, input, levels, kind):
    spec = DataSpec((1, 2, 3), kind, num_levels=levels)
    torch.manual_seed(0)
    pc = Circuit(spec, CircuitConfig(structure=structure, layer=layer, units=3, fit="em",
                                     pseudo_count=0.0, input=input))
    teacher = _circuit("quad_graph", "cp", levels=levels, kind=kind, seed=3)
    x = teacher.sample(300, generator=torch.Generator().manual_seed(2))  # data with structure
    pc.initialize_from_data(x, torch.Generator().manual_seed(0))
    history = []
    for _ in range(8):
        pc.em_begin()
        history.append(float(pc.em_accumulate(x).mean()))
        pc.em_maximize()
    assert all(b >= a - 1e-4 for a, b in zip(history, history[1:])), history
    assert history[-1] > history[0] + 0.1


def test_em_statistics_are_the_expected_counts():
    pc = _circuit("rat_spn", "cp", units=2, shape=(3,))
    pc.em_begin()
    x = _states(3, 3)[:10]
    pc.em_accumulate(x)
    stats = pc.em_statistics()
    # the root's counts are the posterior responsibilities, summing to the batch size
    assert float(stats[2].sum()) == pytest.approx(10.0, abs=1e-4)
    # every slot's input counts sum to the batch size too (each example uses one unit per slot
    # of the active tree: 10 per repetition's slots in total)
    assert float(pc.em_statistics()[3].sum()) == pytest.approx(10.0 * 3, abs=1e-3)


def test_the_validator_names_the_node_that_breaks_smoothness_or_decomposability():
    regions = ((0, 1, 2), (0, 1), (1, 2), (2,), (0,))
    overlapping = RegionGraph(3, regions, (Partition(0, (1, 2)),), 0)
    with pytest.raises(CircuitStructureError, match="partition 0 .* not decomposable.*variable 1"):
        validate(overlapping)
    short = RegionGraph(3, regions, (Partition(0, (1,)),), 0)
    with pytest.raises(CircuitStructureError, match=r"partition 0 of region 0 .* not smooth.*\{2\}"):
        validate(short)
    cycle = RegionGraph(2, ((0, 1), (0,), (1,)), (Partition(0, (1, 2)), Partition(1, (1,))), 0)
    with pytest.raises(CircuitStructureError):
        validate(cycle)
    stray = RegionGraph(3, regions, (Partition(0, (4, 2)),), 0)
    with pytest.raises(CircuitStructureError, match="region 1 .* not reachable"):
        validate(stray)
    for graph in (random_binary_trees(10, 3, 4), quad_tree((1, 5, 6)), quad_graph((3, 4, 4)),
                  poon_domingos((1, 6, 6), 2), hclt(torch.tensor([-1, 0, 0, 1, 3]))):
        validate(graph)  # every builder's graph is valid


def test_chow_liu_recovers_a_markov_chain_and_an_hclt_reloads_its_tree():
    gen = torch.Generator().manual_seed(0)
    n, d = 4000, 6
    x = torch.zeros(n, d, dtype=torch.long)
    x[:, 0] = torch.randint(0, 2, (n,), generator=gen)
    order = [0, 3, 1, 5, 2, 4]  # a chain through the variables in this order
    for a, b in zip(order, order[1:]):
        flip = torch.rand(n, generator=gen) < 0.1
        x[:, b] = torch.where(flip, 1 - x[:, a], x[:, a])
    parent = chow_liu_tree(x, 2)
    edges = {frozenset((v, int(parent[v]))) for v in range(d) if parent[v] >= 0}
    assert edges == {frozenset(e) for e in zip(order, order[1:])}
    spec = DataSpec((d,), DataKind.BINARY)
    pc = Circuit(spec, CircuitConfig(structure="hclt", units=3))
    pc.initialize_from_data(x, gen)
    assert torch.equal(pc.tree_parent, parent)
    fresh = Circuit(spec, CircuitConfig(structure="hclt", units=3))
    fresh.load_state_dict(pc.state_dict())
    assert torch.allclose(fresh.log_prob(x[:50]), pc.log_prob(x[:50]))


def test_configs_that_cannot_work_are_clear_errors():
    spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=3)
    with pytest.raises(ConfigError, match="layer: cp"):
        CircuitConfig(structure="hclt", layer="tucker")
    with pytest.raises(ConfigError, match="needs .* images"):
        Circuit(DataSpec((5,), DataKind.DISCRETE, num_levels=3),
                CircuitConfig(structure="quad_tree"))
    with pytest.raises(ConfigError, match="bernoulli"):
        Circuit(spec, CircuitConfig(input="bernoulli"))
    with pytest.raises(ConfigError, match="gaussian"):
        Circuit(spec, CircuitConfig(input="gaussian"))


def test_online_em_moves_each_distribution_by_its_step_size():
    spec = DataSpec((1, 2, 3), DataKind.DISCRETE, num_levels=3)
    x = _circuit("quad_graph", "cp", seed=3).sample(100, generator=torch.Generator().manual_seed(0))
    models = []
    for eta in (1.0, 0.3):
        torch.manual_seed(0)
        pc = Circuit(spec, CircuitConfig(structure="quad_graph", units=3, fit="em",
                                         em_step_size=eta, pseudo_count=0.5))
        before = (pc.inputs.log_theta().exp().detach(), torch.softmax(pc.root_logits, -1).detach())
        pc.em_begin()
        pc.em_accumulate(x)
        pc.em_maximize()
        models.append((pc, before))
    (full, before), (online, _) = models
    for new, old, moved in ((full.inputs.log_theta().exp(), before[0],
                             online.inputs.log_theta().exp()),
                            (torch.softmax(full.root_logits, -1), before[1],
                             torch.softmax(online.root_logits, -1))):
        assert torch.allclose(moved.detach(), 0.7 * old + 0.3 * new.detach(), atol=1e-5)


@pytest.mark.parametrize("fit", [("model.fit=gradient",), ("model.fit=em",),
                                 ("model.fit=em", "model.em_batches=2", "train.batch_size=250",
                                  "model.em_step_size=0.5")])
def test_circuits_train_through_the_trainer_below_the_independent_floor(fit, tmp_path):
    from dgm.config import load_config
    from dgm.eval.likelihood import evaluate
    from dgm.runs import open_run
    from dgm.train.trainer import train
    from dgm.data import load

    config = load_config(None, overrides=[
        "model.name=circuit", "model.structure=hclt", "model.units=4", "model.input=bernoulli",
        "data.name=binary_digits_4x4", "train.epochs=40", "train.progress=false",
        "optim.lr=0.05", *fit])
    train(config, tmp_path / "run")
    model = open_run(tmp_path / "run").load_model()
    nll = evaluate(model, load("binary_digits_4x4").test).nll_nats
    assert nll < 5.18, nll  # the independent Bernoulli floor of the 4x4 bits


def test_a_mixture_of_hclts_is_normalized_exact_and_reloads_its_trees():
    spec = DataSpec((1, 2, 3), DataKind.DISCRETE, num_levels=3)
    torch.manual_seed(0)
    pc = Circuit(spec, CircuitConfig(structure="hclt", units=3, trees=3, init_scale=1.0))
    x = _circuit("quad_graph", "cp", seed=3).sample(300, generator=torch.Generator().manual_seed(1))
    pc.initialize_from_data(x, torch.Generator().manual_seed(0))
    assert pc.tree_parent.shape == (3, 6) and len({tuple(t) for t in pc.tree_parent.tolist()}) > 1
    with torch.no_grad():
        pc.mix_logits.normal_()
        states = _states(6, 3).reshape(-1, *spec.event_shape)
        log_p = pc.log_prob(states).double()
        assert float(torch.logsumexp(log_p, 0)) == pytest.approx(0.0, abs=1e-5)
        observed = torch.tensor([1, 1, 0, 0, 1, 0], dtype=torch.bool).reshape(spec.event_shape)
        keys = states.reshape(len(states), -1)[:, observed.reshape(-1)]
        index = (keys * torch.tensor([9, 3, 1])).sum(1)
        brute = torch.zeros(27, dtype=torch.float64).index_add(0, index, log_p.exp())
        assert torch.allclose(pc.log_marginal(states, observed).double().exp(), brute[index],
                              atol=1e-6)
    fresh = Circuit(spec, CircuitConfig(structure="hclt", units=3, trees=3))
    fresh.load_state_dict(pc.state_dict())
    assert torch.allclose(fresh.log_prob(states), pc.log_prob(states))
