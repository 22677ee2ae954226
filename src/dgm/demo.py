"""The main job: train the default models on 8x8 digits, evaluate, sample, report, summarize.

``dgm demo`` trains each of mixture of Gaussians, ARM, RealNVP and VAE with its digits preset
(``configs/<model>_digits.yaml``), scores the test split in nats per image and bits per
dimension with the label of what each number is, writes a sample grid and an HTML report per
model, and a summary (``summary.md`` and ``index.html``) beside the independent per-pixel
floor and the numbers of the book's companion code.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import torch

from dgm.config import load_config, preset_path
from dgm.core.errors import ConfigError
from dgm.data.dataset import Dataset, load
from dgm.eval.likelihood import Evaluation
from dgm.eval.plots import samples_png
from dgm.eval.report import write_report
from dgm.runs import INFO, LAST, open_run
from dgm.train.trainer import train

__all__ = ["run_demo", "BOOK_DIGITS", "FLOOR_NATS", "CATEGORICAL_MIXTURE_NATS"]

# The book's companion code on the same split, nats per test image (BENCHMARKS.md's reference
# column).
BOOK_DIGITS = {
    "arm": "86.65 (exact NLL)",
    "vae": "96.37 (-ELBO)",
    "realnvp": "167.2 (bound; 122.84 continuous + 64 ln 2)",
    "mog": "none comparable (-48.75 is a density of x/17 + noise)",
}
# Floors on the same split and protocol (BENCHMARKS.md), exact NLL in nats per test image.
FLOOR_NATS = 106.5  # independent per-pixel categoricals (add-one smoothing)
CATEGORICAL_MIXTURE_NATS = 100.0  # a mixture of 40 categoricals fitted by EM
DIGITS_DIM = 64
SAMPLE_SCALE = 4  # pixels per digit pixel in the sample grids: 8x8 digits are 32 px across


def _preset(model: str) -> Path:
    p = preset_path(f"{model}_digits")
    if p is None:
        raise ConfigError(f"no digits preset for {model} (configs/{model}_digits.yaml)")
    return p


def _train_one(model: str, out: Path, quick: bool) -> None:
    overrides = ["train.epochs=3"] if quick else []
    cfg = load_config(_preset(model), overrides)
    if (out / INFO).is_file():
        info = json.loads((out / INFO).read_text())
        if info.get("status") == "finished":
            print(f"[{model}] already trained in {out}; reusing it")
            return
        if (out / LAST).is_file():
            print(f"[{model}] resuming the unfinished run in {out}")
            train(open_run(out).config, out, resume=True)
            return
    print(f"[{model}] training with {_preset(model)}")
    train(cfg, out)


def _row(name: str, run: Any, evals: list[Evaluation]) -> dict[str, Any]:
    """One line of the summary: the primary test score, IWAE if any, size and time."""
    test = [e for e in evals if e.split == "test"]
    primary = test[0]
    iwae = test[1] if len(test) > 1 else None
    info = run.info
    return {
        "model": name,
        "test_nats": primary.nll_nats,
        "test_bpd": primary.bpd,
        "kind": primary.label,
        "iwae_nats": None if iwae is None else iwae.nll_nats,
        "iwae_label": None if iwae is None else iwae.label,
        "params": info["num_parameters"],
        "epochs": info["epochs_completed"],
        "best_epoch": info["best_epoch"],
        "cpu_s": info["cpu_s"],
        "wall_s": info["wall_s"],
        "book": BOOK_DIGITS.get(name, ""),
    }


def _write_samples(model: Any, path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    path.write_bytes(samples_png(model.sample(64, generator=gen), model.spec, scale=SAMPLE_SCALE))


def _write_data(dataset: Dataset, path: Path) -> None:
    """The first 64 test images, drawn as the samples are, for comparison."""
    real, _ = dataset.test.batch(slice(0, 64), dataset.spec)
    path.write_bytes(samples_png(real, dataset.spec, scale=SAMPLE_SCALE))


def run_demo(
    out: Path, models: list[str] | tuple[str, ...], quick: bool = False, k: int = 1000
) -> Path:
    """Train, evaluate, sample and report each model; returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    dataset = load("digits")
    _write_data(dataset, out / "data.png")
    for name in ["independent", *models]:
        run_dir = out / name
        if name == "independent":
            cfg = load_config(overrides=["model.name=independent", "train.epochs=1"])
            if not (run_dir / INFO).is_file():
                train(cfg, run_dir)
        else:
            _train_one(name, run_dir, quick)
        run = open_run(run_dir)
        _, evals, _ = write_report(run, dataset, run_dir / "report.html", k=k)
        _write_samples(run.load_model(), run_dir / "samples.png")
        row = _row(name, run, evals)
        rows.append(row)
        for e in evals:
            if e.split == "test":
                print(f"[{name}] {e.line()}")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    md = _markdown(rows, quick, k)
    (out / "summary.md").write_text(md)
    (out / "index.html").write_text(_html(rows, quick, k))
    print("\n" + md)
    print(f"reports: {out}/<model>/report.html; summary: {out}/index.html")
    return out / "summary.md"


