r"""How the next token is drawn from a categorical p(x_t | x_{<t}): temperature, greedy, top-k, top-p.

The book samples ancestrally with a temperature T (Book §11.2.4): softmax(logits / T). As
T -> 0 this becomes greedy decoding (argmax); T = 1 is the model's own distribution, the only
setting under which samples follow the model (every likelihood the library reports is at T = 1).
Two truncations, not in the book, are standard for language models:

- top-k (Fan et al., 2018): keep the k most probable tokens, renormalize;
- top-p, nucleus sampling (Holtzman et al., 2020): keep the smallest set of most probable tokens
  whose probability reaches p, renormalize.

Truncations are applied to the temperature-scaled distribution, top-k first, then top-p.
:func:`draw_from_head` applies the same options to any likelihood head of an ARM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.errors import ConfigError
from dgm.core.heads import BernoulliHead, CategoricalHead, DiscretizedLogisticHead, LikelihoodHead

__all__ = ["Sampling", "truncate_logits", "draw_token", "draw_from_head", "draw_categorical"]


@dataclass(frozen=True)
class Sampling:
    """How to draw each token.

    Args:
        temperature: T >= 0 divides the logits; 0 means greedy (always the most probable token).
        top_k: keep only the k most probable tokens (None: all).
        top_p: keep the smallest most-probable set whose mass reaches p, 0 < p <= 1 (None: all).
    """

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not self.temperature >= 0.0:
            raise ConfigError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def is_plain(self) -> bool:
        """True when draws follow the model's own distribution (T = 1, no truncation)."""
        return self.temperature == 1.0 and self.top_k is None and self.top_p is None


def truncate_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Set the logits of tokens outside the top-k / top-p set to -inf, shape unchanged (..., V).

    The most probable token always survives, so no row is left empty.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Mass of the tokens strictly more probable than each one: a token is kept while the
        # mass before it is still short of p (so the first one is always kept).
        before = torch.cumsum(probs, dim=-1) - probs
        drop_sorted = before >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def draw_categorical(log_p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One exact draw per row of the categorical with (unnormalized) log-probabilities
    log_p (..., L) -> (...) long, by inverting the CDF. Runs on log_p's device with a generator
    on either device (the uniforms are drawn on the generator's)."""
    gen_device = generator.device if generator is not None else log_p.device
    u = torch.rand(*log_p.shape[:-1], 1, generator=generator, device=gen_device,
                   dtype=log_p.dtype if log_p.is_floating_point() else None)
    cdf = torch.softmax(log_p, -1).cumsum(-1).contiguous()
    return torch.searchsorted(cdf, u.to(log_p.device)).squeeze(-1).clamp_max(log_p.shape[-1] - 1)


def draw_token(
    logits: Tensor, sampling: Sampling, *, generator: torch.Generator | None = None
) -> Tensor:
    """One token per row of ``logits`` (N, V) under ``sampling``, shape (N,), long."""
    if sampling.greedy:
        return logits.argmax(dim=-1)
    scaled = truncate_logits(logits / sampling.temperature, sampling.top_k, sampling.top_p)
    dtype = torch.float64 if scaled.dtype == torch.float64 else torch.float32
    probs = torch.softmax(scaled, dim=-1, dtype=dtype)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def draw_from_head(
    head: LikelihoodHead,
    params: Tensor,
    sampling: Sampling,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x ~ p(x | θ) under ``sampling`` for θ of shape (N, D, P); returns (N, D).

    Greedy takes the head's mode. A categorical head takes every option; a Bernoulli head
    divides its logit by T; a discretized logistic (mixture) divides its mixture logits by T and
    multiplies its scales by T. Top-k and top-p need a categorical head.
    """
    if sampling.greedy:
        return head.mode(params)
    if isinstance(head, CategoricalHead):
        flat = draw_token(params.reshape(-1, params.shape[-1]), sampling, generator=generator)
        return flat.reshape(params.shape[:-1])
    if sampling.top_k is not None or sampling.top_p is not None:
        raise ConfigError("top_k and top_p need the categorical likelihood")
    t = sampling.temperature
    if t != 1.0:
        if isinstance(head, BernoulliHead):
            params = params / t
        elif isinstance(head, DiscretizedLogisticHead):
            log_t = math.log(t)
            if head.num_components == 1:
                params = torch.stack([params[..., 0], params[..., 1] + log_t], dim=-1)
            else:
                logits, a, b = params.chunk(3, dim=-1)
                params = torch.cat([logits / t, a, b + log_t], dim=-1)
        else:
            raise ConfigError(f"{type(head).__name__} takes no temperature other than 0 or 1")
    return head.sample(params, generator=generator)
