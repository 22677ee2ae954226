r"""Autoregressive models with causal 1-D convolutions and a categorical likelihood (Book §3.2).

The event is flattened to D positions in raster order and factorized as

    p(x) = Π_{d=1}^{D} Cat(x_d | θ_d(x_{<d})),       x_{<1} = ∅      (Eq. 3.4, 3.7-3.8)

(Errata 1: the product starts at d = 1 with an empty context; p(x_1) is not counted twice.)
All θ_d come from one pass of a stack of causal convolutions (Listings 3.1-3.3): the first
layer is type A (position d sees inputs < d only), the rest type B (positions <= d of the
previous layer), LeakyReLU in between, and the last layer has L output channels, the logits
of the L values. The training objective is the exact NLL, -Σ_d log θ_{d, x_d} (Eq. 3.9-3.14).

With kernel size k and dilations δ_1..δ_n, output d depends on exactly the inputs
d - R, ..., d - 1 with receptive field R = 1 + Σ_l (k - 1) δ_l (25 for the book's stack of
four kernel-7 layers). Sampling is sequential, one position per pass (Book §3.2.3); since θ_d
needs only the last R inputs, each pass runs the network on a window of R + 1 positions
instead of all D, which makes sampling a 28x28 image about 30 times cheaper.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §3.2.3-3.2.4.
    van den Oord et al., WaveNet: A Generative Model for Raw Audio, 2016, arXiv:1609.03499.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.conditionals import AutoregressiveCursor, check_levels_alphabet
from dgm.core.errors import ConfigError
from dgm.core.heads import LIKELIHOODS, LikelihoodHead, likelihood_head
from dgm.core.nn import CausalConv1d, made_network
from dgm.core.registry import register_model
from dgm.core.sampling import Sampling, draw_from_head
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "AutoregressiveModel",
    "ARMConfig",
    "ARM",
    "CausalConvNet",
    "FiniteMemoryARMConfig",
    "FiniteMemoryARM",
    "RNNARMConfig",
    "RNNARM",
    "MADEConfig",
    "MADE",
    "NADEConfig",
    "NADE",
]


def _scaled_input(x: Tensor, num_levels: int, dtype: torch.dtype) -> Tensor:
    """Integers (N, D) -> one channel of floats x / (L - 1) in [0, 1], shape (N, 1, D)."""
    return (x.to(dtype) / (num_levels - 1)).unsqueeze(1)


def _one_hot_input(x: Tensor, num_levels: int, dtype: torch.dtype) -> Tensor:
    """Integers (N, D) -> L one-hot channels, shape (N, L, D)."""
    return F.one_hot(x, num_levels).to(dtype).transpose(1, 2)


_ENCODINGS: dict[str, tuple[Callable[[Tensor, int, torch.dtype], Tensor], bool]] = {
    # name -> (encoder, whether it has one channel per level)
    "scaled": (_scaled_input, False),
    "one_hot": (_one_hot_input, True),
}


class AutoregressiveModel(GenerativeModel):
    r"""An exact likelihood p(x) = Π_d p(x_d | θ_d(x_{<d})) (Eq. 3.4), one θ_d per coordinate.

    Subclasses give ``params(x) -> (N, D, P)``, where θ_d may depend on x_{<d} only, and a
    likelihood ``head`` (categorical, Bernoulli, discretized logistic, ...) that reads them.
    With an ``end_token`` in the data spec, the positions after a sequence's first end token are
    padding and are not scored.
    """

    likelihood = Likelihood.EXACT
    head: LikelihoodHead

    def params(self, x: Tensor) -> Tensor:
        """θ_d for every position d of the flattened event, shape (N, D, P)."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = Σ_d log p(x_d | θ_d), exact, shape (N,), nats. ``y`` is ignored."""
        flat = x.reshape(x.shape[0], -1)
        each = self.head.log_prob_each(flat, self.params(x))
        if self.spec.end_token is not None:
            each = torch.where(self.spec.scored_positions(flat), each, torch.zeros_like(each))
        return each.sum(dim=-1)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x), shape (N,), nats."""
        return -self.log_prob(x, y)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> AutoregressiveCursor:
        """p(x_d | x_{<d}) position by position, for lossless coding (Book §10.4.3)."""
        check_levels_alphabet(alphabet, int(self.spec.num_levels or 2))
        return AutoregressiveCursor(self.params, self.head, rows, self.spec.event_shape,
                                    self.device, self.spec.end_token)


class CausalConvNet(nn.Module):
    r"""A stack of causal 1-D convolutions: type A, then type B layers (Book Listing 3.3).

    conv_A -> act (-> dropout) -> [conv_B -> act (-> dropout)] x (n - 2) -> conv_B, where the
    middle blocks may be residual (h + block(h); causal because every position of h already
    excludes its own input). Output position d depends on exactly the inputs d - R .. d - 1,
    R = :attr:`receptive_field`.

    Args:
        in_channels, hidden_channels, out_channels: widths of the input, hidden and output.
        kernel_size: k, shared by all layers.
        dilations: one per layer (n >= 1 layers; with n = 1 the single layer is type A).
        dropout: dropout probability after each hidden activation.
        residual: add skip connections around the middle layers.
        negative_slope: slope of the LeakyReLU.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        *,
        kernel_size: int,
        dilations: tuple[int, ...],
        dropout: float = 0.0,
        residual: bool = False,
        negative_slope: float = 0.01,
    ) -> None:
        super().__init__()
        n = len(dilations)
        if n < 1:
            raise ConfigError("CausalConvNet needs at least one layer (dilations is empty)")
        widths = [in_channels] + [hidden_channels] * (n - 1) + [out_channels]
        self.layers = nn.ModuleList(
            CausalConv1d(
                widths[i], widths[i + 1], kernel_size, dilation=d, mask_type="A" if i == 0 else "B"
            )
            for i, d in enumerate(dilations)
        )
        self.act = nn.LeakyReLU(negative_slope)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual
        self.receptive_field = 1 + sum((kernel_size - 1) * d for d in dilations)

    def forward(self, h: Tensor) -> Tensor:
        """(N, C_in, T) -> (N, C_out, T)."""
        *hidden, last = self.layers
        for i, layer in enumerate(hidden):
            u = self.dropout(self.act(layer(h)))
            h = h + u if self.residual and i > 0 else u
        return last(h)


