"""The package's layers import downwards only: a test over every module's imports (ast, no
import needed), so that a cycle or an upward import cannot land unnoticed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "dgm"

# What each layer may import from dgm (besides itself). Applications (cli, demo, rag) may import
# everything below them.
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "models": {"core", "data"},
    "runs": {"core", "data", "models", "config", "checkpoints"},
    "checkpoints": {"core"},
    "coding": {"core"},
    "config": {"core"},
    "eval": {"core", "data", "models", "runs", "config", "checkpoints", "coding"},
    "train": {"core", "data", "models", "runs", "config", "checkpoints", "eval", "coding"},
}


def _layer(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "dgm" and len(parts) > 1:
                out.add(parts[1])
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py") if _layer(p) in ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_go_down_the_layers(path: Path) -> None:
    layer = _layer(path)
    upward = _imports(path) - ALLOWED[layer] - {layer}
    # data/spec.py re-exports the spec from core for code written against the old name.
    assert not upward, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(upward)}"


def test_the_layer_table_has_no_cycle() -> None:
    seen: dict[str, int] = {}

    def depth(layer: str, stack: tuple[str, ...] = ()) -> int:
        assert layer not in stack, f"cycle {' -> '.join(stack + (layer,))}"
        if layer not in seen:
            seen[layer] = 1 + max((depth(d, stack + (layer,)) for d in ALLOWED[layer]), default=0)
        return seen[layer]

    for layer in ALLOWED:
        depth(layer)
