r"""Mixing diagnostics of Markov chains: autocorrelation and integrated autocorrelation time.

For a scalar statistic f(x_t) of a stationary chain, the autocorrelation at lag s is
ρ(s) = Cov(f_t, f_{t+s}) / Var(f_t), and the integrated autocorrelation time

    τ = 1 + 2 Σ_{s >= 1} ρ(s)

says how many steps one independent draw costs: n steps carry about n / τ independent draws
(the effective sample size). The sum is cut at Sokal's automatic window, the first W with
W >= c · τ(W) (c = 5), since the tail of the empirical ρ is noise. Used on the free energy of
an RBM's Gibbs chains (Book §7.5) and on the energy of an EBM's Langevin chains (§7.3).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.errors import DataError

__all__ = ["ChainDiagnostics", "autocorrelation", "integrated_time", "diagnose"]


def autocorrelation(series: Tensor, max_lag: int | None = None) -> Tensor:
    """ρ(0..max_lag) of chains ``series`` (T, C) (T steps of C chains), pooled over chains:
    each chain is centred on its own mean and the covariances are averaged before dividing by
    the pooled variance. Computed by FFT, float64."""
    if series.dim() == 1:
        series = series[:, None]
    t = series.shape[0]
    if t < 2:
        raise DataError("autocorrelation needs at least 2 steps")
    max_lag = t - 1 if max_lag is None else min(max_lag, t - 1)
    x = series.double() - series.double().mean(0)
    n = 1 << (2 * t - 1).bit_length()
    spectrum = torch.fft.rfft(x, n=n, dim=0)
    acov = torch.fft.irfft(spectrum * spectrum.conj(), n=n, dim=0)[: max_lag + 1].mean(1) / t
    if float(acov[0]) <= 0:
        return torch.ones(max_lag + 1, dtype=torch.float64)  # a constant chain: no mixing to see
    return acov / acov[0]


def integrated_time(rho: Tensor, window_factor: float = 5.0) -> float:
    """τ = 1 + 2 Σ_{s=1}^{W} ρ(s) with Sokal's window: the first W >= c · τ(W)."""
    taus = 2 * torch.cumsum(rho, 0) - 1  # τ(W) for W = 0, 1, ...
    lags = torch.arange(len(rho), dtype=torch.float64)
    ok = lags >= window_factor * taus
    w = int(ok.nonzero()[0]) if bool(ok.any()) else len(rho) - 1
    return float(taus[w])


@dataclass(frozen=True)
class ChainDiagnostics:
    """What :func:`diagnose` measured on a statistic of C chains over T steps.

    ``autocorrelation``: ρ(0..lags); ``integrated_time``: τ in steps; ``effective_draws``:
    T · C / τ; ``age``: steps the chains had already made before the recording (for
    persistent chains and replay buffers: their mean age).
    """

    autocorrelation: Tensor
    integrated_time: float
    effective_draws: float
    steps: int
    chains: int
    age: float = 0.0

    def line(self) -> str:
        return (f"integrated autocorrelation time {self.integrated_time:.1f} steps "
                f"(ρ(1) = {float(self.autocorrelation[1]):.3f}); {self.effective_draws:.0f} "
                f"effective draws from {self.chains} chains x {self.steps} steps; chain age "
                f"{self.age:.0f} steps")


def diagnose(series: Tensor, *, age: float = 0.0, max_lag: int | None = None) -> ChainDiagnostics:
    """Autocorrelation and τ of a statistic recorded as ``series`` (T, C)."""
    if series.dim() == 1:
        series = series[:, None]
    t, c = series.shape
    rho = autocorrelation(series, max_lag)
    tau = max(integrated_time(rho), 1e-12)
    return ChainDiagnostics(rho, tau, t * c / max(tau, 1.0), t, c, age)
