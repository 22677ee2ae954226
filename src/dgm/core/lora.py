r"""Low-rank adaptation (LoRA) of linear layers for fine-tuning (Book §11.2.2, Eq. 11.1).

A frozen layer h = W x + b is adapted by a trainable low-rank update,

    h = W x + b + (α / r) B A x,       A ∈ R^{r×d_in},  B ∈ R^{d_out×r},  r ≪ min(d_in, d_out),

with B = 0 at initialization, so fine-tuning starts exactly at the base model (Hu et al. 2022;
the zero start and the α / r scale are not in the book). Only A and B train: r (d_in + d_out)
numbers per adapted layer instead of d_in d_out. :func:`merge_lora` folds BA back into W for
inference at no extra cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError

__all__ = ["LoRALinear", "apply_lora", "merge_lora"]


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable rank-r update (α / r) B A."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float = 1.0) -> None:
        super().__init__()
        if rank < 1:
            raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.rank, self.alpha = rank, alpha
        self.scale = alpha / rank
        ref = base.weight
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, dtype=ref.dtype, device=ref.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=ref.dtype, device=ref.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_a), self.lora_b)

    def merged(self) -> nn.Linear:
        """A plain linear layer with weight W + (α / r) B A (the same function)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, self.base.bias is not None)
        out = out.to(device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * self.lora_b @ self.lora_a)
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def apply_lora(
    model: nn.Module, rank: int, alpha: float = 1.0, targets: Sequence[str] = ("qkv", "out")
) -> int:
    """Freeze ``model`` and wrap every ``nn.Linear`` whose name ends in one of ``targets``.

    Returns the number of adapted layers; raises ConfigError if none matches. Afterwards the
    only trainable parameters are the adapters' A and B.
    """
    names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.split(".")[-1] in targets
    ]
    if not names:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ConfigError(
            f"LoRA targets {list(targets)} match no linear layer; linear layers are named "
            f"{', '.join(linear) or '(none)'}"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), rank, alpha))  # type: ignore[arg-type]
    return len(names)


def merge_lora(model: nn.Module) -> int:
    """Replace every :class:`LoRALinear` by its merged ``nn.Linear``; returns how many."""
    names = [name for name, m in model.named_modules() if isinstance(m, LoRALinear)]
    for name in names:
        _replace(model, name, model.get_submodule(name).merged())  # type: ignore[operator]
    return len(names)
