r"""Spectral normalisation by power iteration (Miyato et al. 2018; Book §4.1.7, §8.4).

One home for the residual flows' Lipschitz layers (:mod:`dgm.core.transforms.residual`) and the
GAN discriminator's (:mod:`dgm.models.adversarial`). The weight W of a layer, seen as a matrix
(a convolution's (C_out, C_in, k, k) kernel as (C_out, C_in k k)), has its top singular value
σ = ||W||_2 estimated by power iteration with persistent vectors u, v (buffers):

    v ← Wᵀu / ||Wᵀu||,    u ← W v / ||W v||,    σ̂ = uᵀ W v,

and the layer uses

    W̃ = W · coeff / max(coeff, σ̂)   (``always=False``: ||W̃||_2 ≤ coeff, W unchanged below),
    W̃ = W · coeff / σ̂               (``always=True``: Miyato's SN-GAN, ||W̃||_2 = coeff).

For a convolution, σ of the reshaped kernel is Miyato's surrogate: it bounds the convolution's
operator norm only up to a factor of about k (Gouk et al. 2021), which is what SN-GAN uses.

In training mode every call runs ``n_power_iterations`` steps (σ̂ tracks W as it is trained;
gradients flow through σ̂ with u, v held fixed). In eval mode no step is taken on a call, so
repeated calls see the same function; instead, the first call after W changed (its version
counter) runs power iteration to convergence, at most ``eval_max_iterations`` steps, so that
the eval-mode estimate is tight (power iteration under-estimates σ).

References:
    Miyato, Kataoka, Koyama & Yoshida. Spectral Normalization for Generative Adversarial
    Networks. ICLR 2018, arXiv:1802.05957.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError

__all__ = ["power_iteration", "SpectralNormLinear", "SpectralNormConv2d"]


@torch.no_grad()
def power_iteration(
    w: Tensor, u: Tensor, v: Tensor, steps: int, *, rtol: float | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``steps`` power-iteration steps on the matrix w (m, n) from u (m,), v (n,).

    Returns the new (u, v) and σ̂ = uᵀ w v; with ``rtol`` it stops early once σ̂ changes by at
    most rtol·σ̂ in a step. σ̂ tends to ||w||_2 from below as steps grow (u not orthogonal to
    the top left singular vector).
    """
    sigma = torch.dot(u, w @ v)
    for _ in range(steps):
        v = F.normalize(w.t() @ u, dim=0)
        u = F.normalize(w @ v, dim=0)
        new_sigma = torch.dot(u, w @ v)
        if rtol is not None and abs(float(new_sigma - sigma)) <= rtol * float(new_sigma):
            return u, v, new_sigma
        sigma = new_sigma
    return u, v, sigma


class _SpectralNorm(nn.Module):
    """What a spectrally normalised layer shares: u, v, the steps and the rescaled weight.

    Subclasses create ``self.weight`` (and ``self.bias``) before calling :meth:`_init_norm`.
    """

    weight: nn.Parameter

    def _init_norm(self, coeff: float, n_power_iterations: int, n_init_iterations: int,
                   eval_max_iterations: int, always: bool) -> None:
        if coeff <= 0:
            raise ConfigError(f"coeff must be > 0, got {coeff}")
        if n_power_iterations < 0 or n_init_iterations < 0 or eval_max_iterations < 1:
            raise ConfigError("power-iteration counts must be non-negative")
        self.coeff = float(coeff)
        self.always = always
        self.n_power_iterations = n_power_iterations
        self.eval_max_iterations = eval_max_iterations
        self.update_enabled = True
        rows, cols = self.weight.shape[0], self.weight[0].numel()
        self.register_buffer("u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("v", F.normalize(torch.randn(cols), dim=0))
        self._eval_key: tuple[int, int, torch.dtype] | None = None
        self._power_iteration(n_init_iterations)

    def _matrix(self) -> Tensor:
        return self.weight.flatten(1)

    @torch.no_grad()
    def _power_iteration(self, n: int, rtol: float | None = None) -> None:
        u, v, _ = power_iteration(self._matrix().detach(), self.u, self.v, n, rtol=rtol)
        self.u.copy_(u)
        self.v.copy_(v)

    def sigma(self) -> Tensor:
        """The current estimate σ̂ = uᵀ W v (differentiable in W)."""
        return torch.dot(self.u.clone(), self._matrix() @ self.v.clone())

    def normalized_weight(self) -> Tensor:
        """W̃ after the power-iteration steps of this mode (see the module docstring)."""
        if self.training:
            self._eval_key = None
            if self.update_enabled:
                self._power_iteration(self.n_power_iterations)
        else:
            w = self.weight
            key = (w.data_ptr(), w._version, w.dtype)
            if key != self._eval_key:
                rtol = 100 * torch.finfo(w.dtype).eps
                self._power_iteration(self.eval_max_iterations, rtol=rtol)
                self._eval_key = (w.data_ptr(), w._version, w.dtype)
        sigma = self.sigma()
        if self.always:
            return self.weight * (self.coeff / sigma)
        return self.weight * (self.coeff / torch.clamp(sigma, min=self.coeff))


class SpectralNormLinear(_SpectralNorm):
    r"""Linear layer y = W̃ h + b with W̃ the spectrally normalised W (module docstring).

    Args:
        in_features, out_features: the shape of W is (out_features, in_features).
        coeff: the bound on ||W̃||_2 (> 0; the residual flows need it below 1).
        n_power_iterations: steps per training call.
        n_init_iterations: steps at construction.
        eval_max_iterations: cap on the steps of the eval-mode convergence.
        bias: add a bias (it does not change the Lipschitz constant).
        always: rescale to ||W̃||_2 = coeff even when σ̂ < coeff (SN-GAN) instead of only above.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        n_init_iterations: int = 20,
        eval_max_iterations: int = 1000,
        bias: bool = True,
        always: bool = False,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        layer = nn.Linear(in_features, out_features, bias=bias)
        self.weight = layer.weight
        self.bias = layer.bias
        self._init_norm(coeff, n_power_iterations, n_init_iterations, eval_max_iterations, always)

    def forward(self, h: Tensor) -> Tensor:
        return F.linear(h, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, coeff={self.coeff}, always={self.always}"


class SpectralNormConv2d(_SpectralNorm):
    r"""2-D convolution with the kernel spectrally normalised as a (C_out, C_in k k) matrix
    (Miyato et al. 2018; module docstring). Arguments as :class:`torch.nn.Conv2d`, plus those
    of :class:`SpectralNormLinear`; ``always`` defaults to True here (the SN-GAN use)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        stride: int = 1,
        padding: int = 0,
        coeff: float = 1.0,
        n_power_iterations: int = 1,
        n_init_iterations: int = 20,
        eval_max_iterations: int = 1000,
        bias: bool = True,
        always: bool = True,
    ) -> None:
        super().__init__()
        layer = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride,
                          padding=padding, bias=bias)
        self.weight = layer.weight
        self.bias = layer.bias
        self.stride, self.padding = stride, padding
        self._init_norm(coeff, n_power_iterations, n_init_iterations, eval_max_iterations, always)

    def forward(self, h: Tensor) -> Tensor:
        return F.conv2d(h, self.normalized_weight(), self.bias, self.stride, self.padding)

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, coeff={self.coeff}"
