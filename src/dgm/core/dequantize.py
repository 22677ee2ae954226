r"""Uniform dequantization: scoring a continuous density in a discrete space.

For integers x in {0..L-1}^D and a density p_Y on y = (x + u) / L, u ~ U[0, 1)^D,

    log P(x) = log ∫_{[0,1)^D} p_Y((x + u)/L) L^{-D} du
             >= E_u[log p_Y((x + u)/L)] - D log L          (Jensen; Theis et al. 2016)

and the importance-weighted version with k draws, log (1/k) Σ_i p_Y((x + u_i)/L) L^{-D}, is a
tighter bound that tends to log P(x) as k grows (q(u) = 1 on the unit cube). This is the same
arithmetic as a VAE's ELBO and IWAE with the noise u as the latent, which is why dequantized
models hand the evaluator ``log_weights`` like a VAE does (Book §4.1.3, §4.2.1).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["uniform_dequantize", "dequantization_log_jacobian", "quantize"]


def uniform_dequantize(
    x: Tensor, num_levels: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """y = (x + u) / L with u ~ U[0, 1) per coordinate: integers to points in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return (x.to(torch.float32) + u) / num_levels


def dequantization_log_jacobian(dim: int, num_levels: int) -> float:
    """log |d y / d(x + u)| = -D log L for y = (x + u) / L: add it to log p_Y(y)."""
    return -dim * math.log(num_levels)


def quantize(y: Tensor, num_levels: int) -> Tensor:
    """Inverse of dequantization: floor(y L), clamped to the support, as long integers."""
    return torch.floor(y * num_levels).clamp(0, num_levels - 1).long()
