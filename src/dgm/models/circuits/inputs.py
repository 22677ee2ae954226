r"""Input units of a probabilistic circuit (Book §2.4): K normalized univariate distributions per
input *slot* (one slot per variable of every leaf region), all evaluated in one batched call.

- :class:`CategoricalInputs`: θ_sk(l) = softmax over the data's L levels (on binary data this is
  the Bernoulli with two logits);
- :class:`BinomialInputs`: Binom(x; L-1, p_sk), one parameter per unit for ordered levels; on
  binary data (L = 2) the Bernoulli with one logit per unit;
- :class:`GaussianInputs`: N(x; μ_sk, σ_sk²) for continuous data.

Each gives log p(x_s | unit k) as (N, S, K); the circuit sets a slot's row to 0 (log 1) to
marginalize its variable, which is exact because every unit is normalized. EM needs only the
posterior responsibility r_nsk of each unit (the circuit's gradient with respect to these
log-probabilities): the M-step is a weighted maximum-likelihood fit per unit, with a
pseudo-count α (a Dirichlet or Beta prior; for the Gaussian, α pseudo-observations at the
unit's current mean with unit variance).
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.sampling import draw_categorical

__all__ = ["InputUnits", "CategoricalInputs", "BinomialInputs", "GaussianInputs"]


class InputUnits(Protocol):
    """What a circuit asks of its input layer."""

    def log_prob(self, x: Tensor) -> Tensor:
        """x (N, S) values at the slots -> (N, S, K) log-probabilities of every unit."""
        ...

    def log_mode(self) -> Tensor:
        """max_x log p(x | unit), (S, K): the input's value in a max-product pass."""
        ...

    def draw(self, slots: Tensor, units: Tensor, mode: bool,
             generator: torch.Generator | None) -> Tensor:
        """A value per (slot, unit) pair (same shapes, (N, S)): a draw, or the mode."""
        ...

    def em_statistics(self) -> list[Tensor]:
        """Zeroed accumulators of this layer's sufficient statistics."""
        ...

    def em_accumulate(self, stats: list[Tensor], x: Tensor, r: Tensor) -> None:
        """Add responsibilities r (N, S, K) of values x (N, S) to ``stats``."""
        ...

    def em_maximize(self, stats: list[Tensor], pseudo_count: float, step_size: float) -> None:
        """Move the parameters to (1 - step_size) old + step_size the (smoothed) weighted
        maximum-likelihood fit."""
        ...


def _blend(old: Tensor, new: Tensor, step_size: float) -> Tensor:
    """(1 - η) old + η new: online EM's move (the new estimate itself at η = 1)."""
    return new if step_size >= 1.0 else (1 - step_size) * old + step_size * new


def _pick(table: Tensor, slots: Tensor, units: Tensor) -> Tensor:
    """table (S, K, ...) at (slots, units) pairs of equal shape -> (*shape, ...)."""
    return table[slots, units]


class CategoricalInputs(nn.Module):
    """θ_sk = softmax(logits_sk) over L levels; logits (S, K, L)."""

    def __init__(self, slots: int, units: int, levels: int, init_scale: float = 0.5) -> None:
        super().__init__()
        self.levels = levels
        self.logits = nn.Parameter(torch.randn(slots, units, levels) * init_scale)

    def log_theta(self) -> Tensor:
        return F.log_softmax(self.logits, -1)

    def log_prob(self, x: Tensor) -> Tensor:
        table = self.log_theta()  # (S, K, L)
        s = table.shape[0]
        # (N, S, K): the level x_ns of every unit of slot s
        flat = table.permute(0, 2, 1).reshape(s * self.levels, -1)  # (S L, K)
        index = torch.arange(s, device=x.device) * self.levels + x.long()
        return flat[index]

    def log_mode(self) -> Tensor:
        return self.log_theta().amax(-1)

    def draw(self, slots: Tensor, units: Tensor, mode: bool,
             generator: torch.Generator | None) -> Tensor:
        logits = _pick(self.log_theta(), slots, units)
        return logits.argmax(-1) if mode else draw_categorical(logits, generator)

    def em_statistics(self) -> list[Tensor]:
        return [torch.zeros_like(self.logits, dtype=torch.float64)]

    def em_accumulate(self, stats: list[Tensor], x: Tensor, r: Tensor) -> None:
        counts = stats[0]  # (S, K, L)
        s, k, levels = counts.shape
        values = r.permute(1, 0, 2).reshape(s * x.shape[0], k)  # rows in (s, n) order
        index = (torch.arange(s, device=x.device).unsqueeze(1) * levels
                 + x.long().T).reshape(-1)
        target = torch.zeros(s * levels, k, dtype=counts.dtype, device=counts.device)
        target.index_add_(0, index, values.to(counts.dtype))
        counts += target.reshape(s, levels, k).permute(0, 2, 1)

    def em_maximize(self, stats: list[Tensor], pseudo_count: float, step_size: float) -> None:
        counts = (stats[0] + pseudo_count).clamp_min(torch.finfo(torch.float64).tiny)
        theta = counts / counts.sum(-1, keepdim=True)
        old = torch.softmax(self.logits.detach().double(), -1)
        self.logits.data.copy_(torch.log(_blend(old, theta, step_size)))


