"""Benchmark: hybrid models on the 8x8 digits (issue 17, Book ch. 6): accuracy and likelihood
together, with calibration and out-of-distribution scores.

    python benchmarks/hybrid_digits.py [--rows ...] [--seeds 0] [--sweep] [--plot-only]

Every row is trained through the real trainer (one thread, early stopping on the validation
objective, best weights) and reported on the 447 test digits with

- test error of argmax p(y | x), and the expected calibration error (15 bins);
- the NLL of p(x) in nats per image with its kind (exact for the IDF; for a flow or a VAE the
  evaluator's bound);
- out-of-distribution AUROC of two scores, log p(x) and the max softmax, between the test
  digits and (a) 447 images of uniform noise on the 17 levels, (b) the test digits flipped
  upside down.

Rows (``ROWS``): the pure classifier (the hybrid at λ = 0, an MLP on x), the generative IDF
alone (``configs/idf_digits.yaml``), the naive hybrid (two separate networks), the hybrid IDF
with a shared trunk (``configs/hybrid_idf_digits.yaml``), the flow hybrid of Eq. 6.12 on
RealNVP, the hybrid VAE (Eq. 6.14) and semi-supervised hybrid IDFs with 100 labels. With
``--sweep``, the hybrid IDF at λ in ``LAMBDAS`` (additive weighting) over the same seeds draws the
accuracy-versus-NLL curve (mean ± sd), with its ends: the classifier on the same trunk at λ = 0,
the MLP on x, and the generative IDF's NLL
(benchmarks/results/hybrid_lambda.png). Anchors: the book's hybrid IDF, 152.4 nats and 11.9%
error; a plain MLP 7.6% and an RBF SVC 5.8% (ANCHORS.md); the generative IDF of BENCHMARKS.md.

Results: benchmarks/results/hybrid_digits.json (rows merged under a lock).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, locked_json, machine, train_preset  # noqa: E402

from dgm.data import load  # noqa: E402
from dgm.core.capabilities import Classifies  # noqa: E402
from dgm.eval.classification import auroc, evaluate_classifier, ood_sets  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.runs import open_run  # noqa: E402

RUNS = RESULTS / "tmp" / "hybrid_runs"
ANCHORS = {"book_hybrid_idf": {"test_nats": 152.4, "test_error": 0.119},
           "mlp_error": 0.076, "svc_rbf_error": 0.058}
LAMBDAS = (0.0, 0.001, 0.01, 0.1, 0.3, 1.0, 3.0)
#: name -> (preset, overrides, what it is)
ROWS = {
    "classifier": ("hybrid_idf_digits", ("model.lam=0", "model.trunk=naive"),
                   "pure classifier: MLP on x (the hybrid at λ = 0)"),
    "idf": ("idf_digits", (), "generative IDF alone (configs/idf_digits.yaml)"),
    "naive": ("hybrid_idf_digits", ("model.trunk=naive",),
              "naive hybrid: MLP on x + separate IDF, λ = 1 (Eq. 6.2)"),
    "hybrid_idf": ("hybrid_idf_digits", (), "hybrid IDF: MLP on the IDF's latent, λ = 1"),
    "hybrid_flow": ("hybrid_flow_digits", (),
                    "flow hybrid (Eq. 6.12): MLP on RealNVP's z, λ = 1"),
    "hybrid_vae": ("hybrid_vae_digits", (),
                   "hybrid VAE (Eq. 6.14): MLP on the posterior mean, λ = 1, ELBO"),
    "semi_100": ("hybrid_idf_digits", ("data.options.labelled=100",),
                 "hybrid IDF, 100 of 1000 training labels (the rest: log p(x) only)"),
    "semi_100_classifier": ("hybrid_idf_digits", ("data.options.labelled=100", "model.lam=0",
                                                  "model.trunk=naive"),
                            "pure classifier on the same 100 labels"),
}


def fit(name: str, preset: str, extra: tuple[str, ...], seed: int) -> tuple[Path, str | None]:
    run_dir = RUNS / f"{name}-{seed}"
    return run_dir, train_preset(run_dir, preset, [f"train.seed={seed}", *extra])


def row(name: str, preset: str, extra: tuple[str, ...], what: str, seed: int,
        data, lam: float | None = None) -> dict[str, Any]:
    run_dir, error = fit(name, preset, extra, seed)
    out: dict[str, Any] = {"model": name, "what": what, "seed": seed, "overrides": list(extra),
                           "lam": lam, "error": error}
    if error is not None:
        print(json.dumps(out), flush=True)
        return out
    run = open_run(run_dir)
    info = run.info
    out.update({k: info.get(k) for k in ("epochs_completed", "best_epoch", "cpu_s",
                                         "num_parameters")})
    model = run.load_model("cpu").eval()
    e = evaluate(model, data.test, split_name="test",
                 method="iwae" if name == "hybrid_vae" else "auto", k=1000 if name ==
                 "hybrid_vae" else None)
    out.update({"test_nats": e.nll_nats, "test_stderr": e.stderr_nats, "kind": e.kind,
                "label": e.label})
    if isinstance(model, Classifies):
        c = evaluate_classifier(model, data.test, seed=seed)
        out.update({"test_error": c.error, "ece": c.ece})
        for ood in c.auroc_softmax:
            out[f"auroc_logp_{ood}"] = c.auroc_log_p[ood]
            out[f"auroc_softmax_{ood}"] = c.auroc_softmax[ood]
    else:  # the generative IDF alone: only its log p(x) separates
        x, _ = data.test.all(data.spec)
        with torch.no_grad():
            log_p = model.log_prob(x).double()
            for ood, x_out in ood_sets(x, data.spec, seed).items():
                out[f"auroc_logp_{ood}"] = auroc(log_p, model.log_prob(x_out).double())
    print(json.dumps(out), flush=True)
    return out


def _mean_sd(rows: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[float, float]:
    values = torch.tensor([r[key] * scale for r in rows], dtype=torch.float64)
    return float(values.mean()), float(values.std()) if len(values) > 1 else 0.0


def plot(rows: list[dict[str, Any]]) -> None:
    """Test error against test NLL over λ (mean ± sd over the sweep's seeds), with the ends:
    the classifier on the same trunk at λ = 0, the MLP on x, and the generative IDF."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def ok(r: dict[str, Any]) -> bool:
        return r.get("error") is None and r.get("test_error") is not None

    lams = sorted({r["lam"] for r in rows if r["model"].startswith("lambda_") and ok(r)
                   and r["lam"] > 0})
    if not lams:
        return
    fig, ax = plt.subplots(figsize=(7.0, 4.6), dpi=130)
    points = []
    for lam in lams:
        rs = [r for r in rows if r["model"] == f"lambda_{lam:g}" and ok(r)]
        (nll, nll_sd), (err, err_sd) = _mean_sd(rs, "test_nats"), _mean_sd(rs, "test_error", 100)
        points.append((nll, err))
        ax.errorbar(nll, err, xerr=nll_sd, yerr=err_sd, fmt="o", color="tab:blue", capsize=3)
        ax.annotate(f"λ={lam:g}", (nll, err), textcoords="offset points", xytext=(7, 5),
                    fontsize=8)
    ax.plot(*zip(*points), "-", color="tab:blue", alpha=0.5,
            label=f"hybrid IDF, additive λ (mean ± sd, {len(rs)} seeds)")
    seeds = {r["seed"] for r in rows if r["model"].startswith("lambda_")}
    ends = {name: [r for r in rows if r["model"] == name and r["seed"] in seeds and
                   r.get("error") is None] for name in ("lambda_0", "classifier", "idf")}
    if ends["lambda_0"]:
        err = _mean_sd(ends["lambda_0"], "test_error", 100)[0]
        ax.axhline(err, color="tab:green", ls="--",
                   label=f"λ = 0: the classifier on the IDF's trunk alone, {err:.1f}%")
    if ends["classifier"]:
        err = _mean_sd(ends["classifier"], "test_error", 100)[0]
        ax.axhline(err, color="tab:olive", ls=":", label=f"MLP on x (no density): {err:.1f}%")
    if ends["idf"]:
        nll = _mean_sd(ends["idf"], "test_nats")[0]
        ax.axvline(nll, color="tab:red", ls="--", label=f"generative IDF alone: {nll:.1f} nats")
    ax.set_xlabel("test NLL of p(x), nats per image (exact)")
    ax.set_ylabel("test error of p(y | x), %")
    ax.set_title("Hybrid IDF on the 8x8 digits: accuracy against likelihood over λ")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "hybrid_lambda.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--sweep", action="store_true")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load("digits")
    rows: list[dict[str, Any]] = []
    if not args.plot_only:
        for name in args.rows:
            preset, extra, what = ROWS[name]
            for seed in args.seeds:
                rows.append(row(name, preset, extra, what, seed, data))
        if args.sweep:
            for lam in LAMBDAS:
                for seed in args.seeds:
                    rows.append(row(f"lambda_{lam:g}", "hybrid_idf_digits", (f"model.lam={lam}",),
                                    f"hybrid IDF, additive λ = {lam:g}", seed, data, lam=lam))
    key = ("model", "seed")
    with locked_json("hybrid_digits") as result:
        new = {tuple(r.get(k) for k in key) for r in rows}
        result["rows"] = [r for r in result.get("rows", [])
                          if tuple(r.get(k) for k in key) not in new] + rows
        result["anchors"] = ANCHORS
        if rows:
            result["machine"] = machine()
        merged = result["rows"]
    plot(merged)
    print(f"wrote {RESULTS / 'hybrid_digits.json'} ({time.strftime('%H:%M')})")


if __name__ == "__main__":
    main()
