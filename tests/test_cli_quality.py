"""``dgm eval --metrics`` and ``dgm report`` score samples; a model without a normalized
likelihood is scored by its samples, never by a number called an NLL."""

from __future__ import annotations

import json

import pytest

import rule_models  # noqa: F401  (registers test_chain, an unnormalized model)
from dgm.cli import main


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "independent"
    assert main(["train", "independent", "--data", "digits", "--out", str(out),
                 "--set", "train.epochs=1", "train.progress=false"]) == 0
    return out


@pytest.fixture(scope="module")
def chain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "chain"
    assert main(["train", "test_chain", "--data", "moons", "--out", str(out), "--set",
                 "train.epochs=2", "train.progress=false", "optim.name=sgd", "optim.lr=0.1",
                 "data.options={n_train: 256, n_val: 128, n_test: 128}"]) == 0
    return out


def test_eval_metrics_prints_them_labelled(digits_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(digits_run), "--metrics", "fd,kid,pr", "--n", "200"]) == 0
    out = capsys.readouterr().out
    assert "FD" in out and "KID" in out and "precision" in out and "nats" not in out
    assert main(["eval", str(digits_run), "--metrics", "fd", "--n", "200", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["likelihood"] is None and record["quality"]["fd"] > 0
    assert record["quality"]["n_fake"] == 200 and record["quality"]["n_real"] == 447
    # Both when asked: the method and the metrics.
    assert main(["eval", str(digits_run), "--method", "exact", "--metrics", "pr", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["likelihood"]["kind"] == "exact" and record["quality"]["precision"] > 0


def test_eval_without_metrics_keeps_its_json(digits_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(digits_run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "exact"


def test_an_unknown_metric_is_one_error(digits_run, capsys):
    assert main(["eval", str(digits_run), "--metrics", "mmd"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "2-D toy" in err and err.count("\n") == 1


def test_a_model_without_likelihood_is_scored_by_its_samples(chain_run, capsys):
    capsys.readouterr()
    assert main(["eval", str(chain_run), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out)
    assert record["likelihood"] is None and record["quality"]["mmd"] is not None
    assert "no normalized likelihood" in captured.err
    assert main(["eval", str(chain_run), "--method", "exact"]) == 2
    assert "no normalized likelihood" in capsys.readouterr().err


def test_report_shows_quality_and_the_monitor(digits_run, chain_run, capsys):
    assert main(["report", str(digits_run)]) == 0
    page = (digits_run / "report.html").read_text()
    assert "Sample quality" in page and "Fréchet distance" in page and "exact NLL" in page
    assert "Early stopping and the best weights followed: exact NLL" in page
    assert main(["report", str(chain_run)]) == 0
    page = (chain_run / "report.html").read_text()
    assert "no normalized likelihood" in page and "MMD" in page
    assert "validation objective" in page