@dataclass(frozen=True, kw_only=True)
class ARMConfig:
    """Configuration of :class:`ARM` (defaults: the book's network, Listing 3.3).

    Attributes:
        hidden: M, the width of the hidden layers (book: 256).
        kernel_size: k of every causal convolution (companion code: 7).
        num_layers: number of convolutions, the type-A first and the output layer included
            (book: 4, receptive field 25 with k = 7).
        dilations: one dilation per layer, or None for all ones (WaveNet uses 1, 2, 4, 8, ...).
        dropout: dropout after each hidden activation; digits overfit within 10-50 epochs
            without it.
        residual: skip connections around the middle (type B, hidden-to-hidden) layers.
        input_encoding: how integers enter the first layer: ``"scaled"`` (one channel,
            x / (L - 1) in [0, 1]) or ``"one_hot"`` (L channels; required for token ids, whose
            order means nothing).
        likelihood: p(x_d | θ_d): ``"auto"`` (categorical for discrete and token data,
            Bernoulli for binary), ``"categorical"``, ``"bernoulli"`` or
            ``"discretized_logistic"`` (PixelCNN++'s mixture, cheap for many levels).
        num_components: mixture components of the discretized logistic.
    """

    RENAMED: ClassVar[dict[str, str]] = {"hidden_channels": "hidden"}  # old key -> new key

    hidden: int = 256
    kernel_size: int = 7
    num_layers: int = 4
    dilations: tuple[int, ...] | None = None
    dropout: float = 0.0
    residual: bool = False
    input_encoding: Literal["scaled", "one_hot"] = "scaled"
    likelihood: str = "auto"
    num_components: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "kernel_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.dilations is not None:
            if len(self.dilations) != self.num_layers:
                raise ConfigError(
                    f"dilations must have num_layers={self.num_layers} entries, "
                    f"got {len(self.dilations)}: {self.dilations}"
                )
            if any(d < 1 for d in self.dilations):
                raise ConfigError(f"dilations must all be >= 1, got {self.dilations}")
        _check_common(self)

    @property
    def resolved_dilations(self) -> tuple[int, ...]:
        return self.dilations if self.dilations is not None else (1,) * self.num_layers


