r"""Denoising networks shared by the diffusion, score-based and flow-matching families.

Every network here follows one calling convention::

    net(z, t, y=None) -> Tensor   # same shape as z

* ``z``: (N, *event_shape) float, the noisy example: flat (N, D) for :class:`TimeMLP`, images
  (N, C, H, W) for :class:`UNet`.
* ``t``: (N,) float time in [0, 1], t = 0 is data and t = 1 is noise. A single time (a 0-d or
  one-element tensor, or a Python float) is broadcast to all N examples.
* ``y``: (N,) long class labels in 0 .. num_classes - 1, or ``num_classes`` for "no label"
  (the null class of classifier-free guidance); ``None`` means every label is null. A network
  built with ``num_classes=0`` is unconditional and rejects any y other than ``None``.

What the output means (noise ε, data x, velocity or score) is the model's choice; the networks
only promise its shape. Their last layer is initialized to zero, so a fresh network outputs 0
everywhere (a neutral start for every parameterization).

>>> net = TimeMLP(4, hidden=16, num_hidden=1, time_dim=8, num_classes=3)
>>> net(torch.randn(5, 4), torch.rand(5), torch.tensor([0, 1, 2, 3, 3])).shape
torch.Size([5, 4])
>>> bool(net(torch.randn(5, 4), torch.tensor(0.5)).abs().max() == 0)  # zero-initialized
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError

__all__ = [
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "ConditionEmbedding",
    "input_fourier_features",
    "TimeMLP",
    "UNet",
    "classifier_free_guidance",
    "drop_labels",
]

TimeEmbeddingKind = Literal["sinusoidal", "fourier"]
_Layer = TypeVar("_Layer", nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive_int(name: str, value: object) -> int:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be a positive integer, got {value!r}",
    )
    return int(value)  # type: ignore[arg-type]


def _non_negative_int(name: str, value: object) -> int:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 0,
        f"{name} must be a non-negative integer, got {value!r}",
    )
    return int(value)  # type: ignore[arg-type]


def _even_dim(name: str, value: object) -> int:
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 2 and value % 2 == 0,
        f"{name} must be an even integer >= 2 (half sines, half cosines), got {value!r}",
    )
    return int(value)  # type: ignore[arg-type]


def _dropout(value: object) -> float:
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0,
        f"dropout must be a probability in [0, 1), got {value!r}",
    )
    return float(value)  # type: ignore[arg-type]


def _frequencies(value: object) -> tuple[float, ...]:
    ok = isinstance(value, Sequence) and all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0 for f in value
    )
    _require(ok, "fourier_frequencies must be a sequence of positive numbers such as "
             f"(128, 256), got {value!r}")
    return tuple(float(f) for f in value)  # type: ignore[union-attr]


def _broadcast_time(t: Tensor | float, n: int, like: Tensor) -> Tensor:
    """t as an (N,) tensor in the dtype and device of ``like``; one time is repeated N times."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.numel() == 1:
        return t.reshape(1).expand(n)
    if t.shape not in ((n,), (n, 1)):
        raise DataError(f"t must have shape ({n},) (one time per example), got {tuple(t.shape)}")
    return t.reshape(n)


def _check_labels(y: Tensor | None, n: int, num_classes: int) -> None:
    if y is None:
        return
    if num_classes == 0:
        raise DataError(
            "this network is unconditional (num_classes=0): y must be None; build it with "
            "num_classes > 0 to condition on class labels"
        )
    if y.shape != (n,) or y.dtype.is_floating_point or y.dtype.is_complex:
        raise DataError(
            f"y must be an integer tensor of shape ({n},), got {y.dtype} {tuple(y.shape)}"
        )
    if bool(((y < 0) | (y > num_classes)).any()):
        raise DataError(
            f"labels must lie in 0..{num_classes} ({num_classes} = no label), "
            f"got values in {int(y.min())}..{int(y.max())}"
        )


