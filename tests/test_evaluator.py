"""The evaluator: labels, bits per dimension, ELBO and IWAE arithmetic, reproducibility."""

import math

import pytest
import torch

import toy_models  # noqa: F401
from dgm import build_model
from dgm.core.errors import ConfigError
from dgm.eval.likelihood import _iwae_nll, bits_per_dim, evaluate


def test_bits_per_dim():
    assert bits_per_dim(64 * math.log(2), 64) == pytest.approx(1.0)


def test_exact_model_labels(digits):
    model = build_model("independent", digits.spec)
    model.initialize_from_data(digits.train.all(digits.spec)[0], torch.Generator())
    e = evaluate(model, digits.test)
    assert e.kind == "exact" and e.method == "exact" and e.k is None and e.n == 447
    assert e.bpd == pytest.approx(e.nll_nats / (64 * math.log(2)))
    assert 100 < e.nll_nats < 110  # the add-one per-pixel floor on this split is about 106.5
    with pytest.raises(ConfigError, match="exact likelihood"):
        evaluate(model, digits.test, method="iwae", k=10)


def test_elbo_and_iwae_against_the_known_answer(digits):
    model = build_model("test_bound", digits.spec, sigma=1.0)
    exact = float(-model.exact_log_prob(digits.test.x[:1])[0])
    elbo = evaluate(model, digits.test, method="elbo", k=20)
    assert elbo.kind == "upper_bound" and "ELBO" in elbo.label
    # σ²/2 above the NLL; the mean of 447 x 20 draws has a standard error of 1/94.5 nats.
    assert elbo.nll_nats == pytest.approx(exact + 0.5, abs=0.05)
    iw = [evaluate(model, digits.test, method="iwae", k=k).nll_nats for k in (1, 10, 100, 2000)]
    assert iw[0] == pytest.approx(exact + 0.5, abs=0.15)
    assert all(a > b for a, b in zip(iw, iw[1:]))  # tighter with k
    assert exact <= iw[-1] < exact + 0.01
    with pytest.raises(ConfigError, match="no exact likelihood"):
        evaluate(model, digits.test, method="exact")


def test_evaluation_is_reproducible(digits):
    model = build_model("test_bound", digits.spec, sigma=2.0)
    a = evaluate(model, digits.test, method="iwae", k=50, seed=3)
    b = evaluate(model, digits.test, method="iwae", k=50, seed=3)
    c = evaluate(model, digits.test, method="iwae", k=50, seed=4)
    assert a == b and a.nll_nats != c.nll_nats


def test_iwae_chunks_combine_exactly():
    torch.manual_seed(0)
    weights = torch.randn(37, 5, dtype=torch.float64) * 3

    class Replay:
        pos = 0

        def log_weights(self, x, k, *, y=None, generator=None):
            out = weights[self.pos : self.pos + k]
            self.pos += k
            return out

    direct = -(torch.logsumexp(weights, 0) - math.log(37))
    chunked = _iwae_nll(Replay(), torch.zeros(5, 1), None, 37, 8, None)
    assert torch.allclose(direct, chunked)


def test_unknown_method(digits):
    model = build_model("independent", digits.spec)
    with pytest.raises(ConfigError, match="unknown method"):
        evaluate(model, digits.test, method="magic")


def test_a_bound_that_is_not_importance_weighted_is_only_averaged(digits):
    model = build_model("test_vlb", digits.spec, sigma=1.0)
    exact = float(-model.exact_log_prob(digits.test.x[:1])[0])
    e = evaluate(model, digits.test)
    assert e.method == "bound" and e.kind == "upper_bound" and "test VLB" in e.label
    # More draws average the bound: its mean stays σ²/2 above the NLL (a log-mean-exp of the
    # draws would fall below it and bound nothing).
    many = evaluate(model, digits.test, method="bound", k=50)
    assert many.nll_nats == pytest.approx(exact + 0.5, abs=0.02)
    with pytest.raises(ConfigError, match="not built from importance weights"):
        evaluate(model, digits.test, method="iwae", k=10)
    with pytest.raises(ConfigError, match="importance"):
        evaluate(model, digits.test, method="elbo")


def test_an_estimate_carries_its_standard_error(digits):
    model = build_model("test_estimate", digits.spec, sigma=2.0)
    exact = float(-model.exact_log_prob(digits.test.x[:1])[0])
    e = evaluate(model, digits.test)
    assert e.method == "estimate" and e.kind == "estimate" and e.k is None
    # σ = 2 per example over 447 examples: the estimator's standard error is 2 / √447.
    assert e.estimator_stderr_nats == pytest.approx(2.0 / math.sqrt(447))
    assert abs(e.nll_nats - exact) < 4 * e.estimator_stderr_nats
    assert "estimator ±" in e.line()


def test_methods_are_a_registry():
    from dgm.eval.likelihood import EvalMethod, method_names, register_method

    assert method_names()[:4] == ["auto", "exact", "elbo", "iwae"]
    with pytest.raises(RuntimeError, match="twice"):
        register_method(EvalMethod("exact", "exact", lambda m: None, None, lambda m, k: ""))
