r"""Trace estimators for Jacobians: exact, and Hutchinson's stochastic estimator.

Shared by the residual flows (log-det power series, Book §4.1.7), continuous normalizing flows
and every ODE likelihood (the divergence tr(∂v/∂x), Book Eq. 9.41), and sliced score matching.

- :func:`exact_divergence`: tr J from D vector-Jacobian products, run in blocks of rows so that
  memory stays at ``block`` x the batch (cost O(D) backward passes).
- :func:`hutchinson_divergence`: tr J ≈ εᵀ J ε for a probe ε with E[ε εᵀ] = I (Hutchinson 1989;
  FFJORD, Grathwohl et al. 2019, Book Eq. 9.57): one backward pass. Its variance is
  2 ||J_sym||_F² for Gaussian probes and 2 (||J_sym||_F² - Σ_i J_ii²) for Rademacher ones, with
  J_sym = (J + Jᵀ)/2, so Rademacher probes are never worse.

The vector-Jacobian product is εᵀ J = ∂(ε · f)/∂x. The book's listing differentiates f.sum()
instead, which gives 1ᵀ J, and "estimates" 1ᵀ J ε: its mean over ε is 0, not the trace
(a regression test guards against it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = ["PROBES", "probe", "jacobian", "exact_divergence", "hutchinson_divergence"]

PROBES = ("rademacher", "gaussian")


def probe(like: Tensor, kind: str = "rademacher", *, generator: torch.Generator | None = None
          ) -> Tensor:
    """A probe shaped like ``like`` with mean 0 and identity covariance: ±1 (Rademacher) or
    N(0, 1) entries."""
    if kind == "gaussian":
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    if kind == "rademacher":
        bits = torch.randint(0, 2, like.shape, generator=generator, device=like.device)
        return (bits * 2 - 1).to(like.dtype)
    raise ConfigError(f"probe must be one of {PROBES}, got {kind!r}")


def _rows(out: Tensor, x: Tensor, start: int, stop: int, create_graph: bool) -> Tensor:
    """Rows start..stop of the per-example Jacobian: (stop - start, N, D), flat."""
    n = x.shape[0]
    d = out[0].numel()
    eye = torch.zeros(stop - start, n, d, dtype=out.dtype, device=out.device)
    idx = torch.arange(stop - start, device=out.device)
    eye[idx, :, start + idx] = 1.0
    (rows,) = torch.autograd.grad(
        out, x, eye.reshape(stop - start, *out.shape), retain_graph=True,
        create_graph=create_graph, is_grads_batched=True,
    )
    return rows.reshape(stop - start, n, -1)


def jacobian(out: Tensor, x: Tensor, *, create_graph: bool = False, block: int = 64) -> Tensor:
    """The per-example Jacobian J[n, i, j] = ∂out_i/∂x_j of a batched map, flattened:
    (N, D_out, D_in). ``out`` must have been computed from ``x`` (which requires grad)."""
    d = out[0].numel()
    parts = [_rows(out, x, i, min(i + block, d), create_graph) for i in range(0, d, block)]
    return torch.cat(parts, 0).transpose(0, 1)


def exact_divergence(out: Tensor, x: Tensor, *, create_graph: bool = False, block: int = 64
                     ) -> Tensor:
    """tr(∂out/∂x) per example, (N,), from D vector-Jacobian products in blocks of ``block``."""
    d = out[0].numel()
    if x[0].numel() != d:
        raise ConfigError(f"the divergence needs a square Jacobian, got {d} outputs and "
                          f"{x[0].numel()} inputs")
    total = out.new_zeros(out.shape[0])
    for start in range(0, d, block):
        stop = min(start + block, d)
        rows = _rows(out, x, start, stop, create_graph)  # (B, N, D)
        idx = torch.arange(stop - start, device=out.device)
        total = total + rows[idx, :, start + idx].sum(0)
    return total


def hutchinson_divergence(out: Tensor, x: Tensor, eps: Tensor, *, create_graph: bool = False
                          ) -> Tensor:
    """εᵀ (∂out/∂x) ε per example, (N,): an unbiased estimate of the divergence for a probe ε
    (:func:`probe`) of out's shape."""
    (vjp,) = torch.autograd.grad(out, x, eps, retain_graph=True, create_graph=create_graph)
    return (vjp * eps).reshape(out.shape[0], -1).sum(1)