@register_model("arm", ARMConfig)
class ARM(AutoregressiveModel):
    r"""Autoregressive model with causal 1-D convolutions (Book §3.2.4).

    log p(x) = Σ_d log p(x_d | θ_d), θ = f(x) from a causal convolution stack over the
    raster-ordered pixels; exact. p(x_d | θ_d) is categorical over the levels (the book's
    choice, Eq. 3.7-3.8), Bernoulli, or a mixture of discretized logistics (§3.2.6).

    Args:
        spec: binary, discrete or token data of any event shape (flattened in raster order).
        config: an :class:`ARMConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5)
        >>> model = ARM(spec, ARMConfig(hidden=8, kernel_size=3))
        >>> model.sample(2).shape, model.sample(2).dtype
        (torch.Size([2, 1, 4, 4]), torch.int64)
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.TOKENS})
    sample_options = frozenset({"temperature"})

    def __init__(self, spec: DataSpec, config: ARMConfig | None = None) -> None:
        super().__init__(spec)
        config = ARMConfig() if config is None else config
        if spec.kind is DataKind.TOKENS and config.input_encoding == "scaled":
            raise ConfigError(
                "input_encoding 'scaled' treats values as ordered intensities; token ids have "
                "no order: use input_encoding: one_hot"
            )
        self.config = config
        levels = spec.num_levels
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        self._encode, per_level = _ENCODINGS[config.input_encoding]
        self.net = CausalConvNet(
            levels if per_level else 1,
            config.hidden,
            self.head.num_params,
            kernel_size=config.kernel_size,
            dilations=config.resolved_dilations,
            dropout=config.dropout,
            residual=config.residual,
        )

    @property
    def receptive_field(self) -> int:
        """R: θ_d depends on exactly x_{d-R}, ..., x_{d-1}."""
        return self.net.receptive_field

    def _params_flat(self, x: Tensor) -> Tensor:
        """Flat integers (N, T) -> head parameters (N, T, P); position t sees x_{<t} only."""
        dtype = next(self.net.parameters()).dtype
        h = self._encode(x, self.spec.num_levels, dtype)  # (N, C_in, T)
        return self.net(h).transpose(1, 2)  # (N, L, T) -> (N, T, L)

    def params(self, x: Tensor) -> Tensor:
        """θ_d(x_{<d}) for every position, shape (N, D, P) in raster order: the L logits for a
        categorical likelihood, one logit for Bernoulli, the mixture's numbers otherwise."""
        self.check_input(x)
        return self._params_flat(x.reshape(x.shape[0], -1))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        r"""Ancestral sampling, one position per pass: x_d ~ p(x_d | θ_d / T).

        Call ``model.eval()`` first if the model has dropout.

        Args:
            n: number of samples.
            generator: the source of randomness (on the model's device).
            temperature: T > 0 divides the logits (categorical, Bernoulli, mixture weights)
                and multiplies the logistic scales (see ``draw_from_head``);
                T = 0 takes the most probable value at every step.

        Returns:
            shape (n, *event_shape), long integers in 0..L-1.
        """
        if y is not None:
            raise ConfigError("ARM is unconditional: sample() takes no labels y")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        sampling = Sampling(temperature)
        dim, window = self.spec.dim, self.receptive_field
        x = torch.zeros(n, dim, dtype=torch.long, device=self.device)
        for d in range(dim):
            # θ_d needs x_{d-R}..x_{d-1}: a window of R + 1 positions ending at d is enough.
            start = max(0, d - window)
            theta = self._params_flat(x[:, start : d + 1])[:, -1:]  # (n, 1, P)
            x[:, d] = draw_from_head(self.head, theta, sampling, generator=generator)[:, 0]
        return _pad_after_end(x, self.spec).reshape(n, *self.spec.event_shape)


def _pad_after_end(x: Tensor, spec: DataSpec) -> Tensor:
    """Flat samples (N, D) with the positions after each row's first end token set to the end
    token: the padding that ``log_prob`` does not score (a no-op without an end token)."""
    if spec.end_token is None:
        return x
    return torch.where(spec.scored_positions(x), x, torch.full_like(x, spec.end_token))


