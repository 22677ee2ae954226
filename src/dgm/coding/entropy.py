r"""Entropy coding of symbols under model probabilities: constriction's range coder (a queue,
for models that predict symbol after symbol) and ANS coder (a stack, for bits-back coding).

A message x_1..x_n with model probabilities p_i(x_i) costs about Σ_i -log₂ p_i(x_i) bits
(Book §10.2; Shannon's source coding theorem), plus at most a few 32-bit words of termination.

Both sides must see the same probabilities to the last bit. :func:`quantize_pmf` turns model
log-probabilities into integer frequencies out of 2^24 (constriction's precision), every symbol
at least 1, so that any symbol can be coded (it then costs at most 24 bits); the coders are
fed those frequencies as exactly representable fractions. The probabilities themselves are
made bit-identical by :mod:`dgm.coding.sequential` (fixed evaluation shapes).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from dgm.core.errors import CodecError

__all__ = ["PRECISION", "quantize_pmf", "code_length_bits", "RangeWriter", "RangeReader",
           "AnsStack"]

PRECISION = 24
"""Bits of the integer frequencies (constriction's categorical models use 24)."""


def quantize_pmf(log_pmf: Tensor) -> np.ndarray:
    r"""Log-probabilities (…, A), normalized or not, -> probabilities (…, A) float64 that are
    integer multiples of 2^-24, at least 2^-24 each, summing to exactly one:
    f_a = 1 + ⌊p_a (2^24 - A)⌋, the remainder added to the most probable symbol."""
    if log_pmf.shape[-1] > (1 << PRECISION) // 2:
        raise CodecError(f"an alphabet of {log_pmf.shape[-1]} symbols is too large to code")
    log_pmf = log_pmf.detach().to("cpu", torch.float64)
    # a row with no finite entry (a model that gives the coded context zero probability) is
    # coded as uniform: still decodable, and the same on both sides
    no_mass = ~torch.isfinite(log_pmf).any(-1, keepdim=True)
    dead = no_mass | torch.isnan(log_pmf).any(-1, keepdim=True)
    log_pmf = torch.where(dead, torch.zeros_like(log_pmf), log_pmf)
    p = torch.softmax(log_pmf, -1).numpy()
    total, size = 1 << PRECISION, p.shape[-1]
    freq = np.floor(p * (total - size)).astype(np.int64) + 1
    top = freq.argmax(-1)[..., None]
    remainder = total - freq.sum(-1, keepdims=True)
    np.put_along_axis(freq, top, np.take_along_axis(freq, top, -1) + remainder, -1)
    return freq.astype(np.float64) / total


def code_length_bits(symbols: np.ndarray, probs: np.ndarray) -> float:
    """Σ -log₂ p(symbol): the ideal length in bits of ``symbols`` (m,) under ``probs`` (m, A)."""
    return float(-np.log2(np.take_along_axis(probs, symbols[:, None].astype(np.int64),
                                             1)).sum())


def _symbols(symbols: np.ndarray | Tensor, probs: np.ndarray) -> np.ndarray:
    s = np.asarray(symbols.cpu() if isinstance(symbols, Tensor) else symbols).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != s.shape[0]:
        raise CodecError(f"{s.shape[0]} symbols need ({s.shape[0]}, A) probabilities, "
                         f"got {probs.shape}")
    if s.size and (s.min() < 0 or s.max() >= probs.shape[1]):
        raise CodecError(f"symbols must lie in [0, {probs.shape[1]}), got "
                         f"[{s.min()}, {s.max()}]")
    return s.astype(np.int32)


def _categorical():  # noqa: ANN202 - constriction's model type
    import constriction

    return constriction.stream.model.Categorical(perfect=False)


class RangeWriter:
    """Range encoder (first in, first out): ``write`` symbols in the order the decoder will
    ``read`` them."""

    def __init__(self) -> None:
        import constriction

        self._coder = constriction.stream.queue.RangeEncoder()
        self.ideal_bits = 0.0

    def write(self, symbols: np.ndarray | Tensor, probs: np.ndarray) -> None:
        """Symbols (m,) in [0, A) under quantized probabilities (m, A) from
        :func:`quantize_pmf`."""
        s = _symbols(symbols, probs)
        if s.size:
            self._coder.encode(s, _categorical(), probs)
            self.ideal_bits += code_length_bits(s, probs)

    def words(self) -> np.ndarray:
        """The bitstream, as 32-bit words."""
        return self._coder.get_compressed().astype("<u4")


class RangeReader:
    """Range decoder over the words of a :class:`RangeWriter`."""

    def __init__(self, words: np.ndarray) -> None:
        import constriction

        self._coder = constriction.stream.queue.RangeDecoder(
            np.ascontiguousarray(words, dtype=np.uint32))

    def read(self, probs: np.ndarray) -> np.ndarray:
        """The next len(probs) symbols, int64 (m,)."""
        if probs.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return self._coder.decode(_categorical(), probs).astype(np.int64)
        except Exception as error:  # constriction raises its own types on a bad stream
            raise CodecError(f"the bitstream does not decode: {error}") from error


class AnsStack:
    """An ANS coder (last in, first out), as bits-back coding needs: ``push`` symbols, ``pop``
    symbols (which *reads* bits from the stack, or draws them from its initial random words
    while it is short of bits)."""

    def __init__(self, words: np.ndarray | None = None) -> None:
        import constriction

        self._coder = (constriction.stream.stack.AnsCoder() if words is None else
                       constriction.stream.stack.AnsCoder(
                           np.ascontiguousarray(words, dtype=np.uint32)))

    def push(self, symbols: np.ndarray | Tensor, probs: np.ndarray) -> None:
        s = _symbols(symbols, probs)
        if s.size:
            self._coder.encode_reverse(s, _categorical(), probs)

    def pop(self, probs: np.ndarray) -> np.ndarray:
        if probs.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        try:
            return self._coder.decode(_categorical(), probs).astype(np.int64)
        except Exception as error:
            raise CodecError(f"the bitstream does not decode: {error}") from error

    def num_bits(self) -> int:
        return int(self._coder.num_bits())

    def words(self) -> np.ndarray:
        return self._coder.get_compressed().astype("<u4")

    def is_empty(self) -> bool:
        return bool(self._coder.is_empty())
