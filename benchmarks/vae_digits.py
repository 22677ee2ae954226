"""Benchmark: latent-variable models on 8x8 digits (issue 8), beside the book's code.

    python benchmarks/vae_digits.py [--variants standard_2d vamp_16 ...] [--seeds 0]
        [--iwae-k 5000] [--jobs 2]

Every prior with a 2-D latent and with 16 latents, every posterior, the training objectives,
the hierarchical VAEs, the VQ-VAE and pPCA, each trained from a preset plus the overrides
below with one thread, early stopping on validation, best weights restored. The test split is
scored in nats per image in the 17-level space: -ELBO averaged over 10 draws per image (an
upper bound on the NLL) and IWAE(k) (a tighter upper bound; k = 5000 by default, as in the
published tables). Results go to ``benchmarks/results/vae_digits.json`` and BENCHMARKS.md.
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
from common import RESULTS, ROOT, machine, write_result  # noqa: E402

# ANCHORS.md §1: the book's companion notebooks, -ELBO (one sample), seed 0.
BOOK = {
    "standard_2d": 99.62, "mog_2d": 98.74, "vamp_2d": 103.11, "flow_2d": 97.21,
    "standard_16": 96.37, "hvae": 96.29,
}

PRIORS = ("standard", "mog", "vamp", "vamp_learned", "gtm", "gtm_vamp", "flow")


def _prior_overrides(prior: str) -> list[str]:
    if prior == "vamp_learned":
        return ["model.prior.kind=vamp", "model.prior.weights=learned"]
    return [f"model.prior.kind={prior}"]


# name -> (preset, overrides, what the row shows)
VARIANTS: dict[str, tuple[str, list[str], str]] = {}
for _prior in PRIORS:
    for _m in (2, 16):
        VARIANTS[f"{_prior}_{_m}d" if _m == 2 else f"{_prior}_{_m}"] = (
            "vae_prior_digits", [*_prior_overrides(_prior), f"model.latent_dim={_m}"],
            f"prior {_prior}, {_m} latents",
        )
VARIANTS.update({
    "householder": ("vae_flows_digits", ["model.posterior.kind=householder"],
                    "Householder flow posterior (4 steps)"),
    "sylvester_orthogonal": ("vae_flows_digits", [
        "model.posterior.kind=sylvester", "model.posterior.variant=orthogonal",
        "model.posterior.num_ortho=8"], "orthogonal Sylvester posterior (4 steps, M'=8)"),
    "sylvester_householder": ("vae_flows_digits", [
        "model.posterior.kind=sylvester", "model.posterior.variant=householder",
        "model.posterior.num_reflections=4"], "Householder Sylvester posterior (4 steps)"),
    "sylvester_triangular": ("vae_flows_digits", [
        "model.posterior.kind=sylvester", "model.posterior.variant=triangular"],
        "triangular Sylvester posterior (4 steps)"),
    "iaf": ("vae_flows_digits", ["model.posterior.kind=iaf"], "IAF posterior (4 steps)"),
    "vmf": ("vae_flows_digits", ["model.posterior.kind=vmf"],
            "von Mises-Fisher posterior, uniform prior on S^15"),
    "vamp_sylvester": ("vae_flows_digits", [
        "model.prior.kind=vamp", "model.posterior.kind=sylvester",
        "model.posterior.variant=orthogonal", "model.posterior.num_ortho=8"],
        "VampPrior + orthogonal Sylvester"),
    "iwae_5": ("vae_prior_digits", ["model.latent_dim=16", "model.iwae_k=5"],
               "trained on IWAE(5), standard prior"),
    "warmup_freebits": ("vae_prior_digits", [
        "model.latent_dim=16", "model.warmup_steps=300", "model.free_bits=0.05"],
        "KL warm-up (300 steps, ~19 epochs) + free bits 0.05 per unit"),
    "hvae": ("hvae_digits", [], "two-level top-down VAE"),
    "hvae_bottom_up": ("hvae_bottom_up_digits", [], "two-level bottom-up VAE"),
    "vqvae": ("vqvae_digits", [], "VQ-VAE + autoregressive code prior"),
    "ppca": ("ppca_digits", [], "pPCA, closed form (uniform dequantization)"),
})


def run_one(name: str, seed: int, iwae_k: int, workdir: str) -> dict:
    torch.set_num_threads(1)
    from dgm.config import load_config
    from dgm.data.dataset import load
    from dgm.eval.likelihood import evaluate
    from dgm.runs import open_run
    from dgm.train.trainer import train

    preset, overrides, what = VARIANTS[name]
    cfg = load_config(ROOT / "configs" / f"{preset}.yaml", overrides)
    cfg.train.seed = seed
    cfg.train.threads = 1
    cfg.train.progress = False
    run_dir = Path(workdir) / f"{name}-{seed}"
    result = train(cfg, run_dir)
    dataset = load("digits")
    m = open_run(run_dir).load_model()
    elbo = evaluate(m, dataset.test, method="elbo", k=10)
    iw = evaluate(m, dataset.test, method="iwae", k=iwae_k, batch_size=64)
    row = {
        "variant": name, "what": what, "seed": seed, "preset": preset, "overrides": overrides,
        "neg_elbo": elbo.nll_nats, "neg_elbo_stderr": elbo.stderr_nats,
        "iwae_nats": iw.nll_nats, "iwae_k": iwae_k, "iwae_label": iw.label,
        "bpd_iwae": iw.bpd, "epochs": result.epochs, "best_epoch": result.best_epoch,
        "cpu_s": result.cpu_s, "params": result.num_parameters, "val_nats": result.best_val,
        "book": BOOK.get(name),
    }
    if hasattr(m, "kl_per_level"):
        x, _ = dataset.test.all(m.spec)
        with torch.no_grad():
            row["kl_per_level"] = [float(k.mean()) for k in m.kl_per_level(x)]
            means = m.latent_means(x)
        # Active units (Burda et al. 2016): Cov_x E_q[z_u | x] > 0.01.
        row["active_units"] = [int((mu.var(dim=0) > 0.01).sum()) for mu in means]
    return row


def _save(row: dict) -> None:
    """Merge one row into the results file, replacing an older row of the same variant and
    seed; the machine and command are those of the latest run."""
    path = RESULTS / "vae_digits.json"
    rows = json.loads(path.read_text())["rows"] if path.is_file() else []
    rows = [r for r in rows if (r["variant"], r["seed"]) != (row["variant"], row["seed"])]
    order = {name: i for i, name in enumerate(VARIANTS)}
    rows = sorted([*rows, row], key=lambda r: (order.get(r["variant"], len(order)), r["seed"]))
    write_result("vae_digits", {"machine": machine(), "book": BOOK, "rows": rows})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0])
    p.add_argument("--iwae-k", type=int, default=5000)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    work = tempfile.mkdtemp(prefix="dgm-vae-bench-")
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    try:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_one, v, s, args.iwae_k, work) for v, s in jobs]
            for fut in futures:
                row = fut.result()
                print(f"{row['variant']} seed {row['seed']}: -ELBO {row['neg_elbo']:.2f}, "
                      f"IWAE({row['iwae_k']}) {row['iwae_nats']:.2f}, {row['cpu_s']:.1f} CPU s, "
                      f"{row['epochs']} epochs, KL {row.get('kl_per_level')}, "
                      f"active {row.get('active_units')}", flush=True)
                _save(row)  # each row as it lands: a long run stopped early keeps its rows
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {RESULTS / 'vae_digits.json'}")
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
