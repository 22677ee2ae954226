"""Checkpoints: safetensors for tensors, JSON (in the safetensors header) for the rest.

Loading never unpickles anything. Files are written to a temporary name and renamed, so a crash
mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file, safe_open
from torch import Tensor

from dgm.core.errors import CheckpointError

__all__ = [
    "save_tensors",
    "load_tensors",
    "read_metadata",
    "flatten_optimizer_state",
    "unflatten_optimizer_state",
    "prefixed",
    "strip_prefix",
    "rng_tensors",
    "restore_rng",
]

_STATE_KEY = "dgm_state"


def save_tensors(path: str | Path, tensors: dict[str, Tensor], state: dict[str, Any]) -> None:
    """Atomically write ``tensors`` and the JSON-able ``state`` to one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(clean, str(tmp), metadata={_STATE_KEY: json.dumps(state)})
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors`; a clear CheckpointError if missing/corrupt."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))
        state = read_metadata(path)
    except (SafetensorError, OSError, ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {e}") from None
    return tensors, state


def read_metadata(path: str | Path) -> dict[str, Any]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {e}") from None
    if _STATE_KEY not in meta:
        raise CheckpointError(f"checkpoint {path} has no dgm state (not written by dgm?)")
    return json.loads(meta[_STATE_KEY])


def prefixed(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {f"{prefix}.{k}": v for k, v in tensors.items()}


def strip_prefix(prefix: str, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def flatten_optimizer_state(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (safetensors) and plain values (JSON)."""
    tensors: dict[str, Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        plain: dict[str, Any] = {}
        for name, value in entry.items():
            if isinstance(value, Tensor):
                tensors[f"{idx}.{name}"] = value
            else:
                plain[name] = value
        plain_state[str(idx)] = plain
    return tensors, {"state": plain_state, "param_groups": sd["param_groups"]}


def unflatten_optimizer_state(tensors: dict[str, Tensor], plain: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(i): dict(v) for i, v in plain["state"].items()}
    for key, value in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def rng_tensors(generator: torch.Generator) -> dict[str, Tensor]:
    """The global CPU (and CUDA) RNG states and the data generator's state."""
    out = {"cpu": torch.get_rng_state(), "data": generator.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = torch.cuda.get_rng_state()
    return out


def restore_rng(tensors: dict[str, Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["cpu"])
    generator.set_state(tensors["data"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["cuda"])
