"""scikit-learn's 8x8 handwritten digits, split exactly as the book's code does.

1797 images of 8x8 pixels with 17 levels (0..16). Unshuffled: the first 1000 are train, the
next 350 validation and the last 447 test (Book Ch. 2-5, companion notebooks), so our numbers
stand beside theirs.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from dgm.data.dataset import Dataset, Split, register_dataset
from dgm.core.spec import DataKind, DataSpec

__all__ = ["load_digits", "load_binary_digits", "load_binary_digits_4x4", "DIGITS_SPLIT",
           "BINARY_THRESHOLD"]

DIGITS_SPLIT = (1000, 350, 447)


@register_dataset("digits", DataKind.DISCRETE, "8x8 handwritten digits, 17 levels, 1000/350/447")
def load_digits() -> Dataset:
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    x = torch.from_numpy(bunch.images.astype("uint8")).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target.astype("int64"))
    a, b = DIGITS_SPLIT[0], DIGITS_SPLIT[0] + DIGITS_SPLIT[1]
    spec = DataSpec(event_shape=(1, 8, 8), kind=DataKind.DISCRETE, num_levels=17, num_classes=10)
    return Dataset(
        name="digits",
        spec=spec,
        train=Split(x[:a], y[:a]),
        val=Split(x[a:b], y[a:b]),
        test=Split(x[b:], y[b:]),
        description="scikit-learn load_digits: 8x8, values 0..16; book split 1000/350/447",
    )


#: the threshold of the binarized digits: a pixel is on when its level is at least 8 of 0..16
BINARY_THRESHOLD = 8


def _binary_view(source: Dataset, name: str, side: int, image: Callable[[Tensor], Tensor],
                 description: str) -> Dataset:
    """``source`` with every split's images mapped by ``image`` to side x side bits; same split
    and labels."""
    spec = DataSpec(event_shape=(1, side, side), kind=DataKind.BINARY, num_levels=2,
                    num_classes=10)

    def convert(split: Split) -> Split:
        return Split(image(split.x).to(torch.uint8), split.y)

    return Dataset(name=name, spec=spec, train=convert(source.train), val=convert(source.val),
                   test=convert(source.test), description=description)


@register_dataset("binary_digits", DataKind.BINARY,
                  "8x8 digits binarized once (pixel >= 8), 1000/350/447")
def load_binary_digits() -> Dataset:
    """The digits with each pixel set to 1 where its level is >= 8 (a static binarization, the
    protocol of ANCHORS.md §6 for Boltzmann machines), same split and labels."""
    return _binary_view(
        load_digits(), "binary_digits", 8, lambda x: x >= BINARY_THRESHOLD,
        "scikit-learn load_digits binarized at level >= 8; book split 1000/350/447")


@register_dataset("binary_digits_4x4", DataKind.BINARY,
                  "binarized digits pooled to 4x4 (16 bits), 1000/350/447")
def load_binary_digits_4x4() -> Dataset:
    """The binarized digits with each 2x2 block set to 1 where at least 2 of its 4 pixels are on:
    16 bits, so that the whole space (65,536 states) can be enumerated (fully visible Boltzmann
    machines, exact checks of samplers). Same split and labels."""

    def pool(x: Tensor) -> Tensor:
        return x.float().reshape(-1, 1, 4, 2, 4, 2).sum((3, 5)) >= 2

    return _binary_view(
        load_binary_digits(), "binary_digits_4x4", 4, pool,
        "binarized digits, 2x2 blocks on where >= 2 of 4 pixels are; split 1000/350/447")
