r"""The restricted Boltzmann machine with categorical visible units (Book §7.5; deck 004).

Visible units v_i take the data's L levels (L = 2: Bernoulli units), hidden units h_j ∈ {0, 1}.
Level 0 is the reference, so that L = 2 is exactly the Bernoulli RBM:

    E(v, h) = -Σ_i [v_i > 0] (b_{i, v_i} + W_{i, v_i} · h) - c · h,   p(v, h) = e^{-E(v, h)} / Z.

Summing out one layer gives the free energies

    F(v) = -Σ_i b_{i, v_i} - Σ_j softplus(c_j + Σ_i W_{i, v_i, j}),
    F(h) = -c · h - Σ_i log(1 + Σ_{k >= 1} exp(b_{i,k} + W_{i,k} · h)),

and log Z = log Σ_h e^{-F(h)}, exact by enumerating the 2^H hidden states when H is small
(``exact_max_hidden``), so that log p(v) = -F(v) - log Z is an exact likelihood. The
conditionals are factorized: p(h_j = 1 | v) = σ(c_j + Σ_i W_{i, v_i, j}) and
p(v_i = k | h) = softmax_k(b_{i,k} + W_{i,k} · h) with 0 for k = 0 (block Gibbs sampling).

Training by contrastive divergence (Hinton 2002) or persistent CD (Tieleman 2008): the gradient
of -log p(x) is ∇F(x) - E_p[∇F(v)], and the loss F(x) - F(v⁻) with v⁻ drawn by ``cd_k`` Gibbs
steps (from the data for CD, from persistent chains for PCD) has that gradient in expectation
of the negative phase. The chains move in :meth:`RBM.after_step`, never inside ``loss``.

References:
    Smolensky 1986; Hinton. Training products of experts by minimizing contrastive divergence.
    Neural Computation 2002. Tieleman. Training restricted Boltzmann machines using
    approximations to the likelihood gradient. ICML 2008.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = ["RBMConfig", "RBM"]


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
            states (the exact likelihood); beyond it the model has none yet.
        sample_steps: Gibbs sweeps of ``sample`` from uniform noise.
    """

    hidden: int = 20
    cd_k: int = 1
    persistent: bool = True
    chains: int = 100
    init_std: float = 0.01
    exact_max_hidden: int = 22
    sample_steps: int = 1000

    def __post_init__(self) -> None:
        if min(self.hidden, self.cd_k, self.chains, self.sample_steps) < 1:
            raise ConfigError("model.hidden, cd_k, chains and sample_steps must be >= 1")
        if self.init_std <= 0 or not 1 <= self.exact_max_hidden <= 30:
            raise ConfigError("model.init_std must be > 0 and exact_max_hidden in 1..30")


