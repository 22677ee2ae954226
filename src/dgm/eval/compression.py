"""Rate and distortion of a neural codec from real files (Book §10.2.4): the bits of the
bitstream the coder writes for a split (header apart), the entropy model's cross-entropy
beside them, and the MSE and PSNR of what the file decodes to."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from dgm.coding import compress, decompress
from dgm.core.base import GenerativeModel
from dgm.core.capabilities import LossyCodec
from dgm.core.errors import ConfigError
from dgm.data.dataset import Split

__all__ = ["RateDistortion", "evaluate_codec"]


@dataclass(frozen=True)
class RateDistortion:
    """One split coded into one file: rates in bits per pixel of the real bitstream (without
    and with the file's header), the entropy model's own cross-entropy, and the decoded
    reconstruction's MSE (data units) and PSNR (MAX = the data's top level); throughput in
    images per second on one thread."""

    split: str
    n: int
    bits_per_pixel: float
    bits_per_pixel_with_header: float
    model_bits_per_pixel: float
    mse: float
    psnr: float
    peak: float
    encode_per_s: float
    decode_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "rate_distortion", **asdict(self)}

    def line(self) -> str:
        return (f"{self.split}: {self.bits_per_pixel:.4f} bits/pixel (real file, header apart; "
                f"{self.bits_per_pixel_with_header:.4f} with it; the entropy model's "
                f"cross-entropy {self.model_bits_per_pixel:.4f}), MSE {self.mse:.3f}, PSNR "
                f"{self.psnr:.2f} dB (MAX = {self.peak:g}) [n={self.n}; encode "
                f"{self.encode_per_s:.0f}, decode {self.decode_per_s:.0f} images/s, one thread]")


def evaluate_codec(model: GenerativeModel, split: Split, *, split_name: str = "test",
                   limit: int | None = None) -> RateDistortion:
    """Code the split (or its first ``limit`` examples) into one file and decode it."""
    if not isinstance(model, LossyCodec):
        raise ConfigError(f"{type(model).__name__} is not a lossy codec")
    x = split.x if limit is None else split.x[:limit]
    data, report = compress(model, x)
    began = time.perf_counter()
    decoded = decompress(model, data)
    decode_s = time.perf_counter() - began
    mse = float((decoded.double() - x.double()).pow(2).mean())
    pixels = x[0].numel() * x.shape[0]
    peak = report.peak
    return RateDistortion(
        split=split_name, n=x.shape[0], bits_per_pixel=report.bits_per_dim,
        bits_per_pixel_with_header=report.file_bits / pixels,
        model_bits_per_pixel=report.model_bits_per_dim, mse=mse,
        psnr=float("inf") if mse == 0 else 10 * math.log10(peak ** 2 / mse), peak=peak,
        encode_per_s=x.shape[0] / max(report.seconds, 1e-9),
        decode_per_s=x.shape[0] / max(decode_s, 1e-9))
