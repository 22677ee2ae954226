"""Benchmark: Boltzmann machines and the density network on the digits (issue 16).

    python benchmarks/boltzmann_digits.py [--only rbm dbn ...] [--seeds 0 1 2] [--no-sklearn]
        [--redo] [--render-only] [--mnist] [--no-toys]

Every preset below is trained for seed 0 (the RBMs with a scikit-learn peer for each of
``--seeds``, 0-2 by default, and the peer with the same seeds) with one thread
(``quality_digits.ensure_trained``: reused when finished, resumed when interrupted) and scored
on the test split in nats per image of the data's own discrete space, labelled with what the
number is: exact (log Z by enumeration), an AIS estimate with log Z's standard error and 3σ
band, or a variational / IWAE bound. AIS scores use 100 chains and 10,000 temperatures
(``AIS_TEMPERATURES`` names the exceptions).
Beside them, in the same run:

- scikit-learn's ``BernoulliRBM`` with 20 and 64 hidden units (PCD-1, learning rate 0.01, batch
  10, 250 epochs: the ANCHORS.md §6 recipe), its weights scored by our exact log Z (20) or AIS
  (64); its own score is a pseudo-likelihood;
- the independent Bernoulli floor fitted here (add-one), and the RBM with 20 hidden units scored
  both exactly and by AIS (the agreement of the two);
- mixing: the integrated autocorrelation time of the free energy along 500 further Gibbs sweeps
  of each model's persistent chains, and the chains' age.

Rows land in ``benchmarks/results/boltzmann_digits.json``; sample grids in
``benchmarks/results/boltzmann_<model>.png``. BENCHMARKS.md is rendered at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, locked_json, machine  # noqa: E402
from quality_digits import ensure_trained  # noqa: E402

from dgm.core.registry import build_model  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.eval.plots import image_grid, save_png  # noqa: E402
from dgm.runs import open_run  # noqa: E402

OUT = RESULTS / "boltzmann_digits.json"

#: key -> (preset, overrides, evaluation methods)
MODELS: dict[str, tuple[str, list[str], list[tuple[str, int | None]]]] = {
    "rbm": ("rbm_digits", [], [("exact", None), ("estimate", None)]),
    "rbm64": ("rbm64_digits", [], [("estimate", None)]),
    "subspace_rbm": ("subspace_rbm_digits", [], [("exact", None)]),
    "dbn": ("dbn_digits", [], [("elbo", 100), ("iwae", 1000)]),
    "dbm": ("dbm_digits", [], [("estimate", None)]),
    "rbm_categorical": ("rbm_categorical_digits", [], [("exact", None)]),
    "fvbm": ("fvbm_digits4x4", [], [("exact", None)]),
    "rbm_4x4": ("rbm_digits", ["data.name=binary_digits_4x4", "model.hidden=16"],
                [("exact", None)]),
    "density_network": ("density_network_digits", [], [("iwae", 10000)]),
}

#: trained for every seed of ``--seeds``: the RBMs that scikit-learn's peer is set beside
SEEDED = ("rbm", "rbm64")

#: 2-D toys: the density and samples are drawn (``boltzmann_<model>.png``)
TOYS = {"gaussian_rbm_moons": ("gaussian_rbm_moons", [], [("exact", None)])}

#: AIS temperatures where 10,000 are too few (effective chains near 1 at 10,000)
AIS_TEMPERATURES = {"rbm500_binary_mnist_30ep": 50000}

#: binarized MNIST (``--mnist``)
MNIST = {"rbm500_binary_mnist": ("rbm_binary_mnist", [], [("estimate", None)]),
         "rbm500_binary_mnist_30ep": ("rbm_binary_mnist", ["train.epochs=30"],
                                      [("estimate", None)])}

ANCHORS = {
    "binary_digits": "independent Bernoulli 24.91 · mixture of 40 Bernoullis 18.97 · "
                     "BernoulliRBM 20 hidden 19.10 (exact), 64 hidden 18.70 (AIS)",
    "digits": "independent categorical 106.5 · mixture of 40 categoricals 100.0",
}


def read() -> dict[str, Any]:
    return json.loads(OUT.read_text()) if OUT.is_file() else {"rows": {}}


def save(rows: dict[str, Any]) -> None:
    """Merge ``rows`` into the results file under its lock (other processes may be adding
    theirs)."""
    with locked_json("boltzmann_digits") as data:
        data.setdefault("rows", {}).update(rows)
        data["machine"] = machine()


def _eval_row(model, split, method: str, k: int | None) -> dict[str, Any]:
    c0 = time.process_time()
    r = evaluate(model, split, method=method, k=k, batch_size=512)
    row = {"method": method, "k": r.k, "nats": r.nll_nats, "bpd": r.bpd, "kind": r.kind,
           "label": r.label, "stderr": r.stderr_nats,
           "estimator_stderr": r.estimator_stderr_nats, "eval_cpu_s": time.process_time() - c0}
    if method == "estimate" and hasattr(model, "log_partition_ais"):
        ais = model.log_partition_ais()
        low, high = ais.band()
        # the NLL's band: log Z's band shifts every example's NLL by the same amount
        row["band"] = [r.nll_nats + (low - ais.log_z), r.nll_nats + (high - ais.log_z)]
        row["effective_chains"] = ais.effective_chains
        row["ais_temperatures"] = model.config.ais_temperatures
    return row


def save_grid(samples: torch.Tensor, spec, name: str) -> None:
    save_png(image_grid(samples[:64], spec, ncol=8), RESULTS / f"boltzmann_{name}.png", scale=4)


def row_key(key: str, seed: int) -> str:
    """The results' key of ``key`` trained with ``seed`` (seed 0 keeps the bare key)."""
    return key if seed == 0 else f"{key}_seed{seed}"