def _num_groups(channels: int) -> int:
    """The largest of 8, 4, 2, 1 that divides ``channels`` (GroupNorm's group count)."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


def _zero_(layer: _Layer) -> _Layer:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


# --------------------------------------------------------------------------------------------
# Time and input features
# --------------------------------------------------------------------------------------------


class SinusoidalEmbedding(nn.Module):
    r"""The transformer sinusoidal embedding of s = scale·t (Vaswani et al. 2017, §3.5; as
    used for the diffusion step by Ho et al. 2020).

    With d = dim / 2 log-spaced frequencies ω_i = max_period^(-i / d), i = 0 .. d - 1:

        e(t) = [sin(s ω_0), ..., sin(s ω_{d-1}), cos(s ω_0), ..., cos(s ω_{d-1})].

    The default scale 1000 maps t in [0, 1] onto the range of DDPM's integer steps, so the
    slowest frequencies still change over the unit interval. (N,) -> (N, dim).
    """

    def __init__(self, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> None:
        super().__init__()
        self.dim = _even_dim("dim", dim)
        _require(max_period > 1.0, f"max_period must be > 1, got {max_period!r}")
        _require(scale > 0.0, f"scale must be > 0, got {scale!r}")
        self.scale = float(scale)
        half = self.dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        # a constant of the construction: not saved, so old checkpoints load unchanged
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = self.scale * t.reshape(-1, 1).to(self.freqs.dtype) * self.freqs  # (N, dim / 2)
        return torch.cat([args.sin(), args.cos()], dim=1)


class GaussianFourierEmbedding(nn.Module):
    r"""Random Fourier features of t (Tancik et al. 2020; the time embedding of Song et al.
    2021, score SDEs): e(t) = [sin(2π w t), cos(2π w t)], w ~ N(0, std²) drawn once.

    The dim / 2 frequencies w are a buffer (fixed, saved with the model), drawn from
    ``generator`` when given so that the embedding is reproducible. (N,) -> (N, dim).
    """

    def __init__(
        self, dim: int, std: float = 16.0, *, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.dim = _even_dim("dim", dim)
        _require(std > 0.0, f"std must be > 0, got {std!r}")
        w = torch.randn(self.dim // 2, generator=generator) * std
        self.register_buffer("w", w)

    def forward(self, t: Tensor) -> Tensor:
        args = 2 * math.pi * t.reshape(-1, 1).to(self.w.dtype) * self.w  # (N, dim / 2)
        return torch.cat([args.sin(), args.cos()], dim=1)


def input_fourier_features(h: Tensor, frequencies: Sequence[float] = (128, 256)) -> Tensor:
    r"""Input Fourier features (Kingma et al. 2021, Appendix C): h with sin(fπh) and cos(fπh)
    for each f in ``frequencies`` concatenated along axis 1.

    Meant for data h scaled to [-1, 1]: the high frequencies let the network resolve the fine
    detail that matters at small noise levels. VDM uses f = 2⁷, 2⁸ for 256 levels, i.e. L/2 and
    L: with f = L, sin(Lπh) at a level's bin centre plus δ is ±sin(Lπδ), the offset from the
    nearest level, for every level at once. Channel order: h, then sin for every f (in the
    given order), then cos for every f, each block C channels wide;
    (N, C, ...) -> (N, C·(1 + 2k)), k = len(frequencies). Works for flat (N, D) data and images.
    """
    if h.dim() < 2:
        raise DataError(
            f"h must have a batch and a feature axis (N, C, ...), got {tuple(h.shape)}"
        )
    if not frequencies:
        return h
    scaled = [(f * math.pi) * h for f in frequencies]
    return torch.cat([h, *(s.sin() for s in scaled), *(s.cos() for s in scaled)], dim=1)


class ConditionEmbedding(nn.Module):
    r"""The conditioning vector of a denoiser: an MLP of the time features plus a learned class
    embedding, emb(t, y) = W₂ SiLU(W₁ e(t) + b₁) + b₂ + E[y].

    e(t) is :class:`SinusoidalEmbedding` (``kind="sinusoidal"``) or
    :class:`GaussianFourierEmbedding` (``kind="fourier"``) of width ``features``; E is an
    ``nn.Embedding(num_classes + 1, width)`` whose last row is the null class (y =
    num_classes, or y None), present only when num_classes > 0. (N,), (N,) -> (N, width).
    ``time_scale`` is the sinusoidal features' scale s (see :class:`SinusoidalEmbedding`).
    """

    def __init__(
        self,
        features: int,
        width: int,
        *,
        num_classes: int = 0,
        kind: TimeEmbeddingKind = "sinusoidal",
        time_scale: float = 1000.0,
    ) -> None:
        super().__init__()
        _require(
            kind in ("sinusoidal", "fourier"),
            f"time_embedding must be 'sinusoidal' or 'fourier', got {kind!r}",
        )
        self.num_classes = _non_negative_int("num_classes", num_classes)
        width = _positive_int("width", width)
        self.time: nn.Module = (
            SinusoidalEmbedding(features, scale=time_scale)
            if kind == "sinusoidal"
            else GaussianFourierEmbedding(features)
        )
        self.mlp = nn.Sequential(nn.Linear(features, width), nn.SiLU(), nn.Linear(width, width))
        self.classes = nn.Embedding(self.num_classes + 1, width) if self.num_classes else None

    def forward(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        emb = self.mlp(self.time(t).to(self.mlp[0].weight.dtype))
        if self.classes is not None:
            if y is None:
                y = torch.full((emb.shape[0],), self.num_classes, device=emb.device)
            emb = emb + self.classes(y)
        return emb


# --------------------------------------------------------------------------------------------
# Flat data: a residual MLP
# --------------------------------------------------------------------------------------------


class _ResidualMLPBlock(nn.Module):
    """h + W₂ dropout(SiLU(W₁ SiLU(LN(h)) + P SiLU(emb))): a pre-norm residual block that adds
    the conditioning between its two linear layers."""

    def __init__(self, hidden: int, emb_width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden)
        self.emb = nn.Linear(emb_width, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, hidden)

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        u = self.fc1(F.silu(self.norm(h))) + self.emb(F.silu(emb))
        return h + self.fc2(self.dropout(F.silu(u)))


class TimeMLP(nn.Module):
    r"""A time- and class-conditioned residual MLP for flat data: (N, D), (N,), (N,) -> (N, D).

    x (with its :func:`input_fourier_features` when ``fourier_frequencies`` is not empty) ->
    Linear to ``hidden`` -> ``num_hidden`` residual blocks

        h ← h + W₂ dropout(SiLU(W₁ SiLU(LN(h)) + P SiLU(emb(t, y))))

    -> LN -> SiLU -> Linear to D, zero-initialized so that the network starts at 0.
    emb is :class:`ConditionEmbedding` (time features of width ``time_dim`` through a 2-layer
    MLP to ``hidden``, plus a class embedding when num_classes > 0).

    Only smooth operations (SiLU, LayerNorm, linear maps), so the output is differentiable
    in z everywhere with a bounded Jacobian on bounded sets, as a continuous normalizing flow
    needs of its vector field. Examples never mix: LayerNorm normalizes each example alone.

    Input (N, *shape) with prod(shape) = D is flattened and the output reshaped back.
    ``outputs`` > 1 gives that many predictions stacked along axis 1 (e.g. a mean and a
    variance): (N, outputs · shape[0], *shape[1:]), to be split with ``chunk(outputs, 1)``.
    """

    def __init__(
        self,
        dim: int,
        *,
        hidden: int = 512,
        num_hidden: int = 3,
        time_dim: int = 128,
        num_classes: int = 0,
        fourier_frequencies: Sequence[float] = (),
        dropout: float = 0.0,
        time_embedding: TimeEmbeddingKind = "sinusoidal",
        time_scale: float = 1000.0,
        outputs: int = 1,
    ) -> None:
        super().__init__()
        self.dim = _positive_int("dim", dim)
        self.outputs = _positive_int("outputs", outputs)
        hidden = _positive_int("hidden", hidden)
        num_hidden = _non_negative_int("num_hidden", num_hidden)
        time_dim = _even_dim("time_dim", time_dim)
        self.num_classes = _non_negative_int("num_classes", num_classes)
        self.fourier_frequencies = _frequencies(fourier_frequencies)
        dropout = _dropout(dropout)
        self.embed = ConditionEmbedding(
            time_dim, hidden, num_classes=self.num_classes, kind=time_embedding,
            time_scale=time_scale,
        )
        in_features = self.dim * (1 + 2 * len(self.fourier_frequencies))
        self.input = nn.Linear(in_features, hidden)
        self.blocks = nn.ModuleList(
            _ResidualMLPBlock(hidden, hidden, dropout) for _ in range(num_hidden)
        )
        self.norm = nn.LayerNorm(hidden)
        self.output = _zero_(nn.Linear(hidden, self.outputs * self.dim))

    def forward(self, z: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        n = z.shape[0]
        x = z.reshape(n, -1)
        if x.shape[1] != self.dim:
            raise DataError(
                f"TimeMLP was built for {self.dim} features per example, got z of shape "
                f"{tuple(z.shape)} ({x.shape[1]} features)"
            )
        _check_labels(y, n, self.num_classes)
        emb = self.embed(_broadcast_time(t, n, x), y)
        h = self.input(input_fourier_features(x, self.fourier_frequencies))
        for block in self.blocks:
            h = block(h, emb)
        out = self.output(F.silu(self.norm(h)))
        return out.reshape(n, self.outputs * z.shape[1], *z.shape[2:])


# --------------------------------------------------------------------------------------------
# Images: a small DDPM-style U-Net
# --------------------------------------------------------------------------------------------


class _ResBlock(nn.Module):
    """DDPM's residual block: GN -> SiLU -> conv3x3, + Linear(SiLU(emb)) per channel,
    GN -> SiLU -> dropout -> conv3x3, plus the input (through a 1x1 conv if widths differ)."""

    def __init__(self, in_ch: int, out_ch: int, emb_width: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(_num_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_width, out_ch)
        self.norm2 = nn.GroupNorm(_num_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _SelfAttention2d(nn.Module):
    r"""Single-head self-attention over the H·W positions of a feature map, with a residual:
    x + W_o V softmax(Kᵀ Q / √C) on GroupNorm'd x (the DDPM attention block)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_num_groups(channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        n, c, hgt, wid = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, hgt * wid).unbind(1)
        # explicit softmax rather than F.scaled_dot_product_attention: its fused kernels do
        # not all support double backward, which CNF divergence estimates need
        weights = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(c), dim=-1)
        attended = torch.einsum("nqk,nck->ncq", weights, v).reshape(n, c, hgt, wid)
        return x + self.out(attended)


