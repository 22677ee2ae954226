"""Small network blocks shared by the families: MLPs and causal 1-D convolutions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.spec import DataKind, DataSpec

__all__ = ["mlp", "CausalConv1d", "MaskedLinear", "made_network", "EncoderInput"]


def mlp(
    in_features: int,
    hidden_features: int,
    out_features: int,
    *,
    num_hidden: int = 2,
    activation: type[nn.Module] = nn.LeakyReLU,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear -> act (-> dropout), ``num_hidden`` times, then a final Linear."""
    layers: list[nn.Module] = []
    width = in_features
    for _ in range(num_hidden):
        layers += [nn.Linear(width, hidden_features), activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = hidden_features
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class CausalConv1d(nn.Module):
    r"""1-D convolution whose output at position i sees only inputs at positions <= i (type B)
    or < i (type A), Book §3.2.3, Listing 3.1.

    The input is padded on the left by (k - 1)·dilation (+1 for type A); type A then drops the
    last output so that position i sees inputs i-1, i-2, ... only. The first layer of an ARM must
    be type A so that θ_i does not depend on x_i.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        dilation: int = 1,
        mask_type: str = "B",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        self.exclude_current = mask_type == "A"
        self.padding = (kernel_size - 1) * dilation + int(self.exclude_current)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(F.pad(x, (self.padding, 0)))  # (B, C_out, L + A)
        return out[..., :-1] if self.exclude_current else out


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in) on every call.

    Used for autoregressive connectivity (FVSBN, MADE): output unit i sees input j only where
    ``mask[i, j] = 1``.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        if mask.shape != (out_features, in_features):
            raise ValueError(
                f"mask must have shape {(out_features, in_features)}, got {tuple(mask.shape)}"
            )
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


def made_network(
    dim: int,
    params: int,
    hidden: int,
    num_hidden: int,
    dropout: float = 0.0,
    generator: torch.Generator | None = None,
    *,
    context: int = 0,
) -> nn.Sequential:
    """A MADE (Germain et al. 2015): an MLP from D inputs to D·P outputs, d-major, whose masks
    make output group d depend on inputs < d only.

    Degrees: inputs 1..D, hidden units drawn in [1, D-1], output d has degree d; a hidden unit
    sees a lower unit whose degree is <= its own, an output one whose degree is < its own.
    ``context`` extra inputs, appended after the D coordinates ([x, c]), get degree 0: every
    unit may see them, so a conditional MADE stays autoregressive in x; hidden degrees are
    then drawn from [0, D-1], so that units of degree 0 (which read the context only) carry it
    to the first output group too.
    """
    degrees = torch.cat([torch.arange(1, dim + 1), torch.zeros(context, dtype=torch.long)])
    layers: list[nn.Module] = []
    width = dim + context
    for _ in range(num_hidden):
        low = 0 if context else min(1, dim - 1)
        hidden_degrees = torch.randint(low, max(dim, low + 1), (hidden,), generator=generator)
        mask = (hidden_degrees.unsqueeze(1) >= degrees.unsqueeze(0)).float()
        layers += [MaskedLinear(width, hidden, mask), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        degrees, width = hidden_degrees, hidden
    out_degrees = torch.arange(1, dim + 1).repeat_interleave(params)  # (D * P,), d-major
    mask = (out_degrees.unsqueeze(1) > degrees.unsqueeze(0)).float()
    layers.append(MaskedLinear(width, dim * params, mask))
    return nn.Sequential(*layers)


class EncoderInput(nn.Module):
    """What an encoder reads: flat x as (x - loc) / scale, in float.

    Integer data with L levels is scaled to [0, 1] (x / (L - 1)), binary data is read as is,
    and continuous data is standardized with the training statistics (:meth:`fit`). The
    statistics are buffers, so they travel with the checkpoint.
    """

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        self.continuous = spec.kind is DataKind.CONTINUOUS
        scale = 1.0 if spec.num_levels is None else float(spec.num_levels - 1)
        self.register_buffer("loc", torch.zeros(spec.dim))
        self.register_buffer("scale", torch.full((spec.dim,), scale))

    @property
    def bounded(self) -> bool:
        """Whether the scaled inputs lie in [0, 1] (discrete and binary data)."""
        return not self.continuous

    def forward(self, x: Tensor) -> Tensor:
        return (x.to(self.scale.dtype) - self.loc) / self.scale

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Standardize continuous data with the per-coordinate mean and std of x (N, D)."""
        if self.continuous:
            xf = x.to(torch.float64)
            self.loc.copy_(xf.mean(dim=0))
            self.scale.copy_(xf.std(dim=0).clamp_min(1e-6))
