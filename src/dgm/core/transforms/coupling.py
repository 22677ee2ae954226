"""Coupling layers (NICE, RealNVP) on flat vectors, their masks, and fixed permutations."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.transforms.base import Transform, check_flat, zeros_logabsdet

__all__ = [
    "AffineCoupling",
    "Permutation",
    "half_mask",
    "alternating_mask",
    "register_mask_split",
]


def half_mask(dim: int, *, first: bool = True) -> Tensor:
    """Boolean mask of length ``dim``: the first (or last) ⌈dim/2⌉ coordinates stay fixed."""
    mask = torch.arange(dim) < (dim + 1) // 2
    return mask if first else ~mask


def alternating_mask(dim: int, *, even: bool = True) -> Tensor:
    """Boolean mask of length ``dim`` that keeps the even (or odd) coordinates fixed."""
    mask = torch.arange(dim) % 2 == 0
    return mask if even else ~mask


def register_mask_split(module: nn.Module, mask: Tensor) -> None:
    """Check a coupling's boolean mask (D,) and store on ``module`` the buffers ``idx_a`` (the
    fixed, conditioning coordinates, mask True), ``idx_b`` (the transformed ones) and
    ``unsplit`` ([x_a, x_b][:, unsplit] puts every coordinate back in its place), and
    ``module.dim`` = D."""
    mask = torch.as_tensor(mask, dtype=torch.bool)
    if mask.dim() != 1:
        raise ConfigError(f"mask must be 1-D, got shape {tuple(mask.shape)}")
    if bool(mask.all()) or not bool(mask.any()):
        raise ConfigError("mask must leave both parts non-empty")
    idx_a = torch.nonzero(mask).squeeze(1)
    idx_b = torch.nonzero(~mask).squeeze(1)
    module.dim = int(mask.numel())
    module.register_buffer("idx_a", idx_a)
    module.register_buffer("idx_b", idx_b)
    module.register_buffer("unsplit", torch.argsort(torch.cat([idx_a, idx_b])))


class AffineCoupling(Transform):
    r"""Affine coupling layer on flat vectors (RealNVP; Book §4.1.3, Eq. 4.15-4.20).

    The mask splits x into a fixed part x_a (``mask`` True) and a transformed part x_b:

        z_a = x_a,    z_b = x_b ⊙ exp(s) + t,    (s̃, t) = conditioner([x_a, c]),
        s = α ⊙ tanh(s̃),    log |det ∂z/∂x| = Σ_j s_j.

    The Jacobian is triangular after reordering, so its determinant is the product of the
    scales. The tanh bounds every log-scale to (-α, α), which keeps exp(s) from overflowing;
    α is a per-coordinate factor, learnable when ``learn_scale_bound`` is set (as the book's
    tanh head with a learnable output scale). The inverse is x_b = (z_b - t) ⊙ exp(-s), with
    (s, t) computed from z_a = x_a.

    Args:
        mask: boolean (D,), True where the coordinate conditions the others and passes
            through unchanged. Halves (``half_mask``) give the book's split; alternating
            masks give a checkerboard on flat vectors. Both parts must be non-empty.
        conditioner: a module mapping (N, D_a + C) to (N, 2 D_b): raw log-scales then shifts,
            where D_a = mask.sum(), D_b = D - D_a and C is the context width (0 without one).
        scale_bound: initial α.
        learn_scale_bound: make α a parameter.
        affine: False gives NICE's additive coupling z_b = x_b + t (Dinh et al. 2015; Book
            §4.1.3): volume preserving, the conditioner outputs the D_b shifts only.
    """

    event_dim = 1

    def __init__(
        self,
        mask: Tensor,
        conditioner: nn.Module,
        *,
        scale_bound: float = 1.0,
        learn_scale_bound: bool = True,
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.affine = affine
        self.volume_preserving = not affine
        if scale_bound <= 0:
            raise ConfigError(f"scale_bound must be positive, got {scale_bound}")
        register_mask_split(self, mask)
        self.conditioner = conditioner
        bound = torch.full((self.idx_b.numel(),), float(scale_bound))
        if learn_scale_bound and affine:
            self.scale_bound = nn.Parameter(bound)
        else:
            self.register_buffer("scale_bound", bound)

    def _scale_shift(self, x_a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_a if c is None else torch.cat([x_a, c.reshape(c.shape[0], -1)], dim=1)
        if not self.affine:
            t = self.conditioner(h)
            return torch.zeros_like(t), t
        raw_s, t = self.conditioner(h).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_s), t

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._scale_shift(x_a, c)
        z_b = x_b * torch.exp(s) + t
        return torch.cat([x_a, z_b], dim=1)[:, self.unsplit], s.sum(dim=1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        z_a, z_b = z[:, self.idx_a], z[:, self.idx_b]
        s, t = self._scale_shift(z_a, c)
        x_b = (z_b - t) * torch.exp(-s)
        return torch.cat([z_a, x_b], dim=1)[:, self.unsplit], -s.sum(dim=1)


class Permutation(Transform):
    r"""Fixed reordering of the coordinates of flat vectors, z = x[:, π] (Book §4.1.3).

    A permutation matrix has |det| = 1, so both log-dets are zero. Use :meth:`reverse` for the
    book's flip and :meth:`random` for a fixed random order.
    """

    event_dim = 1
    volume_preserving = True

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        n = perm.numel()
        if perm.dim() != 1 or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise ConfigError(f"perm must be a permutation of 0..{n - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def reverse(cls, dim: int) -> "Permutation":
        """The flip x[:, ::-1], its own inverse."""
        return cls(torch.arange(dim - 1, -1, -1))

    @classmethod
    def random(cls, dim: int, *, generator: torch.Generator | None = None) -> "Permutation":
        """A fixed uniformly random order (drawn once, stored as a buffer)."""
        return cls(torch.randperm(dim, generator=generator))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.perm.numel(), "x")
        return x[:, self.perm], zeros_logabsdet(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.perm.numel(), "z")
        return z[:, self.inv_perm], zeros_logabsdet(z, 1)
