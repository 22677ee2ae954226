"""Transformer ARM and GPT: causality, normalization, the KV cache, sampling options."""

from __future__ import annotations

import itertools

import pytest
import torch

from dgm.core.attention import CausalSelfAttention, KVCache
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.sampling import Sampling
from dgm.core.spec import DataKind, DataSpec
from dgm.models.autoregressive.transformer import GPT, TransformerARM

from util import loss_drop

TINY = dict(hidden=16, num_layers=2, num_heads=2, mlp_ratio=2)


def _model(spec: DataSpec, name: str = "transformer", **kw: object) -> TransformerARM:
    torch.manual_seed(0)
    model = build_model(name, spec, {**TINY, "dropout": 0.0, **kw})
    assert isinstance(model, TransformerARM)
    return model.double()


def _all(spec: DataSpec) -> torch.Tensor:
    grid = itertools.product(range(spec.num_levels), repeat=spec.dim)
    return torch.tensor(list(grid)).reshape(-1, *spec.event_shape)


@pytest.mark.parametrize(
    "spec, likelihood",
    [
        (DataSpec((3,), DataKind.DISCRETE, num_levels=3), "categorical"),
        (DataSpec((1, 2, 2), DataKind.BINARY), "bernoulli"),
        (DataSpec((3,), DataKind.DISCRETE, num_levels=4), "discretized_logistic"),
        (DataSpec((4,), DataKind.TOKENS, num_levels=3), "auto"),
    ],
)
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_pmf_sums_to_one(spec: DataSpec, likelihood: str, norm: str) -> None:
    model = _model(spec, likelihood=likelihood, norm=norm, num_components=2).eval()
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(_all(spec)), dim=0)
    assert abs(float(total)) < 1e-10


def test_end_token_pmf_sums_to_one_over_finished_sequences() -> None:
    spec = DataSpec((4,), DataKind.TOKENS, num_levels=3, end_token=2)
    model = _model(spec).eval()
    x = _all(spec)
    canonical = torch.tensor([bool((row[spec.lengths(row[None])[0] :] == 2).all()) for row in x])
    with torch.no_grad():
        total = torch.logsumexp(model.log_prob(x[canonical]), dim=0)
    assert abs(float(total)) < 1e-10
    # padding after the end is not scored: changing it leaves log p unchanged
    a = torch.tensor([[0, 2, 2, 2]])
    b = torch.tensor([[0, 2, 1, 0]])
    assert torch.allclose(model.log_prob(a), model.log_prob(b))


@pytest.mark.parametrize("train_mode", [False, True])
def test_causal_theta_d_ignores_inputs_at_and_after_d(train_mode: bool) -> None:
    spec = DataSpec((6,), DataKind.DISCRETE, num_levels=5)
    model = _model(spec, dropout=0.3)
    model.train(train_mode)
    x = torch.randint(0, 5, (3, 6), generator=torch.Generator().manual_seed(1))
    for d in range(6):
        y = x.clone()
        y[:, d:] = (y[:, d:] + 1) % 5
        torch.manual_seed(7)  # the same dropout masks in train mode
        a = model.params(x)
        torch.manual_seed(7)
        b = model.params(y)
        assert torch.allclose(a[:, : d + 1], b[:, : d + 1], atol=1e-12)  # θ_1..θ_{d+1} see x_<=d
        if d + 1 < 6:
            assert not torch.allclose(a[:, d + 1 :], b[:, d + 1 :])


def test_cache_gives_the_same_outputs_as_a_full_pass() -> None:
    spec = DataSpec((7,), DataKind.DISCRETE, num_levels=4)
    model = _model(spec).eval()
    x = torch.randint(0, 4, (2, 7), generator=torch.Generator().manual_seed(2))
    full = model.params(x)
    cache = model.new_cache(2)
    # prefill with the start token and two tokens, then one token at a time
    steps = [model._run(model._embed(x[:, :2], with_start=True, offset=0), cache)]
    cache.advance(3)
    for t in range(2, 6):
        steps.append(model._run(model._embed(x[:, t : t + 1], with_start=False, offset=t + 1), cache))
        cache.advance(1)
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-12)


def test_cache_attention_is_causal_within_a_prefill() -> None:
    torch.manual_seed(0)
    attn = CausalSelfAttention(8, 2).double().eval()
    h = torch.randn(1, 5, 8, dtype=torch.float64)
    cache = KVCache(1, 1, 2, 5, 4, dtype=torch.float64)
    out = attn(h[:, :2], cache)
    cache.advance(2)
    out = torch.cat([out, attn(h[:, 2:], cache)], dim=1)
    assert torch.allclose(out, attn(h), atol=1e-12)
    with pytest.raises(ConfigError):
        cache.advance(3)
        attn(h[:, :1], cache)


