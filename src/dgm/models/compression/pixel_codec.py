r"""A lossy codec in the pixel domain: scalar quantization of every pixel to bins of ``step``
levels, the bin indices coded losslessly under any exact autoregressive model of them (a
PixelCNN by default), and a learned dequantizer that puts every pixel back inside its bin
from the bins around it.

    b = ⌊x / Δ⌋ (or bins of unequal widths),   rate = -log₂ p_θ(b) (the ARM's exact likelihood of the bins, Book §3.2),
    x̂ = lo(b) + (hi(b) - lo(b)) · σ(g_φ(b)),   distortion = ‖x - x̂‖² / D

The rate and the distortion have no parameters in common, so each is minimized on its own: Δ
(not a λ) moves the codec along its rate-distortion curve. This is near-lossless coding
(JPEG-LS's NEAR mode, CALIC) with a learned context model; at high rates it beats transform
coding of small images whose training set is too small for a learned transform (Book §10.4
trains the transform, and overfits 1000 digits). ``dgm compress`` writes the bins with the
ARM's conditionals; ``dgm decompress`` decodes them and applies g_φ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import CodingCursor, SequentialCoding
from dgm.core.errors import ConfigError
from dgm.core.nn import mlp
from dgm.core.registry import build_model, register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.compression.codec import decoded_reconstruction

__all__ = ["PixelCodecConfig", "PixelCodec"]


@dataclass(frozen=True, kw_only=True)
class PixelCodecConfig:
    """Configuration of :class:`PixelCodec`.

    Args:
        step: Δ, the width of a bin in the data's levels (Δ = 1 is lossless coding).
        edges: bins of unequal widths instead: the lowest level of every bin but the first,
            increasing (``[1, 9]`` on 17 levels: {0}, {1..8}, {9..16}).
        entropy_model: the bins' model, with its ``name``: any registered model with exact
            per-coordinate conditionals (pixelcnn, arm, transformer, categorical_mixture, ...).
        hidden: channels of the dequantizer g_φ (3x3 convolutions on images, an MLP otherwise).
        num_layers: its hidden layers.
        rate_weight: λ in the loss MSE + λ · bits per pixel (the two terms share no parameter,
            so λ only scales the entropy model's gradients).
    """

    step: int = 4
    edges: list[int] | None = None
    entropy_model: dict[str, Any] = field(default_factory=lambda: {"name": "pixelcnn"})
    hidden: int = 32
    num_layers: int = 2
    rate_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.step < 1:
            raise ConfigError(f"step must be >= 1, got {self.step}")
        if self.edges is not None and (not self.edges or self.edges[0] < 1 or any(
                b <= a for a, b in zip(self.edges, self.edges[1:]))):
            raise ConfigError(f"edges must be increasing levels >= 1, got {self.edges}")
        if not isinstance(self.entropy_model, dict) or not self.entropy_model.get("name"):
            raise ConfigError("model.entropy_model needs a model name, e.g. "
                              "entropy_model: {name: pixelcnn}")
        if self.hidden < 1 or self.num_layers < 0 or self.rate_weight < 0:
            raise ConfigError("hidden must be >= 1, num_layers >= 0, rate_weight >= 0")


@register_model("pixel_codec", PixelCodecConfig)
class PixelCodec(GenerativeModel):
    """Bins of Δ levels per pixel, an exact ARM over the bins, a learned dequantizer.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
        >>> codec = PixelCodec(spec, PixelCodecConfig(step=4, entropy_model={"name": "arm"}))
        >>> codec.bins.spec.num_levels
        5
    """

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: PixelCodecConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or PixelCodecConfig()
        levels = int(spec.num_levels or 2)
        self.top = levels - 1
        if config.edges is None:
            low = torch.arange(0, levels, config.step)
            if len(low) < 2:
                raise ConfigError(f"a step of {config.step} puts all {levels} levels in one bin")
        else:
            if config.edges[-1] > self.top:
                raise ConfigError(f"edges {config.edges} go beyond the top level {self.top}")
            low = torch.tensor([0, *config.edges])
        self.num_bins = len(low)
        # the bin of every level, and every bin's lowest and highest level
        self.register_buffer("bin_of", torch.bucketize(torch.arange(levels), low, right=True) - 1,
                             persistent=False)
        self.register_buffer("low", low.float(), persistent=False)
        self.register_buffer("high", (torch.cat([low[1:], torch.tensor([levels])]) - 1).float(),
                             persistent=False)
        options = {k: v for k, v in config.entropy_model.items() if k != "name"}
        bin_spec = DataSpec(spec.event_shape, DataKind.DISCRETE, num_levels=self.num_bins)
        self.bins = build_model(config.entropy_model["name"], bin_spec, **options)
        if not isinstance(self.bins, SequentialCoding):
            raise ConfigError(f"{config.entropy_model['name']} has no exact per-coordinate "
                              "conditionals to code the bins with")
        b, h = self.num_bins, config.hidden
        if spec.is_image and spec.event_shape[0] != 1:
            raise ConfigError("the pixel codec's dequantizer takes one-channel images")
        if spec.is_image:
            layers: list[nn.Module] = []
            width = b
            for _ in range(config.num_layers):
                layers += [nn.Conv2d(width, h, 3, padding=1), nn.LeakyReLU()]
                width = h
            layers.append(nn.Conv2d(width, spec.event_shape[0], 3, padding=1))
            self.dequantizer: nn.Module = nn.Sequential(*layers)
        else:
            self.dequantizer = mlp(spec.dim * b, h, spec.dim, num_hidden=config.num_layers)

    def quantize(self, x: Tensor) -> Tensor:
        """The bins b = ⌊x / Δ⌋ (or by the edges), the data's shape, long."""
        return self.bin_of[x.long()]

    def dequantize(self, bins: Tensor) -> Tensor:
        """x̂ inside each pixel's bin from the bins around it, unrounded, (N, *event)."""
        one_hot = F.one_hot(bins.long(), self.num_bins).to(self.low.dtype)
        if self.spec.is_image:  # (N, C, H, W, B) -> channels of every bin
            c, hgt, wdt = self.spec.event_shape
            feats = one_hot.permute(0, 1, 4, 2, 3).reshape(bins.shape[0], c * self.num_bins,
                                                           hgt, wdt)
            logit = self.dequantizer(feats)
        else:
            logit = self.dequantizer(one_hot.flatten(1)).view(bins.shape)
        low, high = self.low[bins], self.high[bins]
        return low + (high - low) * torch.sigmoid(logit)

    # -- training ---------------------------------------------------------------------------------

    def loss_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(distortion, rate) per example: the MSE per pixel of the dequantized bins, and the
        bins' exact code length under the ARM in bits per pixel."""
        self.check_input(x)
        bins = self.quantize(x)
        rate = -self.bins.log_prob(bins) / (math.log(2) * self.spec.dim)
        x_hat = self.dequantize(bins)
        distortion = (x_hat - x.to(x_hat.dtype)).pow(2).flatten(1).mean(1)
        return distortion, rate

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """MSE per pixel + λ · bits per pixel, (N,)."""
        distortion, rate = self.loss_terms(x)
        return distortion + self.config.rate_weight * rate

    # -- coding (the ``LossyCodec`` capability) ---------------------------------------------------

    def coding_symbols(self, x: Tensor) -> Tensor:
        """The bins, flattened in the ARM's order, (N, D)."""
        self.check_input(x)
        return self.quantize(x).reshape(x.shape[0], -1)

    def coding_inverse(self, symbols: Tensor) -> Tensor:
        """The dequantized bins rounded to the data's levels, (N, *event), long."""
        bins = symbols.long().view(symbols.shape[0], *self.spec.event_shape)
        return torch.round(self.dequantize(bins)).clamp(0, self.top).long()

    def coding_alphabet(self) -> Tensor:
        return torch.arange(self.num_bins)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> CodingCursor:
        """The ARM's own conditionals over the bins."""
        return self.bins.coding_cursor(rows, alphabet)  # type: ignore[attr-defined]

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Exactly what ``dgm decompress`` gives for a file of x."""
        return decoded_reconstruction(self, x)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Bins drawn from the ARM, dequantized."""
        if y is not None:
            raise ConfigError("the pixel codec is unconditional: sample() takes no labels")
        bins = self.bins.sample(n, generator=generator)
        return torch.round(self.dequantize(bins.long())).clamp(0, self.top).to(self.spec.dtype)
