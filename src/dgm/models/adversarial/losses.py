r"""Adversarial losses as plain functions of the discriminator's logits (Book §8.2-8.4).

Every discriminator outputs a logit l(x) ∈ R; where a probability is meant, D(x) = σ(l(x)), and

    log D(x) = log σ(l) = -softplus(-l),      log(1 - D(x)) = log σ(-l) = -softplus(l),

which are finite for every l (no log 0). Each function returns one value per example (N,),
minimized by the player it belongs to; the critic's losses pair the i-th real example with the
i-th fake one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = [
    "Game",
    "clamp_logits",
    "minimax_discriminator_loss",
    "minimax_generator_loss",
    "nonsaturating_generator_loss",
    "wasserstein_critic_loss",
    "wasserstein_generator_loss",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "gradient_penalty",
    "feature_matching_loss",
    "gaussian_mixture_mmd2",
]


@dataclass(frozen=True)
class Game:
    """The two sides of an adversarial loss: the critic's loss(real logits, fake logits) and
    the generator's loss(fake logits), each per example (N,)."""

    critic: Callable[[Tensor, Tensor], Tensor]
    generator: Callable[[Tensor], Tensor]


def clamp_logits(logits: Tensor, eps: float) -> Tensor:
    r"""The book's clamp D ∈ [ε, 1 - ε] (Listing 8.3, ε = 1e-5), done on the logit.

    σ is increasing, so clamping D(x) = σ(l) to [ε, 1 - ε] is the same as clamping l to
    [-b, b] with b = log((1 - ε)/ε) (about 11.5 for ε = 1e-5); log σ of the clamped logit is
    then computed stably. Like the book's clamp it bounds each log term below by log ε and
    passes no gradient where the clamp is active. ε = 0 leaves the logits alone.
    """
    if eps == 0:
        return logits
    if not 0 < eps < 0.5:
        raise ConfigError(f"the clamp ε must be in [0, 0.5), got {eps}")
    bound = math.log((1 - eps) / eps)
    return logits.clamp(-bound, bound)


def minimax_discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, *, eps: float = 0.0, real_target: float = 1.0
) -> Tensor:
    r"""-[log D(x) + log(1 - D(G(z)))], the discriminator's side of the minimax game (8.8-8.9).

    With one-sided label smoothing (Salimans et al. 2016; deck 004) the real target is
    ``real_target`` = 1 - s < 1: the real term becomes the cross-entropy
    -[t log D(x) + (1 - t) log(1 - D(x))]; the fake target stays 0 (smoothing it too would let
    the generator's samples keep a reward where there is no data). ``eps``: :func:`clamp_logits`.
    At the optimum D*(x) = p(x) / (p(x) + q(x)) (q the generator's density).
    """
    lr, lf = clamp_logits(real_logits, eps), clamp_logits(fake_logits, eps)
    real_term = real_target * F.softplus(-lr) + (1.0 - real_target) * F.softplus(lr)
    return real_term + F.softplus(lf)


def minimax_generator_loss(fake_logits: Tensor, *, eps: float = 0.0) -> Tensor:
    r"""log(1 - D(G(z))), the generator's side of the minimax game (8.9), as in Listing 8.3.

    It saturates: where D rejects the samples confidently (l → -∞) its gradient vanishes, which
    is why :func:`nonsaturating_generator_loss` is used in practice.
    """
    return -F.softplus(clamp_logits(fake_logits, eps))


def nonsaturating_generator_loss(fake_logits: Tensor) -> Tensor:
    r"""-log D(G(z)) (Goodfellow et al. 2014, §3): the same fixed point as log(1 - D(G(z))) but
    strong gradients early in training, when D rejects the samples (not in the book)."""
    return F.softplus(-fake_logits)


def wasserstein_critic_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    r"""-(f(x) - f(G(z))): the critic maximizes ℓ_W = E[f(x)] - E[f(G(z))] (8.10) over
    1-Lipschitz f (Arjovsky et al. 2017; the constraint by clipping, a gradient penalty or
    spectral normalisation)."""
    return fake_scores - real_scores


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    r"""-f(G(z)): the generator minimizes ℓ_W, whose only generator-dependent term is this."""
    return -fake_scores


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    r"""max(0, 1 - l(x)) + max(0, 1 + l(G(z))) (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real_logits) + F.relu(1.0 + fake_logits)


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    r"""-l(G(z)), the generator's side of the hinge loss."""
    return -fake_logits


def gradient_penalty(
    critic: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""(||∇_x̂ f(x̂)||_2 - 1)² at x̂ = t x + (1 - t) G(z), t ~ U[0, 1] per example (WGAN-GP,
    Gulrajani et al. 2017; multiply by λ = 10). Differentiable in the critic's parameters
    (``create_graph``); ``fake`` is detached. Shape (N,)."""
    t = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=generator,
                   device=real.device if generator is None else generator.device)
    t = t.to(real.device, real.dtype)
    x_hat = (t * real.detach() + (1 - t) * fake.detach()).requires_grad_(True)
    scores = critic(x_hat)
    (grad,) = torch.autograd.grad(scores.sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1.0).square()


def feature_matching_loss(real_features: Tensor, fake_features: Tensor) -> Tensor:
    r"""||E_x φ(x) - E_z φ(G(z))||² over the batch (Salimans et al. 2016; deck 004), with φ the
    discriminator's last hidden layer, the real side held fixed. A batch statistic: the same
    value for every example, shape (N,)."""
    gap = real_features.detach().mean(0) - fake_features.mean(0)
    return gap.square().sum().expand(fake_features.shape[0])


def gaussian_mixture_mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    r"""Unbiased MMD² between the samples x (N, D) and y (M, D), with the kernel a sum of
    Gaussians k(a, b) = Σ_σ exp(-||a - b||² / (2σ²)) (Li, Swersky & Zemel 2015, GMMN):

        MMD² = 1/(N(N-1)) Σ_{i≠i'} k(x_i, x_i') + 1/(M(M-1)) Σ_{j≠j'} k(y_j, y_j')
               - 2/(NM) Σ_{i,j} k(x_i, y_j).

    A scalar, differentiable in both sets; 0 in expectation when they share a distribution.
    """
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ConfigError("MMD² needs at least two samples in each set")
    both = torch.cat([x, y], 0)
    sq = both.square().sum(1)
    d2 = (sq[:, None] + sq[None, :] - 2 * both @ both.t()).clamp_min(0)
    k = sum(torch.exp(-d2 / (2 * s * s)) for s in bandwidths)
    assert isinstance(k, Tensor)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
    xx = (kxx.sum() - kxx.diagonal().sum()) / (n * (n - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
    return xx + yy - 2 * kxy.mean()
