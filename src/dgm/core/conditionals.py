r"""Cursors over a model's exact conditionals, step by step, for lossless coding
(:class:`~dgm.core.capabilities.CodingCursor`).

- :class:`AutoregressiveCursor`: p(x_d | x_{<d}) of an ARM (Eq. 3.4), θ_d from a pass over the
  symbols known so far with zeros after them, in raster order;
- :class:`MixtureCursor`: p(x_d | x_{<d}) = Σ_k p(k | x_{<d}) θ_kd(x_d) of a mixture of
  factorized components (Book §2.3), the posterior over k carried from step to step;
- :class:`MarginalCursor`: p(x_d | x_{<d}) = P(x_{<d}, x_d) / P(x_{<d}) from the exact
  marginals of a circuit or a mixture (Book §2.4): one batched pass over the L values of x_d,
  normalized over them (Σ_l P(x_{<d}, l) = P(x_{<d})).

Every pass sees only symbols of earlier steps, so the decoder, which knows only those, makes
the same calls on the same numbers as the encoder.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Callable, Iterator, TypeVar

import torch
from torch import Tensor, nn

from dgm.core.errors import CodecError
from dgm.core.heads import LikelihoodHead

__all__ = ["CODING_ROWS", "coding_precision", "padded_block", "blockwise",
           "AutoregressiveCursor", "MixtureCursor", "MarginalCursor", "check_levels_alphabet"]


CODING_ROWS = 16
"""Rows per model evaluation when coding (fixed, so that numbers never depend on batching)."""

M = TypeVar("M", bound=nn.Module)


@contextlib.contextmanager
def coding_precision(model: M) -> Iterator[M]:
    """A float64 CPU copy of the model in eval mode, evaluated on one thread without
    gradients: how a coder (and a codec's ``reconstruct``) evaluates a model, so that an
    encoder and a decoder compute the same numbers. At a fixed shape a row's result does not
    depend on the other rows; see :func:`blockwise`."""
    threads, dtype = torch.get_num_threads(), torch.get_default_dtype()
    twin = copy.deepcopy(model).to("cpu", torch.float64).eval()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            yield twin
    finally:
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)


def padded_block(block: Tensor) -> Tensor:
    """A block of at most :data:`CODING_ROWS` rows padded with zero rows to exactly that many."""
    pad = CODING_ROWS - block.shape[0]
    if pad == 0:
        return block
    return torch.cat([block, block.new_zeros(pad, *block.shape[1:])])


def blockwise(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """fn over x in blocks of exactly :data:`CODING_ROWS` rows (the last padded with zeros),
    so that every row is computed at the same shape whatever the number of rows."""
    outs = []
    for start in range(0, x.shape[0], CODING_ROWS):
        block = x[start:start + CODING_ROWS]
        outs.append(fn(padded_block(block))[:block.shape[0]])
    return torch.cat(outs) if outs else fn(x)


def check_levels_alphabet(alphabet: Tensor, levels: int) -> None:
    """Models over the data's levels code the alphabet 0..L-1 and nothing else."""
    if alphabet.numel() != levels or not torch.equal(alphabet.cpu(),
                                                     torch.arange(levels)):
        raise CodecError(f"this model codes the data's {levels} levels 0..{levels - 1}, not "
                         f"an alphabet of {alphabet.numel()} values")


class AutoregressiveCursor:
    """One coordinate per step in raster order; θ_d = params(x)[:, d] with x the symbols so
    far (zeros after). With an end token, the positions after a row's first end token are
    padding: their pmf is a point mass on the end token (they cost ~2^-24 bits)."""

    def __init__(self, params: Callable[[Tensor], Tensor], head: LikelihoodHead, rows: int,
                 event_shape: tuple[int, ...], device: torch.device,
                 end_token: int | None = None) -> None:
        self._params, self._head, self._end = params, head, end_token
        self.x = torch.zeros(rows, *event_shape, dtype=torch.long, device=device)
        dim = self.x[0].numel()
        self.steps = tuple(torch.tensor([d]) for d in range(dim))
        self._d = 0
        self._ended = torch.zeros(rows, dtype=torch.bool, device=device)

    def _pmf_from(self, theta: Tensor) -> Tensor:
        """(rows, 1, P) -> (rows, 1, L), finished rows pinned to the end token."""
        log_pmf = self._head.log_pmf(theta)
        if self._end is not None and bool(self._ended.any()):
            pinned = torch.full_like(log_pmf, float("-inf"))
            pinned[..., self._end] = 0.0
            log_pmf = torch.where(self._ended.view(-1, 1, 1), pinned, log_pmf)
        return log_pmf

    def log_pmf(self) -> Tensor:
        d = self._d
        return self._pmf_from(self._params(self.x)[:, d:d + 1])

    def advance(self, values: Tensor) -> None:
        self.x.view(self.x.shape[0], -1)[:, self._d] = values[:, 0].to(self.x.device)
        if self._end is not None:
            self._ended |= values[:, 0].to(self._ended.device) == self._end
        self._d += 1


class MarginalCursor:
    """One coordinate per step in raster order, from exact marginals log P(x_O)."""

    def __init__(self, log_marginal: Callable[[Tensor, Tensor], Tensor], rows: int,
                 event_shape: tuple[int, ...], levels: int, device: torch.device) -> None:
        self._log_marginal, self._levels = log_marginal, levels
        self.x = torch.zeros(rows, *event_shape, dtype=torch.long, device=device)
        dim = self.x[0].numel()
        self.steps = tuple(torch.tensor([d]) for d in range(dim))
        self._d = 0

    def log_pmf(self) -> Tensor:
        rows, d, levels = self.x.shape[0], self._d, self._levels
        flat = self.x.view(rows, -1)
        candidates = flat.repeat(levels, 1)  # level-major: rows of level 0, then level 1, ...
        candidates[:, d] = torch.arange(levels, device=flat.device).repeat_interleave(rows)
        observed = torch.zeros_like(candidates, dtype=torch.bool)
        observed[:, :d + 1] = True
        shape = (levels * rows, *self.x.shape[1:])
        joint = self._log_marginal(candidates.view(shape), observed.view(shape))
        return joint.view(levels, rows).T.unsqueeze(1)

    def advance(self, values: Tensor) -> None:
        self.x.view(self.x.shape[0], -1)[:, self._d] = values[:, 0].to(self.x.device)
        self._d += 1


class MixtureCursor:
    """One coordinate per step in raster order for a mixture with log-weights (K,) and
    component tables log θ (K, D, L): log p(x_d = l | x_{<d}) = LSE_k [a_k + log θ_kd(l)]
    with a_k = log π_k + Σ_{j<d} log θ_kj(x_j) (unnormalized; the coder normalizes)."""

    def __init__(self, log_weights: Tensor, log_theta: Tensor, rows: int) -> None:
        self._log_theta = log_theta
        self._a = log_weights.expand(rows, -1).clone()
        self.steps = tuple(torch.tensor([d]) for d in range(log_theta.shape[1]))
        self._d = 0

    def log_pmf(self) -> Tensor:
        table = self._log_theta[:, self._d]  # (K, L)
        return torch.logsumexp(self._a.unsqueeze(-1) + table, 1).unsqueeze(1)

    def advance(self, values: Tensor) -> None:
        table = self._log_theta[:, self._d]  # (K, L)
        self._a = self._a + table.T[values[:, 0].long()]
        self._d += 1
