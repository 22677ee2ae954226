r"""Generative moment matching networks (Li, Swersky & Zemel 2015; Book §8.4).

A generator x = G(z), z ~ N(0, I), as in a GAN, but with a fixed "discriminator": the squared
maximum mean discrepancy between a batch of data and a batch of samples, with a mixture of
Gaussian kernels k(a, b) = Σ_σ exp(-||a - b||² / (2σ²)):

    min_G  MMD²({x_i}, {G(z_j)})    (unbiased; :func:`~.losses.gaussian_mixture_mmd2`)

No min-max game, one optimizer (``GradientFit``); as the book says, the samples are usually
poorer than a GAN's. The kernel acts on the signed space of :class:`~.networks.SignedScaling`
(discrete images in [-1, 1], flattened), where the bandwidths are measured. The MMD² is a batch
statistic: ``loss`` gives it to every example of the batch, so the mean is the MMD².
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.adversarial.gan import draw_latents
from dgm.models.adversarial.losses import gaussian_mixture_mmd2
from dgm.models.adversarial.networks import NETWORKS, SignedScaling, build_generator

__all__ = ["GMMNConfig", "GMMN"]


@dataclass(frozen=True, kw_only=True)
class GMMNConfig:
    """A generative moment matching network.

    Args:
        network: mlp or conv (the GAN's generators).
        latent_dim, hidden, num_hidden, width: as in :class:`~.gan.GANConfig`.
        bandwidths: the σ of the kernel mixture, in the signed space.
        samples: generated samples per batch (0: as many as the data batch).
        dequantize: spread real levels uniformly over their bins (else the bin centres).
    """

    network: str = "mlp"
    latent_dim: int = 32
    hidden: int = 256
    num_hidden: int = 2
    width: int = 64
    bandwidths: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
    samples: int = 0
    dequantize: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "bandwidths", tuple(float(b) for b in self.bandwidths))
        if self.network not in NETWORKS:
            raise ConfigError(f"model.network: {self.network!r} is not one of "
                              f"{', '.join(NETWORKS)}")
        if not self.bandwidths or min(self.bandwidths) <= 0:
            raise ConfigError("model.bandwidths must be a non-empty list of positive numbers")
        if min(self.latent_dim, self.hidden, self.num_hidden, self.width) < 1 or (
                self.samples == 1 or self.samples < 0):
            raise ConfigError("model.latent_dim, hidden, num_hidden, width must be >= 1 and "
                              "samples 0 or >= 2")


@register_model("gmmn", GMMNConfig)
class GMMN(GenerativeModel):
    """A generator trained by minimizing the MMD² to the data with a mixture of Gaussian
    kernels (Li et al. 2015; Book §8.4; module docstring)."""

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: GMMNConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.scaling = SignedScaling(spec, dequantize=config.dequantize)
        self.generator = build_generator(spec, config.network, latent_dim=config.latent_dim,
                                         hidden=config.hidden, num_hidden=config.num_hidden,
                                         width=config.width)

    def generate(self, z: Tensor) -> Tensor:
        """G(z) in the signed space."""
        return self.scaling.squash(self.generator(z))

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """MMD² between the batch and as many samples (``samples``), per example (N,), the same
        value each; not a likelihood."""
        self.check_input(x)
        n = x.shape[0]
        m = self.config.samples or n
        real = self.scaling.to_signed(x).flatten(1)
        fake = self.generate(draw_latents(m, self.config.latent_dim, self.device)).flatten(1)
        return gaussian_mixture_mmd2(real, fake, self.config.bandwidths).expand(n)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """n examples G(z) in the data's space and dtype (levels as in the GAN)."""
        if y is not None:
            raise DataError("the GMMN is unconditional; y must be None")
        z = draw_latents(n, self.config.latent_dim, self.device, generator)
        return self.scaling.to_data(self.generate(z))

    def extra_repr(self) -> str:
        return f"network={self.config.network}, bandwidths={self.config.bandwidths}"
