"""Benchmark: the trainer's CPU time per epoch over a bare PyTorch loop (issue 14), before and
after the trainer's redesign, in one run.

    python benchmarks/trainer_overhead.py [--models arm vae nsf] [--epochs N] [--repeats 5]
        [--before 46bacb5] [--after checkout]

For the ARM, VAE and NSF digits presets (``configs/<model>_digits.yaml``), one thread
(``torch.set_num_threads(1)``), CPU seconds (``time.process_time``) per epoch of:

- a bare loop: the same model (``dgm.build_model`` and the same data-dependent initialization),
  the same optimizer (``make_optimizer``), batch size and data; a ``torch.randperm`` shuffle,
  ``loss(x).mean().backward(); opt.step()`` and the model's ``after_step`` hook where the tree
  has one; no validation, no checkpoints;
- the trainer (``dgm.train.trainer.train``) for the same epochs with everything it does per
  epoch: the update rule, the validation pass, the weight snapshot, best weights, the metrics
  line, run info and the checkpoint (after every epoch before the redesign; after it, every
  ``train.checkpoint_every_s`` = 30 s and after the last epoch). An epoch is the time between
  the clock readings taken right after two epochs' metrics lines, so it covers all of that;
- within those epochs, the trainer's chores, each ``_Trainer`` method in ``PARTS`` wrapped to
  read the clock (nothing else): the validation pass (``_validate``: the monitor, or before the
  redesign ``per_example_nll``), so that "trainer excl. validation" = trainer epoch - its
  validation pass, and the snapshot, checkpoint, best-weight, metrics and info writes. Before the
  redesign a best-weight file was written in every improving epoch (nearly every epoch of these
  short runs) and a checkpoint after every epoch; after it, the best weights are kept in memory
  and written with the checkpoint every ``train.checkpoint_every_s`` and after the last epoch.

Each tree (``--before``: a commit checked out in a temporary git worktree, removed afterwards;
``--after``: this checkout or a commit) runs in its own subprocess with ``PYTHONPATH`` at its
``src``, each with its own presets; the bare loop runs in the same subprocess as its trainer,
in alternating order. Models, trees and repeats are interleaved. Each run is a few CPU seconds
(``EPOCHS``: more epochs for the models with cheap epochs, or ``--epochs`` for all); the first
epoch of every run is dropped (warm-up); the figure is the median over the remaining epochs,
then the median over repeats. Results go to ``benchmarks/results/trainer_overhead.json`` and
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

SEED = 0
# Epochs per run: a few CPU seconds each (about 1.3, 0.07 and 0.3 s per epoch on one core).
EPOCHS = {"arm": 6, "vae": 31, "nsf": 11}


# -- the worker: runs inside one tree ----------------------------------------------------------
def _optim_config(cfg: Any) -> Any:
    return cfg.optim_for("main") if hasattr(cfg, "optim_for") else cfg.optim


def _after_step_hook(model: Any) -> Any:
    """``model.after_step(StepInfo(step=k))`` where the tree has the hook, else nothing."""
    try:
        from dgm.core.fitting import StepInfo
    except ImportError:
        return None
    return lambda step: model.after_step(StepInfo(step=step))


def bare_loop(cfg: Any, dataset: Any, epochs: int) -> list[float]:
    """CPU seconds of each epoch of a plain PyTorch loop over the preset's model."""
    import torch

    import dgm
    from dgm.train.trainer import make_optimizer

    torch.manual_seed(SEED)
    spec = dataset.spec
    model = dgm.build_model(cfg.model_name, spec, cfg.model_options)
    x_all, _ = dataset.train.all(spec)
    model.initialize_from_data(x_all, torch.Generator().manual_seed(SEED + 1))
    model.train()
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], _optim_config(cfg))
    after_step = _after_step_hook(model)
    gen, batch, n, step = torch.Generator().manual_seed(SEED), cfg.train.batch_size, len(x_all), 0
    times = []
    for _ in range(epochs):
        t0 = time.process_time()
        perm = torch.randperm(n, generator=gen)
        for start in range(0, n, batch):
            x = x_all[perm[start : start + batch]]
            opt.zero_grad(set_to_none=True)
            model.loss(x).mean().backward()
            opt.step()
            step += 1
            if after_step is not None:
                after_step(step)
        times.append(time.process_time() - t0)
    return times


