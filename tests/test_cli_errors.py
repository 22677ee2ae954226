"""Errors a new user can cause on the command line: each is one ``error:`` line, exit status 2,
no traceback and nothing written; a bug still shows its traceback."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest

from dgm import cli
from dgm.cli import main


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_error_line(err: str) -> bool:
    return err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli_errors") / "run"
    assert main(["train", "independent", "--epochs", "1", "--out", str(run),
                 "--set", "train.progress=false"]) == 0
    return run


# -- config files ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, message",
    [
        ("model: {name: arm\ntrain: [\n", "is not valid YAML: line"),
        ("- model\n- train\n", "not a list"),
        ("just a sentence\n", "not the string 'just a sentence'"),
        ("model: [arm]\n", "section 'model' must be a mapping"),
        ("train: 5\n", "section 'train' must be a mapping"),
    ],
)
def test_a_bad_config_file_is_one_line(text, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    rc, _, err = _run(capsys, "train", "vae", "--config", "bad.yaml")
    assert rc == 2 and _one_error_line(err) and message in err and "bad.yaml" in err
    assert not (tmp_path / "runs").exists()


def test_a_binary_config_file_is_one_line(capsys, tmp_path):
    (tmp_path / "bin.yaml").write_bytes(b"\x00\xff\xfe\x80")
    rc, _, err = _run(capsys, "train", "vae", "--config", tmp_path / "bin.yaml")
    assert rc == 2 and _one_error_line(err) and "cannot be read" in err


def test_the_config_file_is_read_once_through_the_checked_reader(capsys, tmp_path, monkeypatch):
    import dgm.config

    reads = []
    checked = dgm.config.read_config_file
    monkeypatch.setattr(dgm.config, "read_config_file", lambda p: reads.append(p) or checked(p))
    (tmp_path / "c.yaml").write_text("model: {name: independent}\ndata: {name: digits}\n")
    rc, _, err = _run(capsys, "train", "independent", "--config", tmp_path / "c.yaml",
                      "--set", "train.epochs=0")
    assert rc == 2 and "train.epochs must be >= 1" in err and len(reads) == 1


# -- argument ranges -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["eval", "RUN", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
        (["eval", "RUN", "--k", "0"], "--k: must be at least 1, got 0"),
        (["eval", "RUN", "--batch-size", "many"], "expected a whole number, got 'many'"),
        (["sample", "RUN", "-n", "0", "--out", "x.png"], "-n: must be at least 1, got 0"),
        (["report", "RUN", "--k", "-3"], "--k: must be at least 1, got -3"),
        (["sample", "RUN", "--threads", "0"], "--threads: must be at least 1"),
        (["train", "independent", "--epochs", "0"], "--epochs: must be at least 1"),
        (["eval"], "the following arguments are required: run_dir"),
        (["train", "independent", "--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_arguments_out_of_range_are_one_line(argv, message, trained, capsys):
    argv = [str(trained) if a == "RUN" else a for a in argv]
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and _one_error_line(err) and message in err and "--help" in err


# -- outputs that cannot be written ----------------------------------------------------------
def test_train_into_a_path_under_a_file_is_one_line(capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    rc, _, err = _run(capsys, "train", "independent", "--epochs", "1",
                      "--out", tmp_path / "file" / "run")
    assert rc == 2 and _one_error_line(err) and "is a file, not a folder" in err


def test_sample_and_report_outputs_that_cannot_be_written(trained, capsys, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    rc, _, err = _run(capsys, "sample", trained, "--out", tmp_path / "file" / "s.png")
    assert rc == 2 and _one_error_line(err) and "is a file, not a folder" in err
    rc, _, err = _run(capsys, "report", trained, "--out", tmp_path / "file" / "r.html")
    assert rc == 2 and _one_error_line(err) and "is a file, not a folder" in err
    rc, _, err = _run(capsys, "report", trained, "--out", tmp_path)
    assert rc == 2 and _one_error_line(err) and "is a folder; give a file name" in err
    rc, _, err = _run(capsys, "demo", "--quick", "--out", tmp_path / "file" / "demo")
    assert rc == 2 and _one_error_line(err)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may write anywhere")
def test_a_read_only_folder_is_one_line(trained, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        rc, _, err = _run(capsys, "train", "independent", "--out", locked / "run")
        assert rc == 2 and _one_error_line(err) and "cannot write --out" in err
        rc, _, err = _run(capsys, "sample", trained, "--out", locked / "s.png")
        assert rc == 2 and _one_error_line(err) and "cannot write" in err
    finally:
        locked.chmod(0o700)


def test_machine_errors_are_one_line_and_bugs_keep_their_traceback(capsys, monkeypatch):
    def fails(error):
        def command(args):
            raise error

        return command

    monkeypatch.setattr(cli, "cmd_list", fails(PermissionError(errno.EACCES, "Permission denied",
                                                               "/runs/x/metrics.jsonl")))
    rc, _, err = _run(capsys, "list")
    assert rc == 2 and err == "error: Permission denied: /runs/x/metrics.jsonl\n"
    monkeypatch.setattr(cli, "cmd_list", fails(OSError(errno.ENOSPC, "No space left on device")))
    rc, _, err = _run(capsys, "list")
    assert rc == 2 and err == "error: No space left on device\n"
    monkeypatch.setattr(cli, "cmd_list", fails(FileNotFoundError(errno.ENOENT, "gone", "x")))
    with pytest.raises(FileNotFoundError):  # a missing file the code expected is a bug
        main(["list"])
    monkeypatch.setattr(cli, "cmd_list", fails(KeyError("state")))
    with pytest.raises(KeyError):
        main(["list"])


# -- sample and report on data that is not a picture -----------------------------------------
@pytest.fixture(scope="module")
def vectors(tmp_path_factory):
    """A run on 5-dimensional continuous vectors: neither images nor 2-D points."""
    root = tmp_path_factory.mktemp("vectors")
    np.save(root / "v.npy", np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32))
    run = root / "run"
    assert main(["train", "independent", "--data", str(root / "v.npy"), "--epochs", "1",
                 "--out", str(run), "--set", "train.progress=false"]) == 0
    return run


def test_samples_that_are_not_pictures(vectors, capsys, tmp_path):
    rc, _, err = _run(capsys, "sample", vectors, "--out", tmp_path / "s.png")
    assert rc == 2 and _one_error_line(err) and "cannot be drawn as a PNG" in err
    assert not (tmp_path / "s.png").exists()
    rc, _, _ = _run(capsys, "sample", vectors, "-n", "7", "--out", tmp_path / "s.npy")
    assert rc == 0 and np.load(tmp_path / "s.npy").shape == (7, 5)
    rc, _, _ = _run(capsys, "report", vectors, "--out", tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    assert rc == 0 and "are not images or 2-D points" in page


def test_samples_png_refuses_with_a_data_error():
    import torch

    from dgm.core.errors import DataError
    from dgm.core.spec import DataKind, DataSpec
    from dgm.eval.plots import can_draw, samples_png

    spec = DataSpec((5,), DataKind.CONTINUOUS)
    assert not can_draw(spec) and can_draw(DataSpec((2,), DataKind.CONTINUOUS))
    with pytest.raises(DataError, match="save them as .npy"):
        samples_png(torch.zeros(3, 5), spec)