class BinomialInputs(nn.Module):
    """Binom(x; n, p_sk) with n = L - 1 trials, p_sk = sigmoid(logit_sk); one parameter per
    unit, for ordered levels (intensities); with two levels, the Bernoulli."""

    def __init__(self, slots: int, units: int, levels: int, init_scale: float = 0.5) -> None:
        super().__init__()
        self.levels = levels
        self.logits = nn.Parameter(torch.randn(slots, units) * init_scale)
        n = levels - 1
        log_choose = [math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                      for k in range(levels)]
        self.register_buffer("log_choose", torch.tensor(log_choose), persistent=False)

    def _table(self) -> Tensor:
        """log Binom(l; n, p_sk) for every level, (S, K, L)."""
        n = self.levels - 1
        k = torch.arange(self.levels, device=self.logits.device, dtype=self.logits.dtype)
        lp, lq = F.logsigmoid(self.logits).unsqueeze(-1), F.logsigmoid(-self.logits).unsqueeze(-1)
        return self.log_choose.to(lp) + k * lp + (n - k) * lq

    def log_prob(self, x: Tensor) -> Tensor:
        n = self.levels - 1
        k = x.to(self.logits.dtype).unsqueeze(-1)  # (N, S, 1)
        return (self.log_choose.to(self.logits)[x.long()].unsqueeze(-1)
                + k * F.logsigmoid(self.logits) + (n - k) * F.logsigmoid(-self.logits))

    def log_mode(self) -> Tensor:
        return self._table().amax(-1)

    def draw(self, slots: Tensor, units: Tensor, mode: bool,
             generator: torch.Generator | None) -> Tensor:
        logits = _pick(self._table(), slots, units)
        return logits.argmax(-1) if mode else draw_categorical(logits, generator)

    def em_statistics(self) -> list[Tensor]:
        zeros = torch.zeros_like(self.logits, dtype=torch.float64)
        return [zeros, zeros.clone()]

    def em_accumulate(self, stats: list[Tensor], x: Tensor, r: Tensor) -> None:
        r = r.to(stats[0].dtype)
        stats[0] += r.sum(0)
        stats[1] += (r * x.to(r.dtype).unsqueeze(-1)).sum(0)

    def em_maximize(self, stats: list[Tensor], pseudo_count: float, step_size: float) -> None:
        n = self.levels - 1
        successes = stats[1] + pseudo_count
        trials = n * stats[0] + 2 * pseudo_count
        p = (successes / trials.clamp_min(1e-300)).clamp(1e-6, 1 - 1e-6)
        p = _blend(torch.sigmoid(self.logits.detach().double()), p, step_size)
        self.logits.data.copy_(torch.log(p) - torch.log1p(-p))


class GaussianInputs(nn.Module):
    """N(x; μ_sk, σ_sk²) with σ_sk = exp(log_std_sk) >= ``min_std``; continuous data."""

    def __init__(self, slots: int, units: int, init_scale: float = 1.0,
                 min_std: float = 1e-2) -> None:
        super().__init__()
        self.min_std = min_std
        self.mean = nn.Parameter(torch.randn(slots, units) * init_scale)
        self.log_std = nn.Parameter(torch.zeros(slots, units))

    def std(self) -> Tensor:
        return self.log_std.exp() + self.min_std

    def log_prob(self, x: Tensor) -> Tensor:
        std = self.std()
        z = (x.to(std.dtype).unsqueeze(-1) - self.mean) / std
        return -0.5 * z * z - std.log() - 0.5 * math.log(2 * math.pi)

    def log_mode(self) -> Tensor:
        return -self.std().log() - 0.5 * math.log(2 * math.pi)

    def draw(self, slots: Tensor, units: Tensor, mode: bool,
             generator: torch.Generator | None) -> Tensor:
        mean = _pick(self.mean, slots, units)
        if mode:
            return mean
        gen_device = generator.device if generator is not None else mean.device
        eps = torch.randn(mean.shape, generator=generator, device=gen_device).to(mean)
        return mean + _pick(self.std(), slots, units) * eps

    def em_statistics(self) -> list[Tensor]:
        zeros = torch.zeros_like(self.mean, dtype=torch.float64)
        return [zeros, zeros.clone(), zeros.clone()]

    def em_accumulate(self, stats: list[Tensor], x: Tensor, r: Tensor) -> None:
        r = r.to(stats[0].dtype)
        x = x.to(r.dtype).unsqueeze(-1)
        stats[0] += r.sum(0)
        stats[1] += (r * x).sum(0)
        stats[2] += (r * x * x).sum(0)

    def em_maximize(self, stats: list[Tensor], pseudo_count: float, step_size: float) -> None:
        a, m0 = pseudo_count, self.mean.detach().to(torch.float64)
        total = stats[0] + a
        mean = (stats[1] + a * m0) / total
        second = (stats[2] + a * (m0 * m0 + 1.0)) / total
        var = (second - mean * mean).clamp_min(0.0)
        std = _blend(self.std().detach().double(), var.sqrt(), step_size)
        self.mean.data.copy_(_blend(m0, mean, step_size))
        self.log_std.data.copy_((std - self.min_std).clamp_min(1e-4).log())
