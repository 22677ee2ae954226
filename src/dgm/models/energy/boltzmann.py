r"""The fully visible Boltzmann machine (Book §7.5, eq. 7.32; deck 004), exact on small spaces.

Binary units x ∈ {0, 1}^D with the energy

    E(x) = -(xᵀ W x + bᵀ x),    p(x) = e^{-E(x)} / Z,    Z = Σ_x e^{-E(x)},

W symmetric with a zero diagonal (a diagonal term W_ii x_i² = W_ii x_i would only duplicate b_i
on binary units). The model keeps the strict upper triangle U and W = U + Uᵀ, so the pairwise
term is 2 Σ_{i<j} U_ij x_i x_j, and the Gibbs conditional is

    p(x_i = 1 | x_{-i}) = σ(b_i + 2 Σ_j W_ij x_j)

(the factor 2 comes from the book's xᵀWx counting each pair twice; the deck's σ(Σ_j w_ij x_j +
b_i) counts it once). Z is computed exactly by enumerating the 2^D states, so D is kept small
(``max_dim``): the loss is the exact negative log-likelihood, whose gradient is the deck's
E_data[x_i x_j] - E_model[x_i x_j], and ``sample`` draws exactly from the enumerated pmf.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = ["FVBMConfig", "FullyVisibleBoltzmannMachine"]

_CHUNK = 2**14


@dataclass(frozen=True, kw_only=True)
class FVBMConfig:
    """Args:
        max_dim: the largest D whose 2^D states are enumerated (log Z, sampling).
        init_std: standard deviation of the initial pairwise weights.
    """

    max_dim: int = 20
    init_std: float = 0.01

    def __post_init__(self) -> None:
        if not 1 <= self.max_dim <= 24:
            raise ConfigError(f"model.max_dim must be in 1..24, got {self.max_dim}")
        if self.init_std < 0:
            raise ConfigError("model.init_std must be >= 0")


@register_model("fvbm", FVBMConfig)
class FullyVisibleBoltzmannMachine(GenerativeModel):
    """A Boltzmann machine without hidden units on D <= ``max_dim`` binary variables, trained
    by exact maximum likelihood (Book §7.5)."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: FVBMConfig) -> None:
        super().__init__(spec)
        d = spec.dim
        if d > config.max_dim:
            raise ConfigError(f"fvbm enumerates all 2^D states; D = {d} is above model.max_dim "
                              f"= {config.max_dim} (use an RBM for larger data)")
        self.config = config
        gen = torch.Generator().manual_seed(0)
        self.upper = nn.Parameter(torch.randn(d, d, generator=gen) * config.init_std)
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("_mask", torch.ones(d, d).triu(1))

    @property
    def weight(self) -> Tensor:
        """W = U + Uᵀ with U the strict upper triangle: symmetric, zero diagonal."""
        u = self.upper * self._mask
        return u + u.T

    def energy(self, x: Tensor) -> Tensor:
        """E(x) = -(xᵀ W x + bᵀ x), (N,); x (N, D) in {0, 1}."""
        x = x.to(self.bias.dtype)
        return -(torch.einsum("ni,ij,nj->n", x, self.weight, x) + x @ self.bias)

    def conditional(self, x: Tensor) -> Tensor:
        """p(x_i = 1 | x_{-i}) = σ(b_i + 2 Σ_j W_ij x_j) for every i, (N, D)."""
        return torch.sigmoid(self.bias + 2 * x.to(self.bias.dtype) @ self.weight)

    def _states(self, start: int, stop: int) -> Tensor:
        d = self.spec.dim
        idx = torch.arange(start, stop, device=self.bias.device)
        return ((idx[:, None] >> torch.arange(d, device=self.bias.device)) & 1).to(self.bias.dtype)

    def log_partition(self) -> Tensor:
        """log Z = logsumexp_x -E(x) over all 2^D states, exact."""
        n = 2**self.spec.dim
        parts = [torch.logsumexp(-self.energy(self._states(a, min(n, a + _CHUNK))), 0)
                 for a in range(0, n, _CHUNK)]
        return torch.logsumexp(torch.stack(parts), 0)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = -E(x) - log Z, exact."""
        self.check_input(x)
        return -self.energy(x.reshape(x.shape[0], -1)) - self.log_partition()

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x), exact: its gradient is E_data - E_model of the sufficient statistics."""
        return -self.log_prob(x)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Biases at the log-odds of each unit's smoothed frequency (the independent model)."""
        mean = (x.reshape(x.shape[0], -1).float().sum(0) + 1) / (x.shape[0] + 2)
        with torch.no_grad():
            self.bias.copy_(torch.log(mean) - torch.log1p(-mean))

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Exact draws from the enumerated pmf."""
        total = 2**self.spec.dim
        states = self._states(0, total)
        probs = torch.softmax(-self.energy(states), 0)
        device = generator.device if generator is not None else probs.device
        idx = torch.multinomial(probs.to(device), n, replacement=True, generator=generator)
        x = states[idx.to(states.device)]
        return x.reshape(n, *self.spec.event_shape).to(self.spec.dtype)

    def extra_repr(self) -> str:
        return f"visible={self.spec.dim} binary units, fully connected"
