"""Masked autoregressive transforms: MAF, and IAF as its inverse."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.nn import made_network
from dgm.core.transforms.base import Transform, check_flat

__all__ = ["MaskedAutoregressiveAffine"]


class MaskedAutoregressiveAffine(Transform):
    r"""A masked autoregressive affine layer on flat vectors: MAF (Papamakarios et al. 2017).

        z_d = (x_d - μ_d(x_{<d})) ⊙ exp(-α_d(x_{<d})),     log |det ∂z/∂x| = -Σ_d α_d,

    with (μ, α̃) from one MADE pass (:func:`~dgm.core.nn.made_network`) and α = a ⊙ tanh(α̃)
    bounded by ``scale_bound`` a. The density direction (``forward``) is one pass; sampling
    (``inverse``) is D passes, x_d = z_d exp(α_d) + μ_d, coordinate by coordinate. Wrapped in
    :class:`Inverse` it is an IAF layer (Kingma et al. 2016): one-pass sampling, sequential
    density.

    Args:
        dim: D.
        hidden: width of the MADE's hidden layers.
        num_hidden: number of hidden layers.
        scale_bound: a, the bound on |α_d|.
        context: width C of a context vector c (N, C) every output may read (0: none).
        zero_init: zero the MADE's last layer so the layer starts as the identity.
        generator: for the MADE's random degrees.
    """

    event_dim = 1

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        num_hidden: int = 2,
        *,
        scale_bound: float = 2.0,
        context: int = 0,
        zero_init: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a masked autoregressive layer needs dim >= 2, got {dim}")
        if scale_bound <= 0:
            raise ConfigError(f"scale_bound must be positive, got {scale_bound}")
        self.dim = dim
        self.scale_bound = float(scale_bound)
        self.context = context
        self.net = made_network(dim, 2, hidden, num_hidden, generator=generator, context=context)
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def _shift_log_scale(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x if c is None else torch.cat([x, c.reshape(c.shape[0], -1).to(x.dtype)], dim=1)
        out = self.net(h).reshape(x.shape[0], self.dim, 2)
        return out[..., 0], self.scale_bound * torch.tanh(out[..., 1])

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        mu, alpha = self._shift_log_scale(x, c)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        x = torch.zeros_like(z)
        for d in range(self.dim):  # x_d needs x_{<d} only, which are final by now
            mu, alpha = self._shift_log_scale(x, c)
            x = x.clone()
            x[:, d] = z[:, d] * torch.exp(alpha[:, d]) + mu[:, d]
        _, alpha = self._shift_log_scale(x, c)
        return x, alpha.sum(dim=1)
