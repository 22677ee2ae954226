"""What eval, sample and report run on and write: the run's thread setting, the training-curve
plot of a one-epoch run, and the demo's index page."""

from __future__ import annotations

import pytest
import torch

from dgm.cli import main


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def one_thread_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("threads") / "run"
    before = torch.get_num_threads()
    assert main(["train", "independent", "--epochs", "1", "--out", str(run), "--set",
                 "train.threads=1", "train.progress=false"]) == 0
    torch.set_num_threads(before)
    return run


@pytest.mark.parametrize("command", ["eval", "sample", "report"])
def test_run_commands_take_the_runs_threads_unless_told(
    command, one_thread_run, tmp_path, restore_threads, capsys
):
    out = {"eval": [], "sample": ["--out", str(tmp_path / "s.npy")],
           "report": ["--out", str(tmp_path / "r.html"), "--k", "1"]}[command]
    torch.set_num_threads(3)
    assert main([command, str(one_thread_run), *out]) == 0
    assert torch.get_num_threads() == 1  # the run's train.threads
    assert main([command, str(one_thread_run), *out, "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2


def test_without_a_thread_setting_torch_keeps_its_own(tmp_path, restore_threads, capsys):
    run = tmp_path / "run"
    assert main(["train", "independent", "--epochs", "1", "--out", str(run),
                 "--set", "train.progress=false"]) == 0
    torch.set_num_threads(3)
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npy")]) == 0
    assert torch.get_num_threads() == 3


def test_the_curve_of_one_epoch_shows_both_points():
    from dgm.eval.plots import curves_figure

    fig = curves_figure([{"epoch": 1, "train_loss": 107.0, "val": 110.5, "val_method": "exact"}])
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if line.get_label().startswith(("train", "valid"))]
    lo, hi = ax.get_ylim()
    assert len(lines) == 2
    for line in lines:
        assert line.get_marker() not in (None, "None", "", " ")  # a single point is drawn
        assert lo < line.get_ydata()[0] < hi
    assert [t for t in ax.get_xticks()] == [1]


def test_the_curve_keeps_the_last_and_best_values_in_view():
    from dgm.eval.plots import curves_figure

    losses = [500.0, 300.0, 200.0] + [100.0 - i for i in range(20)]
    rows = [{"epoch": i + 1, "train_loss": v, "val": v + 3, "val_method": "exact"}
            for i, v in enumerate(losses)]
    lo, hi = curves_figure(rows).axes[0].get_ylim()
    assert lo < min(losses) and hi > rows[-1]["val"] and hi < 500.0  # early epochs clipped


def _rows():
    def row(model, nats, kind, iwae=None):
        return {"model": model, "test_nats": nats, "test_bpd": nats / 44.36, "kind": kind,
                "iwae_nats": iwae, "iwae_label": None, "params": 1000, "epochs": 10,
                "best_epoch": 8, "cpu_s": 1.0, "wall_s": 1.0, "book": ""}

    return [row("independent", 106.46, "exact NLL"),
            row("mog", 125.4, "-ELBO, an upper bound on the NLL", 123.6)]


def test_demo_index_explains_its_numbers():
    from dgm.demo import SAMPLE_SCALE, _html, _markdown

    page = _html(_rows(), quick=False, k=1000)
    assert "nats per test image" in page and "17 levels" in page and "64 ln 2" in page
    assert "exact negative log-likelihood" in page and "upper bound" in page
    assert "ANCHORS" not in page and "ANCHORS" not in _markdown(_rows(), False, 1000)
    assert "18.9 nats above the floor" in page and "leaks outside [0, 1)" in page
    assert "100.0" in page  # the mixture of categoricals, below the floor
    assert 8 * SAMPLE_SCALE > 24 and "height=96" not in page  # digits drawn larger than before
    assert "data.png" in page  # test images beside the samples
