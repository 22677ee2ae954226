"""Benchmark: diffusion, score, CNF and flow-matching models on the 8x8 digits (issue 15).

    python benchmarks/diffusion_digits.py [--only ddpm vdm ...] [--n 1000] [--no-samplers]
        [--redo] [--render-only]

Each model's ``configs/<model>_digits.yaml`` is trained for seed 0 with one thread into
``benchmarks/results/tmp/runs/<model>-0`` (reused when finished, resumed when interrupted; see
``quality_digits.ensure_trained``). Then, on the 447 test images:

- every likelihood the model has, in nats per image of the 17-level space, labelled with its
  kind: the diffusion bounds (``bound``: DDPM's T KL terms and discretized decoder, VDM's
  continuous-time bound), and the probability-flow / CNF ODE likelihoods (``estimate``: uniform
  dequantization, the solver, its tolerance, the mean function evaluations and the estimator's
  standard error), with the CPU seconds of the evaluation;
- sample quality against the number of network evaluations for every sampler the model has
  (ancestral, DDIM at 10/20/50/100 steps, Heun and RK4 at several steps, adaptive dopri5, the
  reverse SDE, predictor-corrector, annealed Langevin): FD, KID ± se, precision and recall on
  the shipped digits feature net, ``n`` samples each, with the sampling CPU seconds.

Rows land in ``benchmarks/results/diffusion_digits.json`` as they finish (a stopped run
resumes: rows with the same fingerprint are kept). BENCHMARKS.md is rendered at the end.
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
from common import RESULTS, machine  # noqa: E402
from quality_digits import ensure_trained, fingerprint, scores, split_images  # noqa: E402

from dgm.core.errors import DgmError  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.features import feature_net  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.eval.quality import compare  # noqa: E402
from dgm.runs import INFO, open_run  # noqa: E402

OUT = RESULTS / "diffusion_digits.json"

#: per model (the preset configs/<name>_digits.yaml): its likelihood methods, and its samplers
#: as (solver, steps) (steps None: the model's default or an adaptive solver)
PLAN: dict[str, dict[str, Any]] = {
    "vdm": {"methods": ["bound", "estimate"],
            "samplers": [("ancestral", 256), ("ancestral", 1000), ("ddim", 10), ("ddim", 20),
                         ("ddim", 50), ("ddim", 100), ("heun", 10), ("heun", 25),
                         ("rk4", 10), ("dopri5", None)]},
    "ddpm": {"methods": ["bound", "estimate"],
             "samplers": [("ancestral", 1000), ("ddim", 10), ("ddim", 20), ("ddim", 50),
                          ("ddim", 100), ("heun", 10), ("heun", 25), ("rk4", 10),
                          ("dopri5", None)]},
    "score_sde": {"methods": ["estimate"],
                  "samplers": [("euler_maruyama", 500), ("pc", 250), ("ddim", 50),
                               ("heun", 25), ("dopri5", None)]},
    "score_sde_dequantized": {"methods": ["estimate"],
                              "samplers": [("euler_maruyama", 500), ("pc", 250), ("ddim", 50),
                                           ("heun", 25), ("dopri5", None)]},
    "flow_matching": {"methods": ["estimate"],
                      "samplers": [("euler", 20), ("heun", 10), ("heun", 25), ("rk4", 10),
                                   ("dopri5", None)]},
    "flow_matching_dequantized": {"methods": ["estimate"],
                                  "samplers": [("euler", 5), ("euler", 20), ("heun", 5),
                                               ("heun", 25), ("rk4", 10), ("dopri5", None)]},
    "cnf": {"methods": ["estimate"],
            "samplers": [("rk4", 10), ("dopri5", None)]},
    "cnf_mlp": {"methods": ["estimate"],
                "samplers": [("rk4", 10), ("dopri5", None)]},
    "ncsn": {"methods": [], "samplers": [("langevin", None)]},
}

ANCHORS = {
    "independent": 106.5, "mixture40": 100.0, "zuko_nsf": 98.5, "nsf_ar": 87.3,
    "pixelcnn": 79.6, "book_diffusion": 297.0, "book_flow_matching": 106.7,
    "mixture40_quality": {"fd": 11.2, "precision": 0.60},
}


def read_results() -> dict[str, Any]:
    if OUT.is_file():
        return json.loads(OUT.read_text())
    return {"likelihood": [], "samplers": []}


def save(data: dict[str, Any]) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(OUT)


def put(data: dict[str, Any], table: str, row: dict[str, Any], *keys: str) -> None:
    """Replace the row with the same ``keys`` and save; rows written meanwhile by another
    invocation (``--only`` streams run side by side) are read back first and kept."""
    on_disk = read_results()
    for name in ("likelihood", "samplers"):
        data[name] = on_disk.get(name, [])
    data[table] = [r for r in data[table] if any(r.get(k) != row.get(k) for k in keys)]
    data[table].append(row)
    save(data)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None, help="model names of PLAN")
    p.add_argument("--n", type=int, default=1000, help="samples per sampler")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-samplers", action="store_true")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if not args.render_only:
        run(args)
    from report_md import write_benchmarks_md

    print(write_benchmarks_md())


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    data = load("digits")
    test_split = data.split("test")
    test = split_images(data, "test")
    net = feature_net("digits")
    results = read_results()
    results.update(machine=machine(), anchors=ANCHORS,
                   settings={"n": args.n, "seed": args.seed, "threads": 1,
                             "feature_net": net.tag, "real": f"digits test ({len(test)})"})
    save(results)
    names = args.only or list(PLAN)
    for name in names:
        entry = {"key": name, "preset": f"{name}_digits", "overrides": []}
        fp = fingerprint(entry, args.seed)
        run_dir, how = ensure_trained(entry, args.seed)
        info = json.loads((run_dir / INFO).read_text())
        model = open_run(run_dir).load_model()
        model.eval()
        base = {"model": name, "fingerprint": fp, "params": model.num_parameters(),
                "train_cpu_s": info.get("cpu_s"), "epochs": info.get("epochs_completed"),
                "best_epoch": info.get("best_epoch")}
        print(f"{name}: {how} in {run_dir}", flush=True)
        have = {(r["model"], r.get("method"), r.get("fingerprint")) for r in results["likelihood"]}
        for method in PLAN[name]["methods"]:
            if not args.redo and (name, method, fp) in have:
                continue
            c0 = time.process_time()
            try:
                e = evaluate(model, test_split, method=method,
                             k=4 if method == "bound" else None)
            except DgmError as err:
                put(results, "likelihood", {**base, "method": method, "error": str(err)},
                    "model", "method")
                continue
            row = {**base, "method": method, "cpu_s": time.process_time() - c0, **e.to_dict()}
            print(f"  {e.line()}", flush=True)
            put(results, "likelihood", row, "model", "method")
        if args.no_samplers:
            continue
        have = {(r["model"], r["solver"], r["steps"], r.get("fingerprint"))
                for r in results["samplers"]}
        for solver, steps in PLAN[name]["samplers"]:
            if not args.redo and (name, solver, steps, fp) in have:
                continue
            options: dict[str, Any] = {"solver": solver}
            if steps is not None:
                options["steps"] = steps
            if solver == "langevin":
                options = {}
            generator = torch.Generator().manual_seed(args.seed)
            c0, w0 = time.process_time(), time.perf_counter()
            try:
                with torch.no_grad():
                    fake = model.sample(args.n, generator=generator, **options)
            except DgmError as err:
                put(results, "samplers", {**base, "solver": solver, "steps": steps,
                                          "error": str(err)}, "model", "solver", "steps")
                continue
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            r = compare(test, fake, dataset="digits", spec=data.spec,
                        metrics=["fd", "kid", "pr"], split="test", seed=args.seed, net=net)
            print(f"  {solver} {steps}: {r.line()} ({model.last_sample_nfe} NFE, {cpu:.1f} "
                  "CPU s)", flush=True)
            put(results, "samplers", {**base, "solver": solver, "steps": steps,
                                      "nfe": model.last_sample_nfe, "sample_cpu_s": cpu,
                                      "sample_wall_s": wall, **scores(r)},
                "model", "solver", "steps")


if __name__ == "__main__":
    main()
