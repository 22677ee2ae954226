"""Missing data for every model with exact marginals: the evaluator's two numbers against
brute force, conditional samples of the mixtures, the CLI's inpainting and the report."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from dgm.cli import main
from dgm.core.capabilities import Marginalizable
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data.dataset import Split
from dgm.eval.missing import evaluate_missing, observed_mask

SPEC = DataSpec((1, 2, 2), DataKind.DISCRETE, num_levels=3)


def _states() -> torch.Tensor:
    return torch.tensor(list(itertools.product(range(3), repeat=4))).reshape(-1, 1, 2, 2)


def _models():
    torch.manual_seed(0)
    mixture = build_model("categorical_mixture", SPEC, num_components=3)
    independent = build_model("independent", SPEC)
    circuit = build_model("circuit", SPEC, structure="quad_graph", units=3, init_scale=1.0)
    with torch.no_grad():
        mixture.weight_logits.normal_()
        mixture.theta_logits.normal_(std=2.0)
        independent.logits.normal_()
        circuit.root_logits.normal_()
        circuit.mix_logits.normal_()
    return {"categorical_mixture": mixture, "independent": independent, "circuit": circuit}


@pytest.mark.parametrize("name", ["categorical_mixture", "independent", "circuit"])
def test_marginals_and_conditional_samples_equal_brute_force(name) -> None:
    model = _models()[name]
    assert isinstance(model, Marginalizable)
    states = _states()
    with torch.no_grad():
        p = model.log_prob(states).double().exp()
        observed = observed_mask(SPEC, "lower_half")[0]  # the top row observed
        log_m = model.log_marginal(states, observed).double()
    top = states.reshape(81, 4)[:, :2]
    key = top[:, 0] * 3 + top[:, 1]
    brute = torch.zeros(9, dtype=torch.float64).index_add(0, key, p)
    assert torch.allclose(log_m.exp(), brute[key], atol=1e-6)
    n = 30000
    x = states[40:41].expand(n, -1, -1, -1)  # top row (1, 1)
    gen = torch.Generator().manual_seed(0)
    filled = model.sample_conditional(x, observed, generator=gen).reshape(n, 4)
    assert torch.all(filled[:, :2] == x.reshape(n, 4)[:, :2])
    given = key == int(key[40])
    target = p[given] / p[given].sum()
    counts = torch.bincount(filled[:, 2] * 3 + filled[:, 3], minlength=9).double()
    assert float(((counts - n * target) ** 2 / (n * target)).sum()) < 8 + 4 * math.sqrt(16)


def test_the_evaluator_scores_observed_and_missing_parts_that_add_up_to_the_nll() -> None:
    model = _models()["circuit"]
    x = _states()[::3]
    split = Split(x)
    result = evaluate_missing(model, split, "lower_half")
    with torch.no_grad():
        nll = -model.log_prob(x).double()
    assert result.observed_nats + result.missing_nats == pytest.approx(float(nll.mean()), abs=1e-4)
    assert result.kind == "exact" and result.n == len(x) and result.observed_dims == 2
    assert result.missing_bpd == pytest.approx(result.missing_nats / (2 * math.log(2)))
    random = evaluate_missing(model, split, "random", fraction=0.25)
    assert 0 < random.observed_dims < 4
    with pytest.raises(ConfigError, match="no exact marginals"):
        evaluate_missing(build_model("made", SPEC, hidden=8), split, "lower_half")


def test_masks_hide_what_they_name_and_bad_masks_are_clear_errors() -> None:
    spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=3)
    lower = observed_mask(spec, "lower_half", 2)
    assert lower.shape == (2, 1, 4, 4) and lower[:, :, :2].all() and not lower[:, :, 2:].any()
    assert not observed_mask(spec, "left_half")[..., :2].any()
    with pytest.raises(ConfigError, match="unknown mask"):
        observed_mask(spec, "middle")
    with pytest.raises(DataError, match="observed mask must have shape"):
        spec.flat_mask(torch.ones(3, 3, dtype=torch.bool), 2)


def test_the_cli_scores_missing_pixels_and_inpaints_from_files(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "categorical_mixture", "--data", "digits", "--epochs", "2", "--out",
                 str(run), "--set", "train.progress=false"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--missing", "lower_half"]) == 0
    out = capsys.readouterr().out
    assert "lower_half missing (exact" in out and "-log p(x_missing | x_observed)" in out
    from dgm.data import load

    x = load("digits").test.x[:3].numpy().astype(np.int64)
    mask = np.ones((1, 8, 8), dtype=bool)
    mask[:, 4:] = False
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    assert main(["sample", str(run), "--observed", str(tmp_path / "x.npy"), "--mask",
                 str(tmp_path / "mask.npy"), "-n", "2", "--out", str(tmp_path / "f.npy")]) == 0
    filled = np.load(tmp_path / "f.npy")
    assert filled.shape == (6, 1, 8, 8)
    assert np.array_equal(filled[:, :, :4], np.repeat(x, 2, 0)[:, :, :4])
    assert main(["sample", str(run), "--observed", str(tmp_path / "x.npy"), "--out",
                 str(tmp_path / "g.npy")]) == 2
    assert "needs both --observed" in capsys.readouterr().err
    assert main(["sample", str(run), "--mpe", "--out", str(tmp_path / "p.npy")]) == 2
    assert "no most-probable-explanation" in capsys.readouterr().err
    gpt_like = tmp_path / "made"
    assert main(["train", "made", "--data", "digits", "--epochs", "1", "--out", str(gpt_like),
                 "--set", "train.progress=false"]) == 0
    assert main(["sample", str(gpt_like), "--observed", str(tmp_path / "x.npy"), "--mask",
                 str(tmp_path / "mask.npy"), "--out", str(tmp_path / "h.npy")]) == 2
    assert "no exact conditionals" in capsys.readouterr().err


def test_the_report_shows_missing_data_and_inpainting_and_the_cli_completes(tmp_path,
                                                                             capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "circuit", "--data", "digits", "--epochs", "1", "--out", str(run),
                 "--set", "train.progress=false", "--set", "model.units=4"]) == 0
    from dgm.data import load

    x = load("digits").test.x[:2].numpy().astype(np.int64)
    mask = np.zeros((1, 8, 8), dtype=bool)
    mask[:, :, :4] = True  # the left half observed
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mask.npy", mask)
    capsys.readouterr()
    assert main(["sample", str(run), "--mpe", "--observed", str(tmp_path / "x.npy"), "--mask",
                 str(tmp_path / "mask.npy"), "--out", str(tmp_path / "m.npy")]) == 0
    assert "max-product" in capsys.readouterr().out
    completed = np.load(tmp_path / "m.npy")
    assert completed.shape == (2, 1, 8, 8) and np.array_equal(completed[..., :4], x[..., :4])
    assert main(["eval", str(run), "--missing", str(tmp_path / "mask.npy")]) == 0
    assert "the mask's pixels missing (exact" in capsys.readouterr().out
    assert main(["sample", str(tmp_path / "nowhere"), "--mpe", "--out",
                 str(tmp_path / "z.npy")]) == 2
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Missing data</h2>" in page and "lower_half missing" in page
    assert "<h3>Inpainting</h3>" in page and 'alt="inpainting"' in page


def test_a_query_mask_scores_a_conditional_with_the_rest_summed_out() -> None:
    model = _models()["circuit"]
    states = _states()
    observed = torch.tensor([True, False, False, False]).reshape(1, 2, 2)
    query = torch.tensor([False, False, True, False]).reshape(1, 2, 2)
    result = evaluate_missing(model, Split(states), observed, query=query)
    with torch.no_grad():
        p = model.log_prob(states).double().exp()
    flat = states.reshape(81, 4)
    pair = torch.zeros(9, dtype=torch.float64).index_add(0, flat[:, 0] * 3 + flat[:, 2], p)
    first = torch.zeros(3, dtype=torch.float64).index_add(0, flat[:, 0], p)
    brute = -(pair[flat[:, 0] * 3 + flat[:, 2]] / first[flat[:, 0]]).log().mean()
    assert result.missing_nats == pytest.approx(float(brute), abs=1e-4)
    with pytest.raises(ConfigError, match="overlap"):
        evaluate_missing(model, Split(states), observed, query=observed)
