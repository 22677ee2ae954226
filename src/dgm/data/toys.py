"""2-D toy densities: moons, circles, swiss roll, checkerboard, eight and two Gaussians.

Each is drawn afresh from a seeded generator (train, validation and test from different seeds),
as float32 points of shape (N, 2). They are continuous data: the models' scores on them are
log-densities, not discrete likelihoods.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from dgm.data.dataset import Dataset, Split, register_dataset
from dgm.core.spec import DataKind, DataSpec

__all__ = ["TOY_SAMPLERS", "sample_toy"]


def _moons(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_moons

    x, _ = make_moons(n, noise=0.05, random_state=int(rng.integers(2**31)))
    return (x - np.array([0.5, 0.25])) * 2.0


def _circles(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_circles

    x, _ = make_circles(n, factor=0.5, noise=0.05, random_state=int(rng.integers(2**31)))
    return x * 3.0


def _swiss_roll(n: int, rng: np.random.Generator) -> np.ndarray:
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(n, noise=0.5, random_state=int(rng.integers(2**31)))
    return x[:, [0, 2]] / 4.0


def _checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    # 4x4 board on [-4, 4]^2 with mass on alternating unit-2 squares (FFJORD's toy).
    x1 = rng.uniform(-2, 2, n)
    x2 = rng.uniform(0, 1, n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    return np.stack([x1, x2], axis=1) * 2.0


def _eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    angles = rng.integers(0, 8, n) * (2 * math.pi / 8)
    centers = 3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return centers + 0.3 * rng.standard_normal((n, 2))


def _two_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    side = rng.integers(0, 2, n) * 2 - 1
    centers = np.stack([2.0 * side, np.zeros(n)], axis=1)
    return centers + 0.5 * rng.standard_normal((n, 2))


TOY_SAMPLERS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "moons": _moons,
    "circles": _circles,
    "swissroll": _swiss_roll,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
    "two_gaussians": _two_gaussians,
}


def sample_toy(name: str, n: int, seed: int) -> torch.Tensor:
    """n points of the toy ``name`` as float32 (n, 2), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(TOY_SAMPLERS[name](n, rng).astype(np.float32))


def _register(name: str) -> None:
    @register_dataset(name, DataKind.CONTINUOUS, f"2-D toy '{name}' (continuous)")
    def loader(n_train: int = 10000, n_val: int = 2000, n_test: int = 2000, seed: int = 0) -> Dataset:
        spec = DataSpec(event_shape=(2,), kind=DataKind.CONTINUOUS)
        return Dataset(
            name=name,
            spec=spec,
            train=Split(sample_toy(name, n_train, 3 * seed)),
            val=Split(sample_toy(name, n_val, 3 * seed + 1)),
            test=Split(sample_toy(name, n_test, 3 * seed + 2)),
            description=f"2-D toy density '{name}', {n_train}/{n_val}/{n_test} points",
        )


for _name in TOY_SAMPLERS:
    _register(_name)
