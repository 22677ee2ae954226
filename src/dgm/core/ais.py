r"""Annealed importance sampling (Neal 2001) for log-partition functions.

For an unnormalized target f_1 and a base distribution f_0 / Z_0 that can be sampled exactly,
AIS anneals through intermediate densities f_β (usually the geometric path
f_β = f_0^{1-β} f_1^β) at temperatures 0 = β_0 < β_1 < ... < β_K = 1:

    x_0 ~ p_0,   x_k ~ T_k(x_{k-1}, ·)  (a Markov kernel that leaves p_{β_k} invariant),
    log w = Σ_{k=1}^{K} [log f_{β_k}(x_{k-1}) - log f_{β_{k-1}}(x_{k-1})],

and E[w] = Z_1 / Z_0 exactly, so Ẑ_1 = Z_0 · mean_m(w_m) is unbiased. Its logarithm is biased
low: by Jensen E[log Ẑ] ≤ log Z, so an AIS likelihood -F(x) - log Ẑ tends to be optimistic
(Salakhutdinov & Murray 2008 report log(Ẑ ± 3σ̂) to show it). The standard error of log Ẑ by
the delta method is σ̂ = sd(w) / (sqrt(M) · mean(w)); it is trustworthy only when the weights
are not dominated by a few chains (see :attr:`AISResult.effective_chains`).

Book §7.5 names AIS as the way to score RBMs; deck 004 uses it for the deep Boltzmann machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = ["AISResult", "AISCache", "annealed_importance_sampling", "ais_temperatures",
           "geometric_path"]

#: log f_β(x) at one temperature: (x, β) -> (M,)
LogIntermediate = Callable[[Tensor, float], Tensor]
#: one Markov step that leaves p_β invariant: (x, β, generator) -> x'
Transition = Callable[[Tensor, float, "torch.Generator | None"], Tensor]


@dataclass(frozen=True)
class AISResult:
    """An AIS estimate of log Z with its error.

    ``log_z``: log Ẑ = log Z_0 + log mean(w); ``stderr``: σ̂ of log Ẑ by the delta method;
    ``log_weights``: the M chains' log w (float64); ``temperatures``: K.
    """

    log_z: float
    stderr: float
    log_weights: Tensor
    temperatures: int

    @property
    def chains(self) -> int:
        return int(self.log_weights.numel())

    @property
    def effective_chains(self) -> float:
        """Kish's effective sample size (Σ w)² / Σ w² of the weights: near M when AIS is
        reliable, near 1 when one chain carries the estimate."""
        lw = self.log_weights
        return float(torch.exp(2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)))

    def band(self, width: float = 3.0) -> tuple[float, float]:
        """(log(Ẑ - width·σ̂_Z), log(Ẑ + width·σ̂_Z)), Salakhutdinov & Murray's error band; the
        lower edge is -inf when the band reaches 0."""
        rel = width * self.stderr  # σ̂_Z / Ẑ = σ̂ of log Ẑ
        low = self.log_z + math.log(1 - rel) if rel < 1 else -math.inf
        return low, self.log_z + math.log1p(rel)

    def note(self) -> str:
        """The label an evaluation carries."""
        return (f"log Z by AIS: {self.chains} chains x {self.temperatures} temperatures, "
                f"log Z = {self.log_z:.3f} ± {self.stderr:.3f}, effective chains "
                f"{self.effective_chains:.0f}")


def ais_temperatures(count: int, *, device: torch.device | None = None) -> Tensor:
    """β_0 = 0 < ... < β_K = 1 with K = ``count``, denser where p_β changes fastest.

    The split of Salakhutdinov & Murray (2008) scaled to ``count``: 500/14500 of the steps
    evenly on [0, 0.5], 4000/14500 on [0.5, 0.9], 10000/14500 on [0.9, 1].
    """
    if count < 3:
        raise ConfigError(f"AIS needs at least 3 temperatures, got {count}")
    a = max(1, round(count * 500 / 14500))
    b = max(1, round(count * 4000 / 14500))
    c = max(1, count - a - b)
    parts = [
        torch.linspace(0.0, 0.5, a + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.5, 0.9, b + 1, dtype=torch.float64)[:-1],
        torch.linspace(0.9, 1.0, c + 1, dtype=torch.float64),
    ]
    return torch.cat(parts).to(device)


def geometric_path(
    log_base: Callable[[Tensor], Tensor], log_target: Callable[[Tensor], Tensor]
) -> LogIntermediate:
    """log f_β(x) = (1 - β) log f_0(x) + β log f_1(x)."""

    def log_f(x: Tensor, beta: float) -> Tensor:
        return (1.0 - beta) * log_base(x) + beta * log_target(x)

    return log_f


@torch.no_grad()
def annealed_importance_sampling(
    initial: Tensor,
    log_intermediate: LogIntermediate,
    transition: Transition,
    temperatures: Tensor,
    *,
    log_z_base: float = 0.0,
    generator: torch.Generator | None = None,
) -> AISResult:
    """Estimate log Z_1 by AIS (module docstring).

    Args:
        initial: M exact draws of the base p_0 = f_0 / Z_0, one chain each (M, ...).
        log_intermediate: log f_β(x), (M,); at β = 0 the base's unnormalized log-density
            (whose normalizer is ``log_z_base``), at β = 1 the target's.
        transition: one step of a kernel leaving p_β invariant (Gibbs, Metropolis-Hastings).
        temperatures: the increasing sequence β_0 = 0, ..., β_K = 1 (:func:`ais_temperatures`).
        log_z_base: log Z_0.
        generator: the random generator the transitions draw from.
    """
    betas = [float(b) for b in temperatures.tolist()]
    if len(betas) < 2 or betas[0] != 0.0 or betas[-1] != 1.0:
        raise ConfigError("AIS temperatures must run from 0 to 1")
    if any(b1 <= b0 for b0, b1 in zip(betas, betas[1:])):
        raise ConfigError("AIS temperatures must increase")
    x = initial
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for k in range(1, len(betas)):
        log_w += (log_intermediate(x, betas[k]) - log_intermediate(x, betas[k - 1])).double()
        if k < len(betas) - 1:
            x = transition(x, betas[k], generator)
    m = log_w.numel()
    log_mean = torch.logsumexp(log_w, 0) - math.log(m)
    w = torch.exp(log_w - log_w.max())
    stderr = float(w.std() / (math.sqrt(m) * w.mean())) if m > 1 else math.inf
    return AISResult(float(log_mean) + log_z_base, stderr, log_w, len(betas) - 1)


class AISCache:
    """One AIS result, reused while the tensors it was computed from are unchanged.

    In-place updates (optimizer steps, ``load_state_dict``) bump a tensor's version counter, so
    the versions of a model's parameters (and of any buffer the estimate reads) identify its
    state: an evaluation then scores every batch against the same log Ẑ.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[int, ...], AISResult] | None = None

    def get(self, state: Iterable[Tensor], compute: Callable[[], AISResult]) -> AISResult:
        """``compute()``, or the stored result if ``state`` has not changed since."""
        key = tuple(t._version for t in state)
        if self._entry is None or self._entry[0] != key:
            self._entry = (key, compute())
        return self._entry[1]