def _encoded_sequence(x: Tensor, num_levels: int, encoding: str, dtype: torch.dtype) -> Tensor:
    """Integers (N, T) -> encoded inputs (N, T, C) plus a constant "present" channel of ones.

    The ones channel tells a real x = 0 from the zero padding before the first position.
    """
    encode, _ = _ENCODINGS[encoding]
    h = encode(x, num_levels, dtype).transpose(1, 2)  # (N, T, C)
    return torch.cat([h, torch.ones_like(h[..., :1])], dim=-1)


def _check_common(config: object) -> None:
    likelihood = getattr(config, "likelihood")
    if likelihood not in LIKELIHOODS or likelihood == "gaussian":
        choices = ", ".join(repr(c) for c in LIKELIHOODS if c != "gaussian")
        raise ConfigError(f"likelihood: {likelihood!r} is not one of {choices}")
    if getattr(config, "num_components") < 1:
        raise ConfigError(f"num_components must be >= 1, got {getattr(config, 'num_components')}")
    if not 0.0 <= getattr(config, "dropout", 0.0) < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {getattr(config, 'dropout')}")
    if getattr(config, "input_encoding", "scaled") not in _ENCODINGS:
        raise ConfigError(f"input_encoding must be one of {', '.join(_ENCODINGS)}")


def _input_channels(spec: DataSpec, encoding: str) -> int:
    if spec.kind is DataKind.TOKENS and encoding == "scaled":
        raise ConfigError("token ids have no order: use input_encoding: one_hot")
    return (spec.num_levels if _ENCODINGS[encoding][1] else 1) + 1


