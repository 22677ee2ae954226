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
``--sweep``, the hybrid IDF at λ in ``LAMBDAS`` (additive weighting) draws the accuracy-versus-NLL
curve, with the pure classifier's error and the generative IDF's NLL as its ends
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
from dgm.eval.classification import auroc, error_rate, expected_calibration_error  # noqa: E402
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


def ood_sets(x: torch.Tensor, levels: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {"noise": torch.randint(0, levels, x.shape, generator=gen),
            "flipped": x.flip(-2)}


def scores(model, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """log p(x) (None where the model has none) and the max softmax (None for no classifier)."""
    model.eval()
    with torch.no_grad():
        log_p = model.log_prob(x).double() if hasattr(model, "log_prob") else None
        logits = model.class_logits(x) if hasattr(model, "class_logits") else None
    soft = None if logits is None else torch.softmax(logits.double(), -1).max(-1).values
    return log_p, soft


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
    x, y = data.test.batch(slice(None), data.spec)
    e = evaluate(model, data.test, split_name="test",
                 method="iwae" if name == "hybrid_vae" else "auto", k=1000 if name ==
                 "hybrid_vae" else None)
    out.update({"test_nats": e.nll_nats, "test_stderr": e.stderr_nats, "kind": e.kind,
                "label": e.label})
    in_logp, in_soft = scores(model, x)
    if hasattr(model, "class_logits"):
        with torch.no_grad():
            logits = model.class_logits(x)
        out["test_error"] = error_rate(logits, y)
        out["ece"] = expected_calibration_error(logits, y)
    for ood, x_out in ood_sets(x, int(data.spec.num_levels), seed).items():
        out_logp, out_soft = scores(model, x_out)
        if in_logp is not None and out_logp is not None:
            out[f"auroc_logp_{ood}"] = auroc(in_logp, out_logp)
        if in_soft is not None and out_soft is not None and "test_error" in out:
            out[f"auroc_softmax_{ood}"] = auroc(in_soft, out_soft)
    print(json.dumps(out), flush=True)
    return out


def plot(rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = sorted((r for r in rows if r["model"].startswith("lambda_") and r.get("test_error")
                    is not None and r["lam"] > 0), key=lambda r: r["lam"])
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=130)
    ax.plot([r["test_nats"] for r in sweep], [100 * r["test_error"] for r in sweep], "o-",
            color="tab:blue", label="hybrid IDF, additive λ")
    for r in sweep:
        ax.annotate(f"λ={r['lam']:g}", (r["test_nats"], 100 * r["test_error"]),
                    textcoords="offset points", xytext=(6, 4), fontsize=8)
    ends = {r["model"]: r for r in rows if r["model"] in ("classifier", "idf")}
    if "classifier" in ends:
        ax.axhline(100 * ends["classifier"]["test_error"], color="tab:green", ls="--",
                   label=f"pure classifier (λ = 0): {100 * ends['classifier']['test_error']:.1f}%"
                         f", NLL {ends['classifier']['test_nats']:.0f}")
    if "idf" in ends:
        ax.axvline(ends["idf"]["test_nats"], color="tab:red", ls="--",
                   label=f"generative IDF: {ends['idf']['test_nats']:.1f} nats")
    ax.set_xlabel("test NLL of p(x), nats per image (exact)")
    ax.set_ylabel("test error of p(y | x), %")
    ax.set_title("Hybrid IDF on the 8x8 digits: accuracy against likelihood")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "hybrid_lambda.png")
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
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
                rows.append(row(f"lambda_{lam:g}", "hybrid_idf_digits", (f"model.lam={lam}",),
                                f"hybrid IDF, additive λ = {lam:g}", args.seeds[0], data,
                                lam=lam))
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
