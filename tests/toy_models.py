"""Small models registered for the trainer tests (not part of the library)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.distributions import log_categorical
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec


@dataclass(frozen=True, kw_only=True)
class NoisyConfig:
    hidden: int = 16
    nan_at_call: int = -1  # the loss's "bad" term is NaN on this call of loss_terms (-1: never)
    nan_always: bool = False


@register_model("test_noisy", NoisyConfig)
class Noisy(GenerativeModel):
    """Per-pixel categorical from a tiny MLP of the image with dropout: uses the global RNG."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: NoisyConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.net = nn.Sequential(
            nn.Linear(spec.dim, config.hidden), nn.Tanh(), nn.Dropout(0.2),
            nn.Linear(config.hidden, spec.dim * spec.num_levels),
        )
        self.calls = 0
        self.poisoned = False

    def _logits(self, x: Tensor) -> Tensor:
        # The logits see a masked copy of x so that the "likelihood" stays a valid pmf per pixel:
        # they only depend on the mean intensity, which is fine for a test model.
        h = x.reshape(x.shape[0], -1).float().mean(1, keepdim=True).expand(-1, self.spec.dim)
        return self.net(h * 0 + 1).reshape(x.shape[0], self.spec.dim, self.spec.num_levels)

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        nll = -log_categorical(x.reshape(x.shape[0], -1), self._logits(x)).sum(1)
        bad = torch.zeros_like(nll)
        if self.training and self.poisoned:
            bad = bad + float("nan")
        return {"nll": nll, "bad": bad}

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.calls += 1  # training steps; the NaN stays on while the trainer diagnoses it
        self.poisoned = self.config.nan_always or self.calls == self.config.nan_at_call
        terms = self.loss_terms(x, y)
        return terms["nll"] + terms["bad"]

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        return -self.loss_terms(x, y)["nll"]

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        logits = self._logits(torch.zeros(n, *self.spec.event_shape, dtype=torch.long))
        probs = torch.softmax(logits, -1).reshape(-1, self.spec.num_levels)
        return torch.multinomial(probs, 1, generator=generator).reshape(n, *self.spec.event_shape)


@dataclass(frozen=True, kw_only=True)
class LogNormalBoundConfig:
    sigma: float = 1.0  # spread of the log importance weights


@register_model("test_bound", LogNormalBoundConfig)
class LogNormalBound(GenerativeModel):
    """A lower-bound model whose importance weights are w = p(x) r, log r ~ N(-σ²/2, σ²).

    E[r] = 1, so IWAE(k) -> log p(x) as k grows, while the ELBO is log p(x) - σ²/2: a known
    answer for the evaluator. p(x) is an independent uniform pmf over the levels.
    """

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: LogNormalBoundConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.dummy = nn.Parameter(torch.zeros(()))

    def exact_log_prob(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), -self.spec.dim * math.log(self.spec.num_levels), dtype=torch.float64)

    def log_weights(
        self, x: Tensor, k: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        self.check_input(x)
        s = self.config.sigma
        eps = torch.randn(k, x.shape[0], generator=generator, dtype=torch.float64)
        return self.exact_log_prob(x) + s * eps - 0.5 * s * s + 0 * self.dummy

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.log_weights(x, 1)[0]

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, y)

    def sample(self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.spec.num_levels, (n, *self.spec.event_shape), generator=generator)


@register_model("test_vlb", LogNormalBoundConfig)
class NoisyBound(GenerativeModel):
    """A lower bound that is not importance-weighted (like a diffusion VLB): log p(x) - σ²/2 + σ ε
    per call, with ε ~ N(0, 1); its mean is log p(x) - σ²/2 whatever the number of draws."""

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: LogNormalBoundConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.dummy = nn.Parameter(torch.zeros(()))

    def bound_name(self) -> str:
        return "test VLB"

    def exact_log_prob(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0],), -self.spec.dim * math.log(self.spec.num_levels),
                          dtype=torch.float64)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        s = self.config.sigma
        eps = torch.randn(x.shape[0], dtype=torch.float64)
        return self.exact_log_prob(x) - 0.5 * s * s + s * eps + 0 * self.dummy

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, y)

    def sample(self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        return torch.randint(0, self.spec.num_levels, (n, *self.spec.event_shape), generator=generator)


@register_model("test_estimate", LogNormalBoundConfig)
class NoisyEstimate(NoisyBound):
    """An unbiased estimate of log p(x) with a known standard error σ per example."""

    likelihood = Likelihood.ESTIMATE

    def log_prob_estimate(self, x: Tensor, y: Tensor | None = None, *, generator=None):
        from dgm.core.capabilities import LikelihoodEstimate

        s = self.config.sigma
        eps = torch.randn(x.shape[0], dtype=torch.float64, generator=generator)
        return LikelihoodEstimate(self.exact_log_prob(x) + s * eps,
                                  torch.full((x.shape[0],), s, dtype=torch.float64))
