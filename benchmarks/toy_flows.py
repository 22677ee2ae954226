"""Benchmark: every flat flow model on 2-D toy densities, scored and drawn.

    python benchmarks/toy_flows.py [--models realnvp nsf ...] [--toys moons checkerboard ...]
                                   [--time-budget 15] [--epochs 100] [--seed 0]

Each model trains with the library's trainer on the toy's standard split (10000 / 2000 / 2000
points), Adam, batch 256, up to ``--epochs`` epochs with patience 10 and a wall-clock budget per
run, best validation weights restored; the test split is scored by the library's evaluator. On
continuous data the score is a negative log-density in nats per 2-D point (not the NLL of
discrete data; it can be negative). The floor to beat is a single full-covariance Gaussian
fitted to the training points (closed form). Glow is left out: it needs images.

Results go to ``benchmarks/results/toy_flows.json``, the figure (rows: toys; columns: the data,
then each model's density on a 200x200 grid) to ``benchmarks/results/toy_flows.png``, and the
table to ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

from dgm.config import load_config  # noqa: E402
from dgm.core.base import GenerativeModel  # noqa: E402
from dgm.data.dataset import load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.runs import open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

TOYS = ["moons", "eight_gaussians", "checkerboard"]

# Entry -> (registered model, model options, learning rate). Sizes are picked so that a run
# takes a few to ~20 CPU seconds on one thread; the few-parameter flows get the larger rate.
MODELS: dict[str, tuple[str, dict[str, Any], float]] = {
    "realnvp": ("realnvp", {"num_flows": 8, "hidden": 64, "scale_bound": 2.0}, 1e-3),
    "nice": ("nice", {"num_flows": 6, "hidden": 64}, 1e-3),
    "maf": ("maf", {"num_flows": 5, "hidden": 64}, 1e-3),
    "iaf": ("iaf", {"num_flows": 5, "hidden": 64}, 1e-3),
    "nsf": ("nsf", {"num_flows": 4, "hidden": 64, "num_bins": 8}, 1e-3),
    "nsf_ar": ("nsf_ar", {"num_flows": 4, "hidden": 64, "num_bins": 8}, 1e-3),
    "planar": ("planar", {"num_flows": 32}, 3e-3),
    "radial": ("radial", {"num_flows": 32}, 3e-3),
    "sylvester_orthogonal": ("sylvester", {"num_flows": 16, "variant": "orthogonal"}, 3e-3),
    "sylvester_householder": ("sylvester", {"num_flows": 16, "variant": "householder"}, 3e-3),
    "sylvester_triangular": ("sylvester", {"num_flows": 16, "variant": "triangular"}, 3e-3),
    "resflow": ("resflow", {"num_blocks": 4, "hidden": 64}, 3e-3),
    "densenet_flow": ("densenet_flow", {"num_blocks": 4, "growth": 16, "depth": 3}, 3e-3),
}

GRID = 200
SHORT = {"sylvester_orthogonal": "sylvester (orth.)", "sylvester_householder": "sylvester (hh.)",
         "sylvester_triangular": "sylvester (tri.)", "densenet_flow": "densenet flow"}


def gaussian_floor(train_x: Tensor, test_x: Tensor) -> float:
    """Test negative log-density (nats per point) of one full-covariance Gaussian fitted to the
    training points by maximum likelihood."""
    x = train_x.double()
    mu = x.mean(0)
    cov = (x - mu).T @ (x - mu) / x.shape[0]
    d = test_x.double() - mu
    maha = (d @ torch.linalg.inv(cov) * d).sum(1)
    dim = x.shape[1]
    nll = 0.5 * (maha + torch.logdet(cov) + dim * math.log(2 * math.pi))
    return float(nll.mean())


def grid_box(x: Tensor) -> tuple[float, float, float, float]:
    """A square window around the points: 0.5-99.5 percentiles plus a margin."""
    a = x.numpy()
    lo = np.percentile(a, 0.5, axis=0) - 0.75
    hi = np.percentile(a, 99.5, axis=0) + 0.75
    c, half = (lo + hi) / 2, float((hi - lo).max()) / 2
    return float(c[0] - half), float(c[0] + half), float(c[1] - half), float(c[1] + half)


@torch.no_grad()
def density_grid(model: GenerativeModel, box: tuple[float, float, float, float],
                 size: int = GRID) -> np.ndarray:
    """exp(log p) on a size x size lattice over ``box`` (rows: y from low to high)."""
    gx, gy = np.meshgrid(np.linspace(box[0], box[1], size), np.linspace(box[2], box[3], size))
    pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
    logp = torch.cat([model.log_prob(chunk) for chunk in pts.split(4096)])
    return torch.exp(logp.double()).reshape(size, size).numpy()


def run_one(entry: str, toy: str, args: argparse.Namespace, workdir: Path,
            box: tuple[float, float, float, float]) -> tuple[dict[str, Any], np.ndarray]:
    name, options, lr = MODELS[entry]
    overrides = [f"model.name={name}", *(f"model.{k}={v}" for k, v in options.items()),
                 f"data.name={toy}", "optim.name=adam", f"optim.lr={lr}",
                 f"train.epochs={args.epochs}", "train.batch_size=256", "train.patience=10",
                 f"train.time_budget_s={args.time_budget}", f"train.seed={args.seed}",
                 "train.threads=1", "train.progress=false", "train.device=cpu"]
    cfg = load_config(overrides=overrides)
    run_dir = workdir / f"{entry}-{toy}"
    result = train(cfg, run_dir)
    model = open_run(run_dir).load_model()
    test = evaluate(model, load(toy).test)
    row = {
        "model": entry, "registered": name, "options": options, "lr": lr, "toy": toy,
        "test_nats": test.nll_nats, "stderr": test.stderr_nats, "median": test.median_nats,
        "kind": test.kind, "label": test.label, "epochs": result.epochs,
        "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "cpu_s": result.cpu_s, "wall_s": result.wall_s, "params": result.num_parameters,
        "val_nats": result.best_val if math.isfinite(result.best_val) else None,
    }
    return row, density_grid(model, box)


def draw(toys: list[str], entries: list[str], data: dict[str, Tensor], floors: dict[str, float],
         boxes: dict[str, tuple[float, float, float, float]],
         dens: dict[tuple[str, str], np.ndarray], rows: dict[tuple[str, str], dict],
         path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 1 + len(entries)
    fig, axes = plt.subplots(len(toys), ncol, figsize=(1.5 * ncol, 1.85 * len(toys) + 0.4),
                             squeeze=False)
    for i, toy in enumerate(toys):
        box = boxes[toy]
        ax = axes[i, 0]
        pts = data[toy][:2000].numpy()
        ax.scatter(pts[:, 0], pts[:, 1], s=0.3, alpha=0.5, color="k", rasterized=True)
        ax.set_title(f"{toy} (data)\nGaussian {floors[toy]:.2f}", fontsize=8)
        for j, entry in enumerate(entries, start=1):
            ax = axes[i, j]
            d = dens[(toy, entry)]
            nats = rows[(toy, entry)]["test_nats"]
            finite = np.isfinite(d)
            if finite.any():
                vmax = float(np.percentile(d[finite], 99.5)) or 1.0
                ax.imshow(np.where(finite, d, 0.0), origin="lower", extent=box, cmap="viridis",
                          vmin=0.0, vmax=vmax, interpolation="nearest", aspect="equal")
            ax.set_title(f"{SHORT.get(entry, entry)}\n{nats:.2f} nats", fontsize=8)
        for ax in axes[i]:
            ax.set_xlim(box[0], box[1])
            ax.set_ylim(box[2], box[3])
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("Flat flows on 2-D toys: model density; title = test negative log-density "
                 "(continuous, nats/point; lower is better)", fontsize=10)
    fig.tight_layout(pad=0.3, w_pad=0.2, h_pad=0.6, rect=(0, 0, 1, 0.96))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72)
    plt.close(fig)
    # A 256-colour palette keeps the file small (the heat maps are smooth).
    from PIL import Image

    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(256)
    img.save(path, format="PNG", optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--toys", nargs="*", default=TOYS)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--time-budget", type=float, default=15.0,
                   help="wall seconds per run (the trainer stops after the epoch that passes it)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(1)

    data: dict[str, Tensor] = {}
    floors: dict[str, float] = {}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for toy in args.toys:
        ds = load(toy)
        data[toy] = ds.train.x
        floors[toy] = gaussian_floor(ds.train.x, ds.test.x)
        boxes[toy] = grid_box(ds.test.x)
        print(f"{toy}: Gaussian floor {floors[toy]:.3f} nats/point", flush=True)

    rows: dict[tuple[str, str], dict] = {}
    dens: dict[tuple[str, str], np.ndarray] = {}
    work = Path(tempfile.mkdtemp(prefix="dgm-toyflows-"))
    try:
        for toy in args.toys:
            for entry in args.models:
                row, d = run_one(entry, toy, args, work, boxes[toy])
                rows[(toy, entry)], dens[(toy, entry)] = row, d
                flag = "" if row["test_nats"] < floors[toy] - 0.02 else "  (~ the Gaussian)"
                print(f"{entry} on {toy}: {row['test_nats']:.3f} nats/point, "
                      f"{row['cpu_s']:.1f} CPU s, {row['epochs']} epochs "
                      f"(best {row['best_epoch']}), {row['params']:,} params{flag}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    png = RESULTS / "toy_flows.png"
    RESULTS.mkdir(parents=True, exist_ok=True)
    draw(args.toys, args.models, data, floors, boxes, dens, rows, png)
    print(f"wrote {png} ({png.stat().st_size / 1024:.0f} KB)")

    # Rows and floors of (model, toy) pairs not re-run here are kept from the last results.
    new_rows = list(rows.values())
    old = RESULTS / "toy_flows.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        done = set(rows)
        new_rows = [r for r in prev["rows"] if (r["toy"], r["model"]) not in done] + new_rows
        floors = {**prev.get("gaussian", {}), **floors}
    settings = {"optimizer": "adam", "batch_size": 256, "epochs": args.epochs, "patience": 10,
                "time_budget_s": args.time_budget, "seed": args.seed, "threads": 1,
                "split": "10000 / 2000 / 2000", "grid": GRID}
    path = write_result("toy_flows", {"machine": machine(), "settings": settings,
                                      "gaussian": floors, "rows": new_rows})
    print(f"wrote {path}")
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
