"""The ``error`` monitor of train.monitor: the classification error of any model with a
``classify`` method on the labelled validation split, and clear refusals otherwise. The
``mmd`` monitor: a family-agnostic sample-quality score for continuous low-dimensional data
(the 2-D toys have no feature net for ``fd`` / ``kid``)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from dgm.config import load_config
from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.data import load
from dgm.data.dataset import Split
from dgm.eval.quality import mmd
from dgm.runs import INFO
from dgm.train.trainer import train
from dgm.train.validation import resolve_monitor

DIGITS = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17, num_classes=10)
SMALL = {"network": "mlp", "hidden": 16, "num_hidden": 1, "langevin_steps": 2,
         "buffer_size": 20, "sample_steps": 2}


def test_error_monitor_is_the_fraction_of_misclassified_validation_examples() -> None:
    torch.manual_seed(0)
    model = build_model("jem", DIGITS, **SMALL)
    x = torch.randint(17, (53, 1, 8, 8))
    predicted = model.classify(x)
    y = predicted.clone()
    y[:7] = (y[:7] + 1) % 10  # exactly 7 of 53 wrong
    monitor = resolve_monitor(model, "error", None, batch_size=10)  # batches of 10, 3 left
    assert monitor.name == "error" and "classification error" in monitor.label
    model.train()
    assert monitor.score(model, Split(x, y)) == pytest.approx(7 / 53)
    assert model.training  # the mode is restored
    with pytest.raises(ConfigError, match="labelled"):
        monitor.score(model, Split(x, None))


def test_error_monitor_refuses_a_model_without_a_classifier() -> None:
    model = build_model("ebm", DIGITS, **SMALL)
    with pytest.raises(ConfigError, match="classify"):
        resolve_monitor(model, "error", None)


# --- mmd ---------------------------------------------------------------------------------------


class _Draws(GenerativeModel):
    """Samples rows of a fixed pool (plus a shift) in a seeded order: a sampler of no model
    family, with only ``sample``."""

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, pool: Tensor, shift: float = 0.0) -> None:
        super().__init__(spec)
        self.register_buffer("pool", pool.float() + shift)
        self.dummy = nn.Parameter(torch.zeros(()))

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.dummy.expand(x.shape[0])

    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        return self.pool[torch.randint(len(self.pool), (n,), generator=generator)]


@pytest.fixture(scope="module")
def toy():
    return load("eight_gaussians", n_train=2000, n_val=400, n_test=400)


def test_mmd_monitor_ranks_a_sampler_by_its_distance_to_the_validation_split(toy) -> None:
    good, shifted = _Draws(toy.spec, toy.train.x), _Draws(toy.spec, toy.train.x, shift=1.0)
    monitor = resolve_monitor(good, "mmd", toy, samples=500, seed=0)
    assert monitor.name == "mmd" and "MMD" in monitor.label
    good.train()
    a = monitor.score(good, toy.val)
    assert good.training  # the mode is restored
    assert a == monitor.score(good, toy.val)  # seeded: the same score on every call
    # the score is dgm.eval.quality.mmd of the validation split and the seeded samples
    g = torch.Generator().manual_seed(0)
    expected = mmd(toy.val.x.double(), good.sample(500, generator=g).double()).value
    assert a == pytest.approx(expected, abs=1e-12)
    assert abs(a) < 0.01 < monitor.score(shifted, toy.val)


def test_mmd_monitor_scores_a_diverged_sampler_worst(toy) -> None:
    bad = _Draws(toy.spec, torch.full_like(toy.train.x, float("nan")))
    assert resolve_monitor(bad, "mmd", toy, samples=50).score(bad, toy.val) == float("inf")


def test_mmd_monitor_refuses_discrete_data() -> None:
    model = build_model("gan", DIGITS, hidden=8, num_hidden=1)
    with pytest.raises(ConfigError, match="mmd"):
        resolve_monitor(model, "mmd", None)


def test_trainer_keeps_the_best_weights_by_mmd(tmp_path) -> None:
    cfg = load_config("configs/gan_eight_gaussians.yaml", [
        "train.progress=false", "train.threads=1", "train.epochs=3", "train.monitor_samples=300",
        "data.options.n_train=512"])
    assert cfg.train.monitor == "mmd"
    train(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / INFO).read_text())
    records = [json.loads(line)
               for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if "val" in r]
    assert [r["val_method"] for r in vals] == ["mmd"] * 3
    assert info["best_val"] == pytest.approx(min(r["val"] for r in vals))