@pytest.mark.parametrize("steps", [6, 17])  # within, and beyond, the 6 trained positions
def test_cached_sampling_equals_uncached_sampling(steps: int) -> None:
    spec = DataSpec((6,), DataKind.TOKENS, num_levels=5)
    model = _model(spec).eval()
    prefix = torch.tensor([[1, 2], [3, 3]])
    runs = []
    for use_cache in (True, False):
        g = torch.Generator().manual_seed(3)
        runs.append(model.generate(prefix, steps, generator=g, use_cache=use_cache))
    assert runs[0].shape == (2, 2 + steps)
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(runs[0][:, :2], prefix)


def test_sample_shape_dtype_and_reproducibility_on_images() -> None:
    spec = DataSpec((1, 3, 3), DataKind.BINARY)
    model = _model(spec).eval()
    a = model.sample(4, generator=torch.Generator().manual_seed(0))
    b = model.sample(4, generator=torch.Generator().manual_seed(0))
    assert a.shape == (4, 1, 3, 3) and a.dtype == torch.long and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0, 1}


def test_samples_follow_the_model_pmf() -> None:
    spec = DataSpec((2,), DataKind.DISCRETE, num_levels=3)
    model = _model(spec).eval()
    x = _all(spec)
    p = model.log_prob(x).exp()
    s = model.sample(20000, generator=torch.Generator().manual_seed(0))
    freq = torch.stack([(s == row).all(1).double().mean() for row in x])
    assert torch.allclose(freq, p, atol=0.015)


def test_temperature_to_zero_equals_greedy() -> None:
    spec = DataSpec((8,), DataKind.TOKENS, num_levels=6)
    model = _model(spec).eval()
    greedy = model.sample(3, temperature=0.0)
    cold = model.sample(3, temperature=1e-6, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, cold)
    assert torch.equal(greedy[0], greedy[1])  # greedy decoding is deterministic


def test_end_token_pads_samples() -> None:
    spec = DataSpec((6,), DataKind.TOKENS, num_levels=3, end_token=2)
    model = _model(spec).eval()
    with torch.no_grad():
        model.to_params.bias[2] = 3.0  # make the end likely
    s = model.sample(50, generator=torch.Generator().manual_seed(0))
    lengths = spec.lengths(s)
    assert (lengths < 6).any()
    for row, n in zip(s, lengths):
        assert bool((row[n - 1 :] == 2).all()) or int(n) == 6


def test_bernoulli_rejects_top_k_and_gpt_needs_tokens() -> None:
    model = _model(DataSpec((1, 2, 2), DataKind.BINARY)).eval()
    with pytest.raises(ConfigError):
        model.sample(1, top_k=1)
    with pytest.raises(ConfigError):
        build_model("gpt", DataSpec((4,), DataKind.DISCRETE, num_levels=3))
    with pytest.raises(ConfigError):
        build_model("transformer", DataSpec((4,), DataKind.DISCRETE, num_levels=3), num_heads=3)
    with pytest.raises(ConfigError):
        Sampling(top_p=0.0)


def test_gpt_ties_embeddings_and_learns_a_repeating_text() -> None:
    spec = DataSpec((12,), DataKind.TOKENS, num_levels=4)
    torch.manual_seed(0)
    model = build_model("gpt", spec, TINY | {"dropout": 0.0})
    assert isinstance(model, GPT)
    assert model.to_params.weight is model.token_embedding.weight
    x = torch.tensor([[0, 1, 2, 3] * 3, [1, 2, 3, 0] * 3])
    assert loss_drop(model, x, steps=60, lr=1e-2) > 8.0
    model.eval()
    out = model.generate(torch.tensor([[0, 1, 2]]), 9, sampling=Sampling(temperature=0.0))
    assert out[0].tolist() == [0, 1, 2, 3] * 3


def test_evaluator_reports_tokens_perplexity_and_bits_per_char() -> None:
    import math

    from dgm.data.dataset import Split
    from dgm.eval.likelihood import evaluate, per_example_nll

    spec = DataSpec((5,), DataKind.TOKENS, num_levels=4, end_token=3)
    model = _model(spec).eval()
    x = torch.tensor([[0, 1, 3, 3, 3], [2, 2, 2, 2, 3], [1, 3, 3, 3, 3]])
    split = Split(x, characters=torch.tensor([2, 4, 1]))
    ev = evaluate(model, split)
    nll = per_example_nll(model, split)
    tokens = 3 + 5 + 2
    assert ev.kind == "exact"
    assert math.isclose(ev.perplexity, math.exp(float(nll.sum()) / tokens), rel_tol=1e-9)
    assert math.isclose(ev.bpd, float(nll.sum()) / tokens / math.log(2), rel_tol=1e-9)
    assert math.isclose(ev.bits_per_char, float(nll.sum()) / 7 / math.log(2), rel_tol=1e-9)
    assert "bits/char" in ev.line() and "perplexity" in ev.line()
