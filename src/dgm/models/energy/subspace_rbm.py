r"""The subspace restricted Boltzmann machine (Book §7.5.3; Tomczak & Gonczarek 2016).

Binary visible units x ∈ {0, 1}^D, gate units h ∈ {0, 1}^M and, under each gate, K subspace
units s_j ∈ {0, 1}^K, with the third-order energy (eq. 7.44)

    E(x, h, S) = -Σ_{ijk} W_ijk x_i h_j s_jk - bᵀx - cᵀh - Σ_j h_j Σ_k D_jk s_jk.

A closed gate (h_j = 0) silences its subspace units, so each of them is then a fair coin. With
a_jk = Σ_i W_ijk x_i + D_jk the conditionals are (eqs. 7.45-7.47)

    p(x_i = 1 | h, S) = σ(b_i + Σ_jk W_ijk h_j s_jk),
    p(s_jk = 1 | x, h_j) = σ(h_j a_jk),
    p(h_j = 1 | x) = σ(c_j + Σ_k softplus(a_jk) - K log 2),

the -K log 2 being the built-in penalty on opening a gate. Summing out h and S gives the free
energy F(x) = -bᵀx - Σ_j log(2^K + exp(c_j + Σ_k softplus(a_jk))). The partition function
depends on h and S only through u_jk = h_j s_jk: u_j = 0 is reached with weight 2^K + e^{c_j}
(gate closed, or open with no subspace unit on), u_j ≠ 0 with e^{c_j + D_j·u_j}, and then x
factorizes, so

    log Z = logsumexp_u [Σ_j log w_j(u_j) + Σ_i softplus(b_i + Σ_jk W_ijk u_jk)],

exact by enumerating the 2^{MK} states u when M·K is small. Trained by CD-k / PCD with the
three-step Gibbs sweep h | x, S | x, h, x | h, S (:mod:`dgm.models.energy.contrastive`).
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

__all__ = ["SubspaceRBMConfig", "SubspaceRBM"]


@dataclass(frozen=True, kw_only=True)
class SubspaceRBMConfig:
    """Args:
        gates: M, the gate units.
        subspace: K, the subspace units under each gate.
        cd_k, persistent, chains, sample_steps, init_std: as for ``rbm``.
        exact_max_units: the largest M·K whose 2^{MK} states are enumerated for log Z.
    """

    gates: int = 5
    subspace: int = 4
    cd_k: int = 1
    persistent: bool = True
    chains: int = 100
    init_std: float = 0.01
    exact_max_units: int = 22
    sample_steps: int = 1000

    def __post_init__(self) -> None:
        if min(self.gates, self.subspace, self.cd_k, self.chains, self.sample_steps) < 1:
            raise ConfigError("model.gates, subspace, cd_k, chains and sample_steps must be >= 1")
        if self.init_std <= 0 or not 1 <= self.exact_max_units <= 26:
            raise ConfigError("model.init_std must be > 0 and exact_max_units in 1..26")


@register_model("subspace_rbm", SubspaceRBMConfig)
class SubspaceRBM(ContrastiveDivergence):
    """The subspace RBM of Book §7.5.3 on binary data, with its exact likelihood."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.BINARY})

    def __init__(self, spec: DataSpec, config: SubspaceRBMConfig) -> None:
        super().__init__(spec, cd_k=config.cd_k, persistent=config.persistent,
                         sample_steps=config.sample_steps)
        if config.gates * config.subspace > config.exact_max_units:
            raise ConfigError(
                f"subspace_rbm's log Z enumerates 2^(gates x subspace) states; "
                f"{config.gates} x {config.subspace} is above model.exact_max_units = "
                f"{config.exact_max_units}")
        self.config = config
        d, m, k = spec.dim, config.gates, config.subspace
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d, m, k, generator=gen) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(d))
        self.gate_bias = nn.Parameter(torch.zeros(m))
        self.subspace_bias = nn.Parameter(torch.zeros(m, k))
        self.init_chains(config.chains)

    def random_visible(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        device = generator.device if generator is not None else None
        return torch.randint(2, (n, self.spec.dim), generator=generator, device=device)

    # --- energies and conditionals ------------------------------------------------------------

    def subspace_input(self, x: Tensor) -> Tensor:
        """a_jk = Σ_i W_ijk x_i + D_jk, (N, M, K)."""
        return torch.einsum("nd,dmk->nmk", x.to(self.weight.dtype), self.weight) + self.subspace_bias

    def gate_probability(self, x: Tensor) -> Tensor:
        """p(h_j = 1 | x) = σ(c_j + Σ_k softplus(a_jk) - K log 2), (N, M) (eq. 7.47)."""
        k = self.config.subspace
        return torch.sigmoid(self.gate_bias + F.softplus(self.subspace_input(x)).sum(-1)
                             - k * math.log(2))

    def subspace_probability(self, x: Tensor, h: Tensor) -> Tensor:
        """p(s_jk = 1 | x, h_j) = σ(h_j a_jk), (N, M, K) (eq. 7.46)."""
        return torch.sigmoid(h[..., None] * self.subspace_input(x))

    def visible_probability(self, h: Tensor, s: Tensor) -> Tensor:
        """p(x_i = 1 | h, S) = σ(b_i + Σ_jk W_ijk h_j s_jk), (N, D) (eq. 7.45)."""
        u = h[..., None] * s
        return torch.sigmoid(self.visible_bias + torch.einsum("nmk,dmk->nd", u, self.weight))

    def free_energy(self, v: Tensor) -> Tensor:
        """F(x) = -bᵀx - Σ_j log(2^K + exp(c_j + Σ_k softplus(a_jk))), (N,)."""
        k = self.config.subspace
        opened = self.gate_bias + F.softplus(self.subspace_input(v)).sum(-1)
        closed = torch.full_like(opened, k * math.log(2))
        return -(v.to(self.weight.dtype) @ self.visible_bias) - torch.logaddexp(closed, opened).sum(1)

    def log_partition(self) -> Tensor:
        """log Z by enumerating u = h ⊙ s over its 2^{MK} states (module docstring)."""
        m, k = self.config.gates, self.config.subspace
        units = m * k
        bits = torch.arange(units, device=self.weight.device)
        closed = torch.logaddexp(torch.full_like(self.gate_bias, k * math.log(2)), self.gate_bias)
        parts = []
        for start in range(0, 2**units, 2**14):
            idx = torch.arange(start, min(2**units, start + 2**14), device=self.weight.device)
            u = ((idx[:, None] >> bits) & 1).to(self.weight.dtype).reshape(-1, m, k)
            on = u.sum(-1) > 0
            gate = torch.where(on, self.gate_bias + (u * self.subspace_bias).sum(-1), closed)
            field = self.visible_bias + torch.einsum("nmk,dmk->nd", u, self.weight)
            parts.append(torch.logsumexp(gate.sum(1) + F.softplus(field).sum(1), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = -F(x) - log Z, exact."""
        return -self.free_energy(self.flat(x)) - self.log_partition()

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """Sweeps h | x, then S | x, h, then x | h, S."""
        with torch.no_grad():
            for _ in range(steps):
                h = torch.bernoulli(self.gate_probability(v), generator=generator)
                s = torch.bernoulli(self.subspace_probability(v, h), generator=generator)
                v = torch.bernoulli(self.visible_probability(h, s), generator=generator).long()
        return v

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Visible biases at the data's smoothed log-odds; chains started at the data."""
        v = self.flat(x)
        mean = (v.float().sum(0) + 1) / (v.shape[0] + 2)
        with torch.no_grad():
            self.visible_bias.copy_(torch.log(mean) - torch.log1p(-mean))
        self.start_chains_at(v, generator)

    def extra_repr(self) -> str:
        c = self.config
        return f"visible={self.spec.dim}, gates={c.gates}, subspace={c.subspace}"