@dataclass(frozen=True, kw_only=True)
class FiniteMemoryARMConfig:
    """Configuration of :class:`FiniteMemoryARM` (defaults: the book's order-2 example, M = 300).

    Attributes:
        memory: m, the number of previous values θ_d depends on (book: 2).
        hidden: width of the shared MLP (book: 300).
        num_hidden: hidden layers of the shared MLP.
        dropout, input_encoding, likelihood, num_components: as in :class:`ARMConfig`.
    """

    memory: int = 2
    hidden: int = 300
    num_hidden: int = 1
    dropout: float = 0.0
    input_encoding: Literal["scaled", "one_hot"] = "scaled"
    likelihood: str = "auto"
    num_components: int = 1

    def __post_init__(self) -> None:
        for name in ("memory", "hidden", "num_hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        _check_common(self)


@register_model("arm_mlp", FiniteMemoryARMConfig)
class FiniteMemoryARM(AutoregressiveModel):
    r"""Finite-memory ARM: one MLP shared by all positions reads the last m values (Book §3.2.1).

    p(x) = Π_d p(x_d | θ(x_{d-1}, ..., x_{d-m}))   (Eq. 3.5 for m = 2), exact.

    The shared MLP is a type-A causal convolution of kernel m followed by 1x1 convolutions, so
    all positions are scored in one pass; positions before the first are zero padding, told
    apart from real zeros by a constant input channel.
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.TOKENS})

    def __init__(self, spec: DataSpec, config: FiniteMemoryARMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or FiniteMemoryARMConfig()
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        layers: list[nn.Module] = [
            CausalConv1d(_input_channels(spec, config.input_encoding), config.hidden,
                         config.memory, mask_type="A"),
            nn.LeakyReLU(),
        ]
        for _ in range(config.num_hidden - 1):
            layers += [nn.Dropout(config.dropout), nn.Conv1d(config.hidden, config.hidden, 1),
                       nn.LeakyReLU()]
        layers += [nn.Dropout(config.dropout), nn.Conv1d(config.hidden, self.head.num_params, 1)]
        self.net = nn.Sequential(*layers)

    def params(self, x: Tensor) -> Tensor:
        """θ_d(x_{<d}) for every position, shape (N, D, P) in raster order."""
        self.check_input(x)
        return self._params(x.reshape(x.shape[0], -1))

    def _params(self, x: Tensor) -> Tensor:
        """Flat integers (N, T) -> θ (N, T, P); θ_t reads x_{t-m}..x_{t-1}."""
        dtype = next(self.net.parameters()).dtype
        h = _encoded_sequence(x, self.spec.num_levels, self.config.input_encoding, dtype)
        return self.net(h.transpose(1, 2)).transpose(1, 2)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral sampling; each step reads a window of the last m values only."""
        m = self.config.memory
        x = torch.zeros(n, self.spec.dim, dtype=torch.long, device=self.device)
        for d in range(self.spec.dim):
            start = max(0, d - m)
            theta = self._params(x[:, start : d + 1])[:, -1:]
            x[:, d] = self.head.sample(theta, generator=generator)[:, 0]
        return _pad_after_end(x, self.spec).reshape(n, *self.spec.event_shape)


@dataclass(frozen=True, kw_only=True)
class RNNARMConfig:
    """Configuration of :class:`RNNARM`.

    Attributes:
        hidden: size of the recurrent state.
        num_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"`` (gated cells ease the vanishing gradients of §3.2.2).
        dropout, input_encoding, likelihood, num_components: as in :class:`ARMConfig`.
    """

    hidden: int = 256
    num_layers: int = 1
    cell: Literal["lstm", "gru"] = "lstm"
    dropout: float = 0.0
    input_encoding: Literal["scaled", "one_hot"] = "scaled"
    likelihood: str = "auto"
    num_components: int = 1

    def __post_init__(self) -> None:
        for name in ("hidden", "num_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.cell not in ("lstm", "gru"):
            raise ConfigError(f"cell must be 'lstm' or 'gru', got {self.cell!r}")
        _check_common(self)


@register_model("arm_rnn", RNNARMConfig)
class RNNARM(AutoregressiveModel):
    r"""Recurrent ARM (Book §3.2.2, Eq. 3.6): h_d = RNN(x_{d-1}, h_{d-1}), θ_d = W h_d.

    p(x) = Π_d p(x_d | θ_d), exact; the input at position d is x_{d-1} (a start symbol at
    d = 1), so θ_d depends on x_{<d} only. Sampling carries the state: one cell step per value.
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.TOKENS})

    def __init__(self, spec: DataSpec, config: RNNARMConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or RNNARMConfig()
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        cell = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.rnn = cell(
            _input_channels(spec, config.input_encoding), config.hidden, config.num_layers,
            batch_first=True, dropout=config.dropout if config.num_layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.proj = nn.Linear(config.hidden, self.head.num_params)

    def _shifted_inputs(self, x: Tensor) -> Tensor:
        """(N, D) -> (N, D, C): position d holds x_{d-1}; position 0 is all zeros (start)."""
        dtype = self.proj.weight.dtype
        h = _encoded_sequence(x, self.spec.num_levels, self.config.input_encoding, dtype)
        return F.pad(h, (0, 0, 1, 0))[:, :-1]

    def params(self, x: Tensor) -> Tensor:
        """θ_d(x_{<d}) for every position, shape (N, D, P) in raster order."""
        self.check_input(x)
        return self._params(x.reshape(x.shape[0], -1))

    def _params(self, x: Tensor) -> Tensor:
        """Flat integers (N, T) -> θ (N, T, P); θ_t depends on x_{<t} through the state."""
        out, _ = self.rnn(self._shifted_inputs(x))
        return self.proj(self.drop(out))

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral sampling with the recurrent state carried: D cell steps in all."""
        x = torch.zeros(n, self.spec.dim, dtype=torch.long, device=self.device)
        c = _input_channels(self.spec, self.config.input_encoding)
        inp = torch.zeros(n, 1, c, dtype=self.proj.weight.dtype, device=self.device)
        state = None
        for d in range(self.spec.dim):
            out, state = self.rnn(inp, state)
            x[:, d] = self.head.sample(self.proj(out), generator=generator)[:, 0]
            inp = _encoded_sequence(x[:, d : d + 1], self.spec.num_levels,
                                    self.config.input_encoding, inp.dtype)
        return _pad_after_end(x, self.spec).reshape(n, *self.spec.event_shape)


def _sample_by_position(model: "GenerativeModel", n: int, generator: torch.Generator | None) -> Tensor:
    """Ancestral sampling for models whose ``params`` scores all positions in one pass."""
    spec = model.spec
    x = torch.zeros(n, *spec.event_shape, dtype=torch.long, device=model.device)
    flat = x.view(n, -1)
    for d in range(spec.dim):
        theta = model.params(x)[:, d : d + 1]  # type: ignore[attr-defined]
        flat[:, d] = model.head.sample(theta, generator=generator)[:, 0]  # type: ignore[attr-defined]
    return x


@dataclass(frozen=True, kw_only=True)
class MADEConfig:
    """Configuration of :class:`MADE`.

    Attributes:
        hidden: width of each masked hidden layer.
        num_hidden: number of masked hidden layers (0 gives the FVSBN).
        dropout: dropout after each hidden activation.
        likelihood, num_components: the head, as in :class:`ARMConfig`.
        seed: seed of the hidden units' degrees (the connectivity).
    """

    hidden: int = 500
    num_hidden: int = 1
    dropout: float = 0.0
    likelihood: str = "auto"
    num_components: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.num_hidden < 0:
            raise ConfigError(f"hidden must be >= 1 and num_hidden >= 0, got {self.hidden}, "
                              f"{self.num_hidden}")
        _check_common(self)


@register_model("made", MADEConfig)
class MADE(AutoregressiveModel):
    r"""MADE: an MLP whose weights are masked so that output d sees inputs < d (Germain et al.
    2015; deck 004). One pass gives every θ_d; exact log p(x) = Σ_d log p(x_d | θ_d).

    With no hidden layer the network is a strictly lower-triangular linear map: the FVSBN
    (θ_d = b_d + Σ_{j<d} W_dj x_j, a logistic regression per pixel; Frey 1998).
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: MADEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or MADEConfig()
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        gen = torch.Generator().manual_seed(config.seed)
        self.net = made_network(spec.dim, self.head.num_params, config.hidden,
                                config.num_hidden, config.dropout, gen)

    def params(self, x: Tensor) -> Tensor:
        """θ_d(x_{<d}) for every position, shape (N, D, P) in raster order."""
        self.check_input(x)
        dtype = self.net[-1].weight.dtype
        h = _scaled_input(x.reshape(x.shape[0], -1), self.spec.num_levels, dtype)[:, 0]
        return self.net(h).reshape(x.shape[0], self.spec.dim, self.head.num_params)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral sampling: D passes of the masked network."""
        return _sample_by_position(self, n, generator)


@dataclass(frozen=True, kw_only=True)
class NADEConfig:
    """Configuration of :class:`NADE`: ``hidden`` units shared by all conditionals."""

    hidden: int = 500
    likelihood: str = "auto"
    num_components: int = 1

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError(f"hidden must be >= 1, got {self.hidden}")
        _check_common(self)


@register_model("nade", NADEConfig)
class NADE(AutoregressiveModel):
    r"""NADE (Larochelle & Murray 2011; deck 004): conditionals with tied weights,

        h_d = σ(c + W_{:, <d} x_{<d}),   θ_d = V_d h_d + b_d,

    so that all the a_d = c + W_{:, <d} x_{<d} come from one cumulative sum: O(DH) per example.
    """

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: NADEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or NADEConfig()
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        d, h, p = spec.dim, config.hidden, self.head.num_params
        self.W = nn.Parameter(torch.randn(d, h) / math.sqrt(d))
        self.c = nn.Parameter(torch.zeros(h))
        self.V = nn.Parameter(torch.randn(d, p, h) / math.sqrt(h))
        self.b = nn.Parameter(torch.zeros(d, p))

    def params(self, x: Tensor) -> Tensor:
        """θ_d(x_{<d}) for every position, shape (N, D, P) in raster order."""
        self.check_input(x)
        v = _scaled_input(x.reshape(x.shape[0], -1), self.spec.num_levels, self.W.dtype)[:, 0]
        contrib = v.unsqueeze(-1) * self.W  # (N, D, H)
        a = self.c + torch.cumsum(contrib, dim=1) - contrib  # exclusive: x_{<d} only
        return torch.einsum("ndh,dph->ndp", torch.sigmoid(a), self.V) + self.b

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral sampling, one position at a time."""
        return _sample_by_position(self, n, generator)
