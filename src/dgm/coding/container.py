"""The compressed file: a small versioned binary header, then the bitstream.

Layout (little-endian)::

    magic "DGMC" | version u8 | kind u8 | dtype u8 | ndim u8 | nextra u8
    | model fingerprint (16 bytes)
    | shape (ndim x u32) | extra (nextra x i32) | payload length u32 | CRC-32 u32 | payload

The CRC covers everything before it and the payload, so a flipped bit anywhere, a truncated
file or a file of another format is one clear :class:`~dgm.core.errors.CodecError`; the
fingerprint (a hash of the model's class, configuration and weights) makes decoding with
another model one too. The header's size is reported beside the payload's.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import struct
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from dgm.core.errors import CodecError

__all__ = ["MAGIC", "VERSION", "DTYPES", "Kind", "Container", "dtype_name", "fingerprint"]

MAGIC = b"DGMC"
VERSION = 1
_FIXED = struct.Struct("<4sBBBBB16s")
DTYPES = ("uint8", "int8", "int16", "int32", "int64", "float32", "float64", "bool")
"""The array dtypes a file can give back (the input's, so that a round trip is exact)."""
_TAIL = struct.Struct("<II")


class Kind(enum.IntEnum):
    """What the payload is."""

    LOSSLESS = 0  # symbols under an exact model's conditionals (range coding)
    BITS_BACK = 1  # a VAE's bits-back ANS stack
    LOSSY = 2  # a lossy codec's quantized latents


def dtype_name(dtype: torch.dtype) -> str:
    """torch.uint8 -> "uint8", checked against :data:`DTYPES`."""
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise CodecError(f"cannot code arrays of dtype {name}; one of {', '.join(DTYPES)}")
    return name


def fingerprint(model: nn.Module) -> bytes:
    """16 bytes of SHA-256 over the model's class, configuration and every tensor of its state
    (name, dtype, shape and bytes)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        digest.update(json.dumps(dataclasses.asdict(config), sort_keys=True,
                                 default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.view(-1).view(dtype=torch.uint8).numpy().tobytes() if t.numel()
                      else b"")
    return digest.digest()[:16]


@dataclass(frozen=True)
class Container:
    """A parsed compressed file. ``shape`` is the shape of the coded array (N, *event);
    ``extra`` holds kind-specific integers (the window of an integer latent's symbols, a
    codec's settings); ``dtype`` is the NumPy dtype of the array the file gives back."""

    kind: Kind
    model_id: bytes
    shape: tuple[int, ...]
    extra: tuple[int, ...]
    payload: bytes
    dtype: str = "int64"

    def _header(self) -> bytes:
        if len(self.model_id) != 16:
            raise CodecError("a model fingerprint has 16 bytes")
        if self.dtype not in DTYPES:
            raise CodecError(f"cannot store arrays of dtype {self.dtype}; one of {DTYPES}")
        return (_FIXED.pack(MAGIC, VERSION, int(self.kind), DTYPES.index(self.dtype),
                            len(self.shape), len(self.extra), self.model_id)
                + struct.pack(f"<{len(self.shape)}I", *self.shape)
                + struct.pack(f"<{len(self.extra)}i", *self.extra))

    @property
    def header_bytes(self) -> int:
        """Bytes of everything but the payload (the header and its length and checksum)."""
        return len(self._header()) + _TAIL.size

    def to_bytes(self) -> bytes:
        head = self._header()
        crc = zlib.crc32(self.payload, zlib.crc32(head + struct.pack("<I", len(self.payload))))
        return head + _TAIL.pack(len(self.payload), crc) + self.payload

    @classmethod
    def from_bytes(cls, data: bytes) -> "Container":
        """Parse and check a file; every defect is a :class:`CodecError` that says which."""
        if data[:4] != MAGIC:
            raise CodecError("not a dgm compressed file (its first bytes are not 'DGMC')")
        if len(data) < _FIXED.size:
            raise CodecError("the file is truncated inside its header")
        magic, version, kind, dtype, ndim, nextra, model_id = _FIXED.unpack_from(data)
        if version != VERSION:
            raise CodecError(f"file format version {version}; this dgm reads version {VERSION}")
        if kind not in {k.value for k in Kind}:
            raise CodecError(f"unknown payload kind {kind}")
        if dtype >= len(DTYPES):
            raise CodecError(f"unknown array dtype code {dtype}")
        start = _FIXED.size
        end = start + 4 * (ndim + nextra) + _TAIL.size
        if len(data) < end:
            raise CodecError("the file is truncated inside its header")
        shape = struct.unpack_from(f"<{ndim}I", data, start)
        extra = struct.unpack_from(f"<{nextra}i", data, start + 4 * ndim)
        length, crc = _TAIL.unpack_from(data, end - _TAIL.size)
        payload = data[end:]
        if len(payload) != length:
            raise CodecError(f"the file is truncated or has trailing bytes: its payload has "
                             f"{len(payload)} bytes, the header says {length}")
        head = data[:end - _TAIL.size]
        if zlib.crc32(payload, zlib.crc32(head + struct.pack("<I", length))) != crc:
            raise CodecError("the file is corrupt: its checksum does not match")
        return cls(Kind(kind), model_id, tuple(shape), tuple(extra), payload, DTYPES[dtype])

    def check_model(self, model: nn.Module) -> None:
        """Raise unless ``model`` is the one that wrote the file."""
        mine = fingerprint(model)
        if mine != self.model_id:
            raise CodecError(f"the file was made by another model (fingerprint "
                             f"{self.model_id.hex()}, this model's is {mine.hex()}); decode "
                             "it with the run that compressed it")
