r"""Invertible transforms for normalizing flows: the base class, composition and coupling layers.

Direction convention (one for the whole library): a transform maps **data to latent**,

    forward(x, c=None) -> (z, logabsdet)      logabsdet = log |det ∂z/∂x|
    inverse(z, c=None) -> (x, logabsdet)      logabsdet = log |det ∂x/∂z|

so each method returns the log-determinant of *its own* Jacobian, one value per example, shape
(N,), and ``forward`` and ``inverse`` log-dets of matching points sum to zero. A flow density is
then the change of variables (Book §4.1.1-4.1.2, Eq. 4.14)

    log p(x) = log π(f(x)) + log |det J_f(x)|,     f = f_K ∘ ... ∘ f_1,

with the log-dets of the parts summed. ``c`` is an optional context (a condition) that
conditioners may read; transforms without conditioners ignore it.

Every transform declares ``event_dim`` (how many trailing dimensions form one event: 1 for the
flat vectors the coupling layers act on) and ``volume_preserving`` (|det J| = 1 everywhere),
which tests and :class:`Compose` read.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError

__all__ = ["Transform", "Compose", "Inverse", "zeros_logabsdet", "check_flat"]


class Transform(nn.Module):
    """Base class of invertible maps x -> z with tractable log |det J|.

    Subclasses implement :meth:`forward` and :meth:`inverse`, each returning
    ``(output, logabsdet)`` with ``logabsdet`` of shape (N,) for a batch of N events.
    """

    event_dim: int = 1
    volume_preserving: bool = False

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(z, log |det ∂z/∂x|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent to data: ``(x, log |det ∂x/∂z|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")


def zeros_logabsdet(x: Tensor, event_dim: int) -> Tensor:
    """A zero log-det per event of x, shape x.shape[:-event_dim] (for volume-preserving maps)."""
    return x.new_zeros(x.shape[: x.dim() - event_dim])


class Compose(Transform):
    r"""Apply transforms in list order on ``forward`` and in reverse order on ``inverse``.

    ``Compose([t1, t2]).forward(x)`` is ``t2(t1(x))``, with log |det J| = Σ_k log |det J_k|
    (Eq. 4.14): the chain rule turns the product of Jacobian determinants into a sum of logs.

    Example:
        >>> import torch
        >>> from dgm.core.nn import mlp
        >>> from dgm.core.transforms import AffineCoupling, Permutation, half_mask
        >>> flow = Compose([AffineCoupling(half_mask(4), mlp(2, 16, 4)), Permutation.reverse(4)])
        >>> x = torch.randn(3, 4)
        >>> z, logabsdet = flow(x)
        >>> x_back, inv_logabsdet = flow.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(logabsdet, -inv_logabsdet)
        (True, True)
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        super().__init__()
        if len(transforms) == 0:
            raise ConfigError("Compose needs at least one transform")
        self.transforms = nn.ModuleList(transforms)
        self.event_dim = max(t.event_dim for t in transforms)
        self.volume_preserving = all(t.volume_preserving for t in transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)  # type: ignore[arg-type]

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = zeros_logabsdet(x, self.event_dim)
        for t in self.transforms:
            x, ld = t(x, c)
            logabsdet = logabsdet + ld
        return x, logabsdet

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = zeros_logabsdet(z, self.event_dim)
        for t in reversed(self.transforms):
            z, ld = t.inverse(z, c)
            logabsdet = logabsdet + ld
        return z, logabsdet


class Inverse(Transform):
    """The inverse of a transform: its ``forward`` is the wrapped ``inverse`` and vice versa."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform
        self.event_dim = transform.event_dim
        self.volume_preserving = transform.volume_preserving

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, c)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, c)


def check_flat(x: Tensor, dim: int, name: str) -> None:
    """Raise a DataError unless x is a batch of flat vectors (N, dim)."""
    if x.dim() != 2 or x.shape[1] != dim:
        raise DataError(f"{name} must have shape (N, {dim}), got {tuple(x.shape)}")
