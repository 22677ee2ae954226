r"""PixelCNN: an autoregressive model of images with masked 2-D convolutions (Book §3.2.6).

An image x of shape (C, H, W) is factorized over its pixels in raster order and, within a
pixel, over its channels (R -> G -> B):

    p(x) = Π_{i,j} Π_c p(x_{c,i,j} | θ_{c,i,j}(x_{<(i,j)}, x_{<c,(i,j)}))

All θ come from one pass of a network of masked convolutions (:mod:`dgm.core.masked_conv`):
either plain raster-masked convolutions (a type-A k x k layer, then type-B layers, ReLU;
PixelCNN, with its blind spot) or, by default, gated layers with a vertical and a horizontal
stack and the gate tanh(W x) ⊙ σ(V x) (Eq. 3.15; gated PixelCNN, no blind spot). Two 1 x 1
type-B convolutions map the last hidden layer to the P parameters of each coordinate's
likelihood: a categorical over the L levels (Eq. 3.8), a Bernoulli, or a (mixture of)
discretized logistic(s) (PixelCNN++, Eq. 4.43). The likelihood is exact; training minimizes
-log p(x). Sampling is sequential: H·W·C passes, one coordinate each.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §3.2.6.
    van den Oord et al., Conditional Image Generation with PixelCNN Decoders, 2016,
    arXiv:1606.05328.
    Salimans et al., PixelCNN++, 2017, arXiv:1701.05517.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.heads import likelihood_head
from dgm.core.masked_conv import GatedPixelCNNLayer, MaskedConv2d
from dgm.core.registry import register_model
from dgm.core.sampling import Sampling, draw_from_head
from dgm.models.autoregressive.arm import AutoregressiveModel
from dgm.core.spec import DataKind, DataSpec

__all__ = ["PixelCNNConfig", "PixelCNN"]

_LIKELIHOODS = ("auto", "categorical", "bernoulli", "discretized_logistic")


class _PlainStack(nn.Module):
    """Raster-masked convolutions: k_A x k_A type A, then k_B x k_B type B, ReLU (PixelCNN)."""

    def __init__(
        self, c: int, width: int, num_layers: int, k_a: int, k_b: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MaskedConv2d(
                c if i == 0 else width, width, k_a if i == 0 else k_b,
                mask_type="A" if i == 0 else "B", data_channels=c,
            )
            for i in range(num_layers)
        )
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.dropout(self.act(self.layers[0](x)))
        for layer in self.layers[1:]:
            h = h + self.dropout(self.act(layer(h)))  # residual: h already excludes x_(i,j)
        return h


class _GatedStack(nn.Module):
    """Gated layers with vertical and horizontal stacks (no blind spot); returns the
    horizontal stack."""

    def __init__(
        self, c: int, width: int, num_layers: int, k_a: int, k_b: int, dropout: float
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            GatedPixelCNNLayer(
                c if i == 0 else width, width, k_a if i == 0 else k_b,
                mask_type="A" if i == 0 else "B", data_channels=c, dropout=dropout,
            )
            for i in range(num_layers)
        )

    def forward(self, x: Tensor) -> Tensor:
        v = h = x
        for layer in self.layers:
            v, h = layer(v, h)
        return h


@dataclass(frozen=True, kw_only=True)
class PixelCNNConfig:
    """Configuration of :class:`PixelCNN`.

    Attributes:
        hidden: width of every hidden layer (a multiple of the image's C).
        num_layers: masked layers (gated or plain), the type-A first included.
        kernel_size_a: k of the first, type-A layer (odd, >= 3).
        kernel_size_b: k of the type-B layers (odd).
        gated: gated vertical + horizontal stacks (no blind spot) instead of plain masked
            convolutions.
        dropout: dropout on the hidden activations.
        likelihood: ``"auto"`` (categorical for discrete data, Bernoulli for binary),
            ``"categorical"``, ``"bernoulli"`` or ``"discretized_logistic"``.
        num_components: mixture components of the discretized logistic.
    """

    RENAMED: ClassVar[dict[str, str]] = {"hidden_channels": "hidden"}  # old key -> new key

    hidden: int = 64
    num_layers: int = 6
    kernel_size_a: int = 7
    kernel_size_b: int = 3
    gated: bool = True
    dropout: float = 0.0
    likelihood: str = "auto"
    num_components: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "num_layers", "num_components"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kernel_size_a < 3 or self.kernel_size_a % 2 == 0:
            raise ConfigError(f"kernel_size_a must be odd and >= 3, got {self.kernel_size_a}")
        if self.kernel_size_b < 1 or self.kernel_size_b % 2 == 0:
            raise ConfigError(f"kernel_size_b must be odd and >= 1, got {self.kernel_size_b}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.likelihood not in _LIKELIHOODS:
            raise ConfigError(
                f"likelihood must be one of {', '.join(_LIKELIHOODS)}, got {self.likelihood!r}"
            )


@register_model("pixelcnn", PixelCNNConfig)
class PixelCNN(AutoregressiveModel):
    r"""PixelCNN with masked 2-D convolutions, gated by default (Book §3.2.6); exact likelihood.

    log p(x) = Σ_{c,i,j} log p(x_{c,i,j} | θ_{c,i,j}), each θ a function of the coordinates
    before (c, i, j) in the order raster pixel, then channel.

    Args:
        spec: binary or discrete images, (C, H, W); C > 1 uses the R -> G -> B channel order.
        config: a :class:`PixelCNNConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5)
        >>> model = PixelCNN(spec, PixelCNNConfig(hidden=8, num_layers=2))
        >>> model.sample(2).shape, model.sample(2).dtype
        (torch.Size([2, 1, 4, 4]), torch.int64)
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})
    sample_options = frozenset({"temperature"})

    def __init__(self, spec: DataSpec, config: PixelCNNConfig | None = None) -> None:
        super().__init__(spec)
        config = PixelCNNConfig() if config is None else config
        if not spec.is_image:
            raise ConfigError(
                f"PixelCNN needs (C, H, W) images, got event shape {tuple(spec.event_shape)}"
            )
        c = spec.event_shape[0]
        if config.hidden % c:
            raise ConfigError(
                f"model.hidden ({config.hidden}) must be a multiple of the image's "
                f"{c} channels (one group of hidden channels per colour)"
            )
        self.config = config
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        stack = _GatedStack if config.gated else _PlainStack
        width = config.hidden
        self.body = stack(
            c, width, config.num_layers, config.kernel_size_a, config.kernel_size_b,
            config.dropout,
        )
        p = self.head.num_params
        self.output = nn.Sequential(
            nn.ReLU(),
            MaskedConv2d(width, width, 1, mask_type="B", data_channels=c),
            nn.ReLU(),
            MaskedConv2d(width, c * p, 1, mask_type="B", data_channels=c),
        )

    def _params(self, x: Tensor) -> Tensor:
        """Integers (N, C, H', W') -> parameters (N, C, H', W', P)."""
        dtype = next(self.parameters()).dtype
        h = x.to(dtype) / (self.spec.num_levels - 1)  # [0, 1]
        out = self.output(self.body(h))  # (N, C·P, H', W')
        n, _, hh, ww = out.shape
        return out.view(n, x.shape[1], self.head.num_params, hh, ww).permute(0, 1, 3, 4, 2)

    def params(self, x: Tensor) -> Tensor:
        """θ for every coordinate, shape (N, D, P), D in x.reshape(N, -1)'s (C, H, W) order."""
        self.check_input(x)
        return self._params(x).reshape(x.shape[0], self.spec.dim, self.head.num_params)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        r"""Ancestral sampling in raster order, channel by channel: H·W·C passes (in eval mode).

        Each pass runs the network on the rows up to the current one only (outputs in row i
        never depend on rows below).

        Args:
            n: number of samples.
            generator: the source of randomness (on the model's device).
            temperature: T > 0 divides the logits (categorical, Bernoulli, mixture weights)
                and multiplies the logistic scales; T = 0 takes the mode at every step.

        Returns:
            shape (n, C, H, W), long integers in 0..L-1.
        """
        if y is not None:
            raise ConfigError("PixelCNN is unconditional: sample() takes no labels y")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        sampling = Sampling(temperature)
        was_training = self.training
        self.eval()
        try:
            c, hh, ww = self.spec.event_shape
            x = torch.zeros(n, c, hh, ww, dtype=torch.long, device=self.device)
            for i in range(hh):
                for j in range(ww):
                    for ch in range(c):
                        theta = self._params(x[:, :, : i + 1])[:, ch, i, j]  # (n, P)
                        draw = draw_from_head(self.head, theta.unsqueeze(1), sampling,
                                              generator=generator)
                        x[:, ch, i, j] = draw[:, 0]
        finally:
            self.train(was_training)
        return x
