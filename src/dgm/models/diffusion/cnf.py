r"""Continuous normalizing flows (FFJORD, RNODE) and the ODE-model machinery they share with
flow matching (Book §9.4.1).

An ODE model moves the model space (:mod:`dgm.models.diffusion.common`; t = 0) to a Gaussian
base (t = 1) along dz/dt = v_θ(t, z) (Book Eq. 9.38-9.39; the library's time direction,
:mod:`dgm.core.schedules`, is the reverse of the book's CNF section, which puts the base at
t = 0). By the instantaneous change of variables (Eq. 9.41, 9.52-9.56)

    log p_0(y) = log N(z_1 | 0, s² I) + ∫_0^1 tr(∂v_θ(t, z_t)/∂z_t) dt,     z_0 = y,

solved as one augmented ODE (:func:`~dgm.core.ode_likelihood.ode_log_likelihood`), with the
exact trace (D vector-Jacobian products) or Hutchinson's εᵀJε (Eq. 9.57-9.58). Discrete data
are scored by the dequantization bound log P(x) >= E_u[log p_0(2(x + u)/L - 1)] + D log(2/L).
Sampling solves the ODE backward, from z_1 ~ N(0, s² I) at t = 1 to t = 0.

:class:`OdeFlowModel` holds that machinery once (the velocity with classifier-free guidance,
``log_prob_estimate``, ``sample``, :meth:`OdeFlowModel.integrate`); :class:`CNF` trains the
field by maximum likelihood through the solver, and
:class:`~dgm.models.diffusion.flow_matching.FlowMatching` by regression on conditional
velocities.

References:
    Chen, Rubanova, Bettencourt, Duvenaud. Neural ordinary differential equations. NeurIPS 2018.
    Grathwohl, Chen, Bettencourt, Sutskever, Duvenaud. FFJORD: free-form continuous dynamics for
    scalable reversible generative models. ICLR 2019.
    Finlay, Jacobsen, Nurbekyan, Oberman. How to train your neural ODE: the world of Jacobian
    and kinetic regularization. ICML 2020 (RNODE).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dgm.core.base import Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.errors import ConfigError
from dgm.core.ode_likelihood import DIVERGENCES, ode_log_likelihood
from dgm.core.registry import register_model
from dgm.core.solvers import FIXED_SOLVERS, SOLVERS, Solution, solve_ode
from dgm.core.spec import DataKind, DataSpec
from dgm.models.diffusion.common import (
    ContinuousTimeModel,
    NetworkConfig,
    OdeEvalConfig,
    build_network,
    check_sample_steps,
    standard_normal_log_prob,
)

__all__ = ["OdeFlowConfig", "OdeFlowModel", "CNFConfig", "CNF"]


def check_solver(name: str, where: str) -> str:
    if name not in SOLVERS:
        raise ConfigError(f"{where} must be one of {', '.join(SOLVERS)}, got {name!r}")
    return name


@dataclass(frozen=True, kw_only=True)
class OdeFlowConfig(NetworkConfig, OdeEvalConfig):
    """What every ODE model shares: the network (:class:`NetworkConfig`), how its likelihood
    is evaluated (:class:`OdeEvalConfig`) and how it samples.

    Args:
        sampler: the ODE solver of ``sample`` (:data:`~dgm.core.solvers.SOLVERS`); adaptive
            ones use ``eval_rtol``/``eval_atol``.
        sample_steps: intervals of a fixed-step sampler.
        time_scale: as in :class:`NetworkConfig`, 10 here: the denoisers' 1000 lets a field
            vary within a few thousandths of t, so that a CNF trained on a fixed grid exploits
            the gaps between its times and adaptive solvers take hundreds of steps (248 vs 68
            dopri5 evaluations at the same NLL, measured on the digits).
    """

    sampler: str = "dopri5"
    sample_steps: int = 50
    time_scale: float = 10.0

    def __post_init__(self) -> None:
        NetworkConfig.__post_init__(self)
        OdeEvalConfig.__post_init__(self)
        check_solver(self.sampler, "model.sampler")
        if self.sample_steps < 1:
            raise ConfigError(f"model.sample_steps must be >= 1, got {self.sample_steps}")


class OdeFlowModel(ContinuousTimeModel):
    r"""An ODE flow dz/dt = v_θ(t, z, c) from the model space (t = 0) to N(0, s² I) (t = 1):
    the likelihood, sampling and guidance that CNFs and flow matching share (Book §9.4).

    ``self.net(z, t, y)`` is the velocity (:func:`~.common.build_network`; its last layer
    starts at zero, so a fresh model is the identity flow). Subclasses implement ``loss`` and
    may change :meth:`base_std`.

    - ``log_prob_estimate(x, y)``: the ODE likelihood with the ``eval_*`` settings, and its
      standard error (Hutchinson probes, dequantization draws); a class-conditional model
      scores log p(x | y), or with y None the unconditional log p(x) (the null label).
    - ``sample(n, steps=, solver=, guidance=)``: z_1 ~ N(0, s² I), solved from t = 1 to 0,
      mapped to the data; ``guidance`` is the classifier-free scale (1: plain conditional).
    """

    likelihood = Likelihood.ESTIMATE
    sample_options = frozenset({"steps", "solver", "guidance"})
    #: what the model is, in the label of its likelihood
    what: str = "ODE flow"

    def __init__(self, spec: DataSpec, config: OdeFlowConfig) -> None:
        super().__init__(spec, config)
        self.config = config
        self.dequantization = "uniform" if self.discrete else None
        self.net = build_network(spec, config, outputs=self.net_outputs())

    def net_outputs(self) -> int:
        """Channels per coordinate of the network's output: 1, the velocity (subclasses that
        read the velocity from other outputs, :meth:`field`, say how many)."""
        return 1

    @classmethod
    def likelihood_on(cls, kind: DataKind) -> Likelihood:
        """An estimate: solver error and (with Hutchinson traces) probe noise, and on discrete
        data the dequantization bound."""
        return Likelihood.ESTIMATE

    def base_std(self) -> float:
        """s, the standard deviation of the Gaussian base at t = 1."""
        return 1.0

    def base_log_prob(self, z: Tensor) -> Tensor:
        """log N(z | 0, s² I) per example."""
        return standard_normal_log_prob(z, self.base_std() ** 2)

    def field(self, z: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """v_θ(t, z | y), t of shape (N,): the network's output (subclasses may read it
        otherwise)."""
        return self.net(z, t, y)

    def velocity(self, z: Tensor, t: Tensor, y: Tensor | None = None, guidance: float = 1.0
                 ) -> Tensor:
        """v_θ(t, z | y) with classifier-free guidance of scale ``guidance``; t of shape (N,)."""
        return self.guided(self.field, z, t, y, guidance)

    def describe(self) -> str:
        """What the model is, for the label of its likelihood."""
        return self.what

    # --- likelihood ---------------------------------------------------------------------------

    def log_prob_estimate(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LikelihoodEstimate:
        """log P(x) by the ODE likelihood (a dequantization bound on discrete data), its
        standard error, and a note on the solver, trace and dequantization."""
        return self.ode_estimate(
            x, lambda t, z, lab: self.field(z, t.expand(z.shape[0]), lab), self.base_log_prob,
            self.config,
            t0=0.0, t1=1.0, labels=self.likelihood_labels(x, y), generator=generator,
            what=self.describe(),
        )

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The estimate of :meth:`log_prob_estimate`, (N,)."""
        return self.log_prob_estimate(x, y).log_prob

    # --- sampling -----------------------------------------------------------------------------

    def integrate(
        self, z1: Tensor, y: Tensor | None = None, *, guidance: float = 1.0,
        solver: str | None = None, steps: int | None = None,
    ) -> Solution:
        """Solve dz/dt = v_θ from t = 1 (z1, model space) to t = 0; no gradient is kept.
        ``solver``/``steps`` default to ``sampler``/``sample_steps``."""
        solver = check_solver(solver if solver is not None else self.config.sampler, "solver")
        steps = check_sample_steps(steps if steps is not None else self.config.sample_steps)

        def field(t: Tensor, z: Tensor) -> Tensor:
            return self.velocity(z, t.expand(z.shape[0]), y, guidance)

        with torch.no_grad():
            return solve_ode(field, z1, 1.0, 0.0, solver=solver, steps=steps,
                             rtol=self.config.eval_rtol, atol=self.config.eval_atol)

    def base_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of the base N(0, s² I) in the model space's shape (from ``generator``)."""
        device = generator.device if generator is not None else self.loc.device
        eps = torch.randn((n, *self.spec.event_shape), generator=generator, device=device,
                          dtype=self.dtype)
        return eps.to(self.loc.device) * self.base_std()

    def sample(
        self,
        n: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
        steps: int | None = None,
        solver: str | None = None,
        guidance: float = 1.0,
    ) -> Tensor:
        """n examples: z_1 from the base, solved back to t = 0 with ``solver`` (default
        ``sampler``) in ``steps`` intervals (fixed-step solvers), mapped to the data."""
        check_solver(solver if solver is not None else self.config.sampler, "solver")
        check_sample_steps(steps if steps is not None else self.config.sample_steps)
        self.check_guidance(guidance)
        labels = self.sampling_labels(n, y)
        z1 = self.base_noise(n, generator)
        sol = self.integrate(z1, labels, guidance=guidance, solver=solver, steps=steps)
        assert isinstance(sol.state, Tensor)
        self.last_sample_nfe = sol.nfe
        return self.to_data(sol.state)


