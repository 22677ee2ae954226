"""Helpers shared by the tests."""

from __future__ import annotations

import torch

from dgm.core.fitting import StepInfo
from torch import Tensor


def loss_drop(model: torch.nn.Module, x: Tensor, steps: int, lr: float) -> float:
    """Mean loss before minus after ``steps`` full-batch Adam steps on ``x``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    with torch.no_grad():
        before = float(model.loss(x).mean())
    for t in range(steps):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
        model.after_step(StepInfo(step=t + 1))
    with torch.no_grad():
        return before - float(model.loss(x).mean())
