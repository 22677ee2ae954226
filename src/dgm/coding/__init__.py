"""Compression with the library's models (Book ch. 10): real bitstreams in a checked file.

- :func:`compress` / :func:`decompress`: one entry for every kind of code; the file's header
  says which it holds.
- :mod:`dgm.coding.sequential`: a model's conditionals drive a range coder (every exact model,
  and the lossy codecs' codes).
- :mod:`dgm.coding.bits_back`: BB-ANS for VAEs.
- :mod:`dgm.coding.entropy`: the coders (constriction) on integer frequency tables.
- :mod:`dgm.coding.container`: the file format.
"""

from __future__ import annotations

from torch import Tensor

from dgm.coding.bits_back import can_code_bits_back, compress_bits_back, decompress_bits_back
from dgm.coding.container import Container, Kind
from dgm.coding.sequential import (CodingReport, can_code_losslessly, compress_lossless,
                                 compress_lossy, decompress_lossless)
from dgm.core.base import GenerativeModel
from dgm.core.capabilities import LossyCodec
from dgm.core.errors import CodecError

__all__ = ["compress", "decompress", "CodingReport", "can_code_losslessly", "Kind"]


def compress(model: GenerativeModel, x: Tensor) -> tuple[bytes, CodingReport]:
    """The file's bytes for x (N, *event), and what coding it measured: exact conditionals
    through a range coder where the model has them, bits-back for a VAE, or a lossy codec's
    code."""
    if isinstance(model, LossyCodec):
        return compress_lossy(model, x)
    if can_code_losslessly(model):
        return compress_lossless(model, x)
    if can_code_bits_back(model):
        return compress_bits_back(model, x)
    raise CodecError(f"{type(model).__name__} cannot compress: it has neither exact "
                     "conditionals nor a codec")


def decompress(model: GenerativeModel, data: bytes) -> Tensor:
    """The examples a file holds, decoded with the model that wrote it."""
    box = Container.from_bytes(data)
    if box.kind in (Kind.LOSSLESS, Kind.LOSSY):
        return decompress_lossless(model, box)
    if box.kind is Kind.BITS_BACK:
        return decompress_bits_back(model, box)
    raise CodecError(f"unknown payload kind {box.kind}")
