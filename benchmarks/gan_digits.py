"""Benchmark: sample quality of the GAN family on 8x8 digits (issue 16, Book ch. 8).

    python benchmarks/gan_digits.py [--variants nonsaturating wgan_gp ...] [--seeds 0 1 2]
        [--n 1000] [--no-toy]

(``--variants`` with no names: the toy only.) Rows are merged into the results file as they
land, so two processes may run disjoint variants side by side.

Each variant is a preset (plus overrides) trained by the real trainer with one thread for
every seed; the saved weights (the best by validation FD, EMA weights where the preset has
EMA) draw n samples in one call with a generator seeded 0, scored against the 447 test images
with the shipped digits feature net exactly as ``quality_digits.py`` does (its ``draw``,
``split_images`` and ``scores``): FD, KID, precision and recall (k = 3), density and coverage.
A seed whose samples collapse or diverge (precision or recall below 0.2, or FD above 100) is
flagged ``collapsed`` and kept in the mean. The conditional GAN also reports the feature
net's accuracy on samples drawn for given labels.

Also writes ``gan_digits_<variant>.png`` (64 samples of seed 0) and ``gan_toy.png``: a GAN
on the eight-Gaussians toy (its best weights by validation MMD, ``train.monitor = mmd``), its
discriminator's D(x) as a field with data and samples on it, and the count of modes covered
(samples within 3σ of a centre).
Results: ``benchmarks/results/gan_digits.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, locked_json, machine  # noqa: E402
from quality_digits import draw, scores, split_images  # noqa: E402

from dgm.config import load_config  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.features import feature_net  # noqa: E402
from dgm.eval.plots import image_grid, save_png  # noqa: E402
from dgm.eval.quality import compare, conditional_accuracy  # noqa: E402
from dgm.runs import INFO, open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

CONFIGS = ROOT / "configs"
METRICS = ("fd", "kid", "pr", "dc")
# variant: (preset, overrides, what)
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "nonsaturating": ("gan_digits", [], "MLP, non-saturating loss (configs/gan_digits.yaml)"),
    "minimax": ("gan_digits", ["model.loss=minimax"], "MLP, the book's saturating minimax"),
    "wasserstein": ("wgan_digits", [], "MLP critic, WGAN with weight clipping c = 0.01, 5 critic "
                    "steps, RMSProp 2e-4"),
    "wgan_gp": ("wgan_gp_digits", [], "MLP critic, WGAN-GP λ = 10, 5 critic steps"),
    "hinge_sn": ("hinge_sn_digits", [], "MLP, hinge loss, spectral norm, SN-GAN's Adam "
                 "(1e-3, β = (0, 0.9)), 2 critic steps"),
    "conditional": ("cgan_digits", [], "MLP, class-conditional, projection discriminator"),
    "gmmn": ("gmmn_digits", [], "GMMN: MMD² with 5 Gaussian kernels"),
    "dcgan": ("dcgan_digits", [], "DCGAN conv nets, non-saturating loss"),
    # diagnostics of hinge_sn: the hinge loss on gan_digits' recipe, spectral norm with
    # hinge_sn's recipe and the non-saturating loss
    "hinge": ("gan_digits", ["model.loss=hinge"], "MLP, hinge loss, no spectral norm"),
    "nonsaturating_sn": ("hinge_sn_digits", ["model.loss=nonsaturating"],
                         "MLP, non-saturating loss, spectral norm, hinge_sn's optimizer"),
    # the deck's training tricks (Salimans et al. 2016), one at a time on gan_digits
    "feature_matching": ("gan_digits", ["model.feature_matching=1.0"],
                         "non-saturating + feature matching (weight 1)"),
    "minibatch_std": ("gan_digits", ["model.minibatch_std=true"],
                      "non-saturating + minibatch standard deviation feature"),
    "label_smoothing": ("gan_digits", ["model.label_smoothing=0.1"],
                        "non-saturating + one-sided label smoothing 0.1"),
    "historical_averaging": ("gan_digits", ["model.historical_averaging=0.01"],
                             "non-saturating + historical averaging λ = 0.01"),
}
COLLAPSE = {"precision": 0.2, "recall": 0.2, "fd": 100.0}


def run_one(variant: str, seed: int, n: int, data, test, net, workdir: Path, *,
            variants: dict[str, tuple[str, list[str], str]] | None = None,
            prefix: str = "gan_digits", scale: int = 3) -> dict[str, Any]:
    """Train ``variant`` (of ``variants``, default this file's) for ``seed``, then score n
    samples against ``test`` on ``net``; seed 0 also saves ``<prefix>_<variant>.png``."""
    preset, overrides, what = (variants or VARIANTS)[variant]
    cfg = load_config(CONFIGS / f"{preset}.yaml", overrides)
    cfg.train.seed, cfg.train.threads, cfg.train.progress = seed, 1, False
    run_dir = workdir / f"{variant}-{seed}"
    train(cfg, run_dir)
    info = json.loads((run_dir / INFO).read_text())
    model = open_run(run_dir).load_model()
    fake, sample_cpu, sample_wall = draw(model, n, 0)
    r = compare(test, fake, dataset=data.name, spec=data.spec, metrics=list(METRICS),
                split="test", seed=0, net=net)
    row: dict[str, Any] = {
        "variant": variant, "model": info.get("model"), "seed": seed, "preset": preset,
        "overrides": overrides, "what": what, "cpu_s": info.get("cpu_s"),
        "wall_s": info.get("wall_s"), "time_budget_s": cfg.train.time_budget_s,
        "params": info.get("num_parameters"), "epochs": info.get("epochs_completed"),
        "best_epoch": info.get("best_epoch"), "best_val_fd": info.get("best_val"),
        "rollbacks": info.get("rollbacks"), "sample_cpu_s": sample_cpu,
        "sample_wall_s": sample_wall, "sample_dtype": str(fake.dtype).replace("torch.", ""),
        **scores(r)}
    row["collapsed"] = bool(row["precision"] < COLLAPSE["precision"]
                            or row["recall"] < COLLAPSE["recall"]
                            or not row["fd"] < COLLAPSE["fd"])
    if getattr(model, "num_classes", 0):
        labels = torch.arange(n) % data.spec.num_classes
        with torch.no_grad():
            x = model.sample(n, y=labels, generator=torch.Generator().manual_seed(0))
        row["conditional_accuracy"] = conditional_accuracy(x, labels, net)
    if seed == 0:
        grid = image_grid(fake[:64].float(), data.spec, ncol=8)
        save_png(grid, RESULTS / f"{prefix}_{variant}.png", scale=scale)
    print(f"{variant} seed {seed}: {r.line()}, {row['cpu_s']:.0f} CPU s, {row['epochs']} epochs, "
          f"{row['params']} params{' COLLAPSED' if row['collapsed'] else ''}", flush=True)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        rs = [r for r in rows if r["variant"] == variant]
        s: dict[str, Any] = {"variant": variant, "seeds": [r["seed"] for r in rs],
                             "collapsed_seeds": [r["seed"] for r in rs if r["collapsed"]],
                             "params": rs[0]["params"]}
        for k in ("fd", "kid", "precision", "recall", "density", "coverage", "cpu_s",
                  "conditional_accuracy"):
            vals = [float(r[k]) for r in rs if r.get(k) is not None]
            if vals:
                t = torch.tensor(vals, dtype=torch.float64)
                s[k] = {"mean": float(t.mean()),
                        "sd": float(t.std()) if len(vals) > 1 else 0.0}
        out.append(s)
    return out


def toy(seed: int = 0) -> dict[str, Any]:
    """A GAN on eight Gaussians (configs/gan_eight_gaussians.yaml): modes covered, D's field."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = load_config(CONFIGS / "gan_eight_gaussians.yaml")
    cfg.train.seed, cfg.train.threads, cfg.train.progress = seed, 1, False
    with tempfile.TemporaryDirectory() as tmp:
        train(cfg, Path(tmp) / "run")
        info = json.loads((Path(tmp) / "run" / INFO).read_text())
        model = open_run(Path(tmp) / "run").load_model()  # the best by validation MMD
    x = model.sample(2000, generator=torch.Generator().manual_seed(0))
    angles = torch.arange(8) * (2 * math.pi / 8)
    centers = 3.0 * torch.stack([angles.cos(), angles.sin()], 1)
    d = torch.cdist(x, centers)
    near = d.min(1).values < 3 * 0.3
    counts = torch.bincount(d.argmin(1)[near], minlength=8)
    grid = torch.linspace(-5, 5, 200)
    gx, gy = torch.meshgrid(grid, grid, indexing="xy")
    with torch.no_grad():
        prob = torch.sigmoid(model.discriminator(torch.stack([gx, gy], -1).reshape(-1, 2))
                             .logits).reshape(200, 200)
    real = load("eight_gaussians").test.x[:2000]
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    im = ax.imshow(prob, origin="lower", extent=(-5, 5, -5, 5), cmap="RdBu_r", vmin=0, vmax=1)
    ax.scatter(real[:, 0], real[:, 1], s=1, c="k", alpha=0.3, label="data")
    ax.scatter(x[:, 0], x[:, 1], s=1, c="yellow", alpha=0.5, label="samples")
    ax.set_title(f"GAN on eight Gaussians: D(x); {int((counts > 0).sum())}/8 modes", fontsize=12)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.legend(loc="upper right", fontsize=10, markerscale=6)
    fig.tight_layout()
    fig.savefig(RESULTS / "gan_toy.png", dpi=110)
    plt.close(fig)
    return {"modes_covered": int((counts > 0).sum()), "per_mode": counts.tolist(),
            "within_3sd": float(near.double().mean()), "cpu_s": info.get("cpu_s"),
            "params": info.get("num_parameters"), "best_epoch": info.get("best_epoch"),
            "monitor": info.get("val_method")}


def merge_rows(name: str, fields: dict[str, Any], rows: list[dict[str, Any]] | None,
               order: list[str]) -> None:
    """Write ``fields`` (and ``rows``, replacing those of the same variant and seed; rows sorted
    by ``order`` of variants, then seed) into ``RESULTS/<name>.json`` under its lock."""
    with locked_json(name) as result:
        result.update(fields)
        result.setdefault("rows", [])
        if rows:
            done = {(r["variant"], r["seed"]) for r in rows}
            result["rows"] = [r for r in result["rows"]
                              if (r["variant"], r["seed"]) not in done] + rows
        result["rows"].sort(key=lambda r: (
            order.index(r["variant"]) if r["variant"] in order else len(order), r["seed"]))
        result["summary"] = summarize(result["rows"])


def _merge(fields: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
    merge_rows("gan_digits", fields, rows, list(VARIANTS))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--no-toy", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    _merge({"machine": machine()})
    if not args.no_toy:
        toy_result = toy()
        print(f"eight Gaussians: {toy_result}", flush=True)
        _merge({"toy": toy_result})
    if not args.variants:
        return
    data = load("digits")
    test = split_images(data, "test")
    net = feature_net("digits")
    _merge({"settings": {"n": args.n, "sample_seed": 0, "real": "digits test (447)",
                        "feature_net": net.tag, "threads": 1, "metrics": list(METRICS),
                        "collapse_thresholds": COLLAPSE}})
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                row = run_one(variant, seed, args.n, data, test, net, Path(tmp))
                _merge({}, [row])
    print(f"wrote {RESULTS / 'gan_digits.json'} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
