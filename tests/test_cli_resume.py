"""``dgm train --resume`` from the command line: the default run is found, a command line that
names another model or dataset is refused, and a resume that would train nothing says so."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from dgm.cli import main

QUIET = ["--set", "train.progress=false"]


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _epochs_done(run: Path) -> int:
    return json.loads((run / "run.json").read_text())["epochs_completed"]


@pytest.fixture
def default_run(tmp_path, monkeypatch):
    """One epoch of the independent model in the default run directory."""
    monkeypatch.chdir(tmp_path)
    assert main(["train", "independent", "--epochs", "1", *QUIET]) == 0
    return Path("runs") / "independent-digits"


def test_resume_without_out_finds_the_default_run(default_run, capsys):
    rc, out, _ = _run(capsys, "train", "independent", "--resume", "--epochs", "2")
    assert rc == 0 and "runs/independent-digits" in out and _epochs_done(default_run) == 2


def test_resume_without_out_and_no_default_run(default_run, capsys):
    rc, _, err = _run(capsys, "train", "independent", "--data", "moons", "--resume")
    assert rc == 2 and "nothing to resume: no run in runs/independent-moons" in err
    assert "--out" in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "vae", "--resume", "--out", "runs/independent-digits"],
         "holds a run of independent on digits, not of vae"),
        (["train", "independent", "--resume", "--data", "moons", "--out",
          "runs/independent-digits", "--epochs", "3"],
         "was trained on digits, not moons"),
        (["train", "independent", "--resume", "--config", "independent_digits"],
         "leave out --config"),
        (["train", "independent", "--resume", "--epochs", "1"],
         "has already trained 1 epoch; --epochs is the total, so --epochs 1 trains none"),
        (["train", "independent", "--resume"], "has finished all 1 of its epochs"),
        (["train", "independent", "--resume", "--epochs", "3", "--set", "model.pseudocount=2"],
         "only train.* settings may change"),
    ],
)
def test_a_resume_that_does_not_match_the_run_is_refused(default_run, argv, message, capsys):
    before = (default_run / "checkpoints" / "last.safetensors").read_bytes()
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err
    assert _epochs_done(default_run) == 1
    assert (default_run / "checkpoints" / "last.safetensors").read_bytes() == before


def test_resume_checks_the_data_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    np.save("a.npy", rng.integers(0, 4, (40, 6)))
    np.save("b.npy", rng.integers(0, 4, (40, 6)))
    assert main(["train", "independent", "--data", "a.npy", "--epochs", "1", *QUIET]) == 0
    rc, _, err = _run(capsys, "train", "independent", "--data", "b.npy", "--resume",
                      "--epochs", "2")
    assert rc == 2 and "was trained on a.npy, not b.npy" in err
    rc, _, _ = _run(capsys, "train", "independent", "--data", "./a.npy", "--resume",
                    "--epochs", "2")
    assert rc == 0 and _epochs_done(Path("runs") / "independent-array") == 2


def test_a_run_that_stopped_early_is_not_resumed_silently():
    from dgm.cli import _check_epochs_left
    from dgm.core.errors import ConfigError

    run = SimpleNamespace(path=Path("r"), info={"epochs_completed": 30, "stopped_early": True})
    with pytest.raises(ConfigError, match="stopped early after 30 epochs"):
        _check_epochs_left(run, 100, 100)
    run.info["stopped_early"] = False
    _check_epochs_left(run, 31, None)  # epochs left: no error