@register_model("rbm", RBMConfig)
class RBM(GenerativeModel):
    """A restricted Boltzmann machine with Bernoulli (binary data) or categorical (discrete
    data) visible units, trained by CD-k or persistent CD, with the exact log-likelihood by
    enumerating the hidden layer (Book §7.5)."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: RBMConfig) -> None:
        super().__init__(spec)
        self.config = config
        d, levels, h = spec.dim, int(spec.num_levels), config.hidden
        self.levels = levels
        gen = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(d, levels - 1, h, generator=gen) * config.init_std)
        self.visible_bias = nn.Parameter(torch.zeros(d, levels - 1))
        self.hidden_bias = nn.Parameter(torch.zeros(h))
        self.register_buffer("chains", torch.randint(levels, (config.chains, d), generator=gen))
        self._pending: Tensor | None = None

    # --- energies and conditionals -------------------------------------------------------------

    def _one_hot(self, v: Tensor) -> Tensor:
        """(N, D) levels -> (N, D, L - 1) indicators of the non-reference levels."""
        return F.one_hot(v.long(), self.levels)[..., 1:].to(self.weight.dtype)

    def hidden_input(self, v: Tensor) -> Tensor:
        """c + Σ_i W_{i, v_i}, (N, H)."""
        return self.hidden_bias + torch.einsum("ndk,dkh->nh", self._one_hot(v), self.weight)

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -Σ_i b_{i, v_i} - Σ_j softplus(c_j + Σ_i W_{i, v_i, j}), (N,); v (N, D)."""
        visible = (self._one_hot(v) * self.visible_bias).sum((1, 2))
        return -visible - F.softplus(self.hidden_input(v)).sum(1)

    def visible_logits(self, h: Tensor) -> Tensor:
        """The logits of p(v_i = k | h), (N, D, L), level 0 at 0."""
        rest = self.visible_bias + torch.einsum("nh,dkh->ndk", h, self.weight)
        return torch.cat([torch.zeros_like(rest[..., :1]), rest], -1)

    def hidden_free_energy(self, h: Tensor) -> Tensor:
        """F(h) = -c · h - Σ_i logsumexp_k(visible logits), (N,); h (N, H)."""
        return -(h @ self.hidden_bias) - torch.logsumexp(self.visible_logits(h), -1).sum(1)

    def log_partition(self) -> Tensor:
        """log Z = log Σ_h e^{-F(h)} over the 2^H hidden states, exact."""
        h = self.config.hidden
        if h > self.config.exact_max_hidden:
            raise ConfigError(f"exact log Z enumerates 2^H hidden states; H = {h} is above "
                              f"model.exact_max_hidden = {self.config.exact_max_hidden}")
        bits = torch.arange(h, device=self.weight.device)
        parts = []
        for start in range(0, 2**h, 2**14):
            idx = torch.arange(start, min(2**h, start + 2**14), device=self.weight.device)
            states = ((idx[:, None] >> bits) & 1).to(self.weight.dtype)
            parts.append(torch.logsumexp(-self.hidden_free_energy(states), 0))
        return torch.logsumexp(torch.stack(parts), 0)

    # --- the contract ----------------------------------------------------------------------

    def _flat(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return x.reshape(x.shape[0], -1).long()

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) = -F(x) - log Z, exact."""
        return -self.free_energy(self._flat(x)) - self.log_partition()

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

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """F(x) - mean F(v⁻) per example, v⁻ after ``cd_k`` Gibbs sweeps from the persistent
        chains (PCD) or the batch (CD); its gradient is the CD estimate of -∇ log p(x). The
        value is not a likelihood."""
        v = self._flat(x)
        start = self.chains if self.config.persistent else v
        negative = self.gibbs(start, self.config.cd_k)
        self._pending = negative
        return self.free_energy(v) - self.free_energy(negative).mean()

    def after_step(self, info: StepInfo) -> None:
        """Persistent CD: the chains take the state the last loss drew."""
        if self.config.persistent and self._pending is not None:
            self.chains.copy_(self._pending)
        self._pending = None

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Visible biases at the log-odds of each level's smoothed frequency against level 0
        (Hinton's guide), and the chains started at training examples."""
        v = self._flat(x)
        counts = F.one_hot(v, self.levels).sum(0).to(self.weight.dtype) + 1.0  # (D, L)
        with torch.no_grad():
            self.visible_bias.copy_(torch.log(counts[:, 1:]) - torch.log(counts[:, :1]))
            idx = torch.randint(v.shape[0], (self.config.chains,), generator=generator)
            self.chains.copy_(v[idx.to(v.device)])

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``sample_steps`` Gibbs sweeps from uniformly random visible states."""
        device = self.weight.device
        v = torch.randint(self.levels, (n, self.spec.dim), generator=generator,
                          device=generator.device if generator is not None else device)
        v = self.gibbs(v.to(device), self.config.sample_steps, generator)
        return v.reshape(n, *self.spec.event_shape).to(self.spec.dtype)

    def extra_repr(self) -> str:
        return f"visible={self.spec.dim}x{self.levels} levels, hidden={self.config.hidden}"
