"""The command line: every user error is one clear line, exit status 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dgm.cli import main


def _run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "independent", "--data", "digits", "--epochs", "2", "--out", str(run),
                 "--set", "train.progress=false"]) == 0
    return run


def test_list_json(capsys):
    rc, out, _ = _run(capsys, "list", "--json")
    data = json.loads(out)
    names = {m["name"]: m for m in data["models"]}
    assert rc == 0 and "independent" in names and "digits" in {d["name"] for d in data["datasets"]}
    assert names["independent"]["likelihood"] == "exact"
    assert "discrete" in names["independent"]["data_kinds"]


def test_train_eval_sample(trained, capsys, tmp_path):
    rc, out, _ = _run(capsys, "eval", str(trained), "--json")
    result = json.loads(out)
    assert rc == 0 and result["kind"] == "exact" and result["split"] == "test" and result["n"] == 447
    assert {"nll_nats", "bpd", "kind", "split", "n"} <= set(result)
    rc2, out2, _ = _run(capsys, "eval", str(trained), "--json")
    assert json.loads(out2) == result  # the same run evaluated twice prints the same numbers
    rc, _, _ = _run(capsys, "sample", str(trained), "-n", "10", "--out", str(tmp_path / "s.npy"))
    x = np.load(tmp_path / "s.npy")
    assert rc == 0 and x.shape == (10, 1, 8, 8) and x.dtype == np.int64 and x.max() <= 16
    rc, _, _ = _run(capsys, "sample", str(trained), "-n", "16", "--out", str(tmp_path / "s.png"))
    assert rc == 0 and (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_report(trained, capsys):
    rc, out, _ = _run(capsys, "report", str(trained))
    page = (trained / "report.html").read_text()
    assert rc == 0 and "exact NLL" in page and "data:image/png;base64" in page


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "nosuchmodel"], "unknown model 'nosuchmodel'; available:"),
        (["train", "independent", "--data", "nosuchdata"], "unknown dataset 'nosuchdata'"),
        (["train", "independent", "--set", "model.colour=3"], "unknown key colour; valid keys: pseudocount"),
        (["train", "independent", "--set", "train.epochs=many"], "train.epochs: expected an integer"),
        (["train", "independent", "--set", "bogus.x=1"], "unknown section 'bogus'"),
        (["train", "independent", "--config", "nope.yaml"], "config not found"),
        (["eval", "/nonexistent/run"], "run directory not found"),
        (["train", "independent", "--resume", "--out", "/nonexistent/run"], "run directory not found"),
    ],
)
def test_user_errors_are_one_clear_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(capsys, *argv)
    assert rc == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nothing written


def test_corrupt_and_missing_checkpoints(trained, capsys, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    rc, _, err = _run(capsys, "eval", str(broken))
    assert rc == 2 and "corrupt" in err and "Traceback" not in err
    (broken / "model.safetensors").unlink()
    rc, _, err = _run(capsys, "sample", str(broken), "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "no trained weights" in err
    last = broken / "checkpoints" / "last.safetensors"
    last.write_bytes(b"\x00" * 10)
    rc, _, err = _run(capsys, "train", "independent", "--resume", "--out", str(broken))
    assert rc == 2 and "corrupt" in err
    assert last.read_bytes() == b"\x00" * 10  # nothing overwritten


def test_wrong_input_to_log_prob_is_clear(digits):
    import torch

    import dgm
    from dgm.core.errors import DataError

    model = dgm.build_model("independent", digits.spec)
    with pytest.raises(DataError, match=r"shape \(N, 1, 8, 8\)"):
        model.log_prob(torch.zeros(3, 64, dtype=torch.long))
    with pytest.raises(DataError, match="integer"):
        model.log_prob(torch.zeros(3, 1, 8, 8))


def test_sample_output_suffix(trained, capsys, tmp_path):
    rc, _, err = _run(capsys, "sample", str(trained), "--out", str(tmp_path / "x.jpg"))
    assert rc == 2 and ".png or .npy" in err and not (tmp_path / "x.jpg").exists()


def test_missing_data_files_say_how_to_fetch(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "empty"))
    rc, _, err = _run(capsys, "train", "vae", "--data", "binary_mnist", "--epochs", "1")
    assert rc == 2 and "dgm fetch mnist" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_demo_quick_smoke(capsys, tmp_path):
    rc, out, _ = _run(capsys, "demo", "--quick", "--models", "vae", "--k", "5",
                      "--out", str(tmp_path / "demo"))
    assert rc == 0 and "| vae |" in out and "| independent |" in out
    page = (tmp_path / "demo" / "index.html").read_text()
    assert "vae/report.html" in page and (tmp_path / "demo" / "vae" / "samples.png").is_file()
    assert "nats per test image" in page and "ANCHORS" not in page
    assert (tmp_path / "demo" / "data.png").is_file()


def test_text_train_eval_sample_prompt_and_rag(capsys, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat. the dog sat on the log.\n" * 80)
    run = tmp_path / "gpt"
    assert main(["train", "gpt", "--data", str(corpus), "--out", str(run), "--set",
                 "model.hidden=16", "model.num_layers=1", "model.num_heads=2",
                 "data.options.block_size=32", "train.epochs=1", "train.progress=false"]) == 0
    assert (run / "tokenizer.json").is_file()
    capsys.readouterr()
    rc, out, _ = _run(capsys, "eval", str(run), "--json")
    result = json.loads(out)
    assert rc == 0 and result["perplexity"] > 1.0 and result["bits_per_char"] > 0.0
    rc, out, _ = _run(capsys, "sample", str(run), "--prompt", "the cat", "--max-new-tokens", "12",
                      "--greedy")
    assert rc == 0 and out.startswith("the cat") and len(out.rstrip("\n")) == len("the cat") + 12
    rc, again, _ = _run(capsys, "sample", str(run), "--prompt", "the cat", "--max-new-tokens",
                        "12", "--greedy", "--no-cache")
    assert again == out
    rc, _, err = _run(capsys, "sample", str(run), "--prompt", "the cat\u00e9")
    assert rc == 2 and "error:" in err
    rc, _, err = _run(capsys, "sample", str(run), "--out", str(tmp_path / "t.npy"))
    assert rc == 2 and "are text" in err and not (tmp_path / "t.npy").exists()
    rc, _, _ = _run(capsys, "sample", str(run), "-n", "2", "--out", str(tmp_path / "t.txt"))
    assert rc == 0 and (tmp_path / "t.txt").read_text().strip()
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("the dog sleeps on the log.\n\nthe cat eats fish.")
    rc, out, _ = _run(capsys, "rag", str(run), "--docs", str(docs), "--query", "what does the cat eat",
                      "--k", "1", "--max-new-tokens", "5", "--top-k", "3", "--threads", "1")
    assert rc == 0 and "the cat eats fish." in out and "--- generated ---" in out
    rc, out, _ = _run(capsys, "report", str(run))
    page = (run / "report.html").read_text()
    assert rc == 0 and "perplexity" in out and "bits / token" in page and "<pre>" in page
