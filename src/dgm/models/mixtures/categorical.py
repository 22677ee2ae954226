r"""Mixtures of independent categoricals over the data's own levels (Book §2.3), fitted by EM or
by gradients: the one-layer probabilistic circuit.

The model is

    P(x) = Σ_k π_k Π_d θ_kd(x_d),      log P(x) = LSE_k [log π_k + Σ_d log θ_kd(x_d)]

on discrete data with L levels per coordinate: an exact pmf (it sums to 1 over {0..L-1}^D). On
binary data (L = 2) it is the mixture of Bernoullis. π = softmax(weight_logits) and
θ_kd = softmax(theta_logits_kd) over the L levels.

EM (Dempster et al. 1977; Bishop 2006, §9.3.3) alternates responsibilities
r_nk = π_k Π_d θ_kd(x_nd) / P(x_n) (in log space) and the M-step of the posterior mode under a
symmetric Dirichlet prior with ``pseudo_count`` α added to every count:
π_k ∝ N_k + α, θ_kdl ∝ Σ_n r_nk [x_nd = l] + α. With α > 0 no level of any component gets
probability 0, so a test image with a level unseen in training keeps a finite NLL; each EM step
never lowers the training log-likelihood plus the log prior. The gradient fit minimizes the NLL
alone (no prior).

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §2.3.
    Bishop, Pattern Recognition and Machine Learning, 2006, §9.3.3 (mixtures of Bernoullis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.conditionals import MixtureCursor, check_levels_alphabet
from dgm.core.errors import ConfigError
from dgm.core.fitting import EMFit, GradientFit, em_statistics_begun
from dgm.core.registry import register_model
from dgm.core.sampling import draw_categorical
from dgm.core.spec import DataKind, DataSpec

__all__ = ["CategoricalMixtureConfig", "CategoricalMixture"]

_FITS = {"gradient": GradientFit(), "em": EMFit()}


@dataclass(frozen=True, kw_only=True)
class CategoricalMixtureConfig:
    """Configuration of :class:`CategoricalMixture`.

    Args:
        num_components: K.
        fit: ``em`` (closed-form M-steps through the trainer's EM rule) or ``gradient``.
        pseudo_count: α, the Dirichlet pseudo-count of every level and component in EM's M-step
            (ANCHORS.md's mixture of 40 categoricals uses 0.5).
        init_from_data: start EM from random responsibilities on the training data (an M-step
            on them); otherwise from random logits.
    """

    num_components: int = 40
    fit: Literal["em", "gradient"] = "em"
    pseudo_count: float = 0.5
    init_from_data: bool = True

    def __post_init__(self) -> None:
        if self.num_components < 1:
            raise ConfigError(f"num_components must be >= 1, got {self.num_components}")
        if self.fit not in _FITS:
            raise ConfigError(f"fit must be one of {', '.join(_FITS)}, got {self.fit!r}")
        if self.pseudo_count < 0:
            raise ConfigError(f"pseudo_count must be >= 0, got {self.pseudo_count}")


@register_model("categorical_mixture", CategoricalMixtureConfig)
class CategoricalMixture(GenerativeModel):
    r"""P(x) = Σ_k π_k Π_d θ_kd(x_d): a mixture of independent categoricals (of Bernoullis on
    binary data), exact.

    Args:
        spec: a discrete or binary data spec.
        config: a :class:`CategoricalMixtureConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((3,), DataKind.DISCRETE, num_levels=4)
        >>> model = CategoricalMixture(spec, CategoricalMixtureConfig(num_components=2))
        >>> model.log_prob(torch.zeros(5, 3, dtype=torch.long)).shape
        torch.Size([5])
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: CategoricalMixtureConfig | None = None) -> None:
        super().__init__(spec)
        config = CategoricalMixtureConfig() if config is None else config
        self.config = config
        self.fit = _FITS[config.fit]
        k, d, levels = config.num_components, spec.dim, spec.num_levels
        self.weight_logits = nn.Parameter(torch.zeros(k))
        self.theta_logits = nn.Parameter(torch.randn(k, d, levels) * 0.1)
        self._em_stats: list[Tensor] | None = None

    @property
    def log_weights(self) -> Tensor:
        """log π, (K,)."""
        return F.log_softmax(self.weight_logits, -1)

    @property
    def log_theta(self) -> Tensor:
        """log θ, (K, D, L), normalized over the levels."""
        return F.log_softmax(self.theta_logits, -1)

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1).long()

    def component_log_prob(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """log Π_{d observed} θ_kd(x_d) for every component: (N, *event) -> (N, K); ``mask``
        (N, D) bool leaves out the unobserved coordinates (all observed without it)."""
        v = self._flat(x)  # (N, D)
        if mask is not None:
            v = v.masked_fill(~mask, 0)
        table = self.log_theta.permute(1, 2, 0)  # (D, L, K)
        picked = table[torch.arange(v.shape[1], device=v.device), v]  # (N, D, K)
        if mask is not None:
            picked = picked * mask.unsqueeze(-1)
        return picked.sum(1)

    def log_marginal(self, x: Tensor, observed: Tensor) -> Tensor:
        """log P(x_O) = LSE_k [log π_k + Σ_{d∈O} log θ_kd(x_d)], exact, (N,)."""
        mask = self.spec.checked_mask(x, observed)
        return torch.logsumexp(self.log_weights + self.component_log_prob(x, mask), -1)

    @torch.no_grad()
    def sample_conditional(self, x: Tensor, observed: Tensor, *,
                           generator: torch.Generator | None = None) -> Tensor:
        """x_U ~ P(x_U | x_O): k from its posterior given x_O, then x_U ~ Π θ_k; exact."""
        mask = self.spec.checked_mask(x, observed)
        k = draw_categorical(self.log_weights + self.component_log_prob(x, mask), generator)
        draws = draw_categorical(self.log_theta[k], generator)  # (N, D)
        return torch.where(mask, self._flat(x), draws).reshape(x.shape)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log P(x), (N,), exact, in nats; labels ``y`` are ignored."""
        self.check_input(x)
        return torch.logsumexp(self.log_weights + self.component_log_prob(x), -1)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log P(x), (N,)."""
        return -self.log_prob(x, y)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> MixtureCursor:
        """p(x_d | x_{<d}) coordinate by coordinate, for lossless coding."""
        check_levels_alphabet(alphabet, self.theta_logits.shape[-1])
        return MixtureCursor(self.log_weights, self.log_theta, rows)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Ancestral sampling, exact: k ~ Cat(π), then x_d ~ Cat(θ_kd). (n, *event) long."""
        if y is not None:
            raise ConfigError("categorical_mixture is unconditional: sample() takes no labels")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        k = draw_categorical(self.log_weights.detach().expand(n, -1), generator)
        v = draw_categorical(self.log_theta.detach()[k], generator)  # (n, D)
        return v.reshape(n, *self.spec.event_shape)

    @torch.no_grad()
    def fit_em(self, x: Tensor, iterations: int, *,
               generator: torch.Generator | None = None) -> "CategoricalMixture":
        """Fit to the whole of x by ``iterations`` full-batch EM steps outside the trainer
        (from random responsibilities when ``init_from_data``); returns self."""
        gen = generator if generator is not None else torch.Generator().manual_seed(0)
        self.initialize_from_data(x, gen)
        for _ in range(iterations):
            self.em_begin()
            self.em_accumulate(x)
            self.em_maximize()
        return self

    # -- EM ------------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """One M-step on random responsibilities of the training data (breaks the symmetry
        between components with data-shaped θ)."""
        if not self.config.init_from_data:
            return
        self.check_input(x)
        r = torch.rand(x.shape[0], self.config.num_components, generator=generator,
                       device=generator.device) + 0.1
        self.em_begin()
        self._accumulate(self._flat(x).to(self.weight_logits.device),
                         (r / r.sum(1, keepdim=True)).to(self.weight_logits.device))
        self.em_maximize()

    def em_begin(self) -> None:
        """Reset the statistics Σ_n r_nk (K,) and Σ_n r_nk [x_nd = l] (K, D, L)."""
        k, d, levels = self.theta_logits.shape
        opts = {"dtype": torch.float64, "device": self.theta_logits.device}
        self._em_stats = [torch.zeros(k, **opts), torch.zeros(k, d, levels, **opts)]

    def _accumulate(self, v: Tensor, r: Tensor) -> None:
        s0, s1 = em_statistics_begun(self._em_stats, "em_accumulate")
        k, d, levels = s1.shape
        r = r.to(s0.dtype)
        s0 += r.sum(0)
        index = (torch.arange(d, device=v.device) * levels + v).reshape(-1)  # (N D,)
        values = r.T.unsqueeze(2).expand(k, v.shape[0], d).reshape(k, -1)  # (K, N D)
        s1.view(k, d * levels).index_add_(1, index, values)

    @torch.no_grad()
    def em_accumulate(self, x: Tensor) -> Tensor:
        """E-step on a batch; returns its log-likelihoods under the current parameters (N,)."""
        self.check_input(x)
        joint = self.log_weights + self.component_log_prob(x)  # (N, K)
        log_p = torch.logsumexp(joint, -1)
        self._accumulate(self._flat(x), torch.exp(joint - log_p.unsqueeze(-1)))
        return log_p

    def em_statistics(self) -> list[Tensor]:
        """The accumulators themselves (summed in place across processes by the trainer)."""
        return em_statistics_begun(self._em_stats, "em_statistics")

    @torch.no_grad()
    def em_maximize(self) -> None:
        """M-step: the posterior mode under the symmetric Dirichlet(α + 1) prior."""
        s0, s1 = em_statistics_begun(self._em_stats, "em_maximize")
        a = self.config.pseudo_count
        tiny = torch.finfo(s0.dtype).tiny
        weights = (s0 + a).clamp_min(tiny)
        counts = (s1 + a).clamp_min(tiny)
        self.weight_logits.copy_(torch.log(weights / weights.sum()).to(self.weight_logits))
        self.theta_logits.copy_(torch.log(counts / counts.sum(-1, keepdim=True))
                                .to(self.theta_logits))
