"""Integer Discrete Flows: exact integer inverses, the straight-through rounding, the base pmf
over Z, the model pmf summed over a box of Z^2, sampling, conditioning and a training smoke
test through the trainer."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dgm.config import load_config
from dgm.core import Likelihood, build_model
from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.transforms.integer import (
    IntegerAdditiveCoupling,
    IntegerPartitionCoupling,
    round_ste,
)
from dgm.core.spec import DataKind, DataSpec
from dgm.models.flows.idf import IDF, DiscretizedLogisticBase, IDFConfig, FactorOutBase
from dgm.train.trainer import train

SPEC_2D = DataSpec(event_shape=(2,), kind=DataKind.DISCRETE, num_levels=5)
SPEC_IMG = DataSpec(event_shape=(1, 3, 3), kind=DataKind.DISCRETE, num_levels=5, num_classes=3)


def _net(d_in: int, d_out: int) -> torch.nn.Module:
    return mlp(d_in, 16, d_out, num_hidden=1)


def _random_idf(spec: DataSpec, scale: float = 0.5, **overrides: object) -> IDF:
    """A small float64 IDF whose couplings are far from the identity."""
    fields = dict(num_flows=3, hidden=16, num_hidden=1, zero_init=False) | overrides
    model = IDF(spec, IDFConfig(**fields)).double()  # type: ignore[arg-type]
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("flow."):
                p.copy_(scale * torch.randn_like(p))
    return model.eval()


def test_round_ste_rounds_forward_and_is_identity_backward() -> None:
    x = torch.tensor([-1.6, -0.4, 0.2, 0.7, 2.5, 3.49], requires_grad=True)
    y = round_ste(x)
    assert torch.equal(y, torch.round(x.detach()))
    (y * torch.arange(6.0)).sum().backward()
    assert torch.equal(x.grad, torch.arange(6.0))


@pytest.mark.parametrize("kind", ["bipartite", "quadripartite"])
@pytest.mark.parametrize("context", [0, 3])
def test_couplings_are_exact_integer_bijections(kind: str, context: int) -> None:
    dim = 7
    if kind == "bipartite":
        layer = IntegerAdditiveCoupling(dim, _net, context=context, output_scale=10.0)
    else:
        layer = IntegerPartitionCoupling(dim, _net, context=context, output_scale=10.0)
    assert layer.volume_preserving
    x = torch.randint(-50, 50, (64, dim)).float()
    c = torch.randn(64, context) if context else None
    z, logdet = layer(x, c)
    assert torch.equal(z, torch.round(z)) and not torch.equal(z, x)  # integers, moved
    assert torch.equal(logdet, torch.zeros(64))
    x_back, inv_logdet = layer.inverse(z, c)
    assert torch.equal(x_back, x) and torch.equal(inv_logdet, torch.zeros(64))
    if kind == "quadripartite":
        # every part moves (unlike the bipartite coupling, whose first part is fixed)
        moved = (z != x).any(0)
        sizes = layer.sizes
        assert all(bool(p.any()) for p in moved.split(sizes))


@pytest.mark.parametrize("partition", ["bipartite", "quadripartite"])
def test_model_flow_inverts_exactly(partition: str) -> None:
    model = _random_idf(SPEC_IMG, scale=1.0, partition=partition, permutation="random")
    x = torch.randint(-30, 30, (50, 9)).double()
    z, _ = model.flow(x)
    assert torch.equal(z, torch.round(z))
    assert torch.equal(model.flow.inverse(z)[0], x)


@pytest.mark.parametrize("k,min_scale", [(1, 0.0), (3, 0.0), (3, 0.5)])
def test_base_pmf_sums_to_one_over_z_and_is_finite_far_out(k: int, min_scale: float) -> None:
    base = DiscretizedLogisticBase(3, k, min_scale=min_scale).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([[0.3], [-4.0], [10.0]]) + torch.randn(3, k))
        base.log_scale.copy_(torch.tensor([[0.0], [1.5], [-1.0]]) + 0.3 * torch.randn(3, k))
        if base.logits is not None:
            base.logits.copy_(torch.randn(3, k))
    z = torch.arange(-2000, 2001, dtype=torch.float64).unsqueeze(1).expand(-1, 3)
    total = base.log_prob_each(z).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    base = base.float()
    far = torch.tensor([[1e6, -1e6, 1e6], [-1e6, 1e6, -1e6]], requires_grad=True)
    log_p = base.log_prob_each(far)
    assert bool(torch.isfinite(log_p).all()) and bool((log_p < -1e3).all())
    log_p.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in base.parameters())


def test_base_samples_follow_the_pmf() -> None:
    base = DiscretizedLogisticBase(1, 2).double()
    with torch.no_grad():
        base.loc.copy_(torch.tensor([[-3.0, 4.0]]))
        base.log_scale.copy_(torch.tensor([[0.0, -0.5]]))
        base.logits.copy_(torch.tensor([[0.5, -0.5]]))
    s = base.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, torch.round(s))
    values = torch.arange(-12, 13, dtype=torch.float64)
    freq = (s == values).double().mean(0)
    with torch.no_grad():
        pmf = base.log_prob_each(values.unsqueeze(1)).exp().squeeze(1)
    assert float((freq - pmf).abs().max()) < 0.015


@pytest.mark.parametrize("partition,base", [("bipartite", "logistic"),
                                             ("quadripartite", "mixture")])
def test_model_pmf_sums_to_one_over_a_box_of_z2(partition: str, base: str) -> None:
    """f is a bijection of Z^2, so Σ_x π(f(x)) over a big box is the base's total mass, 1;
    over the data's 0..L-1 box it is less (the rest of Z^2 takes some)."""
    spec = SPEC_2D if partition == "bipartite" else DataSpec((4,), DataKind.DISCRETE, 5)
    k = 1 if base == "logistic" else 2
    model = _random_idf(spec, partition=partition, base=base, num_components=k,
                        translation_scale=3.0 if spec.dim == 2 else 1.0)
    with torch.no_grad():
        model.base.loc.copy_(0.5 * torch.randn_like(model.base.loc))
        model.base.log_scale.fill_(math.log(0.4))
    d = spec.dim
    half = 60 if d == 2 else 10  # 121^2 or 21^4 points
    axis = torch.arange(-half, half + 1, dtype=torch.float64)
    box = torch.cartesian_prod(*[axis] * d)
    with torch.no_grad():
        z, _ = model.flow(box)
        assert float((z - box).abs().max()) > 10  # far from the identity
        total = float(model.base.log_prob(z).exp().sum())
        assert abs(total - 1.0) < 1e-3
        data = torch.cartesian_prod(*[torch.arange(5)] * d)
        on_data = model.log_prob(data)
        z_data, _ = model.flow((data - 2).double())
        torch.testing.assert_close(on_data, model.base.log_prob(z_data))
    assert 0.0 < float(on_data.exp().sum()) < 1.0


