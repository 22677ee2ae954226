"""Benchmark: sample quality of every digits preset (issue 14), beside real-vs-real floors.

    python benchmarks/quality_digits.py [--only arm vae:iaf ...] [--n 1000] [--no-vae]
        [--redo] [--render-only]

Every ``configs/*_digits.yaml`` (and the latent-variable variants of ``vae_digits.py`` whose
config differs from every preset) is trained for seed 0 with one thread, progress off, into a
persistent run directory ``benchmarks/results/tmp/runs/<name>-0`` (git-ignored). A directory that
already holds a finished run of the same preset, overrides and seed is reused as it is; one
that was interrupted is resumed (bit-exact); anything else is trained afresh. The best weights
are loaded, n samples are drawn in one call of ``model.sample`` with a generator seeded 0 (as
``dgm.eval.sample_quality`` draws them), and scored against the 447 test images with the
shipped digits feature net (``dgm.eval.compare``): FD, KID with its jackknife standard error,
precision and recall (k = 3), density and coverage (k = 5).

Floors measured in the same run, on the same test set and feature net: the training (1000) and
validation (350) images; samples of the independent per-pixel categorical (the registered
``independent`` model, as in ``digits.py``); samples of a mixture of 40 categoricals fitted here
by EM with add-0.5 smoothing (ANCHORS.md §1b: 100.0 test nats; §6 measured its samples at
FD 11.22, precision 0.60 with another MLP feature net, 447 samples); uniform noise.

Each row is written to ``benchmarks/results/quality_digits.json`` as it lands (atomically);
rows already there with the same fingerprint (preset text, overrides, seed, n) are skipped, so
a stopped run resumes. BENCHMARKS.md is rendered at the end (``report_md.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine  # noqa: E402

from dgm.config import load_config  # noqa: E402
from dgm.core.errors import DgmError  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.features import feature_net  # noqa: E402
from dgm.eval.quality import compare  # noqa: E402
from dgm.runs import INFO, LAST, open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

OUT = RESULTS / "quality_digits.json"
RUNS = RESULTS / "tmp" / "runs"
CONFIGS = ROOT / "configs"
METRICS = ("fd", "kid", "pr", "dc")
MARKER = "quality_digits.fingerprint"

# ANCHORS.md §6 (sample quality on digits, a small MLP feature net of its own, 447 samples per
# set against the 447 test images) and §1b (the mixture's test NLL).
ANCHORS = {
    "feature_net": "an MLP trained on the train split, test accuracy 92.6%; 447 per set",
    "train": {"fd": 4.95, "precision": 0.83, "recall": 0.74},
    "val": {"fd": 9.03, "precision": 0.83, "recall": 0.79},
    "mixture40": {"fd": 11.22, "precision": 0.60, "recall": 0.82, "test_nats": 100.0},
    "independent": {"fd": 60.64, "precision": 0.60, "recall": 0.40, "test_nats": 106.5},
    "uniform": {"fd": 125.7, "precision": 0.26, "recall": 0.11},
}

# Training CPU s of seed 0 from the last digits / latent-variable tables: cheap presets run
# first so that rows land early. Unknown ones count as 60 s.
COST = {
    "independent": 0, "ppca": 0, "fvsbn": 2, "vae": 5, "maf": 6, "vae_flows": 15,
    "vae_prior": 15, "hvae_bottom_up": 7, "nice": 9, "hvae": 10, "sylvester_triangular": 13,
    "mog": 14, "mog_em": 14, "vqvae": 16, "realnvp_multiscale": 17, "made": 23,
    "sylvester": 23, "glow": 25, "realnvp": 26, "nsf": 32, "idf": 33,
    "sylvester_householder": 36, "resflow": 45, "planar": 46, "nsf_ar": 66, "nsf_vardeq": 73,
    "iaf": 76, "densenet_flow": 82, "nade": 87, "radial": 91, "pixelcnn_fast": 152,
    "arm": 169, "arm_rnn": 204, "arm_mlp": 213, "pixelcnn": 252, "transformer": 258,
}


# ---------------------------------------------------------------------------------------------
# What to run


def entries(with_vae: bool) -> list[dict[str, Any]]:
    """Every digits preset (cheapest first), then the latent-variable variants whose resolved
    config differs from every preset's."""
    presets = sorted(p.name[: -len("_digits.yaml")] for p in CONFIGS.glob("*_digits.yaml"))
    out = [
        {"key": name, "group": "preset", "preset": f"{name}_digits", "overrides": [],
         "what": f"configs/{name}_digits.yaml"}
        for name in sorted(presets, key=lambda n: (COST.get(n, 60), n))
    ]
    if with_vae:
        import vae_digits

        seen = {json.dumps(_config(e).to_dict(), sort_keys=True): e["key"] for e in out}
        costs = _vae_costs()
        variants = []
        for name, (preset, overrides, what) in vae_digits.VARIANTS.items():
            e = {"key": f"vae:{name}", "group": "vae_digits", "preset": preset,
                 "overrides": list(overrides), "what": what}
            same = seen.get(json.dumps(_config(e).to_dict(), sort_keys=True))
            if same is not None:
                print(f"vae_digits variant {name} is the preset {same}: not repeated", flush=True)
                continue
            variants.append(e)
        out += sorted(variants, key=lambda e: (costs.get(e["key"][4:], 60), e["key"]))
    return out


