r"""Coding with a model's conditionals, step by step: one path for the lossless coding of every
exact model (ARMs, PixelCNN, the transformer with its cache, mixtures, circuits, integer
discrete flows) and for the lossy codecs' quantized codes.

The model's chain rule p(s) = Π_t p(s_{G_t} | s_{G_<t}) over steps G_t of symbols drives a
range coder (Book §10.2, §10.4.3; adaptive arithmetic coding), so a file costs about
-log₂ p(symbols) bits (plus < 2^-24 relative loss from the integer frequencies and the coder's
last words). Symbols are the data's levels, an IDF's integer latent z = f(x), or a codec's
code; integers with no fixed alphabet are coded over the window [min, max] of the file (stored
in its header; the pmf renormalized there, which can only shorten the code).

Bit-identical probabilities on both sides, whatever the batch size and thread count: the
coder evaluates the model on the CPU, in float64 on one thread, on blocks of exactly
:data:`~dgm.core.conditionals.CODING_ROWS` rows (the last one padded with zeros), and the
encoder makes exactly the decoder's calls: a row's numbers depend on the row alone (at a fixed
shape a matrix product does not depend on the other rows), never on how many images a call
codes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch import Tensor

from dgm.coding.container import Container, Kind, dtype_name, fingerprint
from dgm.coding.entropy import RangeReader, RangeWriter, quantize_pmf
from dgm.core.base import GenerativeModel
from dgm.core.capabilities import (CodingCursor, IntegerLatent, LossyCodec, Marginalizable,
                                   SequentialCoding)
from dgm.core.conditionals import (CODING_ROWS, MarginalCursor, blockwise, coding_precision,
                                   padded_block)
from dgm.core.errors import CodecError
from dgm.core.spec import DataKind

__all__ = ["CodingReport", "can_code_losslessly", "compress_lossless", "compress_lossy",
           "decode_symbols", "decompress_lossless", "example_bits"]



@dataclass(frozen=True)
class CodingReport:
    """What a compression measured. ``model_bits``: Σ -log₂ p under the model's own float64
    conditionals (its exact NLL in bits; for bits-back, the net costs: a one-sample estimate of
    the discretized negative ELBO); ``payload_bits``: the real bitstream, of which
    ``initial_bits`` are a bits-back stack's starting words; the file adds ``header_bits``."""

    examples: int
    dims: int
    payload_bits: int
    header_bits: int
    model_bits: float
    seconds: float
    initial_bits: int = 0
    mse: float | None = None
    peak: float = 1.0

    @property
    def psnr(self) -> float | None:
        """10 log₁₀(MAX² / MSE) of a lossy code, MAX the data's top level (16 on the digits,
        255 on 8-bit images)."""
        if self.mse is None:
            return None
        return float("inf") if self.mse == 0 else 10 * math.log10(self.peak ** 2 / self.mse)

    @property
    def net_bits_per_dim(self) -> float:
        """Payload bits per dimension less a bits-back stack's initial words (paid once per
        file): the cost per example over a long file."""
        return (self.payload_bits - self.initial_bits) / (self.examples * self.dims)

    @property
    def file_bits(self) -> int:
        return self.payload_bits + self.header_bits

    @property
    def bits_per_dim(self) -> float:
        """Payload bits per dimension (the header reported apart)."""
        return self.payload_bits / (self.examples * self.dims)

    @property
    def model_bits_per_dim(self) -> float:
        return self.model_bits / (self.examples * self.dims)

    @property
    def overhead(self) -> float:
        """(payload - initial words) / model bits - 1."""
        return (self.payload_bits - self.initial_bits) / self.model_bits - 1.0

    def summary(self) -> str:
        """Two lines for people: the sizes, then the rates beside the model's own."""
        dims = self.examples * self.dims
        head = (f"{self.examples} example(s), {self.file_bits // 8} bytes = payload "
                f"{self.payload_bits // 8} + header {self.header_bits // 8}")
        if self.initial_bits:
            return (f"{head} (bits-back: {self.initial_bits // 8} bytes of the payload are the "
                    f"stack's initial words, paid once per file)\n"
                    f"  net {self.net_bits_per_dim:.4f} bits/dim, the whole file "
                    f"{self.file_bits / dims:.4f}; the model's discretized -ELBO "
                    f"{self.model_bits_per_dim:.4f} bits/dim (net {100 * self.overhead:+.3f}%); "
                    f"{self.examples / max(self.seconds, 1e-9):.1f} examples/s on one thread")
        if self.mse is not None:
            return (f"{head}\n  rate {self.bits_per_dim:.4f} bits/pixel without the header, "
                    f"{self.file_bits / dims:.4f} with it (the entropy model's cross-entropy "
                    f"{self.model_bits_per_dim:.4f}); distortion MSE {self.mse:.3f}, PSNR "
                    f"{self.psnr:.2f} dB (MAX = {self.peak:g}); "
                    f"{self.examples / max(self.seconds, 1e-9):.1f} examples/s on one thread")
        return (f"{head}\n  rate {self.bits_per_dim:.4f} bits/dim without the header, "
                f"{self.file_bits / dims:.4f} with it; the model's exact NLL "
                f"{self.model_bits_per_dim:.4f} bits/dim (payload {100 * self.overhead:+.3f}%); "
                f"{self.examples / max(self.seconds, 1e-9):.1f} examples/s on one thread")


