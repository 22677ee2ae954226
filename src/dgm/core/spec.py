"""What a batch of data is: its shape, its kind and its number of levels.

A :class:`DataSpec` travels with every dataset and every model, so that models read the event
shape and the number of levels instead of hard-coding 64 pixels or 17 values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from dgm.core.errors import DataError

__all__ = ["DataKind", "DataSpec"]


class DataKind(str, Enum):
    """The space the data lives in."""

    BINARY = "binary"  # values in {0, 1}, integer dtype
    DISCRETE = "discrete"  # values in {0, ..., num_levels - 1}, integer dtype
    CONTINUOUS = "continuous"  # real vectors, floating dtype
    TOKENS = "tokens"  # token ids in {0, ..., num_levels - 1} (the vocabulary), integer dtype

    @property
    def is_discrete(self) -> bool:
        return self is not DataKind.CONTINUOUS


@dataclass(frozen=True)
class DataSpec:
    """Shape and kind of one example.

    Args:
        event_shape: shape of one example, e.g. ``(1, 8, 8)`` for 8x8 digits or ``(2,)`` for a
            2-D toy. A batch is ``(N, *event_shape)``.
        kind: binary, discrete (K levels), continuous or tokens.
        num_levels: number of values a discrete coordinate takes (17 for digits, 256 for 8-bit
            images, 2 for binary data, the vocabulary size for tokens); ``None`` if continuous.
        num_classes: number of labels, if the dataset has labels.
        end_token: for variable-length token sequences, the id that ends a sequence. An example
            is its tokens up to and including the first ``end_token``; the positions after it
            are padding (filled with ``end_token``) and carry no probability.
    """

    event_shape: tuple[int, ...]
    kind: DataKind
    num_levels: int | None = None
    num_classes: int | None = None
    end_token: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_shape", tuple(int(s) for s in self.event_shape))
        object.__setattr__(self, "kind", DataKind(self.kind))
        if any(s <= 0 for s in self.event_shape):
            raise DataError(f"event_shape must be positive, got {self.event_shape}")
        if self.kind is DataKind.BINARY and self.num_levels not in (None, 2):
            raise DataError(f"binary data has 2 levels, got num_levels={self.num_levels}")
        if self.kind is DataKind.BINARY:
            object.__setattr__(self, "num_levels", 2)
        if self.kind.is_discrete and (self.num_levels is None or self.num_levels < 2):
            raise DataError(f"{self.kind.value} data needs num_levels >= 2, got {self.num_levels}")
        if self.kind is DataKind.CONTINUOUS and self.num_levels is not None:
            raise DataError("continuous data has no num_levels")
        if self.end_token is not None:
            if self.kind is not DataKind.TOKENS or len(self.event_shape) != 1:
                raise DataError("end_token is only for 1-D token sequences")
            if not 0 <= self.end_token < self.num_levels:
                raise DataError(f"end_token {self.end_token} outside 0..{self.num_levels - 1}")

    def lengths(self, x: Tensor) -> Tensor:
        """Number of scored positions of each example of a batch ``x``, shape (N,), long.

        D for fixed-length data; with an ``end_token``, the position of the first end token
        plus one (D if there is none).
        """
        n = x.shape[0]
        if self.end_token is None:
            return torch.full((n,), self.dim, dtype=torch.long, device=x.device)
        is_end = x.reshape(n, -1) == self.end_token
        first = torch.where(is_end.any(1), is_end.long().argmax(1), self.dim - 1)
        return first + 1

    def scored_positions(self, x: Tensor) -> Tensor:
        """Bool mask (N, D): the positions that carry probability (all, unless ``end_token``)."""
        positions = torch.arange(self.dim, device=x.device)
        return positions.unsqueeze(0) < self.lengths(x).unsqueeze(1)

    @property
    def dim(self) -> int:
        """Number of coordinates of one example (D)."""
        return math.prod(self.event_shape)

    @property
    def is_image(self) -> bool:
        """True for (C, H, W) data."""
        return len(self.event_shape) == 3

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of data in this space: long for discrete kinds, float32 otherwise."""
        return torch.long if self.kind.is_discrete else torch.float32

    def flat_mask(self, observed: Tensor, n: int) -> Tensor:
        """A bool mask of observed coordinates, of the event shape (one for every example) or
        (n, *event_shape), as (n, D) bool."""
        mask = observed.to(torch.bool)
        if tuple(mask.shape) == self.event_shape:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != self.event_shape or mask.shape[0] not in (1, n):
            raise DataError(f"the observed mask must have shape {self.event_shape} or "
                            f"({n}, {', '.join(map(str, self.event_shape))}), "
                            f"got {tuple(observed.shape)}")
        return mask.reshape(mask.shape[0], -1).expand(n, -1)

    def checked_mask(self, x: Tensor, observed: Tensor, name: str = "x") -> Tensor:
        """The (N, D) bool mask of ``observed`` (see :meth:`flat_mask`) for the batch ``x``,
        after checking x as :meth:`validate` does on its observed coordinates only (the
        others may hold anything)."""
        if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.event_shape:
            self.validate(x, name)  # raises the shape (or type) error
        mask = self.flat_mask(observed.to(x.device), x.shape[0])
        self.validate(torch.where(mask.reshape(x.shape), x, torch.zeros_like(x)), name)
        return mask

    def validate(self, x: Tensor, name: str = "x") -> None:
        """Raise :class:`DataError` unless ``x`` is a batch ``(N, *event_shape)`` of this space."""
        if not isinstance(x, Tensor):
            raise DataError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if tuple(x.shape[1:]) != self.event_shape or x.dim() != len(self.event_shape) + 1:
            raise DataError(
                f"{name} must have shape (N, {', '.join(map(str, self.event_shape))}), "
                f"got {tuple(x.shape)}"
            )
        if self.kind.is_discrete:
            if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
                raise DataError(
                    f"{name} must be an integer tensor for {self.kind.value} data "
                    f"(values 0..{self.num_levels - 1}), got dtype {x.dtype}"
                )
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.num_levels):
                raise DataError(
                    f"{name} values must lie in 0..{self.num_levels - 1}, "
                    f"got range {int(x.min())}..{int(x.max())}"
                )
        elif not x.dtype.is_floating_point:
            raise DataError(f"{name} must be a floating tensor for continuous data, got {x.dtype}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_shape": list(self.event_shape),
            "kind": self.kind.value,
            "num_levels": self.num_levels,
            "num_classes": self.num_classes,
            "end_token": self.end_token,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DataSpec":
        return cls(
            event_shape=tuple(d["event_shape"]),
            kind=DataKind(d["kind"]),
            num_levels=d.get("num_levels"),
            num_classes=d.get("num_classes"),
            end_token=d.get("end_token"),
        )
