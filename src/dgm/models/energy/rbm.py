r"""The restricted Boltzmann machine with categorical visible units (Book §7.5; deck 004).

Visible units v_i take the data's L levels (L = 2: Bernoulli units), hidden units h_j ∈ {0, 1}.
Level 0 is the reference, so that L = 2 is exactly the Bernoulli RBM:

    E(v, h) = -Σ_i [v_i > 0] (b_{i, v_i} + W_{i, v_i} · h) - c · h,   p(v, h) = e^{-E(v, h)} / Z.

Summing out one layer gives the free energies

    F(v) = -Σ_i b_{i, v_i} - Σ_j softplus(c_j + Σ_i W_{i, v_i, j}),
    F(h) = -c · h - Σ_i log(1 + Σ_{k >= 1} exp(b_{i,k} + W_{i,k} · h)),

and log Z = log Σ_h e^{-F(h)}, exact by enumerating the 2^H hidden states when H is small
(``exact_max_hidden``), so that log p(v) = -F(v) - log Z is an exact likelihood. Beyond that,
log Z is estimated by annealed importance sampling (Salakhutdinov & Murray 2008) from the
independent model with the data's marginals (the base rates a), through the RBMs

    log f_β(v) = (1 - β) a(v) + β b(v) + Σ_j softplus(β (c_j + Σ_i W_{i, v_i, j})),

whose block Gibbs steps use the same conditionals with the fields scaled by β; the model is
then ``Likelihood.ESTIMATE`` and reports log Ẑ's standard error. The
conditionals are factorized: p(h_j = 1 | v) = σ(c_j + Σ_i W_{i, v_i, j}) and
p(v_i = k | h) = softmax_k(b_{i,k} + W_{i,k} · h) with 0 for k = 0 (block Gibbs sampling).

Training by contrastive divergence (Hinton 2002) or persistent CD (Tieleman 2008): the gradient
of -log p(x) is ∇F(x) - E_p[∇F(v)], and the loss F(x) - F(v⁻) with v⁻ drawn by ``cd_k`` Gibbs
steps (from the data for CD, from persistent chains for PCD) has that gradient in expectation
of the negative phase (:mod:`dgm.models.energy.contrastive`).

References:
    Smolensky 1986; Hinton. Training products of experts by minimizing contrastive divergence.
    Neural Computation 2002. Tieleman. Training restricted Boltzmann machines using
    approximations to the likelihood gradient. ICML 2008.
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

__all__ = ["RBMConfig", "RBM", "level_indicators"]


def level_indicators(v: Tensor, levels: int, dtype: torch.dtype) -> Tensor:
    """(N, D) levels -> (N, D, L - 1) indicators of the non-reference levels 1..L-1."""
    return F.one_hot(v.long(), levels)[..., 1:].to(dtype)


@dataclass(frozen=True, kw_only=True)
class RBMConfig:
    """A restricted Boltzmann machine and its contrastive-divergence training.

    Args:
        hidden: H, the number of binary hidden units.
        cd_k: Gibbs steps of the negative phase per update.
        persistent: persistent CD (chains carried across updates, in the checkpoint) instead
            of chains restarted at the data batch.
        chains: persistent chains (their mean is the negative phase).
        init_std: standard deviation of the initial weights (Hinton's guide: 0.01).
        exact_max_hidden: the largest H whose log Z is computed by enumerating the 2^H hidden
            states (the exact likelihood); beyond it log Z is estimated by AIS.
        sample_steps: Gibbs sweeps of ``sample`` from uniform noise.
        ais_chains: AIS chains (independent importance weights) for log Z.
        ais_temperatures: AIS intermediate distributions (Salakhutdinov & Murray: 14,500).
    """

    hidden: int = 20
    cd_k: int = 1
    persistent: bool = True
    chains: int = 100
    init_std: float = 0.01
    exact_max_hidden: int = 22
    sample_steps: int = 1000
    ais_chains: int = 100
    ais_temperatures: int = 10000

    def __post_init__(self) -> None:
        if min(self.hidden, self.cd_k, self.chains, self.sample_steps, self.ais_chains) < 1:
            raise ConfigError("model.hidden, cd_k, chains, sample_steps and ais_chains must "
                              "be >= 1")
        if self.ais_temperatures < 3:
            raise ConfigError("model.ais_temperatures must be >= 3")
        if self.init_std <= 0 or not 1 <= self.exact_max_hidden <= 30:
            raise ConfigError("model.init_std must be > 0 and exact_max_hidden in 1..30")


@register_model("rbm", RBMConfig)
class RBM(ContrastiveDivergence):
    """A restricted Boltzmann machine with Bernoulli (binary data) or categorical (discrete
    data) visible units, trained by CD-k or persistent CD, with the exact log-likelihood by
    enumerating the hidden layer (Book §7.5)."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: RBMConfig) -> None:
        super().__init__(spec, cd_k=config.cd_k, persistent=config.persistent,
                         sample_steps=config.sample_steps)
        d, levels, h = spec.dim, int(spec.num_levels), config.hidden
        self.levels = levels
        self.config = config
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d, levels - 1, h, generator=gen) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(d, levels - 1))
        self.hidden_bias = nn.Parameter(torch.zeros(h))
        # AIS's base model: independent units with these logits (the data's, once initialized)
        self.register_buffer("base_logits", torch.zeros(d, levels - 1))
        if config.hidden > config.exact_max_hidden:
            self.likelihood = Likelihood.ESTIMATE
        self.init_chains(config.chains)

    def random_visible(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Uniformly random levels (N, D)."""
        device = generator.device if generator is not None else None
        return torch.randint(self.levels, (n, self.spec.dim), generator=generator, device=device)

    # --- energies and conditionals -------------------------------------------------------------

    def _one_hot(self, v: Tensor) -> Tensor:
        return level_indicators(v, self.levels, self.weight.dtype)

    def hidden_input(self, v: Tensor) -> Tensor:
        """c + Σ_i W_{i, v_i}, (N, H)."""
        return self.hidden_bias + torch.einsum("ndk,dkh->nh", self._one_hot(v), self.weight)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -Σ_i b_{i, v_i} - Σ_j softplus(c_j + Σ_i W_{i, v_i, j}), (N,); v (N, D)."""
        visible = (self._one_hot(v) * self.visible_bias).sum((1, 2))
        return -visible - F.softplus(self.hidden_input(v)).sum(1)

    def _visible_fields(self, h: Tensor) -> Tensor:
        """b_{i,k} + W_{i,k} · h for the non-reference levels, (N, D, L - 1), by one matmul."""
        d, rest, hidden = self.weight.shape
        fields = h @ self.weight.reshape(d * rest, hidden).T
        return self.visible_bias + fields.reshape(h.shape[0], d, rest)

    def visible_logits(self, h: Tensor) -> Tensor:
        """The logits of p(v_i = k | h), (N, D, L), level 0 at 0."""
        rest = self._visible_fields(h)
        return torch.cat([torch.zeros_like(rest[..., :1]), rest], -1)

    def hidden_free_energy(self, h: Tensor) -> Tensor:
        """F(h) = -c · h - Σ_i log(1 + Σ_{k >= 1} exp(b_{i,k} + W_{i,k} · h)), (N,)."""
        rest = self._visible_fields(h)
        if rest.shape[-1] == 1:  # Bernoulli units: softplus, without a logsumexp over 2
            per_unit = F.softplus(rest[..., 0])
        else:
            per_unit = F.softplus(torch.logsumexp(rest, -1))
        return -(h @ self.hidden_bias) - per_unit.sum(1)

    @property
    def exact(self) -> bool:
        """Whether log Z is computed exactly (H <= ``exact_max_hidden``)."""
        return self.config.hidden <= self.config.exact_max_hidden

    def log_partition(self) -> Tensor:
        """log Z = log Σ_h e^{-F(h)} over the 2^H hidden states, exact."""
        h = self.config.hidden
        if not self.exact:
            raise ConfigError(f"exact log Z enumerates 2^H hidden states; H = {h} is above "
                              f"model.exact_max_hidden = {self.config.exact_max_hidden}")
        bits = torch.arange(h, device=self.weight.device)
        parts = []
        for start in range(0, 2**h, 2**15):
            idx = torch.arange(start, min(2**h, start + 2**15), device=self.weight.device)
            states = ((idx[:, None] >> bits) & 1).to(self.weight.dtype)
            parts.append(torch.logsumexp(-self.hidden_free_energy(states), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    # --- the contract ----------------------------------------------------------------------

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = -F(x) - log Z: exact when H <= ``exact_max_hidden``, else with log Z by
        AIS (cached until the parameters change)."""
        if self.exact:
            return -self.free_energy(self.flat(x)) - self.log_partition()
        return -self.free_energy(self.flat(x)) - self.log_partition_ais().log_z

    def log_prob_estimate(self, x: Tensor, y: Tensor | None = None, *,
                          generator: torch.Generator | None = None) -> LikelihoodEstimate:
        """log p(x) = -F(x) - log Ẑ with log Ẑ by AIS (whatever H is: on a small RBM this
        checks AIS against the exact value); log Ẑ's standard error is common to every
        example (``shared_stderr``)."""
        ais = self.log_partition_ais(generator=generator)
        log_p = -self.free_energy(self.flat(x)) - ais.log_z
        return LikelihoodEstimate(log_p, torch.zeros_like(log_p), ais.note(),
                                  shared_stderr=ais.stderr)

    def _annealed_log_f(self, v: Tensor, beta: float) -> Tensor:
        """log f_β(v) = (1 - β) a(v) + β b(v) + Σ_j softplus(β (c_j + Σ_i W_{i, v_i, j}))."""
        one_hot = self._one_hot(v)
        base = (one_hot * self.base_logits).sum((1, 2))
        visible = (one_hot * self.visible_bias).sum((1, 2))
        return (1 - beta) * base + beta * visible + F.softplus(beta * self.hidden_input(v)).sum(1)

    def _annealed_gibbs(self, v: Tensor, beta: float, generator: torch.Generator | None) -> Tensor:
        """One block Gibbs sweep that leaves p_β(v) invariant."""
        h = torch.bernoulli(torch.sigmoid(beta * self.hidden_input(v)), generator=generator)
        rest = (1 - beta) * self.base_logits + beta * (
            self.visible_bias + torch.einsum("nh,dkh->ndk", h, self.weight))
        logits = torch.cat([torch.zeros_like(rest[..., :1]), rest], -1)
        v = torch.multinomial(torch.softmax(logits, -1).reshape(-1, self.levels), 1,
                              generator=generator)
        return v.reshape(h.shape[0], -1)

    @torch.no_grad()
    def log_partition_ais(self, *, chains: int | None = None, temperatures: int | None = None,
                          generator: torch.Generator | None = None) -> AISResult:
        """log Z by annealed importance sampling from the base rates (module docstring).

        The result for the configured chains and temperatures is cached until a parameter
        changes (:meth:`cached_ais`); the base rates are set with the visible biases.
        """
        def compute() -> AISResult:
            temps = ais_temperatures(temperatures or self.config.ais_temperatures)
            base = torch.cat([torch.zeros_like(self.base_logits[:, :1]), self.base_logits], -1)
            draws = torch.multinomial(torch.softmax(base, -1), chains or self.config.ais_chains,
                                      replacement=True, generator=generator).T  # (M, D)
            log_z_base = (float(torch.logsumexp(base, -1).sum())
                          + self.config.hidden * math.log(2))
            return annealed_importance_sampling(
                draws, self._annealed_log_f, self._annealed_gibbs, temps,
                log_z_base=log_z_base, generator=generator)

        if chains is None and temperatures is None:
            return self.cached_ais(compute)
        return compute()

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``steps`` sweeps of block Gibbs sampling v -> h -> v, no gradient."""
        with torch.no_grad():
            for _ in range(steps):
                p_h = torch.sigmoid(self.hidden_input(v))
                h = torch.bernoulli(p_h, generator=generator)
                probs = torch.softmax(self.visible_logits(h), -1)
                v = torch.multinomial(probs.reshape(-1, self.levels), 1, generator=generator)
                v = v.reshape(h.shape[0], -1)
        return v

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Visible biases at the log-odds of each level's smoothed frequency against level 0
        (Hinton's guide), and the chains started at training examples."""
        v = self.flat(x)
        counts = F.one_hot(v, self.levels).sum(0).to(self.weight.dtype) + 1.0  # (D, L)
        with torch.no_grad():
            self.visible_bias.copy_(torch.log(counts[:, 1:]) - torch.log(counts[:, :1]))
            self.base_logits.copy_(self.visible_bias)
        self.start_chains_at(v, generator)

    def extra_repr(self) -> str:
        return f"visible={self.spec.dim}x{self.levels} levels, hidden={self.config.hidden}"
