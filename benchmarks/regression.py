"""Regression rerun for issue 14: seed 0 of every digits figure, after the trainer redesign.

    python benchmarks/regression.py [--only digits:arm vae_digits:vqvae ...] [--k 1000]
        [--iwae-k 5000] [--out benchmarks/results/regression_issue14.json]

Every model in ``results/digits.json`` is trained again with ``digits.run_one`` and every variant
in ``results/vae_digits.json`` with ``vae_digits.run_one``, seed 0 only, one at a time, one
thread, IWAE(k) as the originals used (1000 for digits, 5000 for the VAE table). Each row is
written as it lands; rows already in the output are skipped, so a stopped run resumes. The
original results files are only read, never rewritten: ``digits.py`` would replace every seed of
a model it reruns.

Before the first row, the output keeps a snapshot of the figures it compares with: the seed-0
number (exact NLL, -ELBO or dequantized bound: the table's main number) and its spread over
seeds (sample sd where the table has several seeds). BENCHMARKS.md renders the comparison
(``report_md.py``); a difference is judged against the row's own sd, or where there is one seed
only, against the pooled sd of the multi-seed rows of the same table (and says so).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, machine  # noqa: E402

# table (its results file) -> (the field that names a row, the table's main figure)
TABLES = {"digits": ("model", "test_nats"), "vae_digits": ("variant", "neg_elbo")}


def _sd(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def snapshot_before() -> dict[str, dict]:
    """The seed-0 figure of every model and variant, with its spread over seeds."""
    before: dict[str, dict] = {}
    for table, (key, main) in TABLES.items():
        data = json.loads((RESULTS / f"{table}.json").read_text())
        by: dict[str, list[dict]] = {}
        for r in data["rows"]:
            by.setdefault(r[key], []).append(r)
        for name, rs in by.items():
            zero = next((r for r in rs if r["seed"] == 0), None)
            if zero is None:
                continue
            iw = [r["iwae_nats"] for r in rs if "iwae_nats" in r]
            before[f"{table}:{name}"] = {
                "table": table, "name": name, "value": zero[main],
                "label": zero.get("label", "-ELBO"), "seeds": [r["seed"] for r in rs],
                "sd": _sd([r[main] for r in rs]),
                "iwae_nats": zero.get("iwae_nats"), "iwae_k": zero.get("iwae_k"),
                "sd_iwae": _sd(iw), "epochs": zero["epochs"], "cpu_s": zero["cpu_s"],
            }
    return before


def _load(out: Path) -> dict:
    if out.is_file():
        return json.loads(out.read_text())
    return {"before": snapshot_before(), "rows": []}


def _write(out: Path, data: dict, settings: dict) -> None:
    data.update(machine=machine(), settings=settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(out)


def _commit() -> str:
    """The commit of the code that ran the row, with "+" where the checkout had changes."""
    import dgm

    src = Path(dgm.__file__).resolve().parents[2]
    git = ["git", "-C", str(src)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return head + ("+" if dirty else "")


def rerun(key: str, k: int, iwae_k: int, workdir: Path) -> dict:
    """Train and score seed 0 of one model (``digits:<model>``) or variant
    (``vae_digits:<variant>``) with the original script's ``run_one``."""
    table, name = key.split(":", 1)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    if table == "digits":
        import digits

        row = digits.run_one(name, 0, k, workdir)
        main = row["test_nats"]
    else:
        import vae_digits

        row = vae_digits.run_one(name, 0, iwae_k, str(workdir))
        main = row["neg_elbo"]
    return {"key": key, "table": table, "name": name, "value": main,
            "iwae_nats": row.get("iwae_nats"), "iwae_k": row.get("iwae_k"),
            "epochs": row["epochs"], "best_epoch": row["best_epoch"], "train_cpu_s": row["cpu_s"],
            "total_cpu_s": time.process_time() - cpu0, "total_wall_s": time.perf_counter() - wall0,
            "row": row}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--only", nargs="*", default=None, help="keys such as digits:arm")
    p.add_argument("--k", type=int, default=1000, help="IWAE k of digits.py")
    p.add_argument("--iwae-k", type=int, default=5000, help="IWAE k of vae_digits.py")
    p.add_argument("--out", type=Path, default=RESULTS / "regression_issue14.json")
    args = p.parse_args()
    data = _load(args.out)
    settings = {"k": args.k, "iwae_k": args.iwae_k}
    # The VAE table first (its VQ-VAE moved its codebook update into after_step), then digits.
    keys = args.only or [*(k for k in data["before"] if k.startswith("vae_digits:")),
                         *(k for k in data["before"] if k.startswith("digits:"))]
    unknown = sorted(set(keys) - set(data["before"]))
    if unknown:
        raise SystemExit(f"not in the original results: {unknown}")
    done = {r["key"] for r in data["rows"]}
    commit = _commit()  # the code this process loads (the presets are read per row)
    for key in keys:
        if key in done:
            continue
        work = Path(tempfile.mkdtemp(prefix="dgm-regression-"))
        try:
            row = rerun(key, args.k, args.iwae_k, work)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        data["rows"].append({**row, "commit": commit})
        _write(args.out, data, settings)
        b = data["before"][key]
        print(f"{key}: {b['value']:.2f} -> {row['value']:.2f} ({row['value'] - b['value']:+.2f}); "
              f"{row['epochs']} epochs, {row['total_cpu_s']:.0f} CPU s with scoring", flush=True)
    print(f"wrote {args.out}")
    from report_md import write_benchmarks_md

    write_benchmarks_md()


if __name__ == "__main__":
    main()
