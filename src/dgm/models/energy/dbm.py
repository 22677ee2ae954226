r"""A two-layer deep Boltzmann machine (deck 004; Salakhutdinov & Hinton 2009), scored by AIS.

Visible units v (Bernoulli or categorical, level 0 the reference as in ``rbm``), hidden layers
h¹ ∈ {0, 1}^{H1} and h² ∈ {0, 1}^{H2}, all connections undirected:

    E(v, h¹, h²) = -Σ_i [v_i > 0](b_{i, v_i} + W¹_{i, v_i} · h¹) - c¹·h¹ - h¹ᵀ W² h² - c²·h².

h¹ is conditionally independent given (v, h²) and can be summed out:

    F(v, h²) = -b(v) - c²·h² - Σ_j softplus(c¹_j + Σ_i W¹_{i, v_i, j} + (W² h²)_j),

and with a small top layer (H2 <= ``exact_max_top``) h² too is summed exactly, by enumerating
its 2^{H2} states: F(v) = -logsumexp_{h²} -F(v, h²). That makes the positive phase of learning
exact; the negative phase is persistent chains over (v, h¹, h²) by the layer-wise block Gibbs
sweep h¹ | v, h² then (v, h²) | h¹, and the loss F(x) - mean F(v⁻, h²⁻) has the likelihood's
gradient in expectation (:mod:`dgm.models.energy.contrastive`). log Z is estimated by AIS over
(v, h²) with h¹ summed out, from the independent model with the data's base rates (h¹, h²
uniform) through log f_β(v, h²) = (1 - β) a(v) + β (b(v) + c²·h²) + Σ_j softplus(β field_j).
The likelihood is ``Likelihood.ESTIMATE``: -F(x) - log Ẑ with log Ẑ's standard error.
Salakhutdinov & Hinton's mean-field positive phase and layer-wise pre-training are not needed
when the top layer can be enumerated, and are not implemented.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.ais import AISResult, ais_temperatures, annealed_importance_sampling
from dgm.core.base import Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.energy.contrastive import ContrastiveDivergence
from dgm.models.energy.rbm import level_indicators

__all__ = ["DBMConfig", "DeepBoltzmannMachine"]


@dataclass(frozen=True, kw_only=True)
class DBMConfig:
    """Args:
        hidden: (H1, H2), the two hidden layers; H2 <= ``exact_max_top``.
        cd_k, persistent, chains, init_std, sample_steps, ais_chains, ais_temperatures: as for
            ``rbm``.
        exact_max_top: the largest H2 whose 2^{H2} states are summed in F(v).
    """

    hidden: tuple[int, int] = (100, 10)
    cd_k: int = 1
    persistent: bool = True
    chains: int = 100
    init_std: float = 0.01
    sample_steps: int = 1000
    ais_chains: int = 100
    ais_temperatures: int = 10000
    exact_max_top: int = 14

    def __post_init__(self) -> None:
        if min(*self.hidden, self.cd_k, self.chains, self.sample_steps, self.ais_chains) < 1:
            raise ConfigError("model.hidden, cd_k, chains, sample_steps and ais_chains must be "
                              ">= 1")
        if not 1 <= self.exact_max_top <= 18 or self.hidden[1] > self.exact_max_top:
            raise ConfigError(f"model.hidden[1] = {self.hidden[1]} must be at most "
                              f"exact_max_top = {self.exact_max_top} (<= 18): F(v) sums its "
                              "states")
        if self.ais_temperatures < 3 or self.init_std <= 0:
            raise ConfigError("model.ais_temperatures must be >= 3 and init_std > 0")


@register_model("dbm", DBMConfig)
class DeepBoltzmannMachine(ContrastiveDivergence):
    """A two-hidden-layer DBM with an exact positive phase, PCD, and an AIS likelihood."""

    likelihood = Likelihood.ESTIMATE
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: DBMConfig) -> None:
        super().__init__(spec, cd_k=config.cd_k, persistent=config.persistent,
                         sample_steps=config.sample_steps)
        self.levels = int(spec.num_levels)
        self.top = config.hidden[1]
        self.config = config
        d, (h1, h2) = spec.dim, config.hidden
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d, self.levels - 1, h1, generator=gen)
                                   * config.init_std)
        self.top_weight = nn.Parameter(torch.randn(h1, h2, generator=gen) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(d, self.levels - 1))
        self.hidden_bias = nn.Parameter(torch.zeros(h1))
        self.top_bias = nn.Parameter(torch.zeros(h2))
        self.register_buffer("base_logits", torch.zeros(d, self.levels - 1))
        bits = torch.arange(h2)
        self.register_buffer("_top_states", ((torch.arange(2**h2)[:, None] >> bits) & 1).float(),
                             persistent=False)
        self.init_chains(config.chains)

    # --- chain states are [v, h²] --------------------------------------------------------------

    def random_visible(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = generator.device if generator is not None else None
        v = torch.randint(self.levels, (n, self.spec.dim), generator=generator, device=device)
        h2 = torch.randint(2, (n, self.top), generator=generator, device=device)
        return torch.cat([v, h2], 1)

    def _split(self, state: Tensor) -> tuple[Tensor, Tensor]:
        return state[:, : self.spec.dim], state[:, self.spec.dim :].to(self.top_weight.dtype)

    def _visible_terms(self, v: Tensor) -> tuple[Tensor, Tensor]:
        """(b(v), Σ_i W¹_{i, v_i}) for flat levels v: (N,), (N, H1)."""
        one_hot = level_indicators(v, self.levels, self.weight.dtype)
        return ((one_hot * self.visible_bias).sum((1, 2)),
                torch.einsum("ndk,dkh->nh", one_hot, self.weight))

    def _joint_free_energy(self, bias: Tensor, up: Tensor, h2: Tensor, beta: float = 1.0) -> Tensor:
        field = self.hidden_bias + up + h2 @ self.top_weight.T
        return -beta * (bias + h2 @ self.top_bias) - F.softplus(beta * field).sum(-1)

    def chain_energy(self, state: Tensor) -> Tensor:
        """F(v, h²) with h¹ summed out (module docstring)."""
        v, h2 = self._split(state)
        bias, up = self._visible_terms(v)
        return self._joint_free_energy(bias, up, h2)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -logsumexp_{h²} -F(v, h²), exact over the 2^{H2} top states, (N,)."""
        bias, up = self._visible_terms(v)
        states = self._top_states.to(up.dtype)  # (S, H2)
        joint = self._joint_free_energy(bias[:, None], up[:, None, :], states[None])  # (N, S)
        return -torch.logsumexp(-joint, 1)

    def gibbs(self, state: Tensor, steps: int, generator: torch.Generator | None = None,
              beta: float = 1.0) -> Tensor:
        """Sweeps h¹ | v, h², then v | h¹ and h² | h¹ (at inverse temperature β for AIS,
        with the base rates taking the rest of the visible field)."""
        v, h2 = self._split(state)
        n = v.shape[0]
        with torch.no_grad():
            for _ in range(steps):
                _, up = self._visible_terms(v)
                field = self.hidden_bias + up + h2 @ self.top_weight.T
                h1 = torch.bernoulli(torch.sigmoid(beta * field), generator=generator)
                rest = beta * (self.visible_bias + torch.einsum("nh,dkh->ndk", h1, self.weight))
                if beta < 1.0:
                    rest = rest + (1.0 - beta) * self.base_logits
                logits = torch.cat([torch.zeros_like(rest[..., :1]), rest], -1)
                v = torch.multinomial(torch.softmax(logits, -1).reshape(-1, self.levels), 1,
                                      generator=generator).reshape(n, -1)
                top = beta * (self.top_bias + h1 @ self.top_weight)
                h2 = torch.bernoulli(torch.sigmoid(top), generator=generator)
        return torch.cat([v, h2.long()], 1)

    # --- likelihood --------------------------------------------------------------------------

    def _annealed_log_f(self, state: Tensor, beta: float) -> Tensor:
        v, h2 = self._split(state)
        bias, up = self._visible_terms(v)
        base = (level_indicators(v, self.levels, self.weight.dtype) * self.base_logits).sum((1, 2))
        return (1.0 - beta) * base - self._joint_free_energy(bias, up, h2, beta)

    @torch.no_grad()
    def log_partition_ais(self, *, chains: int | None = None, temperatures: int | None = None,
                          generator: torch.Generator | None = None) -> AISResult:
        """log Z by AIS over (v, h²) (module docstring); cached until a parameter changes."""

        def compute() -> AISResult:
            m = chains or self.config.ais_chains
            base = torch.cat([torch.zeros_like(self.base_logits[:, :1]), self.base_logits], -1)
            device = generator.device if generator is not None else base.device
            v = torch.multinomial(torch.softmax(base, -1).to(device), m, replacement=True,
                                  generator=generator).T
            h2 = torch.randint(2, (m, self.top), generator=generator, device=device)
            h1, h2n = self.config.hidden
            log_z_base = float(torch.logsumexp(base, -1).sum()) + (h1 + h2n) * math.log(2)
            return annealed_importance_sampling(
                torch.cat([v, h2], 1).to(base.device), self._annealed_log_f,
                lambda s, b, g: self.gibbs(s, 1, g, beta=b),
                ais_temperatures(temperatures or self.config.ais_temperatures),
                log_z_base=log_z_base, generator=generator)

        if chains is None and temperatures is None:
            return self.cached_ais(compute)
        return compute()

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-F(x) - log Ẑ, log Ẑ by AIS."""
        return -self.free_energy(self.flat(x)) - self.log_partition_ais().log_z

    def log_prob_estimate(self, x: Tensor, y: Tensor | None = None, *,
                          generator: torch.Generator | None = None) -> LikelihoodEstimate:
        """-F(x) - log Ẑ with log Ẑ's standard error shared by every example."""
        ais = self.log_partition_ais(generator=generator)
        log_p = -self.free_energy(self.flat(x)) - ais.log_z
        return LikelihoodEstimate(log_p, torch.zeros_like(log_p), ais.note(),
                                  shared_stderr=ais.stderr)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Visible biases (and AIS's base rates) at the data's smoothed log-odds; the chains'
        visible part at training examples, their top layer random."""
        v = self.flat(x)
        counts = F.one_hot(v, self.levels).sum(0).to(self.weight.dtype) + 1.0
        with torch.no_grad():
            self.visible_bias.copy_(torch.log(counts[:, 1:]) - torch.log(counts[:, :1]))
            self.base_logits.copy_(self.visible_bias)
            idx = torch.randint(v.shape[0], (self.chains.shape[0],), generator=generator)
            self.chains[:, : self.spec.dim] = v[idx.to(v.device)]

    def extra_repr(self) -> str:
        return f"visible={self.spec.dim}x{self.levels} levels, hidden={self.config.hidden}"
