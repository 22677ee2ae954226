"""What a new user reads first: ``dgm --help``, ``--version``, ``train --help``, ``dgm list``."""

from __future__ import annotations

import json
import re

import pytest

import dgm
from dgm.cli import main
from dgm.core.registry import model_names
from dgm.data.dataset import dataset_names


def _help(capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_help_is_plain_text(capsys):
    out = _help(capsys, "--help")
    assert "``" not in out and ":class:" not in out
    assert "deep generative modeling" in out and "--version" in out


def test_version(capsys):
    assert _help(capsys, "--version").strip() == f"dgm {dgm.__version__}"


def test_train_help_lists_models_and_datasets(capsys):
    out = _help(capsys, "train", "--help")
    listed = set(re.findall(r"[a-z0-9_]+", out))
    assert set(model_names()) <= listed and set(dataset_names()) <= listed


def test_list_aligns_and_wraps(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "90")
    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 90
    models = lines[1 : lines.index("datasets:")]
    names = [line.split()[0] for line in models if line.startswith("  ") and line[2] != " "]
    assert names == model_names()
    column = 2 + max(len(n) for n in names) + 2  # every summary starts in one column
    for line in models:
        assert line[:column].strip() in ("", line.split()[0]) and line[column] != " "


def test_list_summaries_are_whole_sentences(capsys):
    assert main(["list", "--json"]) == 0
    for m in json.loads(capsys.readouterr().out)["models"]:
        summary = m["summary"]
        assert summary.endswith(".") and "``" not in summary, summary
        assert not summary.endswith(("al.", "Eq.")), summary  # not cut at an abbreviation
        assert summary.count("(") == summary.count(")"), summary


def test_first_sentence_skips_abbreviations_and_parentheses():
    from dgm.core.registry import first_sentence

    doc = "MADE: masked (Germain et al.\n    2015; Eq. 3). One pass.\n\nMore."
    assert first_sentence(doc) == "MADE: masked (Germain et al. 2015; Eq. 3)."
    doc = "Uses :class:`~dgm.core.Foo` with ``x`` tied,\n\n    h = W x,\n\nso that."
    assert first_sentence(doc) == "Uses Foo with x tied."  # runs on into a formula
