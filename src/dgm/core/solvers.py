r"""ODE and SDE solvers as plain functions over a state that is a tensor or a tuple of tensors.

An ODE is ``field(t, state) -> d state / dt`` with ``t`` a 0-dim tensor; time may run either
way (generation runs from t = 1 to t = 0, see :mod:`dgm.core.schedules`). Every solver
returns a :class:`Solution` with the number of function evaluations (NFE), the cost that
every sample and likelihood in the library reports beside its quality.

Fixed-step (on a uniform grid of ``steps`` intervals, Book §9.3.2):

- ``euler``: x_{n+1} = x_n + h f(t_n, x_n)                          (order 1, 1 NFE per step)
- ``heun``: the explicit trapezoid, x + h/2 (k1 + k2), k2 = f(t + h, x + h k1) (order 2, 2 NFE)
- ``rk4``: the classical Runge-Kutta method                         (order 4, 4 NFE)

Adaptive (torchdiffeq): ``dopri5``, ``bosh3``, ``adaptive_heun`` with ``rtol``/``atol`` and a
cap on the steps (``max_steps``) so that a stiff field stops with a clear error instead of
hanging.

SDEs dx = f(t, x) dt + g(t) dw by Euler-Maruyama: x_{n+1} = x_n + f h + g sqrt(|h|) ε.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Union

import torch
from torch import Tensor

from dgm.core.errors import ConfigError, SamplingError

__all__ = [
    "State",
    "Field",
    "Solution",
    "FIXED_SOLVERS",
    "ADAPTIVE_SOLVERS",
    "SOLVERS",
    "time_grid",
    "solve_ode",
    "euler_maruyama",
    "SolverError",
]

State = Union[Tensor, tuple[Tensor, ...]]
Field = Callable[[Tensor, State], State]

FIXED_SOLVERS = ("euler", "heun", "rk4")
ADAPTIVE_SOLVERS = ("dopri5", "bosh3", "adaptive_heun")
SOLVERS = FIXED_SOLVERS + ADAPTIVE_SOLVERS
_STAGES = {"euler": 1, "heun": 2, "rk4": 4}


class SolverError(SamplingError):
    """An adaptive solver that needed more steps than allowed (a stiff or diverging field) or
    whose step fell below the resolution of t."""


@dataclass(frozen=True)
class Solution:
    """The state at the end time and the number of field evaluations it cost."""

    state: State
    nfe: int


def time_grid(t0: float, t1: float, steps: int, *, device: torch.device | None = None,
              dtype: torch.dtype = torch.float32) -> Tensor:
    """``steps + 1`` evenly spaced times from t0 to t1 (either direction)."""
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    return torch.linspace(t0, t1, steps + 1, device=device, dtype=dtype)


def _axpy(x: tuple[Tensor, ...], h: Tensor | float, *ks: tuple[tuple[Tensor, ...], float]
          ) -> tuple[Tensor, ...]:
    """x + h Σ_j c_j k_j, elementwise over the tuple."""
    out = []
    for i, xi in enumerate(x):
        acc = sum(c * k[i] for k, c in ks)
        out.append(xi + h * acc)
    return tuple(out)


def _as_tuple(state: State) -> tuple[tuple[Tensor, ...], bool]:
    if isinstance(state, Tensor):
        return (state,), True
    return tuple(state), False


def _fixed(field: Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]],
           x: tuple[Tensor, ...], ts: Tensor, solver: str) -> tuple[Tensor, ...]:
    for n in range(len(ts) - 1):
        t, h = ts[n], ts[n + 1] - ts[n]
        k1 = field(t, x)
        if solver == "euler":
            x = _axpy(x, h, (k1, 1.0))
        elif solver == "heun":
            k2 = field(t + h, _axpy(x, h, (k1, 1.0)))
            x = _axpy(x, h, (k1, 0.5), (k2, 0.5))
        else:
            k2 = field(t + h / 2, _axpy(x, h / 2, (k1, 1.0)))
            k3 = field(t + h / 2, _axpy(x, h / 2, (k2, 1.0)))
            k4 = field(t + h, _axpy(x, h, (k3, 1.0)))
            x = _axpy(x, h, (k1, 1 / 6), (k2, 1 / 3), (k3, 1 / 3), (k4, 1 / 6))
    return x


def solve_ode(
    field: Field,
    state: State,
    t0: float,
    t1: float,
    *,
    solver: str = "heun",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 10_000,
) -> Solution:
    """Integrate d state/dt = field(t, state) from t0 to t1.

    Args:
        field: ``field(t, state)`` with ``t`` a 0-dim tensor; returns a state of the same shape.
        state: the state at t0, a tensor or a tuple of tensors (e.g. (x, log-density)).
        solver: one of :data:`SOLVERS`.
        steps: intervals of a fixed-step solver (ignored by adaptive ones).
        rtol, atol: tolerances of an adaptive solver.
        max_steps: the most steps an adaptive solver may take before :class:`SolverError`.
    """
    if solver not in SOLVERS:
        raise ConfigError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    x, single = _as_tuple(state)
    nfe = 0

    def counted(t: Tensor, s: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        nonlocal nfe
        nfe += 1
        out = field(t, s[0] if single else s)
        return (out,) if single else tuple(out)

    ref = x[0]
    if solver in FIXED_SOLVERS:
        ts = time_grid(t0, t1, steps, device=ref.device, dtype=ref.dtype)
        out = _fixed(counted, x, ts, solver)
    else:
        from torchdiffeq import odeint

        ts = torch.tensor([t0, t1], device=ref.device, dtype=ref.dtype)
        try:
            # step_t: land a step exactly on t1, so that no stage is evaluated beyond it
            # (torchdiffeq otherwise steps past the end and interpolates back)
            traj = odeint(counted, x, ts, rtol=rtol, atol=atol, method=solver,
                          options={"max_num_steps": max_steps, "step_t": ts[1:]})
        except AssertionError as err:
            if "max_num_steps" in str(err):
                what = f"needed more than {max_steps} steps"
            elif "underflow in dt" in str(err):
                what = f"shrank its step below the {ref.dtype} resolution of t"
            else:
                raise
            raise SolverError(
                f"{solver} {what} at rtol={rtol}, atol={atol} ({nfe} evaluations): the field "
                "is stiff, diverging or too noisy for the tolerances; loosen them, raise "
                "max_steps, use float64, or use a fixed-step solver"
            ) from None
        out = tuple(s[-1] for s in traj)
    return Solution(out[0] if single else out, nfe)


def euler_maruyama(
    drift: Callable[[Tensor, Tensor], Tensor],
    diffusion: Callable[[Tensor], Tensor],
    x: Tensor,
    ts: Tensor,
    *,
    generator: torch.Generator | None = None,
    last_step_noise: bool = True,
) -> Solution:
    r"""dx = drift(t, x) dt + diffusion(t) dw on the grid ``ts`` (either direction):
    x_{n+1} = x_n + f(t_n, x_n) h + g(t_n) sqrt(|h|) ε_n, ε_n ~ N(0, I).

    ``diffusion(t)`` is g(t), a 0-dim tensor or one that broadcasts against x. With
    ``last_step_noise=False`` the last step adds no noise (the usual final denoising step of
    reverse-time samplers, whose last noise would only blur the output).
    """
    nfe = 0
    for n in range(len(ts) - 1):
        t, h = ts[n], ts[n + 1] - ts[n]
        x = x + drift(t, x) * h
        nfe += 1
        if last_step_noise or n < len(ts) - 2:
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x = x + diffusion(t) * h.abs().sqrt() * noise
    return Solution(x, nfe)
