"""Orthogonal (volume-preserving) transforms: products of Householder reflections."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.transforms.base import Transform, check_flat, zeros_logabsdet

__all__ = ["Householder", "reflect", "householder_matrix"]


def reflect(x: Tensor, v: Tensor) -> Tensor:
    r"""H x = x - 2 v (vᵀx) / |v|², batched: x (..., D), v (D,) or (..., D) broadcast with x."""
    return x - 2.0 * ((x * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True)) * v


def householder_matrix(vectors: Tensor) -> Tensor:
    r"""Q = H_K ... H_1 as a matrix, vectors (..., K, D) -> (..., D, D), orthogonal."""
    *batch, k, d = vectors.shape
    eye = torch.eye(d, dtype=vectors.dtype, device=vectors.device).expand(*batch, d, d)
    rows = eye  # row i holds (H_j ... H_1 e_i)ᵀ after j reflections
    for j in range(k):
        rows = reflect(rows, vectors[..., j : j + 1, :])
    return rows.transpose(-1, -2)


class Householder(Transform):
    r"""A product of K Householder reflections, z = H_K ... H_1 x with H_k = I - 2 v_k v_kᵀ / |v_k|²
    (Tomczak & Welling 2016; Book §5.4.2.1). Each H_k is orthogonal and symmetric,
    so the map is volume preserving (log |det| = 0) and its inverse applies the reflections in
    the reverse order.

    Args:
        dim: D.
        num_reflections: K.
    """

    event_dim = 1
    volume_preserving = True

    def __init__(self, dim: int, num_reflections: int = 2) -> None:
        super().__init__()
        if num_reflections < 1:
            raise ConfigError(f"num_reflections must be >= 1, got {num_reflections}")
        self.dim = dim
        self.vectors = nn.Parameter(torch.randn(num_reflections, dim) / math.sqrt(dim))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        for v in self.vectors:
            x = reflect(x, v)
        return x, zeros_logabsdet(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        for v in reversed(list(self.vectors)):
            z = reflect(z, v)
        return z, zeros_logabsdet(z, 1)
