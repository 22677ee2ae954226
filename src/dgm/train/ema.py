"""Exponential moving average of a model's floating-point parameters and buffers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["EMA"]


class EMA:
    """θ_ema <- d θ_ema + (1 - d) θ after every optimizer step; :meth:`swap` for evaluation."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {
            k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v, 1.0 - self.decay)

    @torch.no_grad()
    def swap(self, model: nn.Module) -> None:
        """Exchange the model's weights with the averaged ones (call twice to undo)."""
        sd = model.state_dict()
        for k, v in self.shadow.items():
            tmp = sd[k].detach().clone()
            sd[k].copy_(v)
            v.copy_(tmp)

    def state_tensors(self) -> dict[str, Tensor]:
        return dict(self.shadow)

    def load_state_tensors(self, tensors: dict[str, Tensor]) -> None:
        for k, v in tensors.items():
            self.shadow[k].copy_(v)