def run_model(key: str, seed: int = 0) -> dict[str, Any]:
    preset, overrides, methods = {**MODELS, **TOYS, **MNIST}[key]
    run_dir, how = ensure_trained({"key": f"boltzmann-{key}", "preset": preset,
                                   "overrides": overrides}, seed)
    run = open_run(run_dir)
    model = run.load_model()
    if "ais_temperatures" in getattr(model.config, "__dataclass_fields__", {}):
        model.config = dataclasses.replace(model.config,
                                           ais_temperatures=AIS_TEMPERATURES.get(key, 10000))
    info = json.loads((run_dir / "run.json").read_text())
    data = load(run.config.data.name)
    torch.manual_seed(0)
    row: dict[str, Any] = {
        "model": key, "seed": seed, "preset": preset, "overrides": overrides,
        "data": run.config.data.name,
        "how": how, "params": model.num_parameters(), "train_cpu_s": info.get("cpu_s"),
        "epochs": info.get("epochs_completed"), "best_epoch": info.get("best_epoch"),
        "scores": [_eval_row(model, data.test, m, k) for m, k in methods],
    }
    if hasattr(model, "mixing"):
        d = model.mixing(500, generator=torch.Generator().manual_seed(0))
        row["mixing"] = {"integrated_time": d.integrated_time,
                         "rho1": float(d.autocorrelation[1]), "age": d.age}
    if key in TOYS:
        save_toy(model, data, key)
    elif seed == 0:
        with torch.no_grad():
            samples = model.sample(64, generator=torch.Generator().manual_seed(0))
        save_grid(samples, model.spec, key)
    return row