def test_samples_are_integers_of_the_data_shape() -> None:
    model = _random_idf(DataSpec((1, 3, 3), DataKind.DISCRETE, 5), scale=1.0)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    s = model.sample(100, generator=g1)
    assert s.shape == (100, 1, 3, 3) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) <= 4
    assert torch.equal(s, model.sample(100, generator=g2))
    binary = _random_idf(DataSpec((4,), DataKind.BINARY)).float()
    b = binary.sample(30)
    assert b.shape == (30, 4) and set(b.unique().tolist()) <= {0, 1}


def test_conditional_model_uses_the_labels() -> None:
    model = _random_idf(SPEC_IMG, scale=1.0, conditional=True)
    x = torch.randint(0, 5, (6, 1, 3, 3))
    lp0 = model.log_prob(x, torch.zeros(6, dtype=torch.long))
    lp1 = model.log_prob(x, torch.ones(6, dtype=torch.long))
    assert bool(torch.isfinite(lp0).all()) and not torch.equal(lp0, lp1)
    with pytest.raises(ConfigError):
        model.log_prob(x)
    s = model.sample(5, y=torch.tensor([0, 1, 2, 0, 1]))
    assert s.shape == (5, 1, 3, 3) and s.dtype == torch.long
    assert model.sample(4).shape == (4, 1, 3, 3)  # labels drawn uniformly
    with pytest.raises(ConfigError):
        _random_idf(SPEC_IMG).sample(2, y=torch.zeros(2, dtype=torch.long))


