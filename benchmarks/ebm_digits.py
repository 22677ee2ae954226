"""Benchmark: energy-based models on the 8x8 digits and the two-moons toy (issue 16, Book ch. 7).

    python benchmarks/ebm_digits.py [--seeds 0 1 2] [--ais-temperatures 3000]
        [--skip jem ebm decoupled moons]

(a) JEM (configs/jem_digits.yaml), each seed: test error of p(y | x) beside the anchors (SVC 5.8%,
    MLP 7.6%, the book's JEM-style EBM 7.6%; ANCHORS.md §6) and the sample quality of 447
    unconditional samples against the 447 test images (FD, KID, precision, recall with the
    shipped digits feature net, as benchmarks/quality_digits.py scores them).
(b) EBM (configs/ebm_digits.yaml), each seed: the same sample-quality scores, the number of
    rollbacks of the non-finite guard (a diverged seed is reported with its error, not
    dropped), and the AIS estimate of the test NLL of the discrete model p(v) ∝ exp(-E(u(v)))
    on the 17-level lattice, beside the floors 106.5 (independent categorical) and 100.0
    (mixture of 40 categoricals). log Z by AIS as the preset sets it up (a base of 20
    categoricals fitted to the model's own Langevin chains, 4 Markov moves per temperature),
    its standard error and effective chains; a second AIS run with 3x fewer temperatures shows
    how far the estimate still moves (AIS's log Ẑ is biased low, so the NLL is optimistic). The same for
    seed 0 of the JEM-style variant with decoupled noise (``DECOUPLED``), whose sampler
    targets a sharpened p^(2α/η²), not p.
(c) EBM on two moons (configs/ebm_moons.yaml): MMD² of samples to the test points and a PNG of
    the data, the samples and exp(-E) (the weights of the last epoch: the preset's monitor is
    the noisy training objective, so its "best" epoch is arbitrary).

Training goes through the real trainer, one thread, progress off, into
benchmarks/results/tmp/ebm_runs (git-ignored, rebuilt every time). CPU seconds are the
trainer's (training loop and validation). Results: benchmarks/results/ebm_digits.json (the rows
of parts skipped with ``--skip`` are kept from the last run) and the PNGs
benchmarks/results/ebm_digits_*.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, ROOT, machine, write_result  # noqa: E402
from quality_digits import METRICS, draw, scores, split_images  # noqa: E402

from dgm.checkpoints import load_tensors, strip_prefix  # noqa: E402
from dgm.config import load_config  # noqa: E402
from dgm.core.errors import DgmError  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.plots import image_grid, save_png, scatter_png  # noqa: E402
from dgm.eval.quality import compare  # noqa: E402
from dgm.runs import LAST, open_run  # noqa: E402
from dgm.train.trainer import train  # noqa: E402

RUNS = RESULTS / "tmp" / "ebm_runs"
ANCHORS = {
    "test_error": {"svc_rbf": 0.058, "mlp": 0.076, "book_jem_style_ebm": 0.076},
    "test_nats": {"independent_categorical": 106.5, "mixture_40_categoricals": 100.0},
}


# The JEM-style variant of the digits preset: decoupled noise (step 1, noise std 0.01), whose
# sampler targets p^(2α/η²) = p^20000, so the AIS likelihood of p itself says little of it.
DECOUPLED = ("model.noise=0.01", "model.step_size=1.0", "model.energy_reg=0.1",
             "model.langevin_steps=20")


def fit(preset: str, seed: int, data_name: str | None = None, extra: tuple[str, ...] = (),
        tag: str = "") -> tuple[Path, str | None]:
    """Train ``configs/<preset>.yaml`` for ``seed``; the run dir and the error if it failed."""
    run_dir = RUNS / f"{preset}{tag}-{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    overrides = [f"train.seed={seed}", "train.progress=false", "train.threads=1", *extra]
    if data_name is not None:
        overrides.append(f"data.name={data_name}")
    config = load_config(ROOT / "configs" / f"{preset}.yaml", overrides=overrides)
    try:
        train(config, run_dir)
    except DgmError as e:  # a diverged seed: report it, do not drop it
        return run_dir, f"{type(e).__name__}: {e}"
    return run_dir, None


def run_facts(run_dir: Path) -> dict[str, Any]:
    info = open_run(run_dir).info
    keep = ("status", "epochs_completed", "best_epoch", "best_val", "rollbacks", "cpu_s",
            "num_parameters")
    return {k: info.get(k) for k in keep}


def quality(model, data, real: torch.Tensor, seed: int) -> tuple[dict[str, Any], torch.Tensor]:
    fake, cpu_s, _ = draw(model, len(real), seed)
    result = compare(real, fake, dataset="digits", spec=data.spec, metrics=METRICS,
                     split="test", seed=seed)
    return {**scores(result), "sample_cpu_s": cpu_s}, fake


def save_grid(x: torch.Tensor, spec, name: str) -> str:
    path = RESULTS / f"ebm_digits_{name}.png"
    save_png(image_grid(x[:64], spec, ncol=8), path, scale=4)
    return path.name


def ais_nll(model, x: torch.Tensor, temperatures: int, seed: int) -> dict[str, Any]:
    """Test NLL of the discrete model with log Z by AIS, at two temperature counts."""
    out: dict[str, Any] = {}
    for count in (max(3, temperatures // 3), temperatures):
        c0 = time.process_time()
        ais = model.log_partition_ais(temperatures=count,
                                      generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            nll = float(-(model.unnormalized_log_prob(x).double() - ais.log_z).mean())
        out[str(count)] = {"test_nats": nll, "log_z": ais.log_z, "log_z_stderr": ais.stderr,
                           "effective_chains": ais.effective_chains, "chains": ais.chains,
                           "cpu_s": time.process_time() - c0}
    return out


def jem_row(data, real: torch.Tensor, y_test: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    run_dir, error = fit("jem_digits", seed)
    row: dict[str, Any] = {"model": "jem", "seed": seed, "error": error, **run_facts(run_dir)}
    if error is None:
        model = open_run(run_dir).load_model("cpu")
        row["test_error"] = model.error_rate(real, y_test)
        x_val, y_val = data.val.batch(slice(None), data.spec)
        row["val_error"] = model.error_rate(x_val, y_val)
        row["quality"], fake = quality(model, data, real, seed)
        if seed == 0:
            row["png"] = save_grid(fake, data.spec, "jem")
    return row


def ebm_row(data, real: torch.Tensor, seed: int, temperatures: int,
            decoupled: bool = False) -> dict[str, Any]:
    tag = "_decoupled" if decoupled else ""
    extra = DECOUPLED if decoupled else ()
    run_dir, error = fit("ebm_digits", seed, extra=extra, tag=tag)
    row: dict[str, Any] = {"model": f"ebm{tag}", "seed": seed, "error": error,
                           "overrides": list(extra), **run_facts(run_dir)}
    if error is None:
        model = open_run(run_dir).load_model("cpu")
        row["quality"], fake = quality(model, data, real, seed)
        if seed == 0:
            row["png"] = save_grid(fake, data.spec, f"ebm{tag}")
        row["ais"] = ais_nll(model, real, temperatures, seed)
    return row


def moons_row() -> dict[str, Any]:
    run_dir, error = fit("ebm_moons", 0, data_name="moons")
    row: dict[str, Any] = {"model": "ebm", "data": "moons", "error": error,
                           **run_facts(run_dir)}
    if error is not None:
        return row
    run = open_run(run_dir)
    model = run.load_model("cpu")
    tensors, _ = load_tensors(run_dir / LAST)
    model.load_state_dict(strip_prefix("model", tensors))  # the last epoch, not the "best"
    moons = load("moons")
    real = moons.test.all(moons.spec)[0]
    fake, _, _ = draw(model, len(real), 0)
    result = compare(real, fake, dataset="moons", spec=moons.spec, metrics=["mmd"], seed=0)
    row.update(mmd=result.mmd, mmd_stderr=result.mmd_stderr, weights="last epoch")
    png = scatter_png(real[:2000], fake[:2000], model.unnormalized_log_prob,
                      title="EBM on two moons: data, samples, exp(-E)")
    (RESULTS / "ebm_digits_moons.png").write_bytes(png)
    row["png"] = "ebm_digits_moons.png"
    return row


def _part(row: dict[str, Any]) -> tuple[str, str, int]:
    return row["model"], row.get("data", "digits"), row.get("seed", 0)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    p.add_argument("--ais-temperatures", type=int, default=3000)
    p.add_argument("--skip", nargs="*", default=[], choices=["jem", "ebm", "decoupled", "moons"])
    args = p.parse_args()
    torch.set_num_threads(1)
    data = load("digits")
    real = split_images(data, "test")
    y_test = data.test.y
    rows = []
    if "jem" not in args.skip:
        for seed in args.seeds:
            rows.append(jem_row(data, real, y_test, seed))
            print(rows[-1], flush=True)
    if "ebm" not in args.skip:
        for seed in args.seeds:
            rows.append(ebm_row(data, real, seed, args.ais_temperatures))
            print(rows[-1], flush=True)
    if "decoupled" not in args.skip:
        rows.append(ebm_row(data, real, 0, args.ais_temperatures, decoupled=True))
        print(rows[-1], flush=True)
    if "moons" not in args.skip:
        rows.append(moons_row())
        print(rows[-1], flush=True)
    # rows of parts skipped this time are kept from the last run
    old = RESULTS / "ebm_digits.json"
    done = {_part(r) for r in rows}
    kept = [r for r in json.loads(old.read_text())["rows"] if _part(r) not in done] \
        if old.is_file() else []
    path = write_result("ebm_digits", {"machine": machine(), "anchors": ANCHORS,
                                       "rows": kept + rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