@dataclass(frozen=True, kw_only=True)
class CNFConfig(OdeFlowConfig):
    """A continuous normalizing flow trained by maximum likelihood (FFJORD / RNODE).

    Args:
        train_solver: a fixed-step solver (euler, heun, rk4) that training backpropagates
            through.
        train_steps: its intervals on [0, 1].
        train_divergence: ``"hutchinson"`` (one Rademacher probe per example, FFJORD) or
            ``"exact"`` (D vector-Jacobian products per evaluation: small D only).
        kinetic_weight: λ_K of RNODE's kinetic energy ∫||v||² dt (Finlay et al. use 0.01).
        jacobian_weight: λ_J of RNODE's Jacobian norm ∫||εᵀ ∂v/∂z||² dt (0.01 there).
        (the ``eval_*`` fields, ``sampler``, ``sample_steps`` and the network:
        :class:`OdeFlowConfig`.)
    """

    train_solver: str = "rk4"
    train_steps: int = 8
    train_divergence: Literal["hutchinson", "exact"] = "hutchinson"
    kinetic_weight: float = 0.0
    jacobian_weight: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.train_solver not in FIXED_SOLVERS:
            raise ConfigError(f"model.train_solver must be a fixed-step solver "
                              f"({', '.join(FIXED_SOLVERS)}), got {self.train_solver!r}")
        if self.train_steps < 1:
            raise ConfigError(f"model.train_steps must be >= 1, got {self.train_steps}")
        if self.train_divergence not in DIVERGENCES:
            raise ConfigError(f"model.train_divergence must be one of {DIVERGENCES}, "
                              f"got {self.train_divergence!r}")
        if self.kinetic_weight < 0 or self.jacobian_weight < 0:
            raise ConfigError("model.kinetic_weight and model.jacobian_weight must be >= 0")


