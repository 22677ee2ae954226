"""Benchmark: probabilistic circuits and mixtures (issue 17, Book §2.3-2.4), exact NLL.

    python benchmarks/circuits_digits.py [--parts digits peer binary inpaint mnist]
        [--seeds 0] [--best-seeds 0 1 2] [--mnist-budget 900]

(digits)  The 17-level 8x8 digits (split 1000/350/447), exact test NLL in nats per image and
          bits/dim, CPU seconds of training (validation included), parameters: every circuit
          structure of ``configs/circuit_digits.yaml`` (HCLT by gradient and by mini-batch EM,
          quad-graph, quad-tree with Tucker layers, Poon-Domingos, RAT-SPN) and the mixture of
          40 categoricals, beside the floors (independent 106.5, mixture 100.0; ANCHORS.md §1b).
          The HCLT of the preset over ``--best-seeds``.
(peer)    cirkit 0.3.1 (GPL, so never imported: ``benchmarks/peers/setup_cirkit.sh`` builds its
          own virtual environment and ``benchmarks/peers/cirkit_digits.py`` runs there in a
          subprocess) on the same split and protocol: quad-graph, categorical inputs, CP
          layers, Adam 0.01, batch 64, early stopping (patience 20), 8 and 32 units.
(binary)  The binarized digits (pixel >= 8): HCLT, quad-graph, RAT-SPN beside the mixture of 40
          Bernoullis (18.97) and the RBMs of BENCHMARKS.md.
(inpaint) The test digits with the lower half missing: the exact conditional NLL
          -log p(x_lower | x_upper) and the marginal NLL of the upper half, for every trained
          circuit, the mixture, the independent floor and the ARM of ``configs/arm_digits.yaml``
          (raster order, so the lower half is a suffix and its conditional is exact; an ARM
          cannot condition on any other subset); a picture of the HCLT's and the mixture's fills.
(mnist)   Binarized MNIST (dynamically binarized training set, fixed test binarization) and
          8-bit MNIST: an HCLT within ``--mnist-budget`` wall seconds of training each, exact
          test NLL (bits/dim in the data's own space).

Training goes through the real trainer (one thread, progress off) into
benchmarks/results/tmp/circuit_runs (git-ignored). Results: benchmarks/results/circuits.json
(rows merged under a lock, so parts can run side by side) and circuits_*.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, locked_json, machine, train_preset  # noqa: E402

from dgm.data import load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.eval.missing import evaluate_missing, observed_mask  # noqa: E402
from dgm.eval.plots import inpainting_png  # noqa: E402
from dgm.runs import open_run  # noqa: E402

RUNS = RESULTS / "tmp" / "circuit_runs"
PEER_VENV = RESULTS / "tmp" / "cirkit-venv"
ANCHORS = {
    "digits_nats": {"independent_categorical": 106.5, "mixture_40_categoricals": 100.0,
                    "cirkit_quad_graph_8": 104.44, "cirkit_quad_graph_16": 101.23,
                    "cirkit_quad_graph_32": 96.27},
    "binary_digits_nats": {"independent_bernoulli": 24.91, "mixture_40_bernoullis": 18.97},
}

#: name -> (preset, overrides, what it is)
CAT = ("model.input=categorical",)
DIGITS = {
    "hclt": ("circuit_digits", (), "HCLT (Chow-Liu tree of the training data), K = 32, CP, "
             "binomial inputs, Adam 0.01 (configs/circuit_digits.yaml)"),
    "hclt_16": ("circuit_digits", ("model.units=16",), "the same with K = 16"),
    "hclt_em": ("circuit_digits", ("model.fit=em", "model.pseudo_count=0.1"),
                "HCLT, K = 32, binomial inputs, full-batch EM (α = 0.1)"),
    "hclt_categorical": ("circuit_digits", CAT, "HCLT, K = 32, categorical inputs"),
    "quad_graph": ("circuit_digits", ("model.structure=quad_graph", *CAT),
                   "quad-graph, K = 32, CP, categorical inputs (cirkit's structure)"),
    "quad_graph_binomial": ("circuit_digits", ("model.structure=quad_graph",),
                            "quad-graph, K = 32, CP, binomial inputs"),
    "quad_tree_tucker": ("circuit_digits", ("model.structure=quad_tree", "model.layer=tucker",
                                            "model.units=16"),
                         "quad-tree, K = 16, Tucker (EiNet) layers, binomial inputs"),
    "quad_tree_tucker_categorical": ("circuit_digits", ("model.structure=quad_tree",
                                                        "model.layer=tucker", "model.units=16",
                                                        *CAT),
                                     "quad-tree, K = 16, Tucker (EiNet) layers, categorical "
                                     "inputs"),
    "poon_domingos": ("circuit_digits", ("model.structure=poon_domingos", "model.delta=2",
                                         *CAT),
                      "Poon-Domingos, δ = 2, K = 32, CP, categorical inputs"),
    "rat_spn": ("circuit_digits", ("model.structure=rat_spn", "model.units=16",
                                   "model.depth=6", "model.repetitions=8", "train.epochs=800"),
                "RAT-SPN, depth 6 (single-pixel leaves), 8 repetitions, K = 16, CP, binomial "
                "inputs, Adam 0.01, 800 epochs"),
    "hclt_2m": ("circuit_digits", ("model.units=128",),
                "HCLT, K = 128, binomial inputs: a circuit of 2.1 M parameters"),
    "mixture": ("categorical_mixture_digits", (), "mixture of 40 categoricals (Bernoullis on "
                "binary data), EM, α = 0.5"),
}
BINARY = {k: DIGITS[k] for k in ("hclt", "hclt_em", "quad_graph", "rat_spn", "mixture")}
# on binary data a single-pixel leaf is one Bernoulli whatever K is; leaves over 4 pixels do
# better there (19.9 against 22.0 with the 17-level setting)
BINARY["rat_spn"] = ("circuit_digits", ("model.structure=rat_spn", "model.units=16",
                                        "model.depth=4", "model.repetitions=8", *CAT),
                     "RAT-SPN, depth 4, 8 repetitions, K = 16, CP, categorical inputs")
BINARY["hclt_mixture"] = ("circuit_digits", ("model.trees=4",),
                          "a mixture of 4 HCLTs (Chow-Liu trees of the data and of 3 bootstrap "
                          "resamples), K = 32, Bernoulli inputs, Adam 0.01")


def fit(name: str, preset: str, extra: tuple[str, ...], seed: int, data: str | None = None,
        more: tuple[str, ...] = ()) -> tuple[Path, str | None]:
    run_dir = RUNS / f"{name}-{data or 'digits'}-{seed}"
    overrides = [f"train.seed={seed}", *extra, *more]
    if data is not None:
        overrides.append(f"data.name={data}")
    return run_dir, train_preset(run_dir, preset, overrides)


def facts(run_dir: Path) -> dict[str, Any]:
    info = open_run(run_dir).info
    return {k: info.get(k) for k in ("epochs_completed", "best_epoch", "cpu_s",
                                     "num_parameters", "stopped_early")}


def likelihood_row(name: str, what: str, preset: str, extra: tuple[str, ...], seed: int,
                   data_name: str, data) -> dict[str, Any]:
    run_dir, error = fit(name, preset, extra, seed, None if data_name == "digits" else data_name)
    row: dict[str, Any] = {"part": data_name, "model": name, "what": what, "seed": seed,
                           "overrides": list(extra), "error": error}
    if error is None:
        row.update(facts(run_dir))
        model = open_run(run_dir).load_model("cpu")
        for split in ("val", "test"):
            e = evaluate(model, data.split(split), split_name=split)
            row[f"{split}_nats"], row[f"{split}_stderr"] = e.nll_nats, e.stderr_nats
            row[f"{split}_bpd"], row["kind"] = e.bpd, e.kind
        size = getattr(model, "circuit_size", None)
        if size is not None:
            row["circuit"] = size()
    print(json.dumps(row), flush=True)
    return row


def peer_rows(data, units: list[int], seed: int) -> list[dict[str, Any]]:
    """cirkit in its own venv: the quad-graph circuit with categorical inputs over the data's
    17 levels (the fair comparison), and its image template as shipped, whose inputs are
    categoricals over 256 levels (239 of which never occur: ANCHORS.md §7 measured that one)."""
    subprocess.run(["bash", str(ROOT / "benchmarks" / "peers" / "setup_cirkit.sh")], check=True,
                   stdout=subprocess.DEVNULL)
    path = RESULTS / "tmp" / "digits17.npz"
    np.savez(path, **{s: data.split(s).x.numpy().astype(np.int64) for s in ("train", "val",
                                                                             "test")})
    rows = []
    for categories in (17, 256):
        for k in units:
            out = subprocess.run([str(PEER_VENV / "bin" / "python"),
                                  str(ROOT / "benchmarks" / "peers" / "cirkit_digits.py"),
                                  "--data", str(path), "--units", str(k), "--seed", str(seed),
                                  "--categories", str(categories)],
                                 check=True, capture_output=True, text=True)
            peer = json.loads(out.stdout.strip().splitlines()[-1])
            what = (f"cirkit 0.3.1 quad-graph, K = {k}, CP, categorical inputs over "
                    f"{categories} levels, Adam 0.01 (peer, own venv)")
            row = {"part": "digits", "model": f"cirkit_{k}_{categories}", "seed": seed,
                   "error": None, "what": what, "test_nats": peer["test_nats"],
                   "test_stderr": peer.get("test_stderr"), "val_nats": peer["val_nats"],
                   "cpu_s": peer["cpu_s"], "num_parameters": peer["params"],
                   "epochs_completed": peer["epochs"], "best_epoch": peer["best_epoch"],
                   "kind": "exact", "test_bpd": peer["test_nats"] / (64 * np.log(2))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def _arm_prefix(model, x: torch.Tensor, observed_dims: int) -> tuple[torch.Tensor, torch.Tensor]:
    """-log p(x_{<k}) and -log p(x_{>=k} | x_{<k}) of a raster-order ARM, exact."""
    with torch.no_grad():
        flat = x.reshape(x.shape[0], -1)
        each = model.head.log_prob_each(flat, model.params(x)).double()
    return -each[:, :observed_dims].sum(1), -each[:, observed_dims:].sum(1)


def inpaint_rows(data, seed: int) -> list[dict[str, Any]]:
    test = data.test
    rows = []
    models: dict[str, Any] = {}
    for name in ("hclt", "quad_graph", "quad_tree_tucker", "poon_domingos", "rat_spn",
                 "mixture"):
        run_dir = RUNS / f"{name}-digits-{seed}"
        if not (run_dir / "run.json").is_file():
            preset, extra, _ = DIGITS[name]
            run_dir, error = fit(name, preset, extra, seed)
            if error is not None:
                continue
        models[name] = open_run(run_dir).load_model("cpu")
    run_dir, _ = fit("independent", "categorical_mixture_digits", ("model.num_components=1",),
                     seed)
    models["independent"] = open_run(run_dir).load_model("cpu")
    for name, model in models.items():
        r = evaluate_missing(model, test, "lower_half", split_name="test")
        rows.append({"part": "inpaint", "model": name, "seed": seed, "kind": "exact",
                     "observed_nats": r.observed_nats, "missing_nats": r.missing_nats,
                     "missing_stderr": r.missing_stderr, "missing_bpd": r.missing_bpd,
                     "how": "exact marginal"})
    arm_dir, error = fit("arm", "arm_digits", (), seed)
    if error is None:
        arm = open_run(arm_dir).load_model("cpu").eval()
        x, _ = test.batch(slice(None), data.spec)
        o, m = _arm_prefix(arm, x, 32)
        rows.append({"part": "inpaint", "model": "arm", "seed": seed, "kind": "exact",
                     "observed_nats": float(o.mean()), "missing_nats": float(m.mean()),
                     "missing_stderr": float(m.std() / np.sqrt(len(m))),
                     "missing_bpd": float(m.mean()) / (32 * np.log(2)),
                     "how": "raster-order chain rule: the lower half is a suffix (an ARM "
                            "conditions only on a prefix)"})
    for row in rows:
        print(json.dumps(row), flush=True)
    x, _ = test.batch(slice(0, 10), data.spec)
    observed = observed_mask(data.spec, "lower_half", x.shape[0])
    for name in ("hclt", "mixture"):
        if name in models:
            gen = torch.Generator().manual_seed(seed)
            fills = torch.stack([models[name].sample_conditional(x, observed, generator=gen)
                                 for _ in range(8)], 1)
            (RESULTS / f"circuits_inpaint_{name}.png").write_bytes(
                inpainting_png(x, observed, fills, data.spec, scale=6))
    return rows


def mnist_rows(budget: float, seed: int, datasets: list[str],
               input_8bit: str = "binomial") -> list[dict[str, Any]]:
    """An HCLT (K = 16, batch 256, Adam 0.01) on binarized and on 8-bit MNIST, each trained for
    ``budget`` wall seconds (one thread), exact test NLL of the best-validation weights."""
    rows = []
    for data_name in datasets:
        inputs = "bernoulli" if data_name == "binary_mnist" else input_8bit
        data = load(data_name)
        extra = ("model.units=16", f"model.input={inputs}", f"train.time_budget_s={budget}",
                 "train.batch_size=256", "train.epochs=1000")
        what = (f"HCLT, K = 16, {inputs} inputs, CP, Adam 0.01, batch 256, "
                f"{budget:.0f} wall s of training")
        name = "hclt_16" if budget == 900 else f"hclt_16_{budget:.0f}s"
        if inputs == "categorical":
            name += "_categorical"
        rows.append(likelihood_row(name, what, "circuit_digits", extra, seed, data_name, data))
        if data_name == "binary_mnist":  # the one-layer circuit beside it: 40 Bernoullis by EM
            rows.append(likelihood_row(
                "mixture", "mixture of 40 Bernoullis, EM, α = 0.5 (one M-step per epoch)",
                "categorical_mixture_digits", ("train.epochs=40",), seed, data_name, data))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["digits", "peer", "binary", "inpaint"],
                    choices=["digits", "peer", "binary", "inpaint", "mnist"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--best-seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--models", nargs="+", help="only these rows of the digits parts")
    ap.add_argument("--peer-units", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--mnist-budget", type=float, default=900.0)
    ap.add_argument("--mnist-data", nargs="+", default=["binary_mnist", "mnist"],
                    choices=["binary_mnist", "mnist"])
    ap.add_argument("--mnist-input", default="binomial", choices=["binomial", "categorical"],
                    help="the input units on 8-bit MNIST")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = machine()  # the commit and command this invocation runs
    rows: list[dict[str, Any]] = []
    digits = load("digits")
    if "digits" in args.parts:
        for name, (preset, extra, what) in DIGITS.items():
            if args.models and name not in args.models:
                continue
            seeds = sorted(set(args.seeds) | (set(args.best_seeds) if name == "hclt" else set()))
            for seed in seeds:
                rows.append(likelihood_row(name, what, preset, extra, seed, "digits", digits))
    if "peer" in args.parts:
        rows.extend(peer_rows(digits, args.peer_units, args.seeds[0]))
    if "binary" in args.parts:
        binary = load("binary_digits")
        for name, (preset, extra, what) in BINARY.items():
            if args.models and name not in args.models:
                continue
            seeds = args.best_seeds if name == "hclt_mixture" else args.seeds[:1]
            for seed in seeds:
                rows.append(likelihood_row(name, what, preset, extra, seed, "binary_digits",
                                           binary))
    if "inpaint" in args.parts:
        rows.extend(inpaint_rows(digits, args.seeds[0]))
    if "mnist" in args.parts:
        rows.extend(mnist_rows(args.mnist_budget, args.seeds[0], args.mnist_data,
                               args.mnist_input))
    key = ("part", "model", "seed")
    with locked_json("circuits") as result:
        kept = [r for r in result.get("rows", [])
                if tuple(r.get(k) for k in key) not in {tuple(n.get(k) for k in key)
                                                        for n in rows}]
        result["rows"] = kept + rows
        result["anchors"] = ANCHORS
        result.setdefault("machines", {})
        commands = result.setdefault("commands", {})
        for part in {r["part"] for r in rows}:
            result["machines"][part] = started
            if started["command"] not in commands.setdefault(part, []):
                commands[part].append(started["command"])
    print(f"wrote {RESULTS / 'circuits.json'} ({time.strftime('%H:%M')})")


if __name__ == "__main__":
    main()
