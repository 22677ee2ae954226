r"""Uniform dequantization: scoring a continuous density in a discrete space.

For integers x in {0..L-1}^D and a density p_Y on y = (x + u) / L, u ~ U[0, 1)^D,

    log P(x) = log ∫_{[0,1)^D} p_Y((x + u)/L) L^{-D} du
             >= E_u[log p_Y((x + u)/L)] - D log L          (Jensen; Theis et al. 2016)

and the importance-weighted version with k draws, log (1/k) Σ_i p_Y((x + u_i)/L) L^{-D}, is a
tighter bound that tends to log P(x) as k grows (q(u) = 1 on the unit cube). This is the same
arithmetic as a VAE's ELBO and IWAE with the noise u as the latent, which is why dequantized
models hand the evaluator ``log_weights`` like a VAE does (Book §4.1.3, §4.2.1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.distributions import log_standard_normal, sum_except_batch
from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.transforms import AffineCoupling, Compose, alternating_mask

__all__ = [
    "uniform_dequantize",
    "dequantization_log_jacobian",
    "quantize",
    "VariationalDequantizer",
]


def uniform_dequantize(
    x: Tensor, num_levels: int, *, generator: torch.Generator | None = None
) -> Tensor:
    """y = (x + u) / L with u ~ U[0, 1) per coordinate: integers to points in [0, 1)."""
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
    return (x.to(torch.float32) + u) / num_levels


def dequantization_log_jacobian(dim: int, num_levels: int) -> float:
    """log |d y / d(x + u)| = -D log L for y = (x + u) / L: add it to log p_Y(y)."""
    return -dim * math.log(num_levels)


def quantize(y: Tensor, num_levels: int) -> Tensor:
    """Inverse of dequantization: floor(y L), clamped to the support, as long integers."""
    return torch.floor(y * num_levels).clamp(0, num_levels - 1).long()


class VariationalDequantizer(nn.Module):
    r"""A learned noise distribution q(u | x) on the unit cube (Flow++; Ho et al. 2019, §3.1).

    With q in place of the uniform, the bound of the module docstring becomes

        log P(x) >= E_{u ~ q(u|x)}[log p_Y((x + u)/L) - D log L - log q(u | x)],

    tighter when q follows p_Y's shape inside each bin (it is the ELBO with u as the latent;
    IWAE over k draws tightens it further). q is a conditional flow: ε ~ N(0, I), then affine
    couplings whose conditioners read features of x (and the context c), then a sigmoid onto
    (0, 1):

        u = σ(g⁻¹(ε; x)),   log q(u | x) = log N(ε) - log |det ∂g⁻¹/∂ε| - Σ_d log σ'(v_d),

    with v = g⁻¹(ε) and log σ'(v) = log σ(v) + log σ(-v).

    Args:
        dim: D, the number of coordinates of a (flattened) example.
        num_levels: L.
        num_flows: affine couplings in g.
        hidden: width of the feature network and of the conditioners.
        context: width of an extra context vector (class labels), 0 for none.
    """

    def __init__(
        self, dim: int, num_levels: int, *, num_flows: int = 4, hidden: int = 64, context: int = 0
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"variational dequantization needs dim >= 2, got {dim}")
        self.dim, self.num_levels, self.context = dim, num_levels, context
        self.features = mlp(dim + context, hidden, hidden, num_hidden=1)
        layers = []
        for k in range(num_flows):
            mask = alternating_mask(dim, even=k % 2 == 0)
            d_a = int(mask.sum())
            net = mlp(d_a + hidden, hidden, 2 * (dim - d_a), num_hidden=1)
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
            layers.append(AffineCoupling(mask, net, scale_bound=2.0))
        self.flow = Compose(layers)

    def _features(self, x: Tensor, c: Tensor | None) -> Tensor:
        h = x.to(torch.float32) / (self.num_levels - 1) - 0.5
        if self.context:
            if c is None:
                raise DataError("this dequantizer is conditional: pass a context c")
            h = torch.cat([h, c.reshape(c.shape[0], -1).to(h.dtype)], dim=1)
        return self.features(h.to(self.features[0].weight.dtype))

    def sample(
        self, x: Tensor, c: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Noise u ~ q(u | x) in (0, 1), shape (N, D), and log q(u | x), shape (N,).

        ``x`` are the integers, flattened to (N, D); ``c`` an optional context (N, C).
        """
        features = self._features(x, c)
        eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=features.dtype)
        v, logabsdet = self.flow.inverse(eps, features)
        log_q = (
            sum_except_batch(log_standard_normal(eps))
            - logabsdet
            - (F.logsigmoid(v) + F.logsigmoid(-v)).sum(1)
        )
        return torch.sigmoid(v), log_q

    def log_prob(self, u: Tensor, x: Tensor, c: Tensor | None = None) -> Tensor:
        """log q(u | x) for noise u in (0, 1)^D, shape (N,): the density that :meth:`sample`
        draws from, evaluated in the other direction (v = logit u, ε = g(v))."""
        features = self._features(x, c)
        v = torch.logit(u.to(features.dtype))
        eps, logabsdet = self.flow(v, features)
        return (
            sum_except_batch(log_standard_normal(eps))
            + logabsdet
            - (F.logsigmoid(v) + F.logsigmoid(-v)).sum(1)
        )
