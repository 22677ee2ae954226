r"""Masked 2-D convolutions and the gated PixelCNN layer (Book §3.2.6, "Is it all? No!").

Pixels are ordered in raster order (row by row, left to right) and, within a pixel, channel by
channel (R -> G -> B). A :class:`MaskedConv2d` zeroes the weights that would let output
(i, j) see a "future" input:

- ``"raster"`` (Book Fig. 3.5-3.6): a k x k kernel, the rows below and the pixels right of the
  centre masked; the centre is masked in type A (first layer) and kept in type B (later
  layers). With C > 1 data channels the hidden channels are split into C contiguous groups,
  group g "belonging" to colour g, and at the centre input group a may feed output group b
  only if a < b (A) or a <= b (B), as in PixelCNN.
- ``"vertical"``: a (k//2 + 1) x k kernel over the rows above (type A) or the rows above and
  the current row (type B), padded on the top and sides only.
- ``"horizontal"``: a 1 x (k//2 + 1) kernel over the pixels left of (type A) or up to and
  including (type B, with the channel rule at the centre) the current pixel.

Stacking raster-masked convolutions leaves a *blind spot*: the pixels up and to the right of
the centre that the receptive field never reaches. The gated PixelCNN (van den Oord et al.,
2016) removes it with two stacks: a vertical stack that sees every row above, whatever the
column, and a horizontal stack that sees the current row up to the current pixel and gets the
vertical stack through a 1 x 1 link; its non-linearity is the gate
h = tanh(W x) ⊙ σ(V x) (Eq. 3.15).

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §3.2.6.
    van den Oord et al., Pixel Recurrent Neural Networks, 2016, arXiv:1601.06759.
    van den Oord et al., Conditional Image Generation with PixelCNN Decoders, 2016,
    arXiv:1606.05328.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError

__all__ = ["MaskedConv2d", "GatedPixelCNNLayer", "channel_groups", "gate"]

Stack = Literal["raster", "vertical", "horizontal"]


def channel_groups(num_channels: int, data_channels: int) -> Tensor:
    """The colour group of each of ``num_channels`` channels: C contiguous blocks, shape (n,)."""
    if num_channels % data_channels:
        raise ConfigError(
            f"{num_channels} channels cannot be split into {data_channels} colour groups "
            "(the width must be a multiple of the number of data channels)"
        )
    return torch.arange(num_channels) // (num_channels // data_channels)


def _centre_mask(
    in_channels: int, out_channels: int, data_channels: int, mask_type: str
) -> Tensor:
    """(out, in) 0/1: which input channels may feed which output channels at the centre."""
    g_in = channel_groups(in_channels, data_channels)
    g_out = channel_groups(out_channels, data_channels)
    if mask_type == "A":
        return (g_in[None, :] < g_out[:, None]).float()
    return (g_in[None, :] <= g_out[:, None]).float()


class MaskedConv2d(nn.Module):
    r"""2-D convolution whose output at pixel (i, j) sees no input at or after (i, j) in
    raster order (type A) or none after it (type B); H x W is preserved.

    Args:
        in_channels, out_channels: widths; multiples of ``data_channels``.
        kernel_size: k, odd.
        mask_type: ``"A"`` (the centre pixel excluded, first layer) or ``"B"`` (included).
        data_channels: C, the colour channels of the data; with C > 1 the centre obeys the
            R -> G -> B order between the C contiguous channel groups.
        stack: ``"raster"`` (k x k masked kernel), ``"vertical"`` (rows above, plus the current
            row for type B, every column in reach; no channel rule, as a vertical stack never
            feeds the current row's own outputs directly) or ``"horizontal"`` (the current row
            up to the centre).
        bias: add a bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        mask_type: Literal["A", "B"] = "B",
        data_channels: int = 1,
        stack: Stack = "raster",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if mask_type not in ("A", "B"):
            raise ConfigError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        if data_channels < 1:
            raise ConfigError(f"data_channels must be >= 1, got {data_channels}")
        p = kernel_size // 2
        centre = _centre_mask(in_channels, out_channels, data_channels, mask_type)
        if stack == "raster":
            shape, pad = (kernel_size, kernel_size), (p, p, p, p)
            mask = torch.ones(out_channels, in_channels, *shape)
            mask[:, :, p + 1 :] = 0.0
            mask[:, :, p, p + 1 :] = 0.0
            mask[:, :, p, p] = centre
        elif stack == "vertical":
            shape, pad = (p + 1, kernel_size), (p, p, p, 0)  # (left, right, top, bottom)
            mask = torch.ones(out_channels, in_channels, *shape)
            if mask_type == "A":
                mask[:, :, p] = 0.0  # the current row
        elif stack == "horizontal":
            shape, pad = (1, p + 1), (p, 0, 0, 0)
            mask = torch.ones(out_channels, in_channels, *shape)
            mask[:, :, 0, p] = centre
        else:
            raise ConfigError(f"stack must be raster, vertical or horizontal, got {stack!r}")
        self.mask_type, self.stack, self.padding = mask_type, stack, pad
        self.conv = nn.Conv2d(in_channels, out_channels, shape, bias=bias)
        self.register_buffer("mask", mask)
        with torch.no_grad():
            self.conv.weight.mul_(mask)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C_in, H, W) -> (N, C_out, H, W)."""
        return F.conv2d(F.pad(x, self.padding), self.conv.weight * self.mask, self.conv.bias)


def gate(h: Tensor, data_channels: int = 1) -> Tensor:
    r"""tanh(a) ⊙ σ(b) (Eq. 3.15) of 2p channels -> p channels.

    Each of the C colour groups of ``h`` holds its own (a, b) halves, so that output group g
    is computed from input group g only and the channel order survives the gate.
    """
    n, c2, *hw = h.shape
    a, b = h.view(n, data_channels, 2, c2 // (2 * data_channels), *hw).unbind(2)
    return (torch.tanh(a) * torch.sigmoid(b)).reshape(n, c2 // 2, *hw)


class GatedPixelCNNLayer(nn.Module):
    r"""One gated PixelCNN layer: a vertical and a horizontal stack (van den Oord et al. 2016).

        v' = W_v * v                                   (vertical, (k//2+1) x k)
        v_out = tanh(v'_a) ⊙ σ(v'_b)
        u = W_h * h + L v'                              (horizontal 1 x (k//2+1), 1x1 link L)
        h_out = [h +] O gate(u)                         (1x1 O; residual for type B)

    The vertical output at (i, j) depends only on rows above i (all columns within reach), so
    the link may feed it to the horizontal stack at the same pixel; the horizontal output sees
    the current row up to (i, j) (excluded for type A), and the union has no blind spot.

    Args:
        in_channels: width of the inputs v and h (C for the first layer).
        channels: p, width of the outputs; a multiple of ``data_channels``.
        kernel_size: k, odd.
        mask_type: ``"A"`` for the first layer (reads the image), ``"B"`` after.
        data_channels: C, the colour channels (the R -> G -> B rule at the centre).
        dropout: dropout on the gated horizontal activation.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        *,
        mask_type: Literal["A", "B"] = "B",
        data_channels: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c = data_channels
        self.data_channels = c
        self.vertical = MaskedConv2d(
            in_channels, 2 * channels, kernel_size, mask_type=mask_type, data_channels=c,
            stack="vertical",
        )
        self.horizontal = MaskedConv2d(
            in_channels, 2 * channels, kernel_size, mask_type=mask_type, data_channels=c,
            stack="horizontal",
        )
        self.link = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.out = MaskedConv2d(channels, channels, 1, mask_type="B", data_channels=c)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = mask_type == "B" and in_channels == channels

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(v, h), each (N, C_in, H, W) -> (v_out, h_out), each (N, p, H, W)."""
        v_pre = self.vertical(v)
        u = self.horizontal(h) + self.link(v_pre)
        h_new = self.out(self.dropout(gate(u, self.data_channels)))
        v_out = gate(v_pre, self.data_channels)
        return v_out, h + h_new if self.residual else h_new
