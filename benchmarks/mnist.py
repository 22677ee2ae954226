"""Benchmark: the ARM, the VAE and the flows on MNIST within a wall-clock budget.

    dgm fetch mnist
    python benchmarks/mnist.py [--budget-min 25] [--models vae arm] [--data binary_mnist]
        [--iwae-k 1000] [--iwae-n 2000] [--ode-n 100] [--jobs 2]

Each model trains from ``configs/<model>_<data>.yaml`` until its validation score stops
improving or the budget runs out (checked at the end of each epoch), then the test split is
scored: exact NLL for the ARM; -ELBO on all 10,000 test images and IWAE(k) on the first
``--iwae-n`` of them for the VAE (the label says so); a diffusion model's bound on all of them and,
with ``--ode-n N``, its probability-flow ODE likelihood on the first N (beside the bound on the
same N). Results go to
``benchmarks/results/mnist.json`` and ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

from dgm.config import load_config  # noqa: E402
from dgm.data.dataset import Split, load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.runs import open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


NOTES = (
    "Published references for dynamically binarized MNIST (ANCHORS.md §2, IWAE k=5000): a "
    "one-layer VAE 86.76, IWAE(50) training 84.78; two stochastic layers 85.33; HVAE + "
    "VampPrior 81.24; NADE 88.86 and MADE 88.04 (static binarization), PixelCNN 81.30. 8-bit "
    "MNIST with uniform dequantization, bits/dim: RealNVP 1.06, Glow 1.05, FFJORD 0.99, "
    "i-ResNet 1.05, Residual Flows 0.97, RNODE 0.97. Our runs use a CPU budget, not "
    "convergence."
)


def run_one(model: str, data: str, budget_min: float, iwae_k: int, iwae_n: int, threads: int,
            workdir: str, ode_n: int = 0) -> dict:
    torch.set_num_threads(threads)
    dataset = load(data)
    cfg = load_config(ROOT / "configs" / f"{model}_{data}.yaml")
    cfg.train.time_budget_s = budget_min * 60
    cfg.train.progress = False
    cfg.train.threads = threads
    run_dir = Path(workdir) / model
    result = train(cfg, run_dir, dataset=dataset)
    m = open_run(run_dir).load_model()
    test = evaluate(m, dataset.test, batch_size=500)
    row = {
        "model": model, "data": data, "test_nats": test.nll_nats,
        "test_bpd": test.bpd, "label": test.label, "epochs": result.epochs,
        "best_epoch": result.best_epoch, "wall_s": result.wall_s, "cpu_s": result.cpu_s,
        "params": result.num_parameters, "budget": f"{budget_min:g} min",
    }
    if test.method == "elbo":
        sub = Split(dataset.test.x[:iwae_n])
        iw = evaluate(m, sub, method="iwae", k=iwae_k, batch_size=10)
        row.update(iwae_nats=iw.nll_nats, iwae_k=iwae_k,
                   iwae_label=f"{iw.label}, first {iwae_n} test images")
    elif test.method == "bound" and ode_n and hasattr(m, "log_prob_estimate"):
        # a diffusion bound; the probability-flow ODE likelihood of the same network (costly:
        # hundreds of network evaluations per image), on the first ode_n test images
        sub = Split(dataset.test.x[:ode_n])
        ode = evaluate(m, sub, method="estimate", batch_size=ode_n)
        bound = evaluate(m, sub, batch_size=500)
        row.update(ode_nats=ode.nll_nats, ode_bpd=ode.bpd, ode_stderr=ode.stderr_nats,
                   ode_nfe=ode.nfe, subset_bound_nats=bound.nll_nats,
                   ode_label=f"{ode.label}, first {ode_n} test images")
    return row


def _save(row: dict) -> None:
    """Merge one row into the results (replacing the same model and data), as it lands."""
    path = RESULTS / "mnist.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in rows if (r["model"], r["data"]) != (row["model"], row["data"])]
    write_result("mnist", {"machine": machine(), "rows": [*rows, row], "notes": NOTES})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=["vae", "arm"])
    p.add_argument("--data", default="binary_mnist")
    p.add_argument("--budget-min", type=float, default=25.0)
    p.add_argument("--iwae-k", type=int, default=1000)
    p.add_argument("--iwae-n", type=int, default=2000)
    p.add_argument("--ode-n", type=int, default=0,
                   help="diffusion models: also the ODE likelihood of the first N test images")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="models trained at the same time")
    args = p.parse_args()
    work = tempfile.mkdtemp(prefix="dgm-mnist-")
    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [
                pool.submit(run_one, model, args.data, args.budget_min, args.iwae_k,
                            args.iwae_n, args.threads, work, args.ode_n)
                for model in args.models
            ]
            for fut in futures:
                row = fut.result()
                print(f"{row['model']}: {row}", flush=True)
                _save(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
