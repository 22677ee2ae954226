r"""Generators and discriminators: MLPs for flat data, DCGAN-style convolutions for images
(Book §8.3 Listing 8.4; Radford et al. 2016; deck 004).

Both work in the *signed* space of :class:`SignedScaling` ([-1, 1] for discrete data, the raw
values for continuous data). The generator's last layer has no activation; the model squashes
it (tanh) for discrete data. A discriminator returns its logits (N,) and the features φ(x) of
its last hidden layer (for feature matching). With labels it is a projection discriminator
(Miyato & Koyama 2018): l(x, y) = ψ(φ(x)) + e_yᵀ φ(x), e_y a learned class embedding; the
generator reads the one-hot label concatenated to z (Mirza & Osindero 2014).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.dequantize import quantize, uniform_dequantize
from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.spec import DataSpec
from dgm.core.spectral import SpectralNormConv2d, SpectralNormLinear

__all__ = [
    "SignedScaling",
    "CriticOutput",
    "minibatch_std",
    "MLPGenerator",
    "ConvGenerator",
    "MLPDiscriminator",
    "ConvDiscriminator",
    "build_generator",
    "build_discriminator",
]

NETWORKS = ("mlp", "conv")


class SignedScaling:
    r"""Between the data's own space and the signed space the networks see.

    Discrete data with L levels (binary: L = 2): x ↦ 2y - 1 with y = (x + u)/L, u ~ U[0, 1)
    (uniform dequantization, so that real data fill the bins as the generator's continuous
    output does) or u = 1/2 (the bin centres) without it. Back: the generator's output
    g ∈ (-1, 1) (tanh) is read as the level ⌊L (g + 1)/2⌋, clamped to 0..L-1, in the data's
    dtype. Continuous data pass unchanged both ways.
    """

    def __init__(self, spec: DataSpec, *, dequantize: bool = True) -> None:
        self.spec = spec
        self.levels = spec.num_levels if spec.kind.is_discrete else None
        self.dequantize = dequantize

    def to_signed(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        if self.levels is None:
            return x.to(torch.float32)
        if self.dequantize:
            y = uniform_dequantize(x, self.levels, generator=generator)
        else:
            y = (x.to(torch.float32) + 0.5) / self.levels
        return 2 * y - 1

    def squash(self, out: Tensor) -> Tensor:
        """The generator's raw output into the signed space (tanh for discrete data)."""
        return out if self.levels is None else torch.tanh(out)

    def to_data(self, g: Tensor) -> Tensor:
        if self.levels is None:
            return g.to(self.spec.dtype)
        return quantize((g + 1) / 2, self.levels).to(self.spec.dtype)


class CriticOutput(NamedTuple):
    """A discriminator's logits (N,) and its last hidden features φ(x) (N, F)."""

    logits: Tensor
    features: Tensor


def minibatch_std(h: Tensor) -> Tensor:
    r"""h (N, F) with one more feature: the mean over features of the batch's standard
    deviation, the same for every example (Karras et al. 2018's simplification of minibatch
    discrimination; deck 004). A collapsed generator gives a batch with a telling value."""
    s = h.std(0, unbiased=False).mean() if h.shape[0] > 1 else h.new_zeros(())
    return torch.cat([h, s.expand(h.shape[0], 1)], 1)


def _checked_labels(y: Tensor | None, n: int) -> Tensor:
    if y is None:
        raise DataError("a class-conditional network needs the labels y")
    if y.shape != (n,):
        raise DataError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    return y.long()


def _label_input(y: Tensor | None, num_classes: int, n: int) -> Tensor | None:
    if num_classes == 0:
        return None
    return F.one_hot(_checked_labels(y, n), num_classes).to(torch.float32)


class MLPGenerator(nn.Module):
    """z (N, L) [and one-hot y] -> MLP -> (N, *event_shape) (Listing 8.4, deeper)."""

    def __init__(self, latent_dim: int, event_shape: tuple[int, ...], *, hidden: int,
                 num_hidden: int, num_classes: int = 0) -> None:
        super().__init__()
        self.event_shape, self.num_classes = event_shape, num_classes
        out = int(torch.tensor(event_shape).prod())
        self.net = mlp(latent_dim + num_classes, hidden, out, num_hidden=num_hidden,
                       activation=nn.ReLU)

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        c = _label_input(y, self.num_classes, z.shape[0])
        h = z if c is None else torch.cat([z, c], 1)
        return self.net(h).reshape(z.shape[0], *self.event_shape)


