r"""Training objectives of latent-variable models built from the ELBO's parts, in nats per example.

- KL warm-up (Bowman et al. 2016; Sønderby et al. 2016): the regularizer's weight rises
  linearly from 0 to β over the first ``warmup_steps`` optimizer steps.
- Free bits (Kingma et al. 2016, "Improved Variational Inference with Inverse Autoregressive
  Flow", §C.8): each group j of latents pays at least λ nats, max(λ, E_batch KL_j), so that the
  optimizer gains nothing by pushing a group's KL below λ (against posterior collapse).
- IWAE (Burda et al. 2016; Book Eq. 5.32): -log (1/k) Σ_i w_i from k importance weights.

Only β = 1 with no warm-up and no free bits gives the negative ELBO; the other objectives are
training devices, and the evaluator always scores the model by its bound, not by its loss.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = ["kl_weight", "free_bits", "iwae_loss", "check_objective"]


def kl_weight(step: int, beta: float, warmup_steps: int) -> float:
    r"""β · min(1, (step + 1) / warmup_steps): the KL weight at optimizer step ``step`` (from 0)."""
    if warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if warmup_steps == 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)


def free_bits(kl_groups: Tensor, lam: float) -> Tensor:
    r"""Per-example regularizer whose batch mean is Σ_j max(λ, mean_n KL_nj).

    Args:
        kl_groups: (N, G) KL of each of G groups per example (a group may be one latent unit,
            a whole level, or the whole latent vector when the prior couples the units).
        lam: λ, nats per group.

    Returns:
        (N,): Σ_j KL_nj over the groups above λ on this batch, plus λ for each group below, so
        the gradient of a group below λ is zero (the straight cut of Kingma et al.).
    """
    if lam < 0:
        raise ConfigError(f"free bits must be >= 0, got {lam}")
    if lam == 0:
        return kl_groups.sum(dim=-1)
    above = kl_groups.detach().mean(dim=0) > lam  # (G,)
    clamped = torch.where(above, kl_groups, torch.full_like(kl_groups, lam))
    return clamped.sum(dim=-1)


def iwae_loss(log_weights: Tensor) -> Tensor:
    r"""-log (1/k) Σ_i exp(log w_i): log_weights (k, N) -> (N,)."""
    k = log_weights.shape[0]
    return -(torch.logsumexp(log_weights, dim=0) - math.log(k))


def check_objective(beta: float, warmup_steps: int, free_bits: float, iwae_k: int) -> None:
    """Raise a ConfigError naming the field unless the objective's settings make sense."""
    if not beta >= 0.0:
        raise ConfigError(f"model.beta must be >= 0, got {beta}")
    if warmup_steps < 0:
        raise ConfigError(f"model.warmup_steps must be >= 0, got {warmup_steps}")
    if not free_bits >= 0.0:
        raise ConfigError(f"model.free_bits must be >= 0, got {free_bits}")
    if iwae_k < 1:
        raise ConfigError(f"model.iwae_k must be >= 1, got {iwae_k}")
    if iwae_k > 1 and (beta != 1.0 or warmup_steps or free_bits):
        raise ConfigError(
            f"model.iwae_k = {iwae_k} trains on the IWAE bound itself, which has no separate "
            "KL term: use it with model.beta = 1, model.warmup_steps = 0 and model.free_bits = 0"
        )