@register_model("cnf", CNFConfig)
class CNF(OdeFlowModel):
    r"""A continuous normalizing flow dz/dt = v_θ(t, z) trained by maximum likelihood through
    a fixed-step solver (FFJORD, RNODE; Book §9.4.1).

    Data (the model space; discrete data uniformly dequantized) at t = 0, N(0, I) at t = 1.
    The loss per example is

        -log p_0(y) - log|dy/dx| + λ_K ∫_0^1 ||v||² dt + λ_J ∫_0^1 ||εᵀ ∂v/∂z||² dt,

    with log p_0(y) = log N(z_1) + ∫ tr(∂v/∂z) dt (Eq. 9.52-9.56) from ``train_solver`` in
    ``train_steps`` steps and a Hutchinson trace with one Rademacher probe (or the exact trace),
    backpropagated through the solver (no adjoint: memory grows with the steps). With RNODE's
    weights (Finlay et al. 2020) the loss is *not* the NLL alone: :meth:`loss_terms` names the
    parts (``nll``, ``kinetic``, ``jacobian``); the regularizers favour straight, smooth paths
    that a solver needs few steps for. Evaluation uses the ``eval_*`` settings (dopri5, exact
    trace by default), not the training solver: with too few training steps the network fits
    the discretization instead of the ODE (the trace summed by RK4 is not the log-determinant
    of the RK4 map), and the training objective then overstates the likelihood that the ODE
    gives; compare the two (``eval_solver``/``eval_steps`` set to the training solver) when
    choosing ``train_steps``.

    The book gives no CNF code; its flow-matching listing's likelihood has four errors that
    :mod:`dgm.core.ode_likelihood` avoids (Book §9.4.3).
    """

    what = "CNF"

    def __init__(self, spec: DataSpec, config: CNFConfig) -> None:
        super().__init__(spec, config)
        self.config: CNFConfig = config

    @property
    def regularized(self) -> bool:
        return self.config.kinetic_weight > 0 or self.config.jacobian_weight > 0

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``nll``: -(log p_0(y) + log|dy/dx|) from the training solver (an estimate of the
        NLL of the dequantized data; its mean bounds the discrete NLL); with RNODE weights also
        ``kinetic`` (λ_K ∫||v||² dt) and ``jacobian`` (λ_J ∫||εᵀJ||² dt). They sum to
        :meth:`loss`."""
        self.check_input(x)
        c = self.config
        y0 = self.dequantize(x)
        labels = self.training_labels(y)
        res = ode_log_likelihood(
            lambda t, z: self.net(z, t, labels), y0, self.base_log_prob, solver=c.train_solver,
            steps=c.train_steps, divergence=c.train_divergence, num_probes=1,
            create_graph=True, regularize=self.regularized,
        )
        terms = {"nll": -(res.log_prob + self.log_jacobian())}
        if self.regularized:
            assert res.kinetic is not None and res.jacobian_norm is not None
            terms["kinetic"] = c.kinetic_weight * res.kinetic
            terms["jacobian"] = c.jacobian_weight * res.jacobian_norm
        return terms

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The training objective per example: the NLL estimate plus RNODE's regularizers."""
        terms = self.loss_terms(x, y)
        return sum(terms.values(), torch.zeros_like(terms["nll"]))

    def describe(self) -> str:
        c = self.config
        reg = (f", RNODE λ_K={c.kinetic_weight:g} λ_J={c.jacobian_weight:g}"
               if self.regularized else "")
        return f"CNF trained with {c.train_solver} x{c.train_steps}{reg}"

