r"""Langevin samplers shared by score models and energy-based models.

The unadjusted Langevin algorithm (ULA) draws from p(x) using only its score ∇ log p(x):

    x <- x + α ∇ log p(x) + sqrt(2α) ε,    ε ~ N(0, I)

(Book §7.3 and §9.2.1, eq. 9.2/9.14). A score model passes s_θ(x) ≈ ∇ log p(x); an energy model
p(x) ∝ exp(-E(x)) passes -∇E(x). Every function here takes the score, never the energy, so the
two families share one sampler.

**Tied versus decoupled noise.** The noise std must be tied to the step, sqrt(2α): only then is
the chain a discretization of the Langevin diffusion dx = ∇ log p dt + sqrt(2) dW, whose
stationary law is p, so that the chain samples p as α -> 0 (``noise="tied"``, the default).
The book's score-matching listing instead chooses α = 0.1·σ and a noise std η = 0.05
independently. With η² = 2αT the chain discretizes dx = ∇ log p dt + sqrt(2T) dW, whose
stationary law is p^(1/T): for small steps it samples the sharpened ("cooled") target
p^(2α/η²), not p (with α = 0.01, η = 0.05 that is p^8: a standard normal target is sampled
with variance 1/8). EBM practitioners decouple the noise on purpose (a small η is a cheap
way to sharpen samples); pass ``noise=η`` to get that, knowing what it targets.

For finite α even tied ULA is biased: on a Gaussian target its stationary variance is
:func:`ula_stationary_variance`, larger than the target's; the bias vanishes as α -> 0.

**Multimodal targets.** A single Langevin chain at one noise level crosses low-density regions
too slowly to get the mode weights right. :func:`annealed_langevin` (Song & Ermon 2019,
Algorithm 1) runs it over a decreasing sequence of noise levels σ_1 > ... > σ_L, where the
smoothed densities p_σ are easy to mix in at large σ. :func:`langevin_corrector` is the
corrector step of the predictor-corrector samplers of Song et al. (2021), whose step size is set
per example from a target signal-to-noise ratio (:func:`snr_step_size`).

**Persistent chains.** :class:`ReplayBuffer` keeps chains between the updates of an
energy-based model (Du & Mordatch 2019; Grathwohl et al. 2020): each update continues stored
chains, a fraction of them restarted from noise, and writes them back.

Score functions may use autograd internally (an energy's gradient): nothing here disables
gradients around ``score_fn``; the updates themselves run without a graph and the returned
samples are detached, so no graph accumulates over the chain.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError

__all__ = [
    "Noise",
    "ReplayBuffer",
    "annealed_langevin",
    "langevin",
    "langevin_corrector",
    "langevin_step",
    "snr_step_size",
    "ula_stationary_variance",
]

#: ``"tied"`` (noise std sqrt(2α), samples p as α -> 0) or a fixed noise std η >= 0.
Noise = str | float


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {value}")
    return float(value)


def _check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{name} must be a finite number >= 0, got {value}")
    return float(value)


def _check_count(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_noise(noise: Noise) -> None:
    if isinstance(noise, str):
        if noise != "tied":
            raise ConfigError(f"noise must be 'tied' or a noise std >= 0, got {noise!r}")
        return
    _check_nonnegative("noise (a noise std)", noise)


def _noise_std(step_size: float | Tensor, noise: Noise) -> float | Tensor:
    if noise != "tied":
        return float(noise)
    if isinstance(step_size, Tensor):
        return torch.sqrt(2 * step_size)
    return math.sqrt(2 * step_size)


def langevin_step(
    x: Tensor,
    score: Tensor,
    step_size: float | Tensor,
    *,
    noise: Noise = "tied",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One unadjusted Langevin step x' = x + α·score + η·ε, ε ~ N(0, I).

    ``score`` is ∇ log p(x) already evaluated at x (s_θ(x) for a score model, -∇E(x) for an
    energy model). With ``noise="tied"``, η = sqrt(2α) (Book §9.2.1, eq. 9.2/9.14; Song & Ermon
    2019, Algorithm 1), and the chain samples p as α -> 0. With ``noise=η`` (a float) the noise
    is decoupled from the step, as in the book's listing and common EBM practice; for small
    steps the chain then targets p^(2α/η²), not p (see the module docstring).

    Args:
        x: the current state, any shape.
        score: ∇ log p(x), the same shape as x.
        step_size: α > 0: a float, or a tensor broadcastable to x (per-example steps, as
            :func:`snr_step_size` returns; its positivity is the caller's responsibility).
        noise: ``"tied"`` or a noise std η >= 0 (0 gives plain gradient ascent on log p).
        generator: the random generator for ε (on x's device).

    >>> x = torch.tensor([1.0, -2.0])
    >>> langevin_step(x, -x, 0.5, noise=0.0)  # no noise: half-way to the mode of N(0, 1)
    tensor([ 0.5000, -1.0000])
    """
    if score.shape != x.shape:
        raise DataError(
            f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}"
        )
    if not isinstance(step_size, Tensor):
        step_size = _check_positive("step_size", step_size)
    _check_noise(noise)
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return x + step_size * score + _noise_std(step_size, noise) * eps


