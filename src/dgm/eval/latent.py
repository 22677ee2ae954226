r"""What a latent-variable model does with its latents: per-level KL, active units,
interpolations (Book §5.4.1.2, §5.5.2; Burda et al. 2016, §5.2).

- The KL of each level, averaged over the data: a level with a KL near zero is unused
  (posterior collapse, Book §5.5.2.1).
- Active units: a latent unit u is active when A_u = Cov_x(E_q[z_u | x]) > 0.01, i.e. when the
  posterior's location moves with the input (Burda et al. 2016, "Importance Weighted
  Autoencoders", §5.2).
- Interpolations: decode the straight line between two examples' top-level locations (on a
  sphere the interpolants are renormalized onto it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.base import LatentVariable

__all__ = ["LatentSummary", "summarize_latents", "interpolate", "ACTIVE_THRESHOLD"]

ACTIVE_THRESHOLD = 0.01


@dataclass(frozen=True)
class LatentSummary:
    """Per level, bottom first: the mean KL in nats, the units, and how many are active."""

    kl_nats: list[float]
    units: list[int]
    active_units: list[int]
    unit_activity: list[Tensor]  # Cov_x E_q[z_u | x] per unit, one (M_l,) tensor per level


@torch.no_grad()
def summarize_latents(model: LatentVariable, x: Tensor) -> LatentSummary:
    """KL per level and active units over the examples x (N, *event_shape)."""
    kls = [float(k.mean()) for k in model.kl_per_level(x)]
    activity = [mu.double().var(dim=0) for mu in model.latent_means(x)]
    return LatentSummary(
        kl_nats=kls,
        units=[int(a.numel()) for a in activity],
        active_units=[int((a > ACTIVE_THRESHOLD).sum()) for a in activity],
        unit_activity=activity,
    )


@torch.no_grad()
def interpolate(model: LatentVariable, x_from: Tensor, x_to: Tensor, steps: int = 8) -> Tensor:
    """Decoded top-level interpolations, (pairs * steps, *event_shape), row by row."""
    z0, z1 = model.latent_means(x_from)[-1], model.latent_means(x_to)[-1]
    t = torch.linspace(0.0, 1.0, steps, dtype=z0.dtype, device=z0.device).reshape(1, -1, 1)
    z = (1 - t) * z0.unsqueeze(1) + t * z1.unsqueeze(1)  # (pairs, steps, M)
    on_sphere = bool(((z0.norm(dim=-1) - 1).abs() < 1e-4).all())
    if on_sphere:
        z = z / z.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return model.decode_top(z.reshape(-1, z.shape[-1]))