# -- words ------------------------------------------------------------------------------------
def _units(k: int) -> str:
    """What every number in the summary is."""
    return (
        "Every score is in nats per test image: minus the natural log of the probability of one "
        "whole 8x8 image, summed over its 64 pixels, in the discrete space of the digits (17 "
        "levels per pixel, 0 to 16), averaged over the 447 test images; lower is better. Bits "
        f"per dimension are the same number divided by {DIGITS_DIM} ln 2. 'What it is' says "
        "what each number is: an exact negative log-likelihood (exact NLL), or an upper bound "
        "on it (-ELBO for the VAE; the dequantization bound for the mixture of Gaussians and "
        f"RealNVP, which are densities on y = (x + u)/17). IWAE({k}) is a tighter upper bound "
        "for the models that have one. An upper bound below another model's exact NLL shows "
        "the bounded model is better; a bound above it proves nothing."
    )


def _floors() -> str:
    return (
        f"The floor is the first row: independent per-pixel categoricals ({FLOOR_NATS} nats, "
        "exact), which know only how often each pixel takes each value. A model above it has "
        "learned nothing useful about how pixels go together. A mixture of 40 categoricals "
        f"fitted by EM reaches {CATEGORICAL_MIXTURE_NATS} (exact; BENCHMARKS.md)."
    )


def _mixture_note(rows: list[dict[str, Any]], quick: bool) -> str:
    """Why the mixture of Gaussians lands above the per-pixel floor, with this run's numbers."""
    mog = next((r for r in rows if r["model"] == "mog"), None)
    if mog is None:
        return ""
    gap = mog["test_nats"] - FLOOR_NATS
    where = f"{abs(gap):.1f} nats {'above' if gap > 0 else 'below'} the floor"
    iwae = ""
    if mog["iwae_nats"] is not None:
        closed = mog["test_nats"] - mog["iwae_nats"]
        iwae = f" (IWAE closes {closed:.1f} nats of the gap between the bound and the NLL here)"
    converged = (
        " This quick run stopped after a few epochs; a converged run lands at about 125 "
        "(BENCHMARKS.md)." if quick else ""
    )
    return (
        f"Why the mixture of Gaussians scores {mog['test_nats']:.1f}, {where}: each of its "
        "components is a product of 64 independent Gaussians on the dequantized pixels "
        "y = (x + u)/17. Digit pixels pile up at exactly 0 and 16, spikes that a Gaussian can "
        "only cover by spreading its mass, and part of that mass leaks outside [0, 1) where no "
        "pixel ever lands; a per-pixel categorical puts all of its mass on the 17 values. "
        f"Dequantization itself costs only a few nats{iwae}; the rest is this misfit. Mixing "
        "is not the problem: with categorical components a mixture of 40 reaches "
        f"{CATEGORICAL_MIXTURE_NATS}, below the floor.{converged}"
    )


