"""Benchmark: sample quality of the GAN family and the EBM on 8-bit MNIST (issue 16).

    python benchmarks/gan_mnist.py [--variants nonsaturating conditional ...] [--seeds 0 1 2]
        [--n 1000] [--n-real 1000] [--no-floor]

As ``gan_digits.py`` does it on the 8x8 digits (its ``run_one``, ``COLLAPSE`` and ``merge_rows``;
``quality_digits.py``'s ``draw``, ``split_images`` and ``scores``), on MNIST (28x28, 256
levels; the files under ./data/mnist): each variant is a ``configs/*_mnist.yaml`` preset
trained by the real trainer with one thread under the preset's wall-clock budget
(``train.time_budget_s``), so every figure is a CPU budget's, not convergence's. The saved
weights (the best by validation FD, EMA weights where the preset has EMA) draw n samples in one
call with a generator seeded 0, scored with the library's MNIST feature net
(``feature_net("mnist")``, trained on first use and cached under data/features) against one
fixed real set: ``n_real`` test images chosen by ``torch.randperm`` with a generator seeded 0
(the same set for every row). FD, KID (with its jackknife standard error), precision and recall
(k = 3), density and coverage. A seed whose samples collapse or diverge (precision or recall
below 0.2, or FD above 100) is flagged ``collapsed``. The conditional GAN also reports the
feature net's accuracy on samples drawn for given labels.

The floor: ``n_real`` training images (randperm, generator seeded 0) against the same test set.
Rows land in ``benchmarks/results/gan_mnist.json`` as they finish (merged under a file lock,
so two processes may run disjoint variants side by side: the budgets are wall seconds, so run
at most one per core), with ``gan_mnist_<variant>.png`` (64 samples of seed 0).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402
import gan_digits  # noqa: E402
from gan_digits import COLLAPSE, merge_rows  # noqa: E402
from quality_digits import scores, split_images  # noqa: E402

from dgm.data import load  # noqa: E402
from dgm.eval.features import feature_net  # noqa: E402
from dgm.eval.quality import compare  # noqa: E402

OUT = RESULTS / "gan_mnist.json"
METRICS = ("fd", "kid", "pr", "dc")
# variant: (preset, overrides, what); in the order of the issue
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    "nonsaturating": ("gan_mnist", [], "MLP GAN, non-saturating loss (configs/gan_mnist.yaml)"),
    "minimax": ("gan_mnist", ["model.loss=minimax"], "MLP GAN, the book's saturating minimax"),
    "wasserstein": ("wgan_mnist", [], "MLP critic, WGAN with weight clipping c = 0.01, 5 critic "
                    "steps, RMSProp 2e-4"),
    "wgan_gp": ("wgan_gp_mnist", [], "MLP critic, WGAN-GP λ = 10, 5 critic steps"),
    "hinge_sn": ("hinge_sn_mnist", [], "MLP, hinge loss, spectral norm, Adam (5e-4, "
                 "β = (0, 0.9)), 2 critic steps"),
    "conditional": ("cgan_mnist", [], "MLP, class-conditional, projection discriminator"),
    "dcgan": ("dcgan_mnist", [], "DCGAN conv nets (width 16), non-saturating loss, Adam 5e-4"),
    "gmmn": ("gmmn_mnist", [], "GMMN: MMD² with 5 Gaussian kernels"),
    "ebm": ("ebm_mnist", [], "MLP energy, Langevin from a replay buffer (configs/ebm_mnist.yaml)"),
    # diagnostic of ebm: 5% restarts per draw (JEM's, the library default) instead of 1%: more
    # of the buffer's chains that `sample` continues are young, still noise
    "ebm_reinit05": ("ebm_mnist", ["model.reinit_prob=0.05"], "ebm with 5% restarts per draw"),
}


def subset(x: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n rows of x chosen by randperm with a generator seeded ``seed`` (kept in their order)."""
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx.sort().values]


def run_one(variant: str, seed: int, n: int, data, test, net, workdir: Path) -> dict[str, Any]:
    """gan_digits.run_one on this file's MNIST variants."""
    return gan_digits.run_one(variant, seed, n, data, test, net, workdir, variants=VARIANTS,
                              prefix="gan_mnist", scale=2)


def _merge(fields: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> None:
    merge_rows("gan_mnist", fields, rows, list(VARIANTS))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--variants", nargs="*", default=list(VARIANTS))
    p.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--n-real", type=int, default=1000)
    p.add_argument("--no-floor", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    data = load("mnist")
    test = subset(split_images(data, "test"), args.n_real)
    c0 = time.process_time()
    net = feature_net("mnist")  # trained and cached on first use
    net_s = time.process_time() - c0
    _merge({"machine": machine(),
            "settings": {"n": args.n, "sample_seed": 0, "n_real": len(test),
                         "real": f"mnist test: {len(test)} of 10000 by randperm, generator "
                                 "seeded 0 (the same set for every row)",
                         "feature_net": net.tag, "feature_net_test_accuracy": net.test_accuracy,
                         "threads": 1, "metrics": list(METRICS), "k_pr": 3, "k_dc": 5,
                         "collapse_thresholds": COLLAPSE,
                         "budget": "each preset's train.time_budget_s (wall s, checked at the "
                                   "end of an epoch)"}})
    if net_s > 1.0:
        _merge({"feature_net_train_cpu_s": net_s})
    if not args.no_floor:
        train_x = subset(split_images(data, "train"), args.n_real)
        r = compare(test, train_x, dataset="mnist", spec=data.spec, metrics=list(METRICS),
                    split="test", seed=0, net=net)
        print(f"floor (train vs test): {r.line()}", flush=True)
        _merge({"floor": {"what": f"{len(train_x)} training images (randperm, generator "
                                  "seeded 0) against the same test set", **scores(r)}})
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants:
            for seed in args.seeds:
                row = run_one(variant, seed, args.n, data, test, net, Path(tmp))
                _merge({}, [row])
    print(f"wrote {OUT} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
