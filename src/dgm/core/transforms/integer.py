r"""Integer-to-integer transforms for Integer Discrete Flows (IDF; Book §4.2.3).

A discrete flow has no Jacobian: for a bijection f of Z^D onto itself the pmf of x is the pmf
of its latent,

    P(x) = π(z = f(x))                                                  (Eq. 4.32)

so every transform here is volume preserving (its log-det is zero). Scaling is ruled out (the
integers are not closed under division), which leaves additive couplings with a rounded
translation (Eq. 4.35-4.36),

    z_a = x_a,    z_b = x_b + ⌊t(x_a)⌉,

inverted exactly by x_b = z_b - ⌊t(z_a)⌉, and their generalization to more parts
(Proposition 4.1; the quadripartite coupling, Eq. 4.37-4.40). ⌊·⌉ is rounding to the nearest
integer; it has zero gradient almost everywhere, so training passes the gradient straight
through it as if it were the identity (:func:`round_ste`; Bengio et al. 2013, as in IDF).

Inputs are float tensors whose entries are integers (exact in float32 up to 2^24); outputs are
integers of the same dtype. The conditioners must be deterministic for the inverse to be exact,
so invert in ``eval()`` mode when they use dropout.

References:
    Hoogeboom, Peters, van den Berg, Welling. Integer Discrete Flows and Lossless Compression.
    NeurIPS 2019, arXiv:1905.07376.
    Tomczak. Deep Generative Modeling, 2nd ed., §4.2.3 (Eq. 4.35-4.40, Proposition 4.1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.transforms.base import Transform, check_flat, zeros_logabsdet

__all__ = [
    "round_ste",
    "RoundStraightThrough",
    "IntegerAdditiveCoupling",
    "IntegerPartitionCoupling",
    "split_sizes",
]


class RoundStraightThrough(torch.autograd.Function):
    """⌊x⌉ in the forward pass, the identity's gradient in the backward pass (Listing 4.3)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad_output: Tensor) -> Tensor:  # type: ignore[override]
        return grad_output


def round_ste(x: Tensor) -> Tensor:
    r"""Round to the nearest integer (ties to even) with a straight-through gradient, ∂/∂x = 1.

    The forward value is exactly ``torch.round(x)`` (unlike ``x + (round(x) - x).detach()``,
    which can be off by a float rounding error), so integer arithmetic stays exact.
    """
    return RoundStraightThrough.apply(x)


def split_sizes(dim: int, num_parts: int) -> list[int]:
    """Sizes of ``num_parts`` contiguous parts of ``dim`` coordinates, the first ones larger."""
    if not 2 <= num_parts <= dim:
        raise ConfigError(f"cannot split {dim} coordinates into {num_parts} non-empty parts")
    base, extra = divmod(dim, num_parts)
    return [base + (1 if i < extra else 0) for i in range(num_parts)]


def _with_context(h: Tensor, c: Tensor | None) -> Tensor:
    return h if c is None else torch.cat([h, c.reshape(c.shape[0], -1).to(h.dtype)], dim=1)


class _Translation(nn.Module):
    r"""t(h) = σ_out · net(h / σ_in, c): a conditioner scaled to the integer grid.

    The latent is unbounded integers, so the net sees its input divided by ``input_scale``
    (about the data's range) and its output is multiplied by ``output_scale`` (in integer
    units): an O(1) network output then moves a coordinate by a few levels, enough for the
    rounding to change its value, without the huge jumps a raw net of large inputs gives.
    """

    def __init__(self, net: nn.Module, input_scale: float, output_scale: float) -> None:
        super().__init__()
        if input_scale <= 0 or output_scale <= 0:
            raise ConfigError(
                f"input_scale and output_scale must be positive, got {input_scale}, "
                f"{output_scale}"
            )
        self.net = net
        self.input_scale = float(input_scale)
        self.output_scale = float(output_scale)

    def forward(self, h: Tensor, c: Tensor | None) -> Tensor:
        return round_ste(self.output_scale * self.net(_with_context(h / self.input_scale, c)))