def _vae_costs() -> dict[str, float]:
    p = RESULTS / "vae_digits.json"
    if not p.is_file():
        return {}
    return {r["variant"]: r["cpu_s"] for r in json.loads(p.read_text())["rows"] if r["seed"] == 0}


def _config(e: dict[str, Any], seed: int = 0):
    if e["preset"] is None:  # the independent categorical, as digits.py trains it
        cfg = load_config(overrides=["model.name=independent", "train.epochs=1"])
    else:
        cfg = load_config(CONFIGS / f"{e['preset']}.yaml", e["overrides"])
    cfg.train.seed = seed
    cfg.train.threads = 1
    cfg.train.progress = False
    return cfg


def fingerprint(e: dict[str, Any], seed: int) -> str:
    text = "" if e["preset"] is None else (CONFIGS / f"{e['preset']}.yaml").read_text()
    blob = json.dumps({"preset": e["preset"], "text": text, "overrides": e["overrides"],
                       "seed": seed}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Training (reused, resumed or fresh)


def ensure_trained(e: dict[str, Any], seed: int) -> tuple[Path, str]:
    """The run directory of ``e`` for ``seed``, trained; and how it came to be."""
    run_dir = RUNS / f"{e['key'].replace(':', '-')}-{seed}"
    fp = fingerprint(e, seed)
    marker = run_dir / MARKER
    same = marker.is_file() and marker.read_text().strip() == fp
    status = None
    if same and (run_dir / INFO).is_file():
        status = json.loads((run_dir / INFO).read_text()).get("status")
    if status == "finished" and (run_dir / "model.safetensors").is_file():
        return run_dir, "reused"
    cfg = _config(e, seed)
    if same and status in ("running", "interrupted") and (run_dir / LAST).is_file():
        try:
            train(cfg, run_dir, resume=True)
            return run_dir, "resumed"
        except DgmError as err:
            print(f"{e['key']}: cannot resume ({err}); training afresh", flush=True)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    marker.write_text(fp + "\n")
    train(cfg, run_dir)
    return run_dir, "trained"


# ---------------------------------------------------------------------------------------------
# Sets to score


def split_images(data, split: str) -> torch.Tensor:
    # The fixed generator is the one sample_quality uses (digits are not binarized anyway).
    x, _ = data.split(split).batch(slice(None), data.spec, torch.Generator().manual_seed(0))
    return x


@torch.no_grad()
def draw(model, n: int, seed: int) -> tuple[torch.Tensor, float, float]:
    """n samples in one call with a generator seeded ``seed``; CPU and wall seconds."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    c0, w0 = time.process_time(), time.perf_counter()
    x = model.sample(n, generator=generator)
    return x.cpu(), time.process_time() - c0, time.perf_counter() - w0


def fit_mixture(x: torch.Tensor, k: int = 40, alpha: float = 0.5, levels: int = 17,
                seed: int = 0, max_iter: int = 1000, tol: float = 1e-9) -> dict[str, Any]:
    r"""A mixture of ``k`` products of categoricals, fitted by EM in float64.

    p(x) = Σ_k π_k Π_d θ_{k,d,x_d}. E-step: r_ik = softmax_k(log π_k + Σ_d log θ_{k,d,x_id})
    (log-sum-exp); M-step: π_k = N_k / N, θ_{k,d,l} = (Σ_i r_ik 1[x_id = l] + α) / (N_k + Lα)
    (add-α smoothing). Initialised by assigning every image to a random component; stops when
    the mean log-likelihood gains less than ``tol`` relatively.
    """
    g = torch.Generator().manual_seed(seed)
    flat = x.reshape(len(x), -1)
    n, dims = flat.shape
    onehot = torch.nn.functional.one_hot(flat, levels).reshape(n, -1).to(torch.float64)
    r = torch.zeros(n, k, dtype=torch.float64)
    r[torch.arange(n), torch.randint(k, (n,), generator=g)] = 1
    prev, it = -math.inf, 0
    for it in range(1, max_iter + 1):
        nk = r.sum(0)
        theta = ((r.T @ onehot).reshape(k, dims, levels) + alpha) / (nk[:, None, None]
                                                                      + levels * alpha)
        log_pi = torch.log(nk / n)  # a component left with no mass gets log 0 = -inf: unused
        log_theta = theta.log().reshape(k, -1)
        joint = onehot @ log_theta.T + log_pi
        ll = float(torch.logsumexp(joint, 1).mean())
        r = torch.softmax(joint, 1)
        if ll - prev < tol * abs(ll):
            break
        prev = ll
    return {"log_pi": log_pi, "theta": theta, "iterations": it, "train_ll": ll,
            "levels": levels, "shape": tuple(x.shape[1:])}


def mixture_nll(m: dict[str, Any], x: torch.Tensor) -> float:
    """Mean -log p(x) in nats per image (exact)."""
    flat = x.reshape(len(x), -1)
    onehot = torch.nn.functional.one_hot(flat, m["levels"]).reshape(len(x), -1).double()
    log_theta = m["theta"].log().reshape(len(m["log_pi"]), -1)
    return float(-torch.logsumexp(onehot @ log_theta.T + m["log_pi"], 1).mean())


def mixture_sample(m: dict[str, Any], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    comp = torch.multinomial(m["log_pi"].exp(), n, replacement=True, generator=g)
    probs = m["theta"][comp]  # (n, D, L)
    pix = torch.multinomial(probs.reshape(-1, m["levels"]), 1, generator=g)
    return pix.reshape(n, *m["shape"]).to(torch.long)


# ---------------------------------------------------------------------------------------------
# Results file


def _src_state() -> dict[str, Any]:
    import dgm

    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT,
                               capture_output=True, text=True).stdout
    except OSError:
        dirty = ""
    return {"dgm_from": str(Path(dgm.__file__).resolve().parents[1]),
            "src_dirty_files": [line[3:] for line in dirty.splitlines() if line.strip()]}


def read_results() -> dict[str, Any]:
    if OUT.is_file():
        return json.loads(OUT.read_text())
    return {"floors": [], "rows": []}


def save(data: dict[str, Any]) -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    tmp = OUT.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, OUT)


def put(data: dict[str, Any], table: str, row: dict[str, Any]) -> None:
    data[table] = [r for r in data[table] if r["key"] != row["key"]] + [row]
    save(data)


def scores(result) -> dict[str, Any]:
    d = result.to_dict()
    keep = ("n_real", "n_fake", "feature_net", "fd", "kid", "kid_stderr", "precision", "recall",
            "density", "coverage")
    return {k: d[k] for k in keep}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None, help="keys: presets, vae:<variant>, floors")
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--no-vae", action="store_true", help="presets only")
    p.add_argument("--redo", action="store_true", help="score again rows already in the file")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args()
    if args.render_only:
        from report_md import write_benchmarks_md

        print(write_benchmarks_md())
        return

    torch.set_num_threads(1)
    data = load("digits")
    spec = data.spec
    net = feature_net("digits")
    test = split_images(data, "test")
    results = read_results()
    src = _src_state()  # read at the start: the tree may change while this runs
    if args.only is None or "machine" not in results:  # a partial rerun keeps the full run's
        results["machine"] = {**machine(), **src}
    results.update(
        settings={"n": args.n, "seed": args.seed, "sample_seed": args.sample_seed,
                  "metrics": list(METRICS), "real": f"digits test ({len(test)} images)",
                  "feature_net": net.tag, "feature_net_test_accuracy": net.test_accuracy,
                  "kid": "whole sets (447 and n <= 1000 per subset): one jackknife estimate",
                  "k_pr": 3, "k_dc": 5, "threads": 1},
        anchors=ANCHORS,
    )
    save(results)

    def score(fake: torch.Tensor, key: str):
        r = compare(test, fake, dataset="digits", spec=spec, metrics=list(METRICS), split="test",
                    seed=args.sample_seed, net=net)
        print(f"{key}: {r.line()}", flush=True)
        return r

    wanted = None if args.only is None else set(args.only)
    done = {r["key"]: r.get("fingerprint") for r in results["rows"] + results["floors"]}

    # Floors: real vs real, the independent categorical, the EM mixture, uniform noise.
    if wanted is None or "floors" in wanted:
        fp_floor = f"floors-n{args.n}-s{args.sample_seed}"
        if args.redo or any(done.get(k) != fp_floor for k in
                            ("train", "val", "independent", "mixture40", "mixture40_447",
                             "uniform")):
            for split in ("train", "val"):
                x = split_images(data, split)
                put(results, "floors", {"key": split, "what": f"real {split} images",
                                        "fingerprint": fp_floor, **scores(score(x, split))})
            indep = {"key": "independent", "preset": None, "overrides": []}
            run_dir, how = ensure_trained(indep, args.seed)
            model = open_run(run_dir).load_model()
            fake, cpu, wall = draw(model, args.n, args.sample_seed)
            put(results, "floors", {
                "key": "independent", "what": "independent per-pixel categorical (add-one)",
                "fingerprint": fp_floor, "sample_cpu_s": cpu, "sample_wall_s": wall,
                "val_nats": json.loads((run_dir / INFO).read_text()).get("best_val"),
                **scores(score(fake, "independent"))})
            c0 = time.process_time()
            mix = fit_mixture(split_images(data, "train"), k=40, alpha=0.5, seed=args.seed)
            fit_s = time.process_time() - c0
            nll = {s: mixture_nll(mix, split_images(data, s)) for s in ("val", "test")}
            print(f"mixture of 40 categoricals: {mix['iterations']} EM iterations, "
                  f"{fit_s:.1f} CPU s, val {nll['val']:.2f}, test {nll['test']:.2f} nats "
                  "(ANCHORS: 100.0)", flush=True)
            common = {"em_iterations": mix["iterations"], "fit_cpu_s": fit_s,
                      "val_nats": nll["val"], "test_nats": nll["test"],
                      "params": 40 * 64 * 16 + 39, "fingerprint": fp_floor}
            for key, n in (("mixture40", args.n), ("mixture40_447", len(test))):
                c0, w0 = time.process_time(), time.perf_counter()
                fake = mixture_sample(mix, n, args.sample_seed)
                put(results, "floors", {
                    "key": key, "what": f"mixture of 40 categoricals, EM, add-0.5 ({n} samples)",
                    "sample_cpu_s": time.process_time() - c0,
                    "sample_wall_s": time.perf_counter() - w0, **common,
                    **scores(score(fake, key))})
            g = torch.Generator().manual_seed(args.sample_seed)
            noise = torch.randint(spec.num_levels, (args.n, *spec.event_shape), generator=g)
            put(results, "floors", {"key": "uniform", "what": "uniform noise on 0..16",
                                    "fingerprint": fp_floor, **scores(score(noise, "uniform"))})

    for e in entries(with_vae=not args.no_vae):
        if wanted is not None and e["key"] not in wanted:
            continue
        fp = f"{fingerprint(e, args.seed)}-n{args.n}-s{args.sample_seed}"
        if not args.redo and done.get(e["key"]) == fp:
            continue
        c0 = time.process_time()
        try:
            run_dir, how = ensure_trained(e, args.seed)
        except Exception as err:  # one preset that fails to train does not stop the others
            print(f"{e['key']}: training failed: {type(err).__name__}: {err}", flush=True)
            put(results, "rows", {"key": e["key"], "group": e["group"], "what": e["what"],
                                  "fingerprint": None, "error": f"{type(err).__name__}: {err}"})
            continue
        train_here_s = time.process_time() - c0
        info = json.loads((run_dir / INFO).read_text())
        run = open_run(run_dir)
        model = run.load_model()
        fake, cpu, wall = draw(model, args.n, args.sample_seed)
        row = {
            "key": e["key"], "group": e["group"], "preset": e["preset"],
            "overrides": e["overrides"], "what": e["what"], "model": info["model"],
            "fingerprint": fp, "run": how, "likelihood": info.get("likelihood"),
            "val_label": info.get("val_label"), "val_nats": info.get("best_val"),
            "epochs": info.get("epochs_completed"), "best_epoch": info.get("best_epoch"),
            "train_cpu_s": info.get("cpu_s"), "train_wall_s": info.get("wall_s"),
            "train_cpu_s_here": train_here_s, "params": info.get("num_parameters"),
            "sample_dtype": str(fake.dtype).replace("torch.", ""),
            "sample_range": [int(fake.min()), int(fake.max())] if not fake.dtype.is_floating_point
            else [float(fake.min()), float(fake.max())],
            "sample_cpu_s": cpu, "sample_wall_s": wall,
        }
        try:
            row.update(scores(score(fake, e["key"])))
        except Exception as err:  # a model whose samples are not digits: recorded, not fatal
            row["error"] = f"{type(err).__name__}: {err}"
            print(f"{e['key']}: {row['error']}", flush=True)
        print(f"{e['key']}: {how}, trained {info.get('cpu_s', 0):.1f} CPU s, "
              f"{info.get('epochs_completed')} epochs; {args.n} samples in {cpu:.2f} CPU s "
              f"({wall:.2f} wall s)", flush=True)
        put(results, "rows", row)

    if args.only is None:
        results["machine"] = {**machine(), **src}
    save(results)
    print(f"wrote {OUT}")
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
