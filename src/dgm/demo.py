"""The main job: train the default models on 8x8 digits, evaluate, sample, report, summarize.

``dgm demo`` trains each of mixture of Gaussians, ARM, RealNVP and VAE with its digits preset
(``configs/<model>_digits.yaml``), scores the test split in nats per image and bits per
dimension with the label of what each number is, writes a sample grid and an HTML report per
model, and a summary table (``summary.md`` and ``index.html``) beside the independent per-pixel
floor and the book's own numbers.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import torch

from dgm.config import load_config
from dgm.core.errors import ConfigError
from dgm.data.dataset import load
from dgm.eval.likelihood import Evaluation
from dgm.eval.plots import samples_png
from dgm.eval.report import write_report
from dgm.train.run import INFO, LAST, open_run
from dgm.train.trainer import train

__all__ = ["run_demo", "BOOK_DIGITS"]

# The book's companion code on the same split (ANCHORS.md §1), nats per test image.
BOOK_DIGITS = {
    "arm": "86.65 (exact NLL)",
    "vae": "96.37 (-ELBO)",
    "realnvp": "167.2 (bound; 122.84 continuous + 64 ln 2)",
    "mog": "none comparable (-48.75 is a density of x/17 + noise)",
    "independent": "106.5 (the floor, ANCHORS §1b)",
}


def _preset(model: str) -> Path:
    from dgm.cli import preset_path

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


def run_demo(out: Path, models: list[str] | tuple[str, ...], quick: bool = False, k: int = 1000) -> Path:
    """Train, evaluate, sample and report each model; returns the summary's path."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    dataset = load("digits")
    for name in ["independent", *models]:
        run_dir = out / name
        if name == "independent":
            cfg = load_config(overrides=["model.name=independent", "train.epochs=1"])
            if not (run_dir / INFO).is_file():
                train(cfg, run_dir)
        else:
            _train_one(name, run_dir, quick)
        run = open_run(run_dir)
        model = run.load_model()
        evals: list[Evaluation] = []
        _, evals = write_report(run, dataset, run_dir / "report.html", k=k)
        gen = torch.Generator().manual_seed(0)
        (run_dir / "samples.png").write_bytes(samples_png(model.sample(64, generator=gen), model.spec))
        test = [e for e in evals if e.split == "test"]
        primary = test[0]
        iwae = test[1] if len(test) > 1 else None
        info = run.info
        rows.append({
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
        })
        print(f"[{name}] {primary.line()}")
        if iwae is not None:
            print(f"[{name}] {iwae.line()}")
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    md = _markdown(rows, quick, k)
    (out / "summary.md").write_text(md)
    (out / "index.html").write_text(_html(rows, quick, k))
    print("\n" + md)
    print(f"reports: {out}/<model>/report.html; summary: {out}/index.html")
    return out / "summary.md"


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
    note = "\n\n(quick smoke run: a few epochs each; the numbers are not converged)\n" if quick else "\n"
    return "8x8 digits, test split (447 images), nats per image in the 17-level space.\n\n" + head + "\n".join(lines) + note


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def _html(rows: list[dict], quick: bool, k: int) -> str:
    cells = "".join(
        f"<tr><td><a href='{r['model']}/report.html'>{r['model']}</a></td>"
        f"<td>{r['test_nats']:.2f}</td><td>{r['test_bpd']:.3f}</td><td>{html.escape(r['kind'])}</td>"
        f"<td>{_fmt(r['iwae_nats'])}</td>"
        f"<td>{r['params']:,}</td><td>{r['epochs']} ({r['best_epoch']})</td><td>{r['cpu_s']:.1f}</td>"
        f"<td>{html.escape(r['book'])}</td><td><img src='{r['model']}/samples.png' height=96></td></tr>"
        for r in rows
    )
    warn = "<p><b>Quick smoke run: not converged.</b></p>" if quick else ""
    return (
        "<!doctype html><meta charset=utf-8><title>dgm demo</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px}"
        "table{border-collapse:collapse}</style><h1>dgm on 8x8 digits</h1>" + warn +
        "<table><tr><th>model</th><th>test nats/image</th><th>bits/dim</th><th>what it is</th>"
        f"<th>IWAE({k})</th><th>params</th><th>epochs (best)</th><th>CPU s</th><th>book's code</th>"
        f"<th>samples</th></tr>{cells}</table>"
    )