def save_toy(model, data, name: str) -> None:
    """The model's density on a grid, the test points and 2000 samples, side by side."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = data.test.x
    lo, hi = real.min(0).values - 0.5, real.max(0).values + 0.5
    gx, gy = torch.meshgrid(torch.linspace(float(lo[0]), float(hi[0]), 200),
                            torch.linspace(float(lo[1]), float(hi[1]), 200), indexing="xy")
    with torch.no_grad():
        density = model.log_prob(torch.stack([gx, gy], -1).reshape(-1, 2)).exp().reshape(200, 200)
        fake = model.sample(2000, generator=torch.Generator().manual_seed(0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), dpi=100)
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    axes[0].imshow(density, origin="lower", extent=extent, cmap="viridis", aspect="auto")
    axes[0].set_title("model density p(x) (exact)", fontsize=12)
    axes[1].scatter(real[:, 0], real[:, 1], s=2, c="k", alpha=0.4, label="test data")
    axes[1].scatter(fake[:, 0], fake[:, 1], s=2, c="tab:orange", alpha=0.5, label="samples")
    axes[1].set_xlim(extent[:2])
    axes[1].set_ylim(extent[2:])
    axes[1].legend(fontsize=10, markerscale=4)
    axes[1].set_title("test data and Gibbs samples", fontsize=12)
    fig.suptitle(f"{name}", fontsize=13)
    fig.tight_layout()
    fig.savefig(RESULTS / f"boltzmann_{name}.png")
    plt.close(fig)


def sklearn_rows(hidden: int, seed: int = 0) -> dict[str, Any]:
    """scikit-learn's BernoulliRBM (``random_state=seed``) beside ours, scored by our exact
    log Z or AIS."""
    from sklearn.neural_network import BernoulliRBM

    data = load("binary_digits")
    x = data.train.x.reshape(len(data.train.x), -1).numpy().astype(np.float64)
    c0 = time.process_time()
    sk = BernoulliRBM(n_components=hidden, learning_rate=0.01, batch_size=10, n_iter=250,
                      random_state=seed)
    sk.fit(x)
    fit_cpu = time.process_time() - c0
    ours = build_model("rbm", data.spec, {"hidden": hidden, "ais_temperatures": 10000})
    with torch.no_grad():
        ours.weight.copy_(torch.from_numpy(sk.components_.T).float()[:, None, :])
        ours.visible_bias.copy_(torch.from_numpy(sk.intercept_visible_).float()[:, None])
        ours.hidden_bias.copy_(torch.from_numpy(sk.intercept_hidden_).float())
        mean = (data.train.x.reshape(1000, -1).float().sum(0) + 1) / 1002
        ours.base_logits.copy_(torch.logit(mean)[:, None])
    torch.manual_seed(0)
    method = "exact" if hidden <= 22 else "estimate"
    return {"model": f"sklearn_bernoulli_rbm_{hidden}", "seed": seed, "data": "binary_digits",
            "params": ours.num_parameters(), "train_cpu_s": fit_cpu,
            "recipe": "BernoulliRBM(n_components=%d, learning_rate=0.01, batch_size=10, "
                      "n_iter=250), PCD-1" % hidden,
            "scores": [_eval_row(ours, data.test, method, None)]}


def floor_row(name: str) -> dict[str, Any]:
    """The independent Bernoulli model with add-one smoothing: the floor."""
    data = load(name)
    x = data.train.x.reshape(len(data.train.x), -1).double()
    p = (x.sum(0) + 1) / (len(x) + 2)
    t = data.test.x.reshape(len(data.test.x), -1).double()
    nll = -(t * p.log() + (1 - t) * (1 - p).log()).sum(1)
    d = x.shape[1]
    return {"model": "independent_bernoulli", "data": name, "params": d,
            "scores": [{"method": "exact", "nats": float(nll.mean()), "kind": "exact",
                        "label": "exact NLL (add-one)", "bpd": float(nll.mean()) / (d * math.log(2)),
                        "stderr": float(nll.std() / math.sqrt(len(nll)))}]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--no-sklearn", action="store_true")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--mnist", action="store_true", help="also the RBM-500 on binarized MNIST")
    p.add_argument("--no-toys", action="store_true", help="skip the Gaussian RBM on the moons")
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2],
                   help="seeds of the RBMs that have a scikit-learn peer, and of the peer")
    args = p.parse_args()
    torch.set_num_threads(1)
    data = read()
    if not args.render_only:
        rows = data["rows"]
        rows["independent_bernoulli"] = floor_row("binary_digits")
        rows["independent_bernoulli_4x4"] = floor_row("binary_digits_4x4")
        save({k: rows[k] for k in ("independent_bernoulli", "independent_bernoulli_4x4")})
        keys = args.only or list(MODELS)
        if not args.no_toys and not args.only:
            keys += list(TOYS)
        if args.mnist:
            keys += [k for k in MNIST if k not in keys]
        for key in keys:
            for seed in args.seeds if key in SEEDED else [0]:
                rk = row_key(key, seed)
                if rk in rows and not args.redo and rows[rk].get("how") is not None:
                    continue
                print(f"{rk} ...", flush=True)
                rows[rk] = run_model(key, seed)
                print(json.dumps(rows[rk]["scores"], indent=1), flush=True)
                save({rk: rows[rk]})
        if not args.no_sklearn:
            for hidden in (20, 64):
                for seed in args.seeds:
                    rk = row_key(f"sklearn_bernoulli_rbm_{hidden}", seed)
                    if rk in rows and not args.redo:
                        continue
                    print(f"{rk} ...", flush=True)
                    rows[rk] = sklearn_rows(hidden, seed)
                    print(json.dumps(rows[rk]["scores"], indent=1), flush=True)
                    save({rk: rows[rk]})
    import report_md

    print(report_md.write_benchmarks_md())


if __name__ == "__main__":
    main()
