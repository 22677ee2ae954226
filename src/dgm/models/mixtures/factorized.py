r"""The fully factorized model p(x) = Π_d p_d(x_d) (Book §2.4.1, Eq. 2.41).

Each coordinate gets its own categorical (discrete and binary data) or Gaussian (continuous
data). It is the floor every other model must beat: on 8x8 digits its test NLL is about 106.5
nats per image (``ANCHORS.md`` §1b). EVI, MAR and MAP are all linear time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.conditionals import AutoregressiveCursor, check_levels_alphabet
from dgm.core.distributions import log_categorical, log_normal_diag
from dgm.core.errors import CodecError, ConfigError
from dgm.core.heads import CategoricalHead
from dgm.core.registry import register_model
from dgm.core.spec import DataSpec

__all__ = ["FactorizedConfig", "Factorized"]


@dataclass(frozen=True, kw_only=True)
class FactorizedConfig:
    """``pseudocount``: add-α smoothing used by :meth:`Factorized.initialize_from_data`, which
    sets the maximum-likelihood (smoothed) parameters in closed form before any gradient step."""

    pseudocount: float = 1.0

    def __post_init__(self) -> None:
        if self.pseudocount < 0:
            raise ConfigError(f"pseudocount must be >= 0, got {self.pseudocount}")


@register_model("independent", FactorizedConfig)
class Factorized(GenerativeModel):
    """Independent per-coordinate categoricals or Gaussians: the floor of every benchmark.

    With an end token in the data spec, a sequence ends at its first end token: the positions
    after it are padding, neither scored nor counted (still normalized: p(x) = Π_{d <= L} p_d(x_d)
    sums to one over sequences that end at L = 1..D).
    """

    likelihood = Likelihood.EXACT

    def __init__(self, spec: DataSpec, config: FactorizedConfig) -> None:
        super().__init__(spec)
        self.config = config
        if spec.kind.is_discrete:
            self.logits = nn.Parameter(torch.zeros(spec.dim, spec.num_levels))
        else:
            self.mean = nn.Parameter(torch.zeros(spec.dim))
            self.log_var = nn.Parameter(torch.zeros(spec.dim))

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        flat = x.reshape(x.shape[0], -1)
        with torch.no_grad():
            if self.spec.kind.is_discrete:
                counts = torch.zeros_like(self.logits)
                scored = self.spec.scored_positions(flat).T.to(counts.dtype)  # padding: no count
                counts.scatter_add_(1, flat.T.long(), scored)
                self.logits.copy_(torch.log(counts + self.config.pseudocount + 1e-12))
            else:
                self.mean.copy_(flat.mean(0))
                self.log_var.copy_(torch.log(flat.var(0) + 1e-6))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self.check_input(x)
        flat = x.reshape(x.shape[0], -1)
        each = self._each(flat)
        if self.spec.kind.is_discrete and self.spec.end_token is not None:
            # padding after the end token is not scored
            each = torch.where(self.spec.scored_positions(flat), each, torch.zeros_like(each))
        return each.sum(1)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, y)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> AutoregressiveCursor:
        """Each coordinate under its own categorical (after an end token: padding, free), for
        lossless coding."""
        if not self.spec.kind.is_discrete:
            raise CodecError("a Gaussian density has no pmf to code with")
        check_levels_alphabet(alphabet, self.logits.shape[-1])
        return AutoregressiveCursor(lambda x: self.logits.expand(x.shape[0], -1, -1),
                                    CategoricalHead(self.logits.shape[-1]), rows,
                                    self.spec.event_shape, self.logits.device,
                                    self.spec.end_token)

    def _each(self, flat: Tensor) -> Tensor:
        if self.spec.kind.is_discrete:
            return log_categorical(flat, self.logits.expand(flat.shape[0], -1, -1))
        return log_normal_diag(flat, self.mean, self.log_var)

    def log_marginal(self, x: Tensor, observed: Tensor) -> Tensor:
        """log p(x_O) = Σ_{d∈O} log p_d(x_d), exact, (N,) (not for sequences with an end
        token, whose length is itself random)."""
        if self.spec.end_token is not None:
            raise ConfigError("marginals of sequences with an end token are not defined here")
        mask = self.spec.checked_mask(x, observed)
        flat = torch.where(mask, x.reshape(x.shape[0], -1), 0)
        return (self._each(flat) * mask).sum(1)

    @torch.no_grad()
    def sample_conditional(self, x: Tensor, observed: Tensor, *,
                           generator: torch.Generator | None = None) -> Tensor:
        """The unobserved coordinates drawn from their own marginals (they are independent)."""
        mask = self.spec.flat_mask(observed.to(x.device), x.shape[0])
        draws = self.sample(x.shape[0], generator=generator).to(x.device)
        return torch.where(mask.reshape(x.shape), x, draws.to(x.dtype))

    def mode(self) -> Tensor:
        """MAP: the per-coordinate argmax (exact for a factorized model), shape event_shape."""
        if self.spec.kind.is_discrete:
            return self.logits.argmax(-1).reshape(self.spec.event_shape)
        return self.mean.detach().reshape(self.spec.event_shape)

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        shape = (n, *self.spec.event_shape)
        if self.spec.kind.is_discrete:
            probs = torch.softmax(self.logits, -1)
            draws = torch.multinomial(probs, n, replacement=True, generator=generator).T.long()
            if self.spec.end_token is not None:  # the positions after the first end token: padding
                end = torch.full_like(draws, self.spec.end_token)
                draws = torch.where(self.spec.scored_positions(draws), draws, end)
            return draws.reshape(shape)
        eps = torch.randn(n, self.spec.dim, generator=generator, device=self.mean.device)
        return (self.mean + torch.exp(0.5 * self.log_var) * eps).reshape(shape)
