"""Sampling strategies: temperature, greedy, top-k, top-p."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dgm.core.sampling import Sampling, draw_token, truncate_logits


def test_top_k_never_leaves_the_top_k() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 20, generator=g)
    top = torch.topk(logits, 3, dim=-1).indices
    for _ in range(20):
        tokens = draw_token(logits, Sampling(temperature=2.0, top_k=3), generator=g)
        assert bool((top == tokens.unsqueeze(1)).any(1).all())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.05, 1.0))
def test_top_p_keeps_the_smallest_set_with_mass_p(seed: int, p: float) -> None:
    logits = torch.randn(1, 12, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    kept = torch.isfinite(truncate_logits(logits, top_p=p))[0]
    probs = torch.softmax(logits, -1)[0]
    assert float(probs[kept].sum()) >= p - 1e-12
    # minimal: dropping the least probable kept token would fall short of p
    assert float(probs[kept].sum() - probs[kept].min()) < p + 1e-12
    # and it is the most probable ones that are kept
    if (~kept).any():
        assert float(probs[kept].min()) >= float(probs[~kept].max())


def test_temperature_zero_is_argmax_and_plain_sampling_matches_softmax() -> None:
    logits = torch.tensor([[0.0, 1.0, 0.5]])
    assert int(draw_token(logits, Sampling(temperature=0.0))) == 1
    g = torch.Generator().manual_seed(0)
    draws = draw_token(logits.expand(40000, 3), Sampling(), generator=g)
    freq = torch.bincount(draws, minlength=3).double() / 40000
    assert torch.allclose(freq, torch.softmax(logits[0].double(), -1), atol=0.01)
    assert Sampling().is_plain and not Sampling(top_k=2).is_plain
