"""Hybrid models (Book ch. 6): which gradients flow where, the objective's limits, and the
classification scores."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from dgm.config import load_config
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data import load
from dgm.eval.classification import auroc, error_rate, expected_calibration_error
from dgm.train.trainer import train

SPEC = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5, num_classes=3)
IDF = {"name": "idf", "hidden": 16, "num_flows": 2}


def _batch(n: int = 12, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 5, (n, 1, 4, 4), generator=gen),
            torch.randint(0, 3, (n,), generator=gen))


def _grads(model, loss, params):
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _nonzero(grads) -> bool:
    return any(float(g.abs().sum()) > 0 for g in grads)


@pytest.mark.parametrize("density", [IDF, {"name": "realnvp", "hidden": 16, "num_flows": 2},
                                     {"name": "vae", "hidden": 16, "latent_dim": 4}])
def test_the_density_term_reaches_the_classifier_only_through_a_shared_trunk(density) -> None:
    x, y = _batch()
    torch.manual_seed(0)
    naive = build_model("hybrid", SPEC, density=density, trunk="naive")
    shared = build_model("hybrid", SPEC, density=density, trunk="shared")
    for model, sharing in ((naive, False), (shared, True)):
        terms = model.loss_terms(x, y)
        classifier = list(model.classifier.parameters())
        trunk = [p for p in model.density.parameters() if p.requires_grad]
        # Eq. 6.3-6.4: the density term never moves the classifier head
        assert not _nonzero(_grads(model, terms["density_nll"].sum(), classifier))
        # the class term moves the density's parameters only when they are shared
        assert _nonzero(_grads(model, terms["class_nll"].sum(), trunk)) == sharing


def test_the_objective_is_the_classifier_at_lambda_0_and_the_joint_at_additive_1() -> None:
    x, y = _batch()
    torch.manual_seed(0)
    for lam, weighting in ((0.0, "additive"), (1.0, "additive"), (0.3, "convex"),
                           (0.3, "additive")):
        model = build_model("hybrid", SPEC, density=IDF, lam=lam, weighting=weighting)
        model.eval()
        cross = F.cross_entropy(model.class_logits(x), y, reduction="none")
        nll = -model.log_prob(x)
        if lam == 0:
            assert torch.allclose(model.loss(x, y), cross)
        elif weighting == "additive" and lam == 1:
            assert torch.allclose(model.loss(x, y), -model.log_joint(x, y), atol=1e-5)
        elif weighting == "convex":
            assert torch.allclose(model.loss(x, y), 0.7 * cross + 0.3 * nll, atol=1e-5)
        else:
            assert torch.allclose(model.loss(x, y), cross + 0.3 * nll, atol=1e-5)


def test_unlabelled_examples_give_the_classifier_no_gradient() -> None:
    x, _ = _batch()
    model = build_model("hybrid", SPEC, density=IDF, trunk="naive")
    unlabelled = torch.full((x.shape[0],), -1)
    loss = model.loss(x, unlabelled).sum()
    assert not _nonzero(_grads(model, loss, list(model.classifier.parameters())))
    density = [p for p in model.density.parameters() if p.requires_grad]
    assert _nonzero(_grads(model, model.loss(x, unlabelled).sum(), density))
    # a mixed batch: only the labelled rows carry a class term
    y = torch.tensor([0, -1] * 6)
    terms = model.loss_terms(x, y)
    assert torch.all(terms["class_nll"][1::2] == 0) and torch.all(terms["class_nll"][::2] > 0)


def test_bad_configurations_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="labelled data"):
        build_model("hybrid", DataSpec((4,), DataKind.DISCRETE, num_levels=3), density=IDF)
    with pytest.raises(ConfigError, match="no representation"):
        build_model("hybrid", SPEC, density={"name": "arm", "hidden": 8}, trunk="shared")
    with pytest.raises(ConfigError, match="in \\[0, 1\\] for convex"):
        build_model("hybrid", SPEC, density=IDF, weighting="convex", lam=2.0)
    with pytest.raises(ConfigError, match="not trained by gradients"):
        build_model("hybrid", SPEC, density={"name": "categorical_mixture"}, trunk="naive")


def test_the_labelled_option_hides_all_but_n_training_labels() -> None:
    data = load("digits", labelled=50)
    assert int((data.train.y >= 0).sum()) == 50 and int((data.train.y == -1).sum()) == 950
    assert bool((data.test.y >= 0).all())
    with pytest.raises(ConfigError, match="no labels"):
        load("moons", labelled=5)


def test_a_hybrid_trains_semi_supervised_through_the_trainer(tmp_path) -> None:
    config = load_config(None, overrides=[
        "model.name=hybrid", "model.density.name=independent", "model.trunk=naive",
        "data.name=digits", "data.options.labelled=300", "train.epochs=3",
        "train.monitor=error", "train.progress=false", "optim.lr=3e-3"])
    result = train(config, tmp_path / "run")
    assert result.best_val < 0.5  # validation error well below chance (0.9)


def test_calibration_error_auroc_and_error_rate_against_brute_force() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.5]])
    y = torch.tensor([0, 0, 0, 1])
    assert error_rate(logits, y) == 0.25
    conf = torch.softmax(logits, -1).max(-1).values
    correct = torch.tensor([1.0, 0.0, 1.0, 1.0])
    # one bin: |mean accuracy - mean confidence|
    assert expected_calibration_error(logits, y, bins=1) == pytest.approx(
        float((correct.mean() - conf.mean()).abs()), abs=1e-6)
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(30, generator=gen) + 1, torch.randn(25, generator=gen)
    a[:3] = b[:3]  # some ties
    pairs = [(float(u > v) + 0.5 * float(u == v)) for u, v in itertools.product(a, b)]
    assert auroc(a, b) == pytest.approx(sum(pairs) / len(pairs), abs=1e-9)
    assert auroc(a + 100, b) == 1.0


def test_an_arm_can_be_made_a_naive_hybrid() -> None:
    model = build_model("hybrid", SPEC, density={"name": "arm", "hidden": 8, "num_layers": 2},
                        trunk="naive")
    x, y = _batch()
    loss = model.loss(x, y)
    assert loss.shape == (12,) and bool(torch.isfinite(loss).all())
    assert model.likelihood_on(SPEC.kind).value == "exact"


def test_eval_and_the_report_show_error_calibration_and_ood_scores(tmp_path, capsys) -> None:
    from dgm.cli import main
    from dgm.eval.classification import evaluate_classifier, ood_sets

    run = tmp_path / "run"
    assert main(["train", "hybrid", "--data", "digits", "--epochs", "2", "--out", str(run),
                 "--set", "train.progress=false", "model.density.name=independent",
                 "model.trunk=naive", "model.hidden=16"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
    out = capsys.readouterr().out
    assert "exact NLL" in out and "error" in out and "ECE" in out and "OOD AUROC" in out
    from dgm.runs import open_run

    assert open_run(run).info["val_method"] == "objective"  # a hybrid's default monitor
    model = open_run(run).load_model()
    data = load("digits")
    result = evaluate_classifier(model, data.test)
    assert set(result.auroc_softmax) == {"noise", "flipped"}
    # an independent model scores the noise far below the digits
    assert result.auroc_log_p["noise"] > 0.99
    x, _ = data.test.all(data.spec)
    assert ood_sets(x, data.spec)["flipped"].shape == x.shape
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert "<h2>Classification</h2>" in (tmp_path / "r.html").read_text()
