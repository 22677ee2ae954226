r"""What every Boltzmann machine trained by contrastive divergence shares (Book §7.5.2).

The gradient of -log p(x) for p(v) = e^{-F(v)} / Z is ∇F(x) - E_p[∇F(v)]. The loss
F(x) - mean_s F(v⁻_s) with negatives v⁻ from ``cd_k`` Gibbs sweeps has that gradient with the
model expectation replaced by the negatives (eq. 7.42-7.43): started at the batch it is CD-k
(Hinton 2002), started at persistent chains carried across updates it is PCD (Tieleman 2008).
The chains are a buffer (checkpoints carry them) and move in :meth:`after_step`, only for
updates that were taken, never inside ``loss``; their age in Gibbs sweeps is kept for the mixing
diagnostics (:mod:`dgm.core.chains`). A model supplies its free energy, a Gibbs sweep and a
random visible state.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from dgm.core.ais import AISCache, AISResult
from dgm.core.base import GenerativeModel
from dgm.core.chains import ChainDiagnostics, diagnose
from dgm.core.fitting import StepInfo
from dgm.core.spec import DataSpec

__all__ = ["ContrastiveDivergence"]


class ContrastiveDivergence(GenerativeModel):
    """A Boltzmann machine fitted by CD-k or PCD; subclasses give :meth:`free_energy`,
    :meth:`gibbs` and :meth:`random_visible`."""

    def __init__(self, spec: DataSpec, *, cd_k: int, persistent: bool,
                 sample_steps: int) -> None:
        super().__init__(spec)
        self.cd_k, self.persistent, self.sample_steps = cd_k, persistent, sample_steps
        self.register_buffer("chain_age", torch.zeros((), dtype=torch.long))  # Gibbs sweeps
        self._pending: Tensor | None = None
        self._ais = AISCache()

    def init_chains(self, count: int) -> None:
        """Register ``count`` persistent chains at random states; a model calls it at the end
        of its ``__init__``, once :meth:`random_visible` can run."""
        self.register_buffer("chains", self.random_visible(count, torch.Generator().manual_seed(0)))

    # --- what a model supplies ----------------------------------------------------------------

    def free_energy(self, v: Tensor) -> Tensor:
        """F(v) = -log Σ_h e^{-E(v, h)}, (N,); v flat (N, D)."""
        raise NotImplementedError

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None) -> Tensor:
        """``steps`` Gibbs sweeps from flat visible states v (N, D), without gradients."""
        raise NotImplementedError

    def random_visible(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n chain states to start from (N, D), on the generator's device."""
        raise NotImplementedError

    def chain_energy(self, state: Tensor) -> Tensor:
        """The free energy of a chain state, whose gradient at model samples averages to
        ∇ log Z: F(v) where the chains hold visible states (a model whose chains also carry
        hidden units overrides it)."""
        return self.free_energy(state)

    # --- shared -------------------------------------------------------------------------------

    def flat(self, x: Tensor) -> Tensor:
        """Checked data (N, *event) -> flat visible states (N, D): levels as integers, real
        values as floats."""
        self.check_input(x)
        x = x.reshape(x.shape[0], -1)
        return x.long() if self.spec.kind.is_discrete else x.float()

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """F(x) - mean F(v⁻) per example (module docstring); not a likelihood."""
        v = self.flat(x)
        start = self.chains if self.persistent else v
        negative = self.gibbs(start, self.cd_k)
        self._pending = negative
        return self.free_energy(v) - self.chain_energy(negative).mean()

    def after_step(self, info: StepInfo) -> None:
        """Persistent CD: the chains take the state the last loss drew."""
        if self.persistent and self._pending is not None:
            self.chains.copy_(self._pending)
            self.chain_age += self.cd_k
        self._pending = None

    def start_chains_at(self, v: Tensor, generator: torch.Generator) -> None:
        """Start the persistent chains at random rows of flat data v (initialization)."""
        idx = torch.randint(v.shape[0], (self.chains.shape[0],), generator=generator)
        with torch.no_grad():
            self.chains.copy_(v[idx.to(v.device)])

    def cached_ais(self, compute: Callable[[], AISResult]) -> AISResult:
        """``compute()``'s AIS result, reused until a parameter changes (an evaluation scores
        every batch against the same log Ẑ)."""
        return self._ais.get(self.parameters(), compute)

    @torch.no_grad()
    def mixing(self, steps: int = 500, *, generator: torch.Generator | None = None
               ) -> ChainDiagnostics:
        """How well Gibbs sampling mixes: the free energy F(v_t) of copies of the persistent
        chains over ``steps`` further sweeps, its autocorrelation and integrated
        autocorrelation time, and the chains' age (:mod:`dgm.core.chains`)."""
        v = self.chains.clone()
        series = []
        for _ in range(steps):
            v = self.gibbs(v, 1, generator)
            series.append(self.chain_energy(v))
        return diagnose(torch.stack(series), age=float(self.chain_age), max_lag=steps // 2)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``sample_steps`` Gibbs sweeps from random states; the visible part of the last."""
        v = self.random_visible(n, generator).to(self.device)
        v = self.gibbs(v, self.sample_steps, generator)[:, : self.spec.dim]
        return v.reshape(n, *self.spec.event_shape).to(self.spec.dtype)