class ConvGenerator(nn.Module):
    r"""DCGAN generator for (C, H, W) images with H, W divisible by 4 (8x8 digits, 28x28 MNIST):
    z [, y] -> Linear -> (4w, H/4, W/4) -> 2x [ConvTranspose(4, stride 2) -> BatchNorm -> ReLU]
    -> Conv 3x3 -> (C, H, W) (Radford et al. 2016: fractionally-strided convolutions, batch
    norm, ReLU)."""

    def __init__(self, latent_dim: int, event_shape: tuple[int, ...], *, width: int,
                 num_classes: int = 0) -> None:
        super().__init__()
        c, h, w = event_shape
        if h % 4 or w % 4:
            raise ConfigError(f"the conv generator needs H, W divisible by 4, got {h}x{w}")
        self.num_classes = num_classes
        self.start = (4 * width, h // 4, w // 4)
        self.fc = nn.Sequential(
            nn.Linear(latent_dim + num_classes, 4 * width * (h // 4) * (w // 4)),
            nn.BatchNorm1d(4 * width * (h // 4) * (w // 4)), nn.ReLU())
        self.net = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 4, stride=2, padding=1),
            nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),
            nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, c, 3, padding=1))

    def forward(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        c = _label_input(y, self.num_classes, z.shape[0])
        h = z if c is None else torch.cat([z, c], 1)
        return self.net(self.fc(h).reshape(z.shape[0], *self.start))


def _linear(i: int, o: int, spectral: bool) -> nn.Module:
    return SpectralNormLinear(i, o, coeff=1.0, always=True) if spectral else nn.Linear(i, o)


class _Head(nn.Module):
    """φ(x) -> [minibatch std] -> l = ψ(φ) [+ e_yᵀ φ] (the projection discriminator)."""

    def __init__(self, features: int, *, spectral: bool, num_classes: int, mb_std: bool) -> None:
        super().__init__()
        self.mb_std = mb_std
        self.out = _linear(features + int(mb_std), 1, spectral)
        self.embed = nn.Embedding(num_classes, features) if num_classes else None

    def forward(self, h: Tensor, y: Tensor | None) -> CriticOutput:
        logits = self.out(minibatch_std(h) if self.mb_std else h).squeeze(1)
        if self.embed is not None:
            logits = logits + (self.embed(_checked_labels(y, h.shape[0])) * h).sum(1)
        return CriticOutput(logits, h)


class MLPDiscriminator(nn.Module):
    """x (N, *event_shape) -> flatten -> [Linear -> LeakyReLU(0.2)] x num_hidden = φ(x) ->
    head."""

    def __init__(self, event_shape: tuple[int, ...], *, hidden: int, num_hidden: int,
                 spectral: bool = False, num_classes: int = 0, mb_std: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = int(torch.tensor(event_shape).prod())
        for _ in range(num_hidden):
            layers += [_linear(width, hidden, spectral), nn.LeakyReLU(0.2)]
            width = hidden
        self.body = nn.Sequential(*layers)
        self.head = _Head(width, spectral=spectral, num_classes=num_classes, mb_std=mb_std)

    def forward(self, x: Tensor, y: Tensor | None = None) -> CriticOutput:
        return self.head(self.body(x.flatten(1)), y)


class ConvDiscriminator(nn.Module):
    r"""DCGAN discriminator: 2x [Conv(4, stride 2) -> LeakyReLU(0.2)] -> flatten -> Linear ->
    LeakyReLU = φ(x) -> head. No batch norm: it would couple the examples of a batch, which the
    gradient penalty's per-example gradients and the minibatch-std feature do not expect."""

    def __init__(self, event_shape: tuple[int, ...], *, width: int, hidden: int,
                 spectral: bool = False, num_classes: int = 0, mb_std: bool = False) -> None:
        super().__init__()
        c, h, w = event_shape

        def conv(i: int, o: int) -> nn.Module:
            if spectral:
                return SpectralNormConv2d(i, o, 4, stride=2, padding=1)
            return nn.Conv2d(i, o, 4, stride=2, padding=1)

        self.body = nn.Sequential(
            conv(c, width), nn.LeakyReLU(0.2), conv(width, 2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(), _linear(2 * width * (h // 4) * (w // 4), hidden, spectral),
            nn.LeakyReLU(0.2))
        self.head = _Head(hidden, spectral=spectral, num_classes=num_classes, mb_std=mb_std)

    def forward(self, x: Tensor, y: Tensor | None = None) -> CriticOutput:
        return self.head(self.body(x), y)


def _check(spec: DataSpec, network: str) -> None:
    if network not in NETWORKS:
        raise ConfigError(f"model.network: {network!r} is not one of {', '.join(NETWORKS)}")
    if network == "conv" and not spec.is_image:
        raise ConfigError(f"model.network=conv needs (C, H, W) images, got {spec.event_shape}")


def build_generator(spec: DataSpec, network: str, *, latent_dim: int, hidden: int,
                    num_hidden: int, width: int, num_classes: int = 0) -> nn.Module:
    """The generator named ``network`` (mlp or conv) for data of this spec."""
    _check(spec, network)
    if network == "conv":
        return ConvGenerator(latent_dim, spec.event_shape, width=width, num_classes=num_classes)
    return MLPGenerator(latent_dim, spec.event_shape, hidden=hidden, num_hidden=num_hidden,
                        num_classes=num_classes)


def build_discriminator(spec: DataSpec, network: str, *, hidden: int, num_hidden: int,
                        width: int, spectral: bool = False, num_classes: int = 0,
                        mb_std: bool = False) -> nn.Module:
    """The discriminator named ``network`` (mlp or conv) for data of this spec."""
    _check(spec, network)
    if network == "conv":
        return ConvDiscriminator(spec.event_shape, width=width, hidden=hidden, spectral=spectral,
                                 num_classes=num_classes, mb_std=mb_std)
    return MLPDiscriminator(spec.event_shape, hidden=hidden, num_hidden=num_hidden,
                            spectral=spectral, num_classes=num_classes, mb_std=mb_std)
