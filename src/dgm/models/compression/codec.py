r"""A neural lossy codec (Book §10.4): encoder f_e, quantizer Q, entropy model p_λ, decoder f_d,
trained end to end on the rate-distortion objective

    L = E[ d(x, f_d(Q(f_e(x)))) ] + λ · E[ -log₂ p_λ(Q(f_e(x))) ] / D        (Eq. 10.1, 10.9)

with d the mean squared error per pixel in the data's own units (0..L-1) and the rate in bits
per pixel, so λ trades MSE for bits per pixel (the book's β). Deployment codes the integer
symbols with a real entropy coder (``dgm compress``); the decoder reads them back bit for bit.

Transforms: the book's MLP (Listing 10.2, D -> 2M -> M -> M/2 -> C, mirrored) for any data, or
for images a convolutional pair with GDN / inverse GDN (Ballé et al. 2017): two stride-2
convolutions down (8x8 -> 2x2, 28x28 -> 7x7) and transposed ones up.

References:
    Ballé, Laparra, Simoncelli. End-to-end optimized image compression. ICLR 2017.
    Ballé, Minnen, Singh, Hwang, Johnston. Variational image compression with a scale
    hyperprior. ICLR 2018.
    Agustsson et al. Soft-to-hard vector quantization for end-to-end learning compressible
    representations. NeurIPS 2017.
    Tomczak. Deep Generative Modeling, 2nd ed., ch. 10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import CodingCursor
from dgm.core.conditionals import blockwise, coding_precision
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.compression.entropy_models import (
    AutoregressiveEntropy,
    AutoregressiveGaussianEntropy,
    CategoricalEntropy,
    FactorizedEntropy,
    HyperpriorEntropy,
    UniformEntropy,
)
from dgm.models.compression.quantizers import CodebookQuantizer, RoundingQuantizer

__all__ = ["CodecConfig", "Codec", "GDN", "decoded_reconstruction"]

CODEBOOK_ENTROPY = ("uniform", "categorical", "autoregressive")
INTEGER_ENTROPY = ("factorized", "autoregressive", "hyperprior")


@dataclass(frozen=True, kw_only=True)
class CodecConfig:
    """Configuration of :class:`Codec`.

    Args:
        transform: ``"mlp"`` (the book's, any data) or ``"conv"`` (images, GDN).
        hidden: M, the MLP's width; the conv transform's channels.
        code_dim: C, the length of the code (MLP), or the latent channels (conv).
        quantizer: ``"codebook"`` (K scalar codewords, straight-through), ``"round"``
            (straight-through rounding) or ``"noise"`` (uniform noise in training, rounding
            at test).
        codebook_size: K.
        temperature: τ of the codebook's backward softmax.
        entropy: with a codebook ``"uniform"``, ``"categorical"`` or ``"autoregressive"`` (the
            book's); with rounding ``"factorized"`` (a learned CDF per channel),
            ``"autoregressive"`` (a Gaussian per position whose mean and scale a MADE reads
            from the positions before it) or ``"hyperprior"`` (a Gaussian conditional with a
            scale hyperprior).
        hyper_dim: the hyper-latent's length (hyperprior).
        rate_weight: λ, the weight of bits per pixel beside the MSE per pixel.
        latent_scale: y = s f_e(x) and the decoder reads ŷ / s: with rounding, s sets how
            fine the quantization starts (a network's initial outputs are O(1), which unit
            steps would wipe out).
        dropout: after every hidden layer of the MLP transforms. (The digits' 1000 training
            images are partly memorized: train MSE 0.8 against 2.3 on the test split at 0.89
            bits per pixel; dropout 0.2 made the test MSE worse, 3.8.)
    """

    transform: Literal["mlp", "conv"] = "mlp"
    hidden: int = 256
    code_dim: int = 16
    quantizer: Literal["codebook", "round", "noise"] = "codebook"
    codebook_size: int = 8
    temperature: float = 1.0
    entropy: Literal["uniform", "categorical", "autoregressive", "factorized",
                     "hyperprior"] = "autoregressive"
    hyper_dim: int = 8
    rate_weight: float = 1.0
    latent_scale: float = 1.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.transform not in ("mlp", "conv"):
            raise ConfigError(f"transform must be 'mlp' or 'conv', got {self.transform!r}")
        if self.quantizer not in ("codebook", "round", "noise"):
            raise ConfigError(f"quantizer must be codebook, round or noise, got "
                              f"{self.quantizer!r}")
        allowed = CODEBOOK_ENTROPY if self.quantizer == "codebook" else INTEGER_ENTROPY
        if self.entropy not in allowed:
            raise ConfigError(f"a {self.quantizer} quantizer takes the entropy models "
                              f"{', '.join(allowed)}, not {self.entropy!r}")
        if min(self.hidden, self.code_dim, self.hyper_dim) < 1 or self.codebook_size < 2:
            raise ConfigError("hidden, code_dim and hyper_dim must be >= 1, codebook_size >= 2")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.rate_weight < 0 or self.temperature <= 0 or self.latent_scale <= 0:
            raise ConfigError("rate_weight must be >= 0, temperature and latent_scale > 0")


def decoded_reconstruction(codec: GenerativeModel, x: Tensor) -> Tensor:
    """What ``dgm decompress`` gives for a file of x under a lossy codec: its symbols and
    their inverse evaluated as the coder does (float64 on the CPU, one thread, in fixed
    blocks), in the data's dtype and on x's device."""
    codec.check_input(x)
    with torch.no_grad(), coding_precision(codec) as twin:
        symbols = blockwise(twin.coding_symbols, x.cpu())  # type: ignore[attr-defined]
        out = blockwise(twin.coding_inverse, symbols)  # type: ignore[attr-defined]
    return out.to(codec.spec.dtype).to(x.device)


class GDN(nn.Module):
    r"""Generalized divisive normalization y_i = x_i / √(β_i + Σ_j γ_ij x_j²) (Ballé et al.
    2016), or its inverse (multiplying) for the decoder; β and γ kept positive by squaring
    with a floor."""

    def __init__(self, channels: int, inverse: bool = False) -> None:
        super().__init__()
        self.inverse = inverse
        self.beta = nn.Parameter(torch.ones(channels))
        self.gamma = nn.Parameter(0.1 * torch.eye(channels))

    def forward(self, x: Tensor) -> Tensor:
        beta = self.beta.pow(2) + 1e-6
        gamma = self.gamma.abs().view(*self.gamma.shape, 1, 1)
        norm = torch.sqrt(F.conv2d(x * x, gamma, beta))
        return x * norm if self.inverse else x / norm


def _book_mlp(d_in: int, m: int, d_out: int, reverse: bool, dropout: float) -> nn.Sequential:
    """Listing 10.2's widths D -> 2M -> M -> M/2 -> C (or back), LeakyReLU (and dropout)
    between (no batch norm: a codec must code one image the same as a batch)."""
    widths = [d_in, 2 * m, m, max(1, m // 2), d_out]
    if reverse:
        widths = [d_in, max(1, m // 2), m, 2 * m, d_out]
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-2], widths[1:-1]):
        layers += [nn.Linear(a, b), nn.LeakyReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(widths[-2], widths[-1]))
    return nn.Sequential(*layers)


@register_model("codec", CodecConfig)
class Codec(GenerativeModel):
    """A lossy neural codec trained on rate + distortion; ``dgm compress`` writes real bits.

    ``loss`` is MSE per pixel + λ · bits per pixel (the rate of the entropy model, a
    cross-entropy); ``reconstruct`` is what a decoded file gives. ``sample`` decodes codes
    drawn from the entropy model (the book's Fig. 10.5 samples).

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
        >>> codec = Codec(spec, CodecConfig(hidden=32))
        >>> codec.loss(torch.randint(0, 17, (4, 1, 8, 8))).shape
        torch.Size([4])
    """

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: CodecConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or CodecConfig()
        self.top = float((spec.num_levels or 2) - 1)
        c = config.code_dim
        if config.transform == "mlp":
            self.encoder: nn.Module = _book_mlp(spec.dim, config.hidden, c, False, config.dropout)
            self.decoder: nn.Module = _book_mlp(c, config.hidden, spec.dim, True, config.dropout)
            self.latent_shape: tuple[int, ...] = (c,)
            channels = torch.arange(c)
        else:
            if not spec.is_image:
                raise ConfigError(f"the conv transform needs images, got {spec.event_shape}")
            ch, h, w = spec.event_shape
            if h % 4 or w % 4:
                raise ConfigError(f"the conv transform halves the image twice; {h}x{w} is not "
                                  "a multiple of 4")
            n = config.hidden
            self.encoder = nn.Sequential(
                nn.Conv2d(ch, n, 5, 2, 2), GDN(n), nn.Conv2d(n, n, 5, 2, 2), GDN(n),
                nn.Conv2d(n, c, 3, 1, 1))
            self.decoder = nn.Sequential(
                nn.ConvTranspose2d(c, n, 3, 1, 1), GDN(n, inverse=True),
                nn.ConvTranspose2d(n, n, 5, 2, 2, output_padding=1), GDN(n, inverse=True),
                nn.ConvTranspose2d(n, ch, 5, 2, 2, output_padding=1))
            self.latent_shape = (c, h // 4, w // 4)
            channels = torch.arange(c).repeat_interleave(h * w // 16)
        size = int(channels.numel())
        if config.quantizer == "codebook":
            quantizer: nn.Module = CodebookQuantizer(config.codebook_size, config.temperature)
            kinds = {"uniform": UniformEntropy, "categorical": CategoricalEntropy,
                     "autoregressive": AutoregressiveEntropy}
            self.entropy: nn.Module = kinds[config.entropy](size, quantizer)
        else:
            quantizer = RoundingQuantizer("ste" if config.quantizer == "round" else "noise")
            if config.entropy == "factorized":
                self.entropy = FactorizedEntropy(channels, quantizer)
            elif config.entropy == "autoregressive":
                self.entropy = AutoregressiveGaussianEntropy(size, quantizer)
            else:
                self.entropy = HyperpriorEntropy(size, config.hyper_dim, quantizer)
        self.code_size = size

    # -- the transforms ---------------------------------------------------------------------------

    def analysis(self, x: Tensor) -> Tensor:
        """y = s f_e(x / (L-1)), flattened (N, S)."""
        u = x.to(torch.get_default_dtype()) / self.top
        if self.config.transform == "mlp":
            y = self.encoder(u.reshape(x.shape[0], -1))
        else:
            y = self.encoder(u.reshape(x.shape[0], *self.spec.event_shape)).flatten(1)
        return y * self.config.latent_scale

    def synthesis(self, values: Tensor) -> Tensor:
        """x̂ = (L-1) f_d(ŷ / s) in the data's units (unrounded), (N, *event)."""
        h = values.reshape(values.shape[0], *self.latent_shape) / self.config.latent_scale
        out = self.decoder(h)
        return (out * self.top).reshape(values.shape[0], *self.spec.event_shape)

    # -- training ---------------------------------------------------------------------------------

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``distortion`` (MSE per pixel, data units) and ``rate`` (bits per pixel, the entropy
        model's cross-entropy) per example; the loss is distortion + λ · rate."""
        self.check_input(x)
        nats, values = self.entropy.rate(self.analysis(x))
        recon = self.synthesis(values)
        distortion = (recon - x.to(recon.dtype)).pow(2).flatten(1).mean(1)
        rate = nats / (math.log(2) * self.spec.dim)
        return {"distortion": distortion, "rate": rate}

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """MSE per pixel + λ · bits per pixel, (N,)."""
        terms = self.loss_terms(x)
        return terms["distortion"] + self.config.rate_weight * terms["rate"]

    # -- coding (the ``LossyCodec`` capability) ---------------------------------------------------

    def coding_symbols(self, x: Tensor) -> Tensor:
        """The integers the coder writes, (N, S'): codeword indices, or rounded latents (the
        hyper-latent first)."""
        self.check_input(x)
        return self.entropy.symbols(self.analysis(x))

    def coding_inverse(self, symbols: Tensor) -> Tensor:
        """The reconstruction a file decodes to: x̂ rounded to the data's levels, (N, *event),
        long."""
        x_hat = self.synthesis(self.entropy.values(symbols))
        return torch.round(x_hat).clamp(0, self.top).long()

    def coding_alphabet(self) -> Tensor | None:
        """The codeword indices 0..K-1 for a codebook; None for integers (the coder takes the
        window of the file's symbols)."""
        if self.config.quantizer == "codebook":
            return torch.arange(self.config.codebook_size)
        return None

    def coding_cursor(self, rows: int, alphabet: Tensor) -> CodingCursor:
        """The entropy model's conditionals over the code (one step, or the ARM's positions,
        or the hyper-latent then the latent)."""
        return self.entropy.coding_cursor(rows, alphabet)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """Exactly what ``dgm decompress`` gives for a file of x: evaluated as the coder does
        (float64 on the CPU, one thread, in fixed blocks), rounded to the levels."""
        return decoded_reconstruction(self, x)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Codes drawn from the entropy model, decoded (the book's Fig. 10.5c)."""
        if y is not None:
            raise ConfigError("the codec is unconditional: sample() takes no labels")
        values = self.entropy.sample(n, generator)
        return torch.round(self.synthesis(values)).clamp(0, self.top).to(self.spec.dtype)
