"""Shared bits of the benchmark scripts: machine description, running a preset, writing JSON."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "commit": commit,
        "date": time.strftime("%Y-%m-%d"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


@contextlib.contextmanager
def locked_json(name: str) -> Iterator[dict[str, Any]]:
    """``RESULTS/<name>.json`` read under an exclusive file lock, yielded for updating and
    written back atomically, so that benchmark processes running side by side can each merge
    their own rows into it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    with open(Path(tempfile.gettempdir()) / f"dgm_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(path.read_text()) if path.is_file() else {}
        yield result
        tmp = path.with_suffix(f".json.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)


def train_preset(run_dir: Path, preset: str, overrides: list[str]) -> str | None:
    """Train ``configs/<preset>.yaml`` with ``overrides`` (one thread, progress off) into a
    fresh ``run_dir``; None, or the error of a run that failed (reported, not dropped)."""
    import shutil

    from dgm.config import load_config
    from dgm.core.errors import DgmError
    from dgm.train.trainer import train

    shutil.rmtree(run_dir, ignore_errors=True)
    config = load_config(ROOT / "configs" / f"{preset}.yaml",
                         overrides=["train.progress=false", "train.threads=1", *overrides])
    try:
        train(config, run_dir)
    except DgmError as e:
        return f"{type(e).__name__}: {e}"
    return None


def lower_envelope(points: list[dict[str, Any]], x: str = "bpp",
                   y: str = "mse") -> list[dict[str, Any]]:
    """The points that no point of lower or equal ``x`` beats on ``y`` (lower is better for
    both): a rate-distortion lower envelope, in increasing ``x``."""
    envelope, best = [], float("inf")
    for p in sorted(points, key=lambda p: p[x]):
        if p[y] < best:
            best = p[y]
            envelope.append(p)
    return envelope
