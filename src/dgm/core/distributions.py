"""Log-densities and log-masses, element-wise, in nats: the one home for these helpers.

Every function returns the log-density of each coordinate (no reduction); callers sum over the
event dimensions with :func:`sum_except_batch`. Parameters are given as logits, log-variances or
log-scales so that nothing is clamped before a log.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "sum_except_batch",
    "log_categorical",
    "log_bernoulli",
    "log_normal_diag",
    "log_standard_normal",
    "log_normal_interval",
    "kl_normal_diag",
    "kl_standard_normal",
    "log_min_exp",
    "log_discretized_logistic",
    "log_mix_discretized_logistic",
    "sample_mix_discretized_logistic",
]

LOG_2PI = math.log(2.0 * math.pi)


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum over every dimension but the first: (N, ...) -> (N,)."""
    return t.reshape(t.shape[0], -1).sum(dim=1)


def log_categorical(x: Tensor, logits: Tensor) -> Tensor:
    r"""log Cat(x | softmax(logits)) element-wise (Eq. 2.7, 3.8).

    Args:
        x: integer values in ``0..K-1``, shape (...).
        logits: unnormalized log-probabilities, shape (..., K).

    Returns:
        shape (...): ``log_softmax(logits)[x]``.
    """
    return torch.gather(F.log_softmax(logits, dim=-1), -1, x.long().unsqueeze(-1)).squeeze(-1)


def log_bernoulli(x: Tensor, logits: Tensor) -> Tensor:
    r"""log Bern(x | sigmoid(logits)) = x log θ + (1 - x) log(1 - θ), element-wise (Eq. 2.5)."""
    return -F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none")


def log_normal_diag(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    r"""log N(x | μ, σ²) = -½ log 2π - ½ log σ² - (x - μ)² / (2σ²), element-wise (Eq. 2.31)."""
    return -0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def log_standard_normal(x: Tensor) -> Tensor:
    r"""log N(x | 0, 1) = -½ log 2π - ½ x², element-wise."""
    return -0.5 * (LOG_2PI + x**2)


def kl_normal_diag(
    mean_q: Tensor, log_var_q: Tensor, mean_p: Tensor, log_var_p: Tensor
) -> Tensor:
    r"""KL[N(μ_q, σ_q²) || N(μ_p, σ_p²)] element-wise (Book §5.5.2.2):

        ½ (log σ_p² - log σ_q² + (σ_q² + (μ_q - μ_p)²) / σ_p² - 1).

    With q = N(μ + Δμ, σ² Δσ²) and p = N(μ, σ²) this is NVAE's ½ (Δμ²/σ² + Δσ² - log Δσ² - 1).
    """
    return 0.5 * (
        log_var_p - log_var_q + (torch.exp(log_var_q) + (mean_q - mean_p) ** 2)
        * torch.exp(-log_var_p) - 1.0
    )


def kl_standard_normal(mean: Tensor, log_var: Tensor) -> Tensor:
    r"""KL[N(μ, σ²) || N(0, 1)] = ½ (μ² + σ² - log σ² - 1), element-wise (Book Eq. 5.31)."""
    return 0.5 * (mean**2 + torch.exp(log_var) - log_var - 1.0)


def log_min_exp(a: Tensor, b: Tensor, eps: float = 1e-12) -> Tensor:
    r"""log(exp(a) - exp(b)) for a >= b, computed as a + log(-expm1(b - a)).

    b - a is clamped to at most -eps *before* the exponential, so that where this is evaluated
    for a < b (the unused side of a ``torch.where``) neither the value nor its gradient is
    infinite (an infinite gradient times the zero of the unused side would be NaN)."""
    return a + torch.log(-torch.expm1((b - a).clamp(max=-eps)))


def log_normal_interval(lo: Tensor, hi: Tensor) -> Tensor:
    r"""log P(lo < ε < hi) = log(Φ(hi) - Φ(lo)) for a standard normal ε and lo < hi (either may
    be infinite), stable in both tails: an interval above 0 is taken as Φ(-lo) - Φ(-hi)."""
    upper = lo > 0
    a, b = torch.where(upper, -hi, lo), torch.where(upper, -lo, hi)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    return log_b + torch.log1p(-torch.exp(log_a - log_b))


def log_discretized_logistic(
    x: Tensor, mean: Tensor, log_scale: Tensor, num_levels: int | None = None
) -> Tensor:
    r"""Log-mass of the integer x under a logistic discretized to unit bins (Eq. 4.43).

    DL(x | μ, s) = σ((x + ½ - μ)/s) - σ((x - ½ - μ)/s). With ``num_levels = L`` the support is
    ``0..L-1`` and the edge bins take the tails (σ(-∞) = 0 below 0, σ(∞) = 1 above L-1), so the
    masses sum to one over the support; without it the support is all of Z.
    """
    x = x.to(mean.dtype)
    inv_scale = torch.exp(-log_scale)
    upper = (x + 0.5 - mean) * inv_scale
    lower = (x - 0.5 - mean) * inv_scale
    # log σ(u) - log σ(l) difference, stable in both tails: use the side with the smaller CDF.
    log_cdf_upper = F.logsigmoid(upper)
    log_cdf_lower = F.logsigmoid(lower)
    log_sf_upper = F.logsigmoid(-upper)
    log_sf_lower = F.logsigmoid(-lower)
    left_tail = log_min_exp(log_cdf_upper, log_cdf_lower)
    right_tail = log_min_exp(log_sf_lower, log_sf_upper)
    mass = torch.where(mean > x, left_tail, right_tail)
    if num_levels is not None:
        mass = torch.where(x <= 0, log_cdf_upper, mass)
        mass = torch.where(x >= num_levels - 1, log_sf_lower, mass)
    return mass


def log_mix_discretized_logistic(
    x: Tensor,
    logit_weights: Tensor,
    mean: Tensor,
    log_scale: Tensor,
    num_levels: int | None = None,
) -> Tensor:
    r"""Log-mass of x under a mixture of discretized logistics (PixelCNN++).

    Args:
        x: integers, shape (...).
        logit_weights, mean, log_scale: shape (..., M) for M components.
    """
    comp = log_discretized_logistic(x.unsqueeze(-1), mean, log_scale, num_levels)
    return torch.logsumexp(F.log_softmax(logit_weights, dim=-1) + comp, dim=-1)


def sample_mix_discretized_logistic(
    logits: Tensor, loc: Tensor, log_scale: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    r"""Integers z ~ Σ_k w_k DL(μ_k, s_k) on Z, one per leading index; parameters (..., K).

    A component k ~ softmax(logits), then the logistic's inverse CDF μ + s (log u - log(1 - u))
    with u ~ U(0, 1) clamped to [1e-6, 1 - 1e-6] (the book's sampler can hit log 0), rounded to
    the nearest integer. Returns float integers of shape (...); a bounded support 0..L-1 is the
    caller's clamp (the edge bins take the tails).
    """
    k = logits.shape[-1]
    if k > 1:
        probs = F.softmax(logits, dim=-1).reshape(-1, k)
        pick = torch.multinomial(probs, 1, generator=generator).reshape(*logits.shape[:-1], 1)
        loc = torch.gather(loc, -1, pick)
        log_scale = torch.gather(log_scale, -1, pick)
    loc, log_scale = loc[..., 0], log_scale[..., 0]
    u = torch.rand(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
    u = u.clamp(1e-6, 1.0 - 1e-6)
    return torch.round(loc + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u)))
