"""Benchmark: what an ODE likelihood costs, by solver, tolerance, trace estimator and chunk size.

    python benchmarks/ode_cost.py [--models flow_matching_dequantized vdm] [--n 64]

For each trained digits preset (the runs of ``diffusion_digits.py``, trained here if missing) the
first ``n`` test images (n / 16, at least 2, through a U-Net) are scored by the model's ODE
likelihood under every setting of ``SETTINGS``; each setting runs in a fresh subprocess with one
thread, so that its peak memory (the growth of the resident set over the loaded model,
``ru_maxrss``) is its own. Recorded: the mean estimate in nats per image (a dequantization bound on
the 17-level NLL, an estimate), the mean standard error of the Hutchinson trace, the mean NFE per
solve, CPU seconds per image and the peak memory.

The dequantized flow-matching preset is an MLP and the VDM preset a U-Net: the exact trace (one
backward pass per dimension at every evaluation) is what makes the U-Net's ODE likelihood slow, and
why its preset uses Hutchinson's estimator.

Results: ``benchmarks/results/ode_cost.json``; table in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine, write_result  # noqa: E402

#: (name, eval-config overrides); every setting scores the same images
SETTINGS: list[tuple[str, dict[str, Any]]] = [
    ("dopri5 1e-5, exact", {"eval_solver": "dopri5", "eval_rtol": 1e-5, "eval_atol": 1e-5,
                            "eval_divergence": "exact"}),
    ("dopri5 1e-3, exact", {"eval_solver": "dopri5", "eval_rtol": 1e-3, "eval_atol": 1e-3,
                            "eval_divergence": "exact"}),
    ("dopri5 1e-5, Hutchinson x1", {"eval_solver": "dopri5", "eval_rtol": 1e-5,
                                    "eval_atol": 1e-5, "eval_divergence": "hutchinson",
                                    "eval_probes": 1}),
    ("dopri5 1e-5, Hutchinson x4", {"eval_solver": "dopri5", "eval_rtol": 1e-5,
                                    "eval_atol": 1e-5, "eval_divergence": "hutchinson",
                                    "eval_probes": 4}),
    ("rk4 20 steps, exact", {"eval_solver": "rk4", "eval_steps": 20,
                             "eval_divergence": "exact"}),
    ("dopri5 1e-5, exact, chunk 8", {"eval_solver": "dopri5", "eval_rtol": 1e-5,
                                     "eval_atol": 1e-5, "eval_divergence": "exact",
                                     "eval_chunk": 8}),
]

def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement, in this (fresh) process."""
    torch.set_num_threads(1)
    from dgm.data import load
    from dgm.runs import open_run

    data = load("digits")
    x = data.test.x[: spec["n"]]
    model = open_run(spec["run"]).load_model()
    model.eval()
    model.config = dataclasses.replace(model.config, **spec["overrides"])
    with torch.no_grad():  # warm up: allocator, kernels
        model.net(model.dequantize(x[:2]), torch.full((2,), 0.5), None)
    base = _peak_mb()
    c0, w0 = time.process_time(), time.perf_counter()
    est = model.log_prob_estimate(x, None, generator=torch.Generator().manual_seed(0))
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    n = x.shape[0]
    c = model.config
    one_probe = c.eval_divergence == "hutchinson" and c.eval_probes == 1 and c.eval_draws == 1
    return {"nll": float(-est.log_prob.mean()),
            "stderr": (None if one_probe or c.eval_divergence == "exact"
                       else float(est.stderr.mean())),
            "nfe": est.nfe, "cpu_s_per_image": cpu / n, "wall_s_per_image": wall / n,
            "peak_mb": _peak_mb() - base, "note": est.note, "n": n}


def _network(run_dir: Path) -> str:
    """The trained network, in words, from the run's config."""
    import yaml

    model = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]
    if model.get("network") == "unet":
        return f"U-Net, base {model.get('base', 32)}"
    return f"MLP {model.get('hidden', 512)} x {model.get('num_hidden', 3)}"


def measure(run: str, overrides: dict[str, Any], n: int) -> dict[str, Any]:
    spec = json.dumps({"run": run, "overrides": overrides, "n": n})
    out = subprocess.run([sys.executable, __file__, "--worker", spec], capture_output=True,
                         text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=["flow_matching_dequantized", "vdm"])
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    from quality_digits import ensure_trained

    rows = []
    for name in args.models:
        run_dir, how = ensure_trained({"key": name, "preset": f"{name}_digits",
                                       "overrides": []}, 0)
        print(f"{name}: {how} in {run_dir}", flush=True)
        network = _network(run_dir)
        # through the U-Net the exact trace costs minutes per image: a few images give the cost
        n = args.n if network.startswith("MLP") else max(2, args.n // 16)
        for label, overrides in SETTINGS:
            r = measure(str(run_dir), overrides, n)
            rows.append({"model": name, "network": network, "setting": label, **r})
            print(f"  {label}: {r}", flush=True)
    # rows of models not measured in this invocation are kept
    path = RESULTS / "ode_cost.json"
    done = {r["model"] for r in rows}
    kept = ([r for r in json.loads(path.read_text())["rows"] if r["model"] not in done]
            if path.is_file() else [])
    write_result("ode_cost", {"machine": machine(), "n": args.n, "threads": 1,
                              "rows": kept + rows})
    from report_md import write_benchmarks_md

    print(write_benchmarks_md())


if __name__ == "__main__":
    main()
