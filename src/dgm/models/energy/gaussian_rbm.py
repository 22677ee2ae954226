r"""The Gaussian-Bernoulli RBM: real-valued visible units (Book §7.5 "real-valued RBMs"; Hinton's
practical guide §13; Cho, Ilin & Raiko 2011).

Visible units v ∈ R^D with standard deviations σ_i, binary hidden units h ∈ {0, 1}^H:

    E(v, h) = Σ_i (v_i - b_i)² / (2σ_i²) - cᵀh - Σ_ij (v_i / σ_i) W_ij h_j.

Then p(h_j = 1 | v) = σ(c_j + Σ_i W_ij v_i / σ_i) and p(v | h) = N(b + σ ⊙ W h, diag σ²), and
summing out h gives the free energy F(v) = Σ_i (v_i - b_i)² / (2σ_i²) - Σ_j softplus(c_j +
Σ_i W_ij v_i / σ_i). Integrating v out of e^{-E} with m = W h gives Gaussian integrals,

    log Z = logsumexp_h [cᵀh + Σ_i (b_i m_i / σ_i + m_i² / 2)] + Σ_i log(sqrt(2π) σ_i),

exact by enumerating the 2^H hidden states, so log p(v) = -F(v) - log Z is an exact density
(on continuous data only: on discrete data a density is not a likelihood). σ is fixed at its
initial value (the data's standard deviations, by ``initialize_from_data``) unless
``learn_std``, in which case log σ is learned by the same contrastive gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import Likelihood
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.energy.contrastive import ContrastiveDivergence

__all__ = ["GaussianRBMConfig", "GaussianRBM"]


@dataclass(frozen=True, kw_only=True)
class GaussianRBMConfig:
    """Args:
        hidden: H binary hidden units (log Z enumerates 2^H states: at most ``exact_max_hidden``).
        learn_std: learn the visible standard deviations (else fixed at the data's).
        cd_k, persistent, chains, sample_steps, init_std: as for ``rbm``.
    """

    hidden: int = 16
    learn_std: bool = False
    cd_k: int = 1
    persistent: bool = True
    chains: int = 100
    init_std: float = 0.01
    exact_max_hidden: int = 22
    sample_steps: int = 1000

    def __post_init__(self) -> None:
        if min(self.hidden, self.cd_k, self.chains, self.sample_steps) < 1:
            raise ConfigError("model.hidden, cd_k, chains and sample_steps must be >= 1")
        if self.init_std <= 0 or not 1 <= self.hidden <= self.exact_max_hidden <= 26:
            raise ConfigError("model.init_std must be > 0 and hidden <= exact_max_hidden <= 26 "
                              "(log Z enumerates the hidden states)")


@register_model("gaussian_rbm", GaussianRBMConfig)
class GaussianRBM(ContrastiveDivergence):
    """An RBM with Gaussian visible units on continuous data, with its exact density."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: GaussianRBMConfig) -> None:
        super().__init__(spec, cd_k=config.cd_k, persistent=config.persistent,
                         sample_steps=config.sample_steps)
        self.config = config
        d, h = spec.dim, config.hidden
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d, h, generator=gen) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(d))
        self.hidden_bias = nn.Parameter(torch.zeros(h))
        self.log_std = nn.Parameter(torch.zeros(d), requires_grad=config.learn_std)
        self.init_chains(config.chains)

    def random_visible(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draws of the visible units with the hidden layer off: N(b, σ²)."""
        device = generator.device if generator is not None else None
        z = torch.randn(n, self.spec.dim, generator=generator, device=device)
        return (self.visible_bias + self.log_std.exp() * z.to(self.log_std.device)).detach()

    def hidden_input(self, v: Tensor) -> Tensor:
        """c + Wᵀ(v / σ), (N, H)."""
        return self.hidden_bias + (v / self.log_std.exp()) @ self.weight

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = Σ (v - b)² / (2σ²) - Σ_j softplus(c_j + Σ_i W_ij v_i / σ_i), (N,)."""
        quad = ((v - self.visible_bias) ** 2 / (2 * (2 * self.log_std).exp())).sum(1)
        return quad - F.softplus(self.hidden_input(v)).sum(1)

    def log_partition(self) -> Tensor:
        """log Z by enumerating the 2^H hidden states (module docstring)."""
        h = self.config.hidden
        bits = torch.arange(h, device=self.weight.device)
        std = self.log_std.exp()
        parts = []
        for start in range(0, 2**h, 2**14):
            idx = torch.arange(start, min(2**h, start + 2**14), device=self.weight.device)
            states = ((idx[:, None] >> bits) & 1).to(self.weight.dtype)
            m = states @ self.weight.T  # (S, D)
            terms = states @ self.hidden_bias + (self.visible_bias * m / std + m**2 / 2).sum(1)
            parts.append(torch.logsumexp(terms, 0))
        gaussian = (0.5 * math.log(2 * math.pi) + self.log_std).sum()
        return torch.logsumexp(torch.stack(parts), 0) + gaussian

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = -F(x) - log Z, an exact density."""
        return -self.free_energy(self.flat(x)) - self.log_partition()

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Sweeps h | v, then v | h ~ N(b + σ ⊙ W h, σ²)."""
        with torch.no_grad():
            std = self.log_std.exp()
            for _ in range(steps):
                h = torch.bernoulli(torch.sigmoid(self.hidden_input(v)), generator=generator)
                mean = self.visible_bias + std * (h @ self.weight.T)
                noise = torch.randn(mean.shape, generator=generator, device=mean.device)
                v = mean + std * noise
        return v

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """b at the data's mean, σ at its standard deviation; chains started at the data."""
        v = self.flat(x)
        with torch.no_grad():
            self.visible_bias.copy_(v.mean(0))
            self.log_std.copy_(v.std(0).clamp_min(1e-3).log())
        self.start_chains_at(v, generator)

    def extra_repr(self) -> str:
        return f"visible={self.spec.dim} Gaussian, hidden={self.config.hidden}"