def can_code_losslessly(model: GenerativeModel) -> bool:
    """Whether ``dgm compress`` can code x exactly with this model's conditionals."""
    if model.spec.kind is DataKind.CONTINUOUS or isinstance(model, LossyCodec):
        return False
    return isinstance(model, (SequentialCoding, Marginalizable))


def _cursor(model: GenerativeModel, alphabet: Tensor) -> CodingCursor:
    if isinstance(model, SequentialCoding):
        return model.coding_cursor(CODING_ROWS, alphabet)
    if isinstance(model, Marginalizable):
        levels = int(model.spec.num_levels or 2)
        return MarginalCursor(model.log_marginal, CODING_ROWS, model.spec.event_shape, levels,
                              torch.device("cpu"))
    raise CodecError(f"{type(model).__name__} has no exact per-coordinate conditionals to code "
                     "with; lossless coding needs an ARM, PixelCNN, transformer, mixture, "
                     "circuit or integer flow (a VAE codes by bits-back)")


def _check_model(model: GenerativeModel, kind: Kind) -> None:
    if kind is Kind.LOSSY:
        if not isinstance(model, LossyCodec):
            raise CodecError(f"{type(model).__name__} is not a lossy codec")
        return
    if not can_code_losslessly(model):
        _cursor(model, torch.arange(2))  # raises with the reason
        raise CodecError(f"{type(model).__name__} models continuous data; lossless coding "
                         "needs a discrete likelihood")


def _mapped(model: GenerativeModel) -> bool:
    """Whether the coded symbols are a transform of x (an integer flow's latent, a codec's
    code) rather than x itself."""
    return isinstance(model, (LossyCodec, IntegerLatent))


def _symbols(model: GenerativeModel, x: Tensor) -> Tensor:
    if _mapped(model):  # the data's own integer dtype may be narrow (uint8)
        return blockwise(model.coding_symbols, x.long()).long()  # type: ignore[attr-defined]
    return x.reshape(x.shape[0], -1).long()


def _blocks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CODING_ROWS):
        yield start, min(start + CODING_ROWS, n)