def _check_clamp(clamp: tuple[float, float] | None) -> None:
    if clamp is None:
        return
    if len(clamp) != 2 or not clamp[0] < clamp[1]:
        raise ConfigError(f"clamp must be a pair (low, high) with low < high, got {clamp!r}")


def langevin(
    x0: Tensor,
    score_fn: Callable[[Tensor], Tensor],
    step_size: float,
    steps: int,
    *,
    noise: Noise = "tied",
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    r"""Run ``steps`` unadjusted Langevin steps x <- x + α ∇ log p(x) + η ε from x0.

    The update is :func:`langevin_step` with ``score_fn(x) -> ∇ log p(x)`` (Book §7.3 for
    energy models, score = -∇E; §9.2.1, eq. 9.2/9.14 for score models); η = sqrt(2α) when
    ``noise="tied"``. ``clamp=(low, high)`` clips x after every step (for data on a bounded
    range; the chain then no longer targets p exactly near the bounds).

    ``score_fn`` is called in the caller's grad mode, so it may compute -∇E with
    ``torch.autograd.grad`` on an input it marks ``requires_grad`` (under
    ``torch.enable_grad()`` if the caller may run the sampler inside ``torch.no_grad()``).
    The update itself builds no graph, and the result is detached.

    Returns:
        x_T, the same shape as x0, without a grad graph.
    """
    step_size = _check_positive("step_size", step_size)
    _check_count("steps", steps, 0)
    _check_noise(noise)
    _check_clamp(clamp)
    x = x0.detach()
    for _ in range(steps):
        score = score_fn(x)
        with torch.no_grad():
            x = langevin_step(x, score.detach(), step_size, noise=noise, generator=generator)
            if clamp is not None:
                x = x.clamp(clamp[0], clamp[1])
    return x


def _check_sigmas(sigmas: Sequence[float] | Tensor) -> list[float]:
    values = [float(s) for s in (sigmas.flatten() if isinstance(sigmas, Tensor) else sigmas)]
    if not values:
        raise ConfigError("sigmas must hold at least one noise level")
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ConfigError(f"sigmas must be finite and > 0, got {values}")
    if any(values[i + 1] >= values[i] for i in range(len(values) - 1)):
        raise ConfigError(f"sigmas must be strictly decreasing (σ_1 > ... > σ_L), got {values}")
    return values


def _at_level(
    score_fn: Callable[[Tensor, float], Tensor], sigma: float
) -> Callable[[Tensor], Tensor]:
    return lambda x: score_fn(x, sigma)


def annealed_langevin(
    x0: Tensor,
    score_fn: Callable[[Tensor, float], Tensor],
    sigmas: Sequence[float] | Tensor,
    *,
    steps_per_level: int,
    epsilon: float,
    generator: torch.Generator | None = None,
    final_denoise: bool = False,
) -> Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each noise level σ_i of ``sigmas`` (strictly decreasing, σ_1 > ... > σ_L), with the
    step α_i = ε·σ_i²/σ_L², run ``steps_per_level`` tied-noise Langevin steps

        x <- x + α_i s(x, σ_i) + sqrt(2 α_i) ε,

    where ``score_fn(x, sigma: float) -> Tensor`` is the score of the data density smoothed
    by N(0, σ²), ∇_x log p_σ(x) (a noise-conditional score network s_θ(x, σ)); each level
    starts from the last sample of the previous one. The step α_i ∝ σ_i² keeps the
    signal-to-noise ratio of the updates the same at every level.

    With ``final_denoise=True`` the result is x + σ_L² s(x, σ_L), the posterior mean E[x | x̃]
    under the smallest noise level (Tweedie's formula; Jolicoeur-Martineau et al. 2021), which
    removes the residual N(0, σ_L²) noise from the samples.

    Args:
        x0: the initial state (Song & Ermon start from uniform noise).
        score_fn: ``score_fn(x, sigma: float) -> Tensor`` of x's shape.
        sigmas: the noise levels, largest first.
        steps_per_level: T >= 1, Langevin steps per level.
        epsilon: ε > 0, the step size at the smallest level.
        generator: the random generator for the noise.
        final_denoise: finish with one Tweedie denoising step.

    Returns:
        the samples, x0's shape, without a grad graph.
    """
    levels = _check_sigmas(sigmas)
    _check_count("steps_per_level", steps_per_level, 1)
    epsilon = _check_positive("epsilon", epsilon)
    smallest = levels[-1]
    x = x0.detach()
    for sigma in levels:
        alpha = epsilon * sigma**2 / smallest**2
        x = langevin(x, _at_level(score_fn, sigma), alpha, steps_per_level, generator=generator)
    if final_denoise:
        score = score_fn(x, smallest)
        with torch.no_grad():
            x = x + smallest**2 * score.detach()
    return x


def snr_step_size(score: Tensor, snr: float) -> Tensor:
    r"""The corrector step size of Song et al. (2021), Algorithm 5, one for the whole batch:

        α = 2 (r · ||z|| / ||s||)²,

    where r is the target signal-to-noise ratio, ||s|| the L2 norm of an example's score
    averaged over the batch and ||z|| = sqrt(D) the (approximate) expected norm of a
    D-dimensional standard normal. One step for the batch, as in the reference implementation:
    a step chosen per example from its own score depends on the state, and the chain then no
    longer leaves p_t invariant (with an exact Gaussian score its variance comes out several
    times too large in 2-D). A batch whose scores are all zero gets the step 0 (no move).

    Args:
        score: (N, ...) scores, the first dimension the batch.
        snr: r > 0 (Song et al. use 0.16 on CIFAR-10).

    Returns:
        α as a 0-dim tensor.

    >>> snr_step_size(torch.tensor([[3.0, 4.0], [0.0, 1.0]]), 0.5)  # D = 2, mean ||s|| = 3
    tensor(0.1111)
    """
    if score.dim() < 1 or score.shape[0] == 0:
        raise DataError(f"score must have a batch dimension, got shape {tuple(score.shape)}")
    snr = _check_positive("snr", snr)
    n = score.shape[0]
    dim = score[0].numel()
    score_norm = score.reshape(n, -1).norm(dim=1).mean()
    if float(score_norm) == 0.0:
        return score_norm.new_zeros(())
    return 2 * (snr * math.sqrt(dim) / score_norm) ** 2


def langevin_corrector(
    x: Tensor,
    score: Tensor,
    snr: float,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One Langevin corrector step of Song et al. (2021), Algorithm 5:

        x' = x + α s + sqrt(2α) z,    α = 2 (r · ||z|| / ||s||)²  (:func:`snr_step_size`),

    with one step for the batch chosen from the target signal-to-noise ratio r, and tied noise.
    ``score`` is s = ∇_x log p_t(x) already evaluated at x, of shape (N, ...).
    """
    with torch.no_grad():
        step = snr_step_size(score.detach(), snr)
        return langevin_step(x.detach(), score.detach(), step, generator=generator)


def ula_stationary_variance(s2: float, step_size: float, noise_std: float | None = None) -> float:
    r"""The exact stationary variance of ULA on a 1-D Gaussian target N(μ, s²).

    The score is (μ - x)/s², so the chain x' = x + α(μ - x)/s² + η ε is AR(1) with coefficient
    ρ = 1 - α/s² and innovation variance η²; its stationary law is N(μ, η²/(1 - ρ²)). With tied
    noise (``noise_std=None``, η² = 2α) this is s²/(1 - α/(2s²)) > s²: the discretization bias,
    which vanishes as α -> 0. With a decoupled η it is ≈ η² s²/(2α) for small α, the variance
    of p^(2α/η²) (the sharpening of the book's listing).

    Raises:
        ConfigError: if |ρ| >= 1 (α >= 2 s², the chain diverges), or on a non-positive s² or α.

    >>> round(ula_stationary_variance(1.0, 0.01), 4)  # tied: slightly above s² = 1
    1.005
    >>> round(ula_stationary_variance(1.0, 0.01, noise_std=0.05), 4)  # the book's α and η
    0.1256
    """
    s2 = _check_positive("s2", s2)
    step_size = _check_positive("step_size", step_size)
    if noise_std is None:
        noise_var = 2 * step_size
    else:
        noise_var = _check_nonnegative("noise_std", noise_std) ** 2
    rho = 1 - step_size / s2
    if abs(rho) >= 1:
        raise ConfigError(
            f"ULA diverges on N(μ, {s2}) with step_size {step_size}: "
            f"|1 - α/s²| = {abs(rho):.3g} >= 1 (need α < 2 s² = {2 * s2})"
        )
    return noise_var / (1 - rho**2)


class ReplayBuffer(nn.Module):
    r"""Persistent Langevin chains with restarts (Du & Mordatch 2019; Grathwohl et al. 2020).

    Short-run Langevin from noise mixes poorly; persistent chains (Tieleman 2008) carry each
    chain's last state to the next update instead. A draw takes ``n`` stored chains at random
    (with replacement) and restarts each from fresh noise with probability ``reinit_prob``, so
    that the buffer keeps exploring; :meth:`update` writes the moved chains back.

    The states live in a registered buffer: they are part of the owning model's
    ``state_dict`` and so of every checkpoint, and a resumed run continues the same chains.
    ``noise(n) -> (n, *shape)`` makes the restarts (e.g. uniform on the data's box).

    Args:
        size: the number of stored chains.
        shape: the shape of one state.
        reinit_prob: the probability ρ ∈ [0, 1] that a drawn chain restarts from noise.
    """

    def __init__(self, size: int, shape: tuple[int, ...], reinit_prob: float) -> None:
        super().__init__()
        _check_count("size", size, 1)
        reinit_prob = _check_nonnegative("reinit_prob", reinit_prob)
        if reinit_prob > 1:
            raise ConfigError(f"reinit_prob must lie in [0, 1], got {reinit_prob}")
        self.reinit_prob = reinit_prob
        self.register_buffer("states", torch.zeros(size, *shape))

    def reseed(self, noise: Callable[[int], Tensor]) -> None:
        """Restart every chain from ``noise`` (at creation, and after a divergence)."""
        with torch.no_grad():
            self.states.copy_(noise(self.states.shape[0]))

    def draw(
        self, n: int, noise: Callable[[int], Tensor], generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``n`` starting states and the buffer rows they came from, (n, *shape) and (n,).

        Each row is a stored chain, or with probability ρ fresh ``noise``.
        """
        device = self.states.device
        index = torch.randint(self.states.shape[0], (n,), generator=generator,
                              device=generator.device if generator is not None else device)
        restart = torch.rand(n, generator=generator, device=index.device) < self.reinit_prob
        index, restart = index.to(device), restart.to(device)
        x = self.states[index].clone()
        if bool(restart.any()):
            x[restart] = noise(int(restart.sum())).to(x)
        return x, index

    def update(self, index: Tensor, x: Tensor) -> None:
        """Store the moved chains ``x`` at rows ``index`` (as :meth:`draw` returned them)."""
        with torch.no_grad():
            self.states[index] = x.detach().to(self.states)