# -- summary pages ----------------------------------------------------------------------------
def _markdown(rows: list[dict], quick: bool, k: int) -> str:
    head = (
        f"| model | test nats/image | bits/dim | what it is | IWAE({k}) | params | epochs (best) "
        "| CPU s | book's code |\n|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in rows:
        iwae = _fmt(r["iwae_nats"])
        lines.append(
            f"| {r['model']} | {r['test_nats']:.2f} | {r['test_bpd']:.3f} | {r['kind']} | {iwae} "
            f"| {r['params']:,} | {r['epochs']} ({r['best_epoch']}) | {r['cpu_s']:.1f} "
            f"| {r['book']} |"
        )
    note = "\n\n(quick smoke run: a few epochs each; the numbers are not converged)\n"
    note = note if quick else "\n"
    words = "\n\n".join(p for p in (_floors(), _mixture_note(rows, quick)) if p)
    return (
        "8x8 digits, test split (447 images), nats per image in the 17-level space.\n\n"
        + head + "\n".join(lines) + note + "\n" + _units(k) + "\n\n" + words + "\n"
    )


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;"
    "line-height:1.45;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:6px 10px;"
    "vertical-align:top}th{background:#f3f3f3;text-align:left}td.num{text-align:right;"
    "font-variant-numeric:tabular-nums}caption{caption-side:bottom;text-align:left;color:#444;"
    "font-size:92%;padding-top:.6em}.warn{background:#fff4d6;padding:.5em 1em;border-left:4px "
    "solid #e0a800}figure{display:inline-block;margin:0 1.5em 1.5em 0;vertical-align:top}"
    "figure img{image-rendering:pixelated;border:1px solid #ddd}figcaption{font-size:92%;"
    "max-width:330px}"
)


def _table_html(rows: list[dict], k: int) -> str:
    cells = "".join(
        f"<tr><td><a href='{r['model']}/report.html'>{r['model']}</a></td>"
        f"<td class=num><b>{r['test_nats']:.2f}</b></td><td class=num>{r['test_bpd']:.3f}</td>"
        f"<td>{html.escape(r['kind'])}</td><td class=num>{_fmt(r['iwae_nats'])}</td>"
        f"<td class=num>{r['params']:,}</td><td class=num>{r['epochs']} ({r['best_epoch']})</td>"
        f"<td class=num>{r['cpu_s']:.1f}</td><td>{html.escape(r['book'])}</td></tr>"
        for r in rows
    )
    return (
        "<table><tr><th>model (report)</th><th>test nats / image</th><th>bits / dim</th>"
        f"<th>what it is</th><th>IWAE({k}) nats / image</th><th>parameters</th>"
        "<th>epochs (best)</th><th>CPU s</th><th>book's code, same split</th></tr>"
        f"{cells}<caption>{html.escape(_units(k))}</caption></table>"
    )


def _gallery_html(rows: list[dict]) -> str:
    side = 8 * (8 + 1) + 1  # an 8x8 grid of 8x8 digits with 1-pixel gaps
    size = side * SAMPLE_SCALE
    figures = [
        f"<figure><img src='data.png' width={size} height={size} alt='test images'>"
        "<figcaption><b>test images</b>, for comparison</figcaption></figure>"
    ]
    figures += [
        f"<figure><img src='{r['model']}/samples.png' width={size} height={size} "
        f"alt='{r['model']} samples'><figcaption><b>{r['model']}</b>: 64 samples "
        f"(seed 0); {r['test_nats']:.1f} nats / image</figcaption></figure>"
        for r in rows
    ]
    return "<h2>Samples</h2>" + "".join(figures)


def _html(rows: list[dict], quick: bool, k: int) -> str:
    warn = (
        "<p class=warn><b>Quick smoke run:</b> a few epochs each, so the numbers are not "
        "converged.</p>" if quick else ""
    )
    words = "".join(
        f"<p>{html.escape(p)}</p>" for p in (_floors(), _mixture_note(rows, quick)) if p
    )
    return (
        f"<!doctype html><meta charset=utf-8><title>dgm demo</title><style>{_STYLE}</style>"
        "<h1>dgm on 8x8 digits</h1>" + warn +
        "<p>Each model is trained with its preset (configs/MODEL_digits.yaml) on 1000 images, "
        "stopped early on 350 validation images, and scored on the 447 test images. Each "
        "model's name links to its full report.</p>"
        + _table_html(rows, k) + words + _gallery_html(rows)
    )