class _Stage(nn.Module):
    """A residual block followed, at the resolutions that ask for it, by self-attention."""

    def __init__(
        self, in_ch: int, out_ch: int, emb_width: int, dropout: float, attention: bool
    ) -> None:
        super().__init__()
        self.res = _ResBlock(in_ch, out_ch, emb_width, dropout)
        self.attn = _SelfAttention2d(out_ch) if attention else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.res(x, emb)
        return h if self.attn is None else self.attn(h)


class _Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Upsample(nn.Module):
    """Double the resolution: nearest-neighbour interpolation, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    r"""A small DDPM-style U-Net (Ho et al. 2020, after Ronneberger et al. 2015) for square
    images: (N, C, H, W), (N,), (N,) -> (N, C), with H = W = ``image_size``.

    conv3x3 to ``base`` channels, then per level ℓ (width base·mults[ℓ], resolution
    image_size / 2^ℓ) ``num_res_blocks`` residual blocks, each followed by single-head
    self-attention when the resolution is in ``attention_at``, and a stride-2 conv down (all
    levels but the last); a middle of two residual blocks (attention between them when the
    lowest resolution is in ``attention_at``); the mirror path up with ``num_res_blocks + 1``
    blocks per level, each reading the concatenation of the current features and one skip
    saved on the way down, and nearest-neighbour upsampling + conv3x3 between levels; then
    GroupNorm -> SiLU -> conv3x3 to C, zero-initialized so that the network starts at 0.
    ``outputs`` > 1 gives outputs · C channels (several predictions, split along axis 1).

    Residual block: GN -> SiLU -> conv3x3, + Linear(SiLU(emb)) per channel, GN -> SiLU ->
    dropout -> conv3x3, plus the input. GroupNorm uses the largest of 8, 4, 2, 1 groups that
    divides the channels. emb is :class:`ConditionEmbedding`: time features of width
    ``time_dim`` (default 4·base) through a 2-layer MLP of width time_dim, plus a class
    embedding when num_classes > 0. ``fourier_frequencies`` appends
    :func:`input_fourier_features` of z to the input channels.

    image_size must be divisible by 2^(len(mults) - 1), so that upsampling restores each
    level's exact size (28 with mults (1, 2, 2): 28 -> 14 -> 7 -> 14 -> 28).
    """

    def __init__(
        self,
        channels: int,
        image_size: int,
        *,
        base: int = 64,
        mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        time_dim: int | None = None,
        num_classes: int = 0,
        dropout: float = 0.0,
        attention_at: Sequence[int] = (),
        fourier_frequencies: Sequence[float] = (),
        time_embedding: TimeEmbeddingKind = "sinusoidal",
        time_scale: float = 1000.0,
        outputs: int = 1,
    ) -> None:
        super().__init__()
        self.channels = _positive_int("channels", channels)
        self.outputs = _positive_int("outputs", outputs)
        self.image_size = _positive_int("image_size", image_size)
        base = _positive_int("base", base)
        _require(
            isinstance(mults, Sequence)
            and len(mults) >= 1
            and all(isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in mults),
            f"mults must be a non-empty sequence of positive integers such as (1, 2), "
            f"got {mults!r}",
        )
        mults = tuple(mults)
        num_res_blocks = _positive_int("num_res_blocks", num_res_blocks)
        time_dim = 4 * base if time_dim is None else _even_dim("time_dim", time_dim)
        self.num_classes = _non_negative_int("num_classes", num_classes)
        dropout = _dropout(dropout)
        self.fourier_frequencies = _frequencies(fourier_frequencies)
        factor = 2 ** (len(mults) - 1)
        _require(
            self.image_size % factor == 0,
            f"image_size must be divisible by 2**(len(mults) - 1) = {factor} for mults "
            f"{mults}, got {self.image_size}; use fewer levels or pad the images",
        )
        resolutions = [self.image_size // 2**level for level in range(len(mults))]
        attention_at = tuple(attention_at)
        unknown = [r for r in attention_at if r not in resolutions]
        _require(
            not unknown,
            f"attention_at lists resolutions {unknown} that no level has; the levels are at "
            f"{resolutions}",
        )

        self.embed = ConditionEmbedding(
            time_dim, time_dim, num_classes=self.num_classes, kind=time_embedding,
            time_scale=time_scale,
        )
        in_ch = self.channels * (1 + 2 * len(self.fourier_frequencies))
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)

        ch = base
        skips = [ch]
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        for level, (mult, res) in enumerate(zip(mults, resolutions)):
            stages = nn.ModuleList()
            for _ in range(num_res_blocks):
                stages.append(_Stage(ch, base * mult, time_dim, dropout, res in attention_at))
                ch = base * mult
                skips.append(ch)
            self.down.append(stages)
            if level < len(mults) - 1:
                self.downsample.append(_Downsample(ch))
                skips.append(ch)

        lowest_attention = resolutions[-1] in attention_at
        self.mid = nn.ModuleList(
            [
                _Stage(ch, ch, time_dim, dropout, lowest_attention),
                _Stage(ch, ch, time_dim, dropout, False),
            ]
        )

        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level in reversed(range(len(mults))):
            stages = nn.ModuleList()
            out = base * mults[level]
            for _ in range(num_res_blocks + 1):
                attention = resolutions[level] in attention_at
                stages.append(_Stage(ch + skips.pop(), out, time_dim, dropout, attention))
                ch = out
            self.up.append(stages)
            if level > 0:
                self.upsample.append(_Upsample(ch))

        self.norm_out = nn.GroupNorm(_num_groups(ch), ch)
        self.conv_out = _zero_(nn.Conv2d(ch, self.outputs * self.channels, 3, padding=1))

    def forward(self, z: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        expected = (self.channels, self.image_size, self.image_size)
        if z.dim() != 4 or tuple(z.shape[1:]) != expected:
            raise DataError(
                f"UNet was built for images (N, {', '.join(map(str, expected))}), got z of "
                f"shape {tuple(z.shape)}"
            )
        n = z.shape[0]
        _check_labels(y, n, self.num_classes)
        emb = self.embed(_broadcast_time(t, n, z), y)

        h = self.conv_in(input_fourier_features(z, self.fourier_frequencies))
        skips = [h]
        for level, stages in enumerate(self.down):
            for stage in stages:
                h = stage(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        for stage in self.mid:
            h = stage(h, emb)
        for level, stages in enumerate(self.up):
            for stage in stages:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](h)
        return self.conv_out(F.silu(self.norm_out(h)))


# --------------------------------------------------------------------------------------------
# Classifier-free guidance
# --------------------------------------------------------------------------------------------


def classifier_free_guidance(
    conditional: Tensor, unconditional: Tensor, scale: float | Tensor
) -> Tensor:
    r"""Classifier-free guidance (Ho & Salimans 2022): ε̃ = ε_∅ + w (ε_y - ε_∅).

    ``conditional`` is the prediction given the label (ε_y), ``unconditional`` the one given
    the null label (ε_∅), ``scale`` is w. Convention: w = 1 gives the conditional prediction,
    w = 0 the unconditional one, w > 1 pushes further along the conditional direction (stronger
    guidance, less diversity). (The paper writes (1 + w') ε_y - w' ε_∅, i.e. w = 1 + w'.) The
    combination is linear, so it applies as is to noise, data, velocity or score predictions.

    >>> classifier_free_guidance(torch.tensor([2.0]), torch.tensor([1.0]), 3.0)
    tensor([4.])
    """
    return unconditional + scale * (conditional - unconditional)


def drop_labels(
    y: Tensor | None,
    p: float,
    num_classes: int,
    generator: torch.Generator | None = None,
) -> Tensor | None:
    """y with each label replaced, independently with probability p, by the null index
    ``num_classes``: the label dropout that trains one network as both the conditional and
    the unconditional model of classifier-free guidance (Ho & Salimans 2022).

    p = 0 returns y itself; y None returns None. The uniforms are drawn on the generator's
    device when a generator is given, else on y's.
    """
    _require(
        isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0,
        f"p must be a probability in [0, 1], got {p!r}",
    )
    _non_negative_int("num_classes", num_classes)
    if y is None or p == 0:
        return y
    device = generator.device if generator is not None else y.device
    drop = torch.rand(y.shape, generator=generator, device=device).to(y.device) < p
    return torch.where(drop, torch.full_like(y, num_classes), y)
