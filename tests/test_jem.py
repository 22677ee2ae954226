"""JEM: the classifier's logits as energies (marginal = logsumexp, p(y | x) = softmax), its
loss terms, its samples, and a short run through the real trainer."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from dgm.config import load_config
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.train.trainer import train

DIGITS = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17, num_classes=10)
SMALL = {"network": "mlp", "hidden": 32, "num_hidden": 1, "langevin_steps": 5,
         "buffer_size": 200, "sample_steps": 5}


def _model(**options):
    return build_model("jem", DIGITS, **{**SMALL, **options})


def test_marginal_is_logsumexp_and_conditional_is_softmax_of_the_logits() -> None:
    model = _model()
    x = torch.randint(17, (12, 1, 8, 8))
    with torch.no_grad():
        logits = model.logits(model.to_model_space(x))
        assert torch.allclose(model.log_prob(x), torch.logsumexp(logits, -1), atol=1e-6)
        assert torch.allclose(model.class_log_probs(x), torch.log_softmax(logits, -1),
                              atol=1e-6)
        assert torch.equal(model.classify(x), logits.argmax(-1))
        # p(y | x) = exp(-E(x, y)) / exp(-E(x)) (Book eqs. 7.14-7.16)
        u = model.to_model_space(x)
        y = torch.arange(12) % 10
        ratio = torch.exp(model.energy(u) - model.class_energy(u, y))
        assert torch.allclose(ratio, model.class_log_probs(x).exp()[torch.arange(12), y],
                              atol=1e-5)
        assert model.error_rate(x, logits.argmax(-1)) == 0.0


def test_loss_terms_are_cross_entropy_plus_the_weighted_contrastive_terms() -> None:
    x, y = torch.randint(17, (8, 1, 8, 8)), torch.randint(10, (8,))
    model = _model(dequant_std=0.0, gen_weight=0.5)
    torch.manual_seed(0)
    terms = model.loss_terms(x, y)
    logits = model.logits(model.to_model_space(x))
    assert set(terms) == {"classification", "contrastive", "energy_reg", "energy_blowup"}
    assert torch.allclose(terms["classification"], F.cross_entropy(logits, y, reduction="none"))
    index, negative = model._pending
    e_pos, e_neg = -torch.logsumexp(logits, -1), model.energy(negative)
    assert torch.allclose(terms["contrastive"], 0.5 * (e_pos - e_neg), atol=1e-5)
    only_classifier = _model(gen_weight=0.0).loss_terms(x, y)
    assert set(only_classifier) == {"classification"}
    with pytest.raises(DataError, match="labels"):
        model.loss(x)


def test_samples_are_levels_and_conditional_samples_follow_the_labels_shape() -> None:
    model = _model()
    gen = torch.Generator().manual_seed(0)
    x = model.sample(6, generator=gen)
    xc = model.sample(6, y=torch.arange(6), generator=gen)
    for s in (x, xc):
        assert s.shape == (6, 1, 8, 8) and s.dtype == torch.long
        assert 0 <= int(s.min()) and int(s.max()) <= 16
    with pytest.raises(DataError):
        model.sample(3, y=torch.tensor([0, 1, 10]))


def test_config_and_data_are_checked() -> None:
    with pytest.raises(ConfigError, match="gen_weight"):
        _model(gen_weight=-1.0)
    with pytest.raises(ConfigError, match="labelled"):
        build_model("jem", DataSpec((2,), DataKind.CONTINUOUS), **SMALL)


def test_a_short_run_through_the_trainer_learns_to_classify_and_keeps_the_best_classifier(
        tmp_path) -> None:
    opts = [f"model.{k}={v}" for k, v in SMALL.items()]
    cfg = load_config(overrides=[
        "model.name=jem", "data.name=digits", "train.epochs=4", "train.batch_size=50",
        "train.progress=false", "train.threads=1", "train.monitor=error",
        "optim.lr=0.003", *opts,
    ])
    train(cfg, tmp_path / "r")
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "finished" and info["rollbacks"] == 0
    assert info["likelihood"] == "unnormalized"
    from dgm.data import load
    from dgm.runs import open_run

    data = load("digits")
    model = open_run(tmp_path / "r").load_model("cpu")
    x, y = data.val.batch(slice(None), data.spec)
    assert model.error_rate(x, y) < 0.5  # chance is 0.9
    # the monitor is the validation error, and the kept weights are those of its best epoch
    assert info["val_method"] == "error" and "classification error" in info["val_label"]
    assert model.error_rate(x, y) == pytest.approx(info["best_val"], abs=1e-12)