# The trainer's per-epoch chores, timed where the tree has them (the redesign keeps the best
# weights in memory, _keep_best, and writes them with the checkpoint every 30 s).
PARTS = ("_validate", "_snapshot", "_save_best", "_keep_best", "_save_last", "_write_info",
         "_event")


def _timed(method: Any, part: str, calls: list[tuple[float, str, float]]) -> Any:
    def wrapper(self: Any, *a: Any, **kw: Any) -> Any:
        t0 = time.process_time()
        try:
            return method(self, *a, **kw)
        finally:
            t1 = time.process_time()
            calls.append((t1, part, t1 - t0))

    return wrapper


def trainer_loop(cfg: Any, epochs: int) -> tuple[list[float], dict[str, list[float]]]:
    """CPU seconds of each trainer epoch after the first (between the clock readings after its
    end-of-epoch checkpoints), and of each chore in it (``PARTS``)."""
    from dgm.train import trainer as T

    calls: list[tuple[float, str, float]] = []
    stamps: dict[int, float] = {}
    originals = {part: getattr(T._Trainer, part) for part in PARTS if hasattr(T._Trainer, part)}
    for part, method in originals.items():
        setattr(T._Trainer, part, _timed(method, part, calls))
    timed_event = T._Trainer._event

    def stamped(self: Any, record: dict[str, Any]) -> None:
        # Every epoch writes one metrics line: an epoch runs from one such line to the next, so
        # it holds the previous epoch's checkpoint where one was written.
        timed_event(self, record)
        if "epoch" in record and "event" not in record:
            stamps[record["epoch"]] = time.process_time()

    T._Trainer._event = stamped
    cfg.train.epochs, cfg.train.patience, cfg.train.progress = epochs, None, False
    try:
        with tempfile.TemporaryDirectory(prefix="dgm-overhead-") as d:
            T.train(cfg, Path(d) / "run")
    finally:
        for part, method in originals.items():
            setattr(T._Trainer, part, method)
    # The first epoch is dropped in both trees (warm-up).
    spans = [(stamps[e - 1], stamps[e]) for e in range(2, epochs + 1)]
    parts = {part: [sum(dt for t, p, dt in calls if p == part and a < t <= b) for a, b in spans]
             for part in PARTS}  # a part the tree lacks is 0
    return [b - a for a, b in spans], parts


def worker(model: str, epochs: int, trainer_first: bool, tree: Path) -> dict[str, Any]:
    import torch

    from dgm.config import load_config
    from dgm.data.dataset import load

    torch.set_num_threads(1)
    cfg = load_config(tree / "configs" / f"{model}_digits.yaml")
    cfg.train.seed, cfg.train.threads = SEED, 1
    dataset = load(cfg.data.name, **cfg.data.options)
    out: dict[str, Any] = {"batches_per_epoch": -(-len(dataset.train) // cfg.train.batch_size),
                           "batch_size": cfg.train.batch_size}
    order = ("trainer", "bare") if trainer_first else ("bare", "trainer")
    for what in order:
        if what == "bare":
            out["bare_s"] = bare_loop(cfg, dataset, epochs)[1:]  # drop the warm-up epoch
        else:
            out["trainer_s"], out["parts_s"] = trainer_loop(cfg, epochs)
    return out


# -- the driver --------------------------------------------------------------------------------
def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          check=True).stdout.strip()


def _open_tree(ref: str, root: Path, made: list[Path]) -> Path:
    """``checkout``: this checkout; else a detached worktree of ``ref`` under /tmp."""
    if ref == "checkout":
        return root
    path = Path(tempfile.gettempdir()) / f"dgm-overhead-{ref}"
    if not path.exists():
        _git("worktree", "add", "--detach", str(path), ref, cwd=root)
        made.append(path)
    return path


def _describe(tree: Path) -> dict[str, Any]:
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no", cwd=tree))
    return {"commit": _git("rev-parse", "--short", "HEAD", cwd=tree), "dirty": dirty,
            "subject": _git("log", "-1", "--format=%s", cwd=tree)[:100]}


