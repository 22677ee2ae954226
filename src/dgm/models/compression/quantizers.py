r"""Differentiable quantizers of a neural codec (Book §10.4.2): a continuous code y becomes
discrete symbols that an entropy coder can write, and values ŷ that the decoder reads.

- :class:`CodebookQuantizer`: the book's scalar codebook c ∈ R^K, every coordinate snapped to
  its nearest codeword (symbols 0..K-1). Repaired: the distance is |y - c| (the book's
  √((y - c)²) has a NaN gradient at 0), and the one-hot is hard in the forward pass with the
  gradient of softmax(-τ |y - c|) at a moderate τ (straight-through): the book's τ = 10⁷
  saturates the softmax so that the encoder gets no gradient at all;
- :class:`RoundingQuantizer`: ŷ = round(y), symbols the integers themselves; in training
  either straight-through (ŷ = y + sg(round(y) - y)) or additive uniform noise
  ŷ = y + u, u ~ U(-½, ½) (Ballé et al. 2017), whose density matches the rounded value's pmf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["Quantized", "CodebookQuantizer", "RoundingQuantizer"]


@dataclass(frozen=True)
class Quantized:
    """``values`` ŷ (what the decoder reads), ``symbols`` (long, what is coded) and, for a
    codebook, the straight-through one-hot (…, K) that the rate's gradient goes through."""

    values: Tensor
    symbols: Tensor
    one_hot: Tensor | None = None


class CodebookQuantizer(nn.Module):
    """K learnable scalar codewords, shared by every code coordinate.

    Args:
        codebook_size: K.
        temperature: τ of the backward pass's softmax(-τ |y - c|).
        spread: the codewords start evenly spaced on [-spread, spread] (the book's U(-1/K,
            1/K) start snaps every unnormalized code to the extreme codewords).
    """

    def __init__(self, codebook_size: int, temperature: float = 1.0, spread: float = 2.0) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.temperature = temperature
        self.codebook = nn.Parameter(torch.linspace(-spread, spread, codebook_size))

    def forward(self, y: Tensor) -> Quantized:
        distance = (y.unsqueeze(-1) - self.codebook).abs()  # (..., K)
        symbols = distance.argmin(-1)
        hard = torch.nn.functional.one_hot(symbols, self.codebook_size).to(y.dtype)
        soft = torch.softmax(-self.temperature * distance, -1)
        one_hot = soft + (hard - soft).detach()
        return Quantized(one_hot @ self.codebook, symbols, one_hot)

    def values_of(self, symbols: Tensor) -> Tensor:
        """ŷ of coded symbols."""
        return self.codebook[symbols.long()]


class RoundingQuantizer(nn.Module):
    """Rounding to the integers; ``mode`` "ste" or "noise" says what training sees."""

    def __init__(self, mode: str = "noise") -> None:
        super().__init__()
        if mode not in ("ste", "noise"):
            raise ValueError(f"mode must be 'ste' or 'noise', got {mode!r}")
        self.mode = mode

    def forward(self, y: Tensor) -> Quantized:
        rounded = torch.round(y)
        if not self.training:
            values = rounded
        elif self.mode == "ste":
            values = y + (rounded - y).detach()
        else:
            values = y + torch.rand_like(y) - 0.5
        return Quantized(values, rounded.long())

    def values_of(self, symbols: Tensor) -> Tensor:
        return symbols.to(torch.get_default_dtype())