class IntegerAdditiveCoupling(Transform):
    r"""Bipartite integer additive coupling on flat vectors (Book Eq. 4.35-4.36).

    With x = [x_a, x_b] (the first ``split`` coordinates, then the rest):

        z_a = x_a,    z_b = x_b + ⌊t([x_a, c])⌉,         x_b = z_b - ⌊t([z_a, c])⌉,

    an exact bijection of Z^D (integer in, integer out) with log |det| = 0.

    Args:
        dim: D, the number of coordinates.
        make_net: ``make_net(d_in, d_out)`` builds a conditioner from d_in = D_a + C inputs
            (C the context width) to d_out = D_b translations.
        context: C, the width of the flattened context c (0: no context).
        split: D_a, the size of the fixed part (default ⌈D/2⌉).
        input_scale, output_scale: see :class:`_Translation` (t = σ_out · net(x_a / σ_in, c)).
    """

    event_dim = 1
    volume_preserving = True

    def __init__(
        self,
        dim: int,
        make_net: Callable[[int, int], nn.Module],
        *,
        context: int = 0,
        split: int | None = None,
        input_scale: float = 1.0,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        split = (dim + 1) // 2 if split is None else split
        if not 0 < split < dim:
            raise ConfigError(f"split must be in 1..{dim - 1}, got {split}")
        self.dim, self.split, self.context = dim, split, context
        self.t = _Translation(make_net(split + context, dim - split), input_scale, output_scale)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        return torch.cat([x_a, x_b + self.t(x_a, c)], dim=1), zeros_logabsdet(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        z_a, z_b = z[:, : self.split], z[:, self.split :]
        return torch.cat([z_a, z_b - self.t(z_a, c)], dim=1), zeros_logabsdet(z, 1)


class IntegerPartitionCoupling(Transform):
    r"""Integer coupling over P parts, each shifted given all the others (Proposition 4.1).

    With x = [x_1, ..., x_P] (contiguous parts; P = 4 is the book's quadripartite coupling,
    Eq. 4.37-4.40), part i is shifted by a rounded translation of the parts already
    transformed and the ones still to come,

        z_i = x_i + ⌊t_i([z_1, ..., z_{i-1}, x_{i+1}, ..., x_P, c])⌉,    i = 1..P,

    and the inverse runs backwards, x_i = z_i - ⌊t_i([z_{<i}, x_{>i}, c])⌉ for i = P..1 (when
    x_i is recovered, z_{<i} and x_{>i} are known). Every part is transformed, so the layer is
    autoregressive-like and more expressive than the bipartite one; log |det| = 0.

    Args:
        dim: D.
        make_net: ``make_net(d_in, d_out)`` builds t_i from D - D_i + C inputs to D_i outputs.
        num_parts: P (>= 2).
        context: C, the width of the flattened context c (0: no context).
        input_scale, output_scale: as in :class:`IntegerAdditiveCoupling`.
    """

    event_dim = 1
    volume_preserving = True

    def __init__(
        self,
        dim: int,
        make_net: Callable[[int, int], nn.Module],
        *,
        num_parts: int = 4,
        context: int = 0,
        input_scale: float = 1.0,
        output_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.dim, self.context = dim, context
        self.sizes = split_sizes(dim, num_parts)
        self.ts = nn.ModuleList(
            _Translation(make_net(dim - d + context, d), input_scale, output_scale)
            for d in self.sizes
        )

    def _others(self, parts: list[Tensor], i: int) -> Tensor:
        return torch.cat(parts[:i] + parts[i + 1 :], dim=1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        parts = list(x.split(self.sizes, dim=1))
        for i, t in enumerate(self.ts):
            parts[i] = parts[i] + t(self._others(parts, i), c)
        return torch.cat(parts, dim=1), zeros_logabsdet(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        parts = list(z.split(self.sizes, dim=1))
        for i in reversed(range(len(self.ts))):
            parts[i] = parts[i] - self.ts[i](self._others(parts, i), c)
        return torch.cat(parts, dim=1), zeros_logabsdet(z, 1)