def _run_worker(tree: Path, model: str, epochs: int, trainer_first: bool) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", model,
           "--epochs", str(epochs), "--tree", str(tree)]
    if trainer_first:
        cmd.append("--trainer-first")
    res = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"worker {model} in {tree} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _per_run(run: dict[str, Any]) -> dict[str, float]:
    """Medians over one run's epochs: bare, trainer, trainer excl. validation, each chore."""
    parts = run["parts_s"]
    excl = [t - v for t, v in zip(run["trainer_s"], parts["_validate"])]
    return {"bare_s": _median(run["bare_s"]), "trainer_s": _median(run["trainer_s"]),
            "trainer_excl_val_s": _median(excl),
            **{f"{p.strip('_')}_s": _median(v) for p, v in parts.items()}}


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median over each run's epochs, then over repeats. A ratio is trainer / bare within each
    repeat (the same process, back to back), then the median and range over repeats."""
    per = [_per_run(r) for r in runs]
    med = {k: _median([p[k] for p in per]) for k in per[0]}
    incl = [p["trainer_s"] / p["bare_s"] for p in per]
    excl = [p["trainer_excl_val_s"] / p["bare_s"] for p in per]
    chores = sum(med[f"{p.strip('_')}_s"] for p in PARTS if p != "_validate")
    return {
        **med,
        "ratio_incl_val": _median(incl), "ratio_incl_val_range": [min(incl), max(incl)],
        "ratio_excl_val": _median(excl), "ratio_excl_val_range": [min(excl), max(excl)],
        "chores_s": chores,  # snapshot, checkpoint, best weights, metrics line, info
        "steps_over_bare_s": med["trainer_excl_val_s"] - chores - med["bare_s"],
        "repeats": per,
        "batches_per_epoch": runs[0]["batches_per_epoch"], "batch_size": runs[0]["batch_size"],
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="*", default=["arm", "vae", "nsf"])
    p.add_argument("--epochs", type=int, default=None, help="per run (default: EPOCHS); the "
                   "first is dropped")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--before", default="46bacb5", help="a commit (the last before the redesign)")
    p.add_argument("--after", default="checkout", help="'checkout' or a commit")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tree", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--trainer-first", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        epochs = args.epochs or EPOCHS.get(args.worker, 6)
        print(json.dumps(worker(args.worker, epochs, args.trainer_first, args.tree)))
        return

    from common import ROOT, machine, write_result

    made: list[Path] = []
    try:
        trees = {"before": _open_tree(args.before, ROOT, made),
                 "after": _open_tree(args.after, ROOT, made)}
        load0, wall0 = os.getloadavg(), time.perf_counter()
        runs: dict[str, dict[str, list]] = {m: {t: [] for t in trees} for m in args.models}
        for rep in range(args.repeats):
            for model in args.models:
                for i, (label, tree) in enumerate(trees.items()):
                    epochs = args.epochs or EPOCHS.get(model, 6)
                    res = _run_worker(tree, model, epochs, trainer_first=(rep + i) % 2 == 1)
                    runs[model][label].append(res)
                    m = _per_run(res)
                    print(f"repeat {rep + 1} {model} {label}: bare {m['bare_s']:.3f} s, trainer "
                          f"{m['trainer_s']:.3f} s, excl. validation "
                          f"{m['trainer_excl_val_s']:.3f} s", flush=True)
        rows = [{"model": m, "tree": t, **summarize(runs[m][t]), "runs": runs[m][t]}
                for m in args.models for t in trees]
        payload = {
            "machine": machine(), "trees": {t: _describe(p) for t, p in trees.items()},
            "settings": {"epochs": {m: args.epochs or EPOCHS.get(m, 6) for m in args.models},
                         "repeats": args.repeats, "threads": 1, "dropped_epochs": 1},
            "load": {"loadavg_start": load0, "loadavg_end": os.getloadavg(),
                     "wall_s": time.perf_counter() - wall0},
            "rows": rows,
        }
    finally:
        for path in made:
            _git("worktree", "remove", "--force", str(path), cwd=ROOT)
    path = write_result("trainer_overhead", payload)
    print(f"wrote {path}")
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