def test_registered_exact_and_checks_its_input() -> None:
    model = build_model("idf", SPEC_2D, {"num_flows": 2, "hidden": 8})
    assert isinstance(model, IDF) and IDF.likelihood is Likelihood.EXACT
    with pytest.raises(ConfigError):
        IDF(DataSpec((2,), DataKind.CONTINUOUS))
    with pytest.raises(ConfigError):
        IDF(SPEC_2D, IDFConfig(partition="quadripartite"))  # D = 2 < 4
    with pytest.raises(ConfigError):
        IDF(SPEC_2D, IDFConfig(conditional=True))  # no labels
    with pytest.raises(DataError):
        model.log_prob(torch.full((3, 2), 5))  # out of range


@pytest.mark.parametrize(
    "fields",
    [{"num_flows": 0}, {"partition": "tripartite"}, {"hidden": 0}, {"num_hidden": -1},
     {"dropout": 1.0}, {"base": "gaussian"}, {"num_components": 3},
     {"base": "mixture", "num_components": 1}, {"permutation": "shuffle"},
     {"translation_scale": 0.0}, {"min_scale": -1.0}, {"fit_base_steps": -1}],
)
def test_config_validation_names_the_field(fields: dict) -> None:
    key = "num_components" if "num_components" in fields else next(iter(fields))
    with pytest.raises(ConfigError, match=key):
        IDFConfig(**fields)


def test_gradient_reaches_every_parameter_through_the_rounding() -> None:
    model = _random_idf(SPEC_IMG, partition="quadripartite", base="mixture",
                        num_components=2).float().train()
    model.loss(torch.randint(0, 5, (32, 1, 3, 3))).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


def test_training_through_the_trainer_lowers_the_loss(tmp_path) -> None:
    config = load_config(overrides=[
        "model.name=idf", "model.num_flows=2", "model.hidden=32", "model.fit_base=false",
        "data.name=digits", "train.epochs=4",
        "train.batch_size=100", "train.progress=false", "train.threads=1",
        "optim.name=adamax", "optim.lr=0.003",
    ])
    result = train(config, tmp_path / "r")
    rows = [json.loads(r) for r in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 1.0
    assert result.best_val < rows[0]["val"]


def test_factor_out_prior_sums_to_one_and_samples_follow_it() -> None:
    """π(z1) π(z2 | z1) over a box of Z^2 sums to 1 (each factor does for every condition),
    the conditional really depends on z1, and part-by-part samples follow the pmf."""
    torch.manual_seed(0)
    base = FactorOutBase(2, 2, num_components=2, hidden=8, scale=5.0).double()
    with torch.no_grad():
        for p in base.parameters():
            p.add_(0.25 * torch.randn_like(p))
    axis = torch.arange(-300, 301, dtype=torch.float64)
    box = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        pmf = base.log_prob(box).exp()
    assert abs(float(pmf.sum()) - 1.0) < 1e-4
    grid = pmf.reshape(601, 601)
    conditional = grid / grid.sum(1, keepdim=True)
    assert float((conditional[298] - conditional[302]).abs().max()) > 1e-3
    s = base.sample(20000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, s.round())
    for value in (-1.0, 0.0, 1.0):
        freq = float((s[:, 0] == value).double().mean())
        assert abs(freq - float(grid[int(value) + 300].sum())) < 0.015


def test_idf_with_a_factor_out_prior_inverts_and_is_exact() -> None:
    spec = DataSpec((8,), DataKind.DISCRETE, num_levels=5)
    model = _random_idf(spec, prior_parts=4, base="mixture", num_components=2)
    x = torch.randint(0, 5, (16, 8))
    with torch.no_grad():
        z = model.latent(x)
        back, _ = model.flow.inverse(z)
        assert torch.equal(back, (x - 2).double())
        torch.testing.assert_close(model.log_prob(x), model.base.log_prob(z))
    assert model.sample(4).shape == (4, 8)