def _alphabet(twin: GenerativeModel, symbols: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """The symbol values coded, and what the header must carry to know them."""
    fixed = twin.coding_alphabet() if isinstance(twin, LossyCodec) else None
    if fixed is not None:
        return fixed, ()
    if _mapped(twin):  # at least two symbols: the coder needs a choice to code
        low, high = int(symbols.min()), int(symbols.max())
        high = max(high, low + 1)
        return torch.arange(low, high + 1), (low, high)
    return torch.arange(int(twin.spec.num_levels or 2)), ()


def _alphabet_of_file(twin: GenerativeModel, box: Container) -> Tensor:
    fixed = twin.coding_alphabet() if isinstance(twin, LossyCodec) else None
    if fixed is not None:
        return fixed
    if _mapped(twin):
        if len(box.extra) != 2:
            raise CodecError("the file lacks its window of symbols")
        return torch.arange(box.extra[0], box.extra[1] + 1)
    return torch.arange(int(twin.spec.num_levels or 2))


def _steps(twin: GenerativeModel, symbols: Tensor,
           alphabet: Tensor) -> Iterator[tuple[int, Tensor, Tensor]]:
    """(first row, log-pmf table (rows G, A) normalized in float64, symbol indices (rows G,))
    for every step of every block, making the decoder's calls."""
    for start, stop in _blocks(symbols.shape[0]):
        rows = stop - start
        block = padded_block(symbols[start:stop])
        cursor = _cursor(twin, alphabet)
        for positions in cursor.steps:
            log_pmf = torch.log_softmax(cursor.log_pmf().double(), -1)[:rows]
            values = block[:, positions]
            index = (values[:rows] - alphabet[0]).reshape(-1)
            yield start, log_pmf.reshape(index.numel(), -1), index
            cursor.advance(values)


def example_bits(model: GenerativeModel, x: Tensor) -> tuple[Tensor, Tensor]:
    """Per example (N,), float64: Σ -log₂ p of the model's own conditionals as the coder
    computes them, and the same under the quantized tables it codes with (an example's ideal
    code length, before the coder's word granularity)."""
    _check_model(model, Kind.LOSSY if isinstance(model, LossyCodec) else Kind.LOSSLESS)
    model.check_input(x)
    n = x.shape[0]
    own, coded = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    with coding_precision(model) as twin:
        symbols = _symbols(twin, x.cpu())
        alphabet, _ = _alphabet(twin, symbols)
        for start, table, index in _steps(twin, symbols, alphabet):
            count = min(CODING_ROWS, n - start)
            rows = torch.arange(start, start + count).repeat_interleave(index.numel() // count)
            picked = table.gather(1, index.unsqueeze(1))[:, 0]
            own.index_add_(0, rows, -picked / math.log(2))
            q = torch.from_numpy(quantize_pmf(table)).gather(1, index.unsqueeze(1))[:, 0]
            coded.index_add_(0, rows, -torch.log2(q))
    return own, coded


def _compress(model: GenerativeModel, x: Tensor, kind: Kind) -> tuple[bytes, CodingReport]:
    _check_model(model, kind)
    model.check_input(x)
    began = time.perf_counter()
    mse = None
    with coding_precision(model) as twin:
        symbols = _symbols(twin, x.cpu())
        alphabet, extra = _alphabet(twin, symbols)
        writer, model_bits = RangeWriter(), 0.0
        for _, table, index in _steps(twin, symbols, alphabet):
            model_bits -= float(table.gather(1, index.unsqueeze(1)).sum()) / math.log(2)
            writer.write(index.numpy(), quantize_pmf(table))
        if _mapped(twin):
            back = blockwise(twin.coding_inverse, symbols).reshape(x.shape)  # type: ignore
            if kind is Kind.LOSSY:
                mse = float((back.double() - x.cpu().double()).pow(2).mean())
            elif not torch.equal(back.long(), x.cpu().long()):
                raise CodecError("the integer flow does not invert on these data (its latent "
                                 "does not map back to x); nothing was written")
    words = writer.words()
    box = Container(kind, fingerprint(model), tuple(x.shape), extra, words.tobytes(),
                    dtype_name(x.dtype))
    data = box.to_bytes()
    report = CodingReport(x.shape[0], x[0].numel(), 32 * words.size, 8 * box.header_bytes,
                          model_bits, time.perf_counter() - began, mse=mse,
                          peak=float((model.spec.num_levels or 2) - 1))
    return data, report


def compress_lossless(model: GenerativeModel, x: Tensor) -> tuple[bytes, CodingReport]:
    """Code x (N, *event) exactly with the model's conditionals; returns the file's bytes and
    what it measured."""
    return _compress(model, x, Kind.LOSSLESS)


def compress_lossy(model: GenerativeModel, x: Tensor) -> tuple[bytes, CodingReport]:
    """Code x (N, *event) with a neural codec: its symbols under its entropy model; the report
    has the rate of the real file and the distortion of what it decodes to."""
    return _compress(model, x, Kind.LOSSY)


def decode_symbols(model: GenerativeModel, data: bytes | Container) -> Tensor:
    """The symbols a file of :func:`compress_lossless` or :func:`compress_lossy` holds, (N, S):
    the data's levels, an integer flow's latent or a codec's quantized code."""
    box = data if isinstance(data, Container) else Container.from_bytes(data)
    if box.kind not in (Kind.LOSSLESS, Kind.LOSSY):
        raise CodecError(f"this file holds a {box.kind.name.lower()} code")
    box.check_model(model)
    _check_model(model, box.kind)
    n, *event = box.shape
    if tuple(event) != tuple(model.spec.event_shape):
        raise CodecError(f"the file holds examples of shape {tuple(event)}, the model "
                         f"{tuple(model.spec.event_shape)}")
    reader = RangeReader(np.frombuffer(box.payload, dtype="<u4"))
    with coding_precision(model) as twin:
        alphabet = _alphabet_of_file(twin, box)
        decoded = []
        for start, stop in _blocks(n):
            rows = stop - start
            cursor = _cursor(twin, alphabet)
            size = sum(len(p) for p in cursor.steps)
            block = torch.zeros(CODING_ROWS, size, dtype=torch.long)
            for positions in cursor.steps:
                log_pmf = torch.log_softmax(cursor.log_pmf().double(), -1)[:rows]
                table = log_pmf.reshape(rows * len(positions), -1)
                index = torch.from_numpy(reader.read(quantize_pmf(table)))
                block[:rows, positions] = (index + alphabet[0]).view(rows, len(positions))
                cursor.advance(block[:, positions])
            decoded.append(block[:rows])
    return torch.cat(decoded) if decoded else torch.zeros(0, 1, dtype=torch.long)


def decompress_lossless(model: GenerativeModel, data: bytes | Container) -> Tensor:
    """The data back from a file of :func:`compress_lossless` (exactly) or
    :func:`compress_lossy` (the codec's reconstruction), decoded with the model that wrote
    it."""
    box = data if isinstance(data, Container) else Container.from_bytes(data)
    symbols = decode_symbols(model, box)
    n, *event = box.shape
    with coding_precision(model) as twin:
        x = blockwise(twin.coding_inverse, symbols) if _mapped(twin) else symbols  # type: ignore
    return x.reshape(n, *event).to(getattr(torch, box.dtype))
