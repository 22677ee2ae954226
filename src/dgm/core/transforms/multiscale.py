r"""Flows on images: convolutional couplings with checkerboard and channel masks, and the
multi-scale architecture with factor-out of RealNVP and Glow (Book §4.1.6).

Dinh, Sohl-Dickstein, Bengio. Density estimation using Real NVP. ICLR 2017, arXiv:1605.08803,
§3.4-3.6. Kingma, Dhariwal. Glow: generative flow with invertible 1x1 convolutions. NeurIPS
2018, arXiv:1807.03039.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.transforms.base import Compose, Transform
from dgm.core.transforms.elementwise import ActNorm, InvertibleLinear, Squeeze

__all__ = ["checkerboard_mask", "channel_mask", "ConvCoupling", "MultiScale"]


def checkerboard_mask(channels: int, height: int, width: int, *, parity: int = 0) -> Tensor:
    """Boolean (C, H, W): True on the pixels with (i + j) % 2 == parity, in every channel."""
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return ((i + j) % 2 == parity).expand(channels, height, width).clone()


def channel_mask(channels: int, height: int, width: int, *, first: bool = True) -> Tensor:
    """Boolean (C, H, W): True on the first (or last) ⌈C/2⌉ channels at every pixel."""
    keep = torch.arange(channels) < (channels + 1) // 2
    keep = keep if first else ~keep
    return keep.view(channels, 1, 1).expand(channels, height, width).clone()


def _conv_net(in_channels: int, hidden: int, out_channels: int, zero_init: bool) -> nn.Sequential:
    """3x3 conv, ReLU, 1x1 conv, ReLU, 3x3 conv (the shape of Glow's coupling network)."""
    net = nn.Sequential(
        nn.Conv2d(in_channels, hidden, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        nn.Conv2d(hidden, out_channels, 3, padding=1),
    )
    if zero_init:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


class ConvCoupling(Transform):
    r"""Affine coupling on images (N, C, H, W) with a fixed boolean mask m of shape (C, H, W).

        z = m ⊙ x + (1 - m) ⊙ (x ⊙ exp(s) + t),    (s̃, t) = CNN([m ⊙ x, c]),
        s = (1 - m) ⊙ α tanh(s̃),    log |det ∂z/∂x| = Σ_{c,h,w} s

    (RealNVP §3.4; Book §4.1.6). A checkerboard mask alternates pixels, a channel mask splits
    the channels; either way the masked coordinates pass unchanged and condition the rest, so the
    Jacobian is triangular after reordering. The CNN also sees the context c (N, C_c),
    broadcast over the pixels, for class-conditional flows. ``affine=False`` is the additive
    (NICE) coupling.

    Args:
        mask: boolean (C, H, W), True where x passes through and conditions.
        hidden: channels of the CNN.
        context: width of the context vector (0: none).
        scale_bound: initial α (learnable per channel).
        affine: affine (True) or additive (False) coupling.
        zero_init: zero the CNN's last layer so the coupling starts as the identity.
    """

    event_dim = 3

    def __init__(
        self,
        mask: Tensor,
        hidden: int,
        *,
        context: int = 0,
        scale_bound: float = 1.0,
        affine: bool = True,
        zero_init: bool = True,
    ) -> None:
        super().__init__()
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 3:
            raise ConfigError(f"mask must be (C, H, W), got shape {tuple(mask.shape)}")
        if bool(mask.all()) or not bool(mask.any()):
            raise ConfigError("mask must leave both parts non-empty")
        channels = mask.shape[0]
        self.affine = affine
        self.volume_preserving = not affine
        self.context = context
        self.register_buffer("mask", mask.float())
        self.net = _conv_net(channels + context, hidden, (2 if affine else 1) * channels, zero_init)
        self.scale_bound = nn.Parameter(torch.full((channels, 1, 1), float(scale_bound)))

    def _scale_shift(self, x_masked: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_masked
        if self.context:
            if c is None:
                raise DataError("this coupling is conditional: pass a context c")
            n, _, height, width = x_masked.shape
            grid = c.reshape(n, -1, 1, 1).to(h.dtype).expand(n, self.context, height, width)
            h = torch.cat([h, grid], dim=1)
        out = self.net(h)
        free = 1.0 - self.mask
        if not self.affine:
            return torch.zeros_like(out), out * free
        raw_s, t = out.chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_s) * free, t * free

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x * self.mask, c)
        return x * torch.exp(s) + t, s.sum(dim=(1, 2, 3))

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(z * self.mask, c)
        return (z - t) * torch.exp(-s), -s.sum(dim=(1, 2, 3))


def _flow_step(
    shape: tuple[int, int, int],
    step: int,
    kind: Literal["glow", "realnvp"],
    hidden: int,
    context: int,
    generator: torch.Generator,
) -> list[Transform]:
    """One step of flow on (C, H, W): Glow's [ActNorm, 1x1 conv, channel coupling], or
    RealNVP's coupling with masks alternating between checkerboard parities (H·W > 1) or
    channel halves."""
    channels, height, width = shape
    if kind == "glow":
        return [
            ActNorm(channels, event_dim=3),
            InvertibleLinear(channels, event_dim=3, generator=generator),
            ConvCoupling(channel_mask(*shape, first=True), hidden, context=context),
        ]
    if height * width > 1 and (channels == 1 or step % 2 == 0):
        mask = checkerboard_mask(*shape, parity=(step // 2) % 2)
    else:
        mask = channel_mask(*shape, first=(step // 2) % 2 == 0)
    return [ConvCoupling(mask, hidden, context=context)]


class MultiScale(Transform):
    r"""The multi-scale architecture (RealNVP §3.6, Glow §3; Book §4.1.6).

    Each level squeezes (C, H, W) -> (4C, H/2, W/2), applies ``steps`` steps of flow and, except
    at the last level, factors out half of the channels: they go to the latent as they are
    (with the optional learned prior of Glow, an affine map of the factored-out half
    conditioned on the kept half, i.e. a channel coupling) while the other half continues at
    the next, coarser level. ``forward`` returns the latents of all levels concatenated into a
    flat (N, C·H·W) vector, so a standard Gaussian base over it is the RealNVP/Glow prior and
    log |det| sums every level's terms; ``inverse`` takes the flat vector back to an image.

    Args:
        event_shape: (C, H, W); H and W divisible by 2^levels.
        levels: number of levels (squeezes).
        steps: steps of flow per level.
        hidden: channels of every coupling CNN.
        kind: ``"glow"`` (ActNorm, invertible 1x1 conv, channel coupling) or ``"realnvp"``
            (couplings alternating checkerboard and channel masks).
        split_prior: learn Glow's conditional prior of each factored-out half.
        context: width of a context vector for class-conditional couplings.
        seed: for the initial 1x1 rotations.
    """

    event_dim = 3

    def __init__(
        self,
        event_shape: Sequence[int],
        *,
        levels: int = 2,
        steps: int = 4,
        hidden: int = 64,
        kind: Literal["glow", "realnvp"] = "glow",
        split_prior: bool = True,
        context: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        channels, height, width = (int(s) for s in event_shape)
        if levels < 1 or steps < 1:
            raise ConfigError(f"levels and steps must be >= 1, got {levels}, {steps}")
        if height % 2**levels or width % 2**levels:
            raise ConfigError(
                f"{levels} levels need H and W divisible by {2 ** levels}, got {height}x{width}"
            )
        if kind not in ("glow", "realnvp"):
            raise ConfigError(f"kind must be 'glow' or 'realnvp', got {kind!r}")
        generator = torch.Generator().manual_seed(seed)
        self.event_shape = (channels, height, width)
        self.levels = nn.ModuleList()
        self.kept_shapes: list[tuple[int, int, int]] = []  # what each level passes on
        self.out_shapes: list[tuple[int, int, int]] = []  # what each level factors out
        shape = (channels, height, width)
        for level in range(levels):
            shape = (shape[0] * 4, shape[1] // 2, shape[2] // 2)
            parts: list[Transform] = [Squeeze()]
            for step in range(steps):
                parts += _flow_step(shape, step, kind, hidden, context, generator)
            last = level == levels - 1
            if not last:
                out = (shape[0] // 2, shape[1], shape[2])
                if split_prior:
                    # Conditions the first half (factored out) on the second (kept).
                    parts.append(ConvCoupling(channel_mask(*shape, first=False), hidden,
                                              context=context))
                self.out_shapes.append(out)
                shape = (shape[0] - out[0], shape[1], shape[2])
            self.kept_shapes.append(shape)
            self.levels.append(Compose(parts))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(f"x must have shape (N, {self.event_shape}), got {tuple(x.shape)}")
        latents = []
        logabsdet = x.new_zeros(x.shape[0])
        h = x
        for i, level in enumerate(self.levels):
            h, ld = level(h, c)
            logabsdet = logabsdet + ld
            if i < len(self.out_shapes):
                split = self.out_shapes[i][0]
                latents.append(h[:, :split].flatten(1))
                h = h[:, split:]
        latents.append(h.flatten(1))
        return torch.cat(latents, dim=1), logabsdet

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n = z.shape[0]
        sizes = [math.prod(s) for s in self.out_shapes] + [math.prod(self.kept_shapes[-1])]
        if z.dim() != 2 or z.shape[1] != sum(sizes):
            raise DataError(f"z must have shape (N, {sum(sizes)}), got {tuple(z.shape)}")
        chunks = list(z.split(sizes, dim=1))
        h = chunks.pop().reshape(n, *self.kept_shapes[-1])
        logabsdet = z.new_zeros(n)
        for i in reversed(range(len(self.levels))):
            if i < len(self.out_shapes):
                h = torch.cat([chunks.pop().reshape(n, *self.out_shapes[i]), h], dim=1)
            h, ld = self.levels[i].inverse(h, c)
            logabsdet = logabsdet + ld
        return h, logabsdet
