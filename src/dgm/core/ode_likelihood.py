r"""Log-likelihoods of ODE models by the instantaneous change of variables, in bounded memory.

For dz/dt = v(t, z) carrying data at t = 0 to the base distribution at t = 1 (the library's
time direction, :mod:`dgm.core.schedules`), d log p_t(z_t)/dt = -tr(∂v/∂z) (Book Eq. 9.41),
so

    log p_0(x) = log p_1(z_1) + ∫_0^1 tr(∂v(t, z_t)/∂z_t) dt,       z_0 = x      (Eq. 9.52-9.56)

solved as one augmented ODE for (z, ∫ tr) (FFJORD, Grathwohl et al. 2019). The trace is exact
(D vector-Jacobian products per evaluation) or Hutchinson's εᵀ J ε with the probes ε held fixed
along the path; with M probes in one solve (the path z_t does not depend on them) the per-example
standard error of the estimate is std over probes / sqrt(M).

Memory stays bounded: the examples are solved in chunks of ``chunk``, and the exact trace runs
its vector-Jacobian products in blocks (:func:`~dgm.core.estimators.exact_divergence`).
Adaptive solvers stop with :class:`~dgm.core.solvers.SolverError` past ``max_steps`` instead of
hanging. The book's listing has four errors this module avoids (Book §9.4.3): the trace of
1ᵀJ instead of J, the Jacobian of a different function than the one integrated, the trace not
accumulated over steps (nor multiplied by Δt), and the time grid run in the wrong direction.

Training a CNF (:func:`augmented_field` with ``create_graph=True``) backpropagates through a
fixed-step solver; the kinetic energy ∫ ||v||² dt and the Jacobian norm ∫ ||εᵀ J||² dt of RNODE
(Finlay et al. 2020) are accumulated in the same solve when asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from dgm.core.errors import ConfigError
from dgm.core.estimators import exact_divergence, probe
from dgm.core.solvers import solve_ode

__all__ = ["OdeLikelihood", "augmented_field", "ode_log_likelihood", "DIVERGENCES"]

DIVERGENCES = ("exact", "hutchinson")
Velocity = Callable[[Tensor, Tensor], Tensor]  # (t (N,), z) -> dz/dt


@dataclass(frozen=True)
class OdeLikelihood:
    """log p_0(x) per example (N,), its standard error from the Hutchinson probes (None for
    the exact trace), the latent z_1, the function evaluations, and (when asked) the RNODE
    regularizers per example: kinetic ∫||v||² dt and Jacobian ∫||εᵀJ||² dt (else None)."""

    log_prob: Tensor
    stderr: Tensor | None
    z: Tensor
    nfe: int
    kinetic: Tensor | None = None
    jacobian_norm: Tensor | None = None


def augmented_field(
    velocity: Velocity,
    *,
    divergence: str = "exact",
    probes: Tensor | None = None,
    create_graph: bool = False,
    regularize: bool = False,
) -> Callable[[Tensor, tuple[Tensor, ...]], tuple[Tensor, ...]]:
    r"""The field of the state (z, ∫ tr_1, ..., ∫ tr_M [, ∫||v||², ∫||εᵀJ||²]).

    ``probes`` (M, N, *z.shape[1:]) are the Hutchinson probes (ignored for the exact trace,
    which has one trace column). With ``create_graph`` the result can be backpropagated.
    """
    if divergence not in DIVERGENCES:
        raise ConfigError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if divergence == "hutchinson" and probes is None:
        raise ConfigError("the Hutchinson trace needs probes")

    def field(t: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        z = state[0]
        with torch.enable_grad():
            zg = z if z.requires_grad else z.detach().requires_grad_(True)
            tt = t.reshape(1).expand(z.shape[0]).to(z.dtype)
            v = velocity(tt, zg)
            if divergence == "exact":
                traces = [exact_divergence(v, zg, create_graph=create_graph)]
                vjps = []
            else:
                assert probes is not None
                traces, vjps = [], []
                for eps in probes:
                    (vjp,) = torch.autograd.grad(v, zg, eps, retain_graph=True,
                                                 create_graph=create_graph)
                    vjps.append(vjp)
                    traces.append((vjp * eps).reshape(z.shape[0], -1).sum(1))
        if not create_graph:
            v, traces = v.detach(), [tr.detach() for tr in traces]
        out = (v, *traces)
        if regularize:
            kinetic = v.reshape(z.shape[0], -1).pow(2).sum(1)
            if vjps:
                jac = vjps[0].reshape(z.shape[0], -1).pow(2).sum(1)
            else:  # the exact-trace path has no probe: draw one for the Frobenius estimate
                eps = probe(zg)
                with torch.enable_grad():
                    (vjp,) = torch.autograd.grad(v, zg, eps, retain_graph=True,
                                                 create_graph=create_graph)
                jac = vjp.reshape(z.shape[0], -1).pow(2).sum(1)
            out = out + (kinetic, jac)
        return out

    return field


def ode_log_likelihood(
    velocity: Velocity,
    x: Tensor,
    base_log_prob: Callable[[Tensor], Tensor],
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    solver: str = "dopri5",
    steps: int = 50,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    divergence: str = "exact",
    probe_kind: str = "rademacher",
    num_probes: int = 1,
    chunk: int | None = 256,
    max_steps: int = 10_000,
    create_graph: bool = False,
    regularize: bool = False,
    generator: torch.Generator | None = None,
) -> OdeLikelihood:
    r"""log p_{t0}(x) = log p_{t1}(z_{t1}) + ∫_{t0}^{t1} tr(∂v/∂z) dt, per example.

    Args:
        velocity: ``v(t, z)`` with t of shape (N,) and z like x; the ODE's field.
        x: the points (N, *shape), float.
        base_log_prob: log p_{t1}(z) per example, (N,).
        solver, steps, rtol, atol, max_steps: see :func:`~dgm.core.solvers.solve_ode`.
        divergence: ``"exact"`` or ``"hutchinson"`` (``num_probes`` probes of ``probe_kind``).
        chunk: examples per solve (None: all at once; required for ``create_graph``).
        create_graph: keep the graph, to train through the solve.
        regularize: also accumulate RNODE's kinetic and Jacobian terms.
    """
    if num_probes < 1:
        raise ConfigError(f"num_probes must be >= 1, got {num_probes}")
    if create_graph:
        chunk = None
    n = x.shape[0]
    size = n if chunk is None else max(1, chunk)
    logp, stderr, zs, kin, jac = [], [], [], [], []
    nfe = 0
    for start in range(0, n, size):
        xc = x[start:start + size]
        m = xc.shape[0]
        probes = None
        columns = 1
        if divergence == "hutchinson":
            probes = torch.stack([probe(xc, probe_kind, generator=generator)
                                  for _ in range(num_probes)])
            columns = num_probes
        state: tuple[Tensor, ...] = (xc, *[xc.new_zeros(m) for _ in range(columns)])
        if regularize:
            state = state + (xc.new_zeros(m), xc.new_zeros(m))
        field = augmented_field(velocity, divergence=divergence, probes=probes,
                                create_graph=create_graph, regularize=regularize)
        sol = solve_ode(field, state, t0, t1, solver=solver, steps=steps, rtol=rtol,
                        atol=atol, max_steps=max_steps)
        out = sol.state
        assert isinstance(out, tuple)
        nfe += sol.nfe
        z = out[0]
        traces = torch.stack(out[1:1 + columns])  # (columns, m)
        base = base_log_prob(z)
        per_probe = base.unsqueeze(0) + traces
        logp.append(per_probe.mean(0))
        if divergence == "hutchinson" and num_probes > 1:
            stderr.append(per_probe.std(0) / num_probes**0.5)
        zs.append(z)
        if regularize:
            kin.append(out[1 + columns])
            jac.append(out[2 + columns])
    return OdeLikelihood(
        log_prob=torch.cat(logp),
        stderr=torch.cat(stderr) if stderr else None,
        z=torch.cat(zs),
        nfe=nfe,
        kinetic=torch.cat(kin) if regularize else None,
        jacobian_norm=torch.cat(jac) if regularize else None,
    )
