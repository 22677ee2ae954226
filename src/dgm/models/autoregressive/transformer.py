r"""Transformer autoregressive models: the transformer ARM (Book §3.3) and teenyGPT (Book §11.2.4).

An event is a sequence x_1..x_D (an image in raster order, a SMILES string, a block of text) and

    p(x) = Π_{d=1}^{D} p(x_d | θ_d(x_{<d})),       x_{<1} = ∅,

exactly, as for every ARM (Eq. 3.4). The network reads [s, x_1, ..., x_{D-1}], where s is a
learned start vector (the book's BOS/"cls" token), adds learned position embeddings, runs
causal transformer blocks (:mod:`dgm.core.attention`) and maps position d's output to θ_d for
the likelihood head: categorical over the levels or the vocabulary, Bernoulli for binary
images, or a discretized logistic mixture. Training minimizes -log p(x), the shifted next-token
loss of the book's listings summed over positions; with an end token in the data spec, padding
after a sequence's end is not scored (the book's listing scores it, pitfall 5 of §11.2.4).

Sampling runs one position at a time. With the key/value cache (default) each new token costs
one row of attention per layer instead of a pass over the whole prefix. Generation past the
``D`` positions the model was trained on keeps a window: when the context is full, the oldest
tokens are dropped and the model restarts from [s, last D/2 tokens], with or without the cache,
so the two give the same tokens for the same seed.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §3.3.2 (Listings 3.4-3.6), §11.2.4 (11.1-11.3).
    Vaswani et al., Attention Is All You Need, 2017; Radford et al., GPT-2, 2019.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from dgm.core.attention import KVCache, TransformerBlock
from dgm.core.conditionals import AutoregressiveCursor, check_levels_alphabet
from dgm.core.errors import ConfigError
from dgm.core.heads import LIKELIHOODS, CategoricalHead, likelihood_head
from dgm.core.registry import register_model
from dgm.core.sampling import Sampling, draw_from_head
from dgm.core.spec import DataKind, DataSpec
from dgm.models.autoregressive.arm import AutoregressiveModel

__all__ = ["TransformerARMConfig", "TransformerARM", "GPTConfig", "GPT"]


@dataclass
class TransformerARMConfig:
    """Hyperparameters of the transformer ARM.

    Args:
        hidden: embedding width D (the book's ``num_emb``).
        num_layers: number of transformer blocks (``num_blocks``).
        num_heads: attention heads; must divide ``hidden``.
        mlp_ratio: MLP hidden width as a multiple of ``hidden`` (the book's ``num_neurons``).
        dropout: on the embedded input, attention weights and sublayer outputs (the book drops
            only the embedded input).
        norm: "pre" (LayerNorm before each sublayer, GPT-2) or "post" (after, the book's block).
        likelihood: "auto" (categorical; Bernoulli for binary data), "categorical", "bernoulli"
            or "discretized_logistic".
        num_components: mixture components of the discretized logistic.
        tie_embeddings: share the token embedding with the output layer (categorical only).
    """

    RENAMED: ClassVar[dict[str, str]] = {"width": "hidden"}  # old key -> new key

    hidden: int = 128
    num_layers: int = 4
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    norm: str = "pre"
    likelihood: str = "auto"
    num_components: int = 1
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        if self.hidden < 1 or self.num_layers < 1 or self.num_heads < 1 or self.mlp_ratio < 1:
            raise ConfigError("model: hidden, num_layers, num_heads and mlp_ratio must be >= 1")
        if self.hidden % self.num_heads:
            raise ConfigError(
                f"model.num_heads ({self.num_heads}) must divide model.hidden ({self.hidden})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.norm not in ("pre", "post"):
            raise ConfigError(f"model.norm must be 'pre' or 'post', got {self.norm!r}")
        if self.likelihood not in LIKELIHOODS or self.likelihood == "gaussian":
            raise ConfigError(
                "model.likelihood must be auto, categorical, bernoulli or discretized_logistic, "
                f"got {self.likelihood!r}"
            )
        if self.num_components < 1:
            raise ConfigError(f"model.num_components must be >= 1, got {self.num_components}")


@register_model("transformer", TransformerARMConfig)
class TransformerARM(AutoregressiveModel):
    """Transformer ARM: causal self-attention over a start token and the flattened event."""

    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.TOKENS})
    sample_options = frozenset({"temperature", "top_k", "top_p", "use_cache"})

    def __init__(self, spec: DataSpec, config: TransformerARMConfig | None = None) -> None:
        super().__init__(spec)
        config = config or TransformerARMConfig()
        self.config = config
        assert spec.num_levels is not None
        self.max_length = spec.dim
        width = config.hidden
        self.token_embedding = nn.Embedding(spec.num_levels, width)
        self.start = nn.Parameter(torch.zeros(width))
        self.position_embedding = nn.Embedding(self.max_length, width)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(
                width, config.num_heads, mlp_ratio=config.mlp_ratio, dropout=config.dropout,
                norm=config.norm,  # type: ignore[arg-type]
            )
            for _ in range(config.num_layers)
        )
        self.final_norm = nn.LayerNorm(width) if config.norm == "pre" else nn.Identity()
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        self.to_params = nn.Linear(width, self.head.num_params)
        self.apply(_init_weights)
        nn.init.normal_(self.start, std=0.02)
        if config.tie_embeddings:
            if not isinstance(self.head, CategoricalHead):
                raise ConfigError("model.tie_embeddings needs the categorical likelihood")
            self.to_params.weight = self.token_embedding.weight

    # -- the network ------------------------------------------------------------------------

    def _embed(self, tokens: Tensor, *, with_start: bool, offset: int) -> Tensor:
        """Token (+ start) and position embeddings of positions offset, offset + 1, ..."""
        h = self.token_embedding(tokens.long())  # narrow integer data (uint8) too
        if with_start:
            h = torch.cat([self.start.expand(tokens.shape[0], 1, -1), h], dim=1)
        positions = torch.arange(offset, offset + h.shape[1], device=h.device)
        return self.drop(h + self.position_embedding(positions))

    def _run(self, h: Tensor, cache: KVCache | None = None) -> Tensor:
        for layer, block in enumerate(self.blocks):
            h = block(h, cache, layer)
        return self.to_params(self.final_norm(h))

    def params(self, x: Tensor) -> Tensor:
        r"""θ_d for d = 1..D from [s, x_1, ..., x_{D-1}], shape (N, D, P); θ_d sees x_{<d} only."""
        self.check_input(x)
        flat = x.reshape(x.shape[0], -1)
        return self._run(self._embed(flat[:, :-1], with_start=True, offset=0))

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Output bias = the pooled marginal of all positions, so training starts at that fit."""
        pooled = self.head.marginal_params(x.reshape(-1, 1).to(self.device))  # (1, P)
        with torch.no_grad():
            self.to_params.bias.copy_(pooled[0].to(self.to_params.bias.dtype))

    def new_cache(self, batch: int) -> KVCache:
        """An empty key/value cache for ``batch`` sequences of up to ``max_length`` positions."""
        ref = self.to_params.weight
        return KVCache(
            len(self.blocks), batch, self.config.num_heads, self.max_length,
            self.config.hidden // self.config.num_heads, device=ref.device, dtype=ref.dtype,
        )

    def coding_cursor(self, rows: int, alphabet: Tensor) -> AutoregressiveCursor:
        """p(x_d | x_{<d}) token by token with the key/value cache (one new token per step,
        as in generation), for lossless coding."""
        check_levels_alphabet(alphabet, int(self.spec.num_levels or 2))
        return _CachedCursor(self, rows)

    # -- sampling ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prefix: Tensor,
        steps: int,
        *,
        sampling: Sampling | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
        stop_at_end: bool = True,
    ) -> Tensor:
        r"""Continue each row of ``prefix`` (N, T0) by ``steps`` tokens: x_t ~ p(x_t | x_{<t}).

        Args:
            prefix: long tensor of tokens (T0 may be 0: start from the start token alone).
            steps: number of new tokens.
            sampling: temperature / greedy / top-k / top-p (default: the model's own p).
            generator: source of randomness, on the model's device.
            use_cache: reuse keys and values of earlier positions (same tokens, much faster).
            stop_at_end: with an end token in the spec, a finished row repeats the end token
                and generation stops once every row has finished.

        Returns:
            (N, T0 + steps) long: the prefix followed by the new tokens.

        Call ``model.eval()`` first if the model has dropout.
        """
        sampling = sampling or Sampling()
        if steps < 0:
            raise ConfigError(f"steps must be >= 0, got {steps}")
        if prefix.dim() != 2:
            raise ConfigError(f"prefix must have shape (N, T0), got {tuple(prefix.shape)}")
        seq = prefix.to(device=self.device, dtype=torch.long)
        n, end = seq.shape[0], self.spec.end_token if stop_at_end else None
        finished = torch.zeros(n, dtype=torch.bool, device=seq.device)
        if end is not None and seq.shape[1]:
            finished = (seq == end).any(dim=1)
        window, cache = 0, None
        for step in range(steps):
            if seq.shape[1] - window + 1 > self.max_length:
                # The context no longer fits: keep the most recent tokens and start afresh.
                keep = self.max_length - 1 if step == 0 else max(1, self.max_length // 2)
                window, cache = seq.shape[1] - keep, None
            if cache is not None:
                h = self._embed(seq[:, -1:], with_start=False, offset=cache.length)
                theta = self._run(h, cache)[:, -1]
                cache.advance(1)
            else:
                context = seq[:, window:]
                cache = self.new_cache(n) if use_cache else None
                theta = self._run(self._embed(context, with_start=True, offset=0), cache)[:, -1]
                if cache is not None:
                    cache.advance(context.shape[1] + 1)
            theta = theta.unsqueeze(1)
            token = draw_from_head(self.head, theta, sampling, generator=generator)[:, 0]
            if end is not None:
                token = torch.where(finished, torch.full_like(token, end), token)
                finished |= token == end
            seq = torch.cat([seq, token.unsqueeze(1)], dim=1)
            if end is not None and bool(finished.all()):
                pad = torch.full((n, steps - step - 1), end, dtype=seq.dtype, device=seq.device)
                return torch.cat([seq, pad], dim=1)
        return seq

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """``n`` events, shape (n, *event_shape), long; temperature/top-k/top-p as in
        :class:`~dgm.core.sampling.Sampling` (the model's own distribution by default)."""
        if y is not None:
            raise ConfigError(f"{type(self).__name__} is unconditional: sample() takes no labels y")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        sampling = Sampling(temperature, top_k, top_p)
        prefix = torch.zeros(n, 0, dtype=torch.long, device=self.device)
        seq = self.generate(
            prefix, self.spec.dim, sampling=sampling, generator=generator, use_cache=use_cache
        )
        return seq.reshape(n, *self.spec.event_shape)


class _CachedCursor(AutoregressiveCursor):
    """The transformer's conditionals through its cache: step d feeds token d-1 only."""

    def __init__(self, model: TransformerARM, rows: int) -> None:
        super().__init__(model.params, model.head, rows, model.spec.event_shape, model.device,
                         model.spec.end_token)
        self._model, self._cache = model, model.new_cache(rows)

    def log_pmf(self) -> Tensor:
        model, d, cache = self._model, self._d, self._cache
        flat = self.x.view(self.x.shape[0], -1)
        if d == 0:
            h = model._embed(flat[:, :0], with_start=True, offset=0)
        else:
            h = model._embed(flat[:, d - 1:d], with_start=False, offset=cache.length)
        theta = model._run(h, cache)[:, -1:]
        cache.advance(h.shape[1])
        return self._pmf_from(theta)


def _init_weights(module: nn.Module) -> None:
    """GPT-2's initialization: N(0, 0.02²) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)


@dataclass
class GPTConfig(TransformerARMConfig):
    """teenyGPT's hyperparameters (Book §11.2.4), sized for text on a CPU: a categorical over
    the vocabulary with the output layer tied to the token embedding."""

    hidden: int = 128
    num_layers: int = 4
    num_heads: int = 4
    dropout: float = 0.1
    tie_embeddings: bool = True


@register_model("gpt", GPTConfig)
class GPT(TransformerARM):
    """teenyGPT: a decoder-only transformer language model over tokens (Book §11.2.4)."""

    data_kinds = frozenset({DataKind.TOKENS})
