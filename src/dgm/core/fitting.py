"""How a model is fitted: the update rule it declares, and what the trainer tells it after a step.

A model declares its rule as the value of ``fit`` (a class attribute, or set per instance from
its config); the trainer (:mod:`dgm.train.updates`) carries it out. The declarations are plain
data so that ``core`` knows nothing of the trainer:

- :class:`GradientFit`: minimize mean(``loss``) with one optimizer (``main``).
- :class:`EMFit`: sufficient statistics per epoch (summed across processes), then a closed-form
  M-step (:class:`~dgm.core.capabilities.ExpectationMaximization`).
- :class:`TwoPlayerFit`: two players with their own optimizers (a critic or discriminator and a
  generator), ``critic_steps`` critic steps per generator step
  (:class:`~dgm.core.capabilities.TwoPlayer`).
- :class:`AuxiliaryFit`: a main optimizer on ``loss`` and an auxiliary one on a scalar
  ``auxiliary_loss`` over disjoint parameters, e.g. an entropy bottleneck's quantiles
  (:class:`~dgm.core.capabilities.Auxiliary`).

State that lives between steps (a warm-up counter, a codebook's moving averages, a replay
buffer, persistent chains) is kept in buffers and moved in ``GenerativeModel.after_step``, which
the trainer calls once after every optimizer step that was taken (never for a step that the
non-finite guard skipped), with a :class:`StepInfo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import Tensor

from dgm.core.errors import ConfigError

__all__ = [
    "Fit",
    "GradientFit",
    "EMFit",
    "TwoPlayerFit",
    "AuxiliaryFit",
    "StepInfo",
    "MAIN",
    "em_statistics_begun",
    "AUXILIARY",
]

MAIN = "main"
AUXILIARY = "aux"


@dataclass(frozen=True)
class Fit:
    """Base of the update-rule declarations; ``players`` name the optimizers it needs."""

    @property
    def players(self) -> tuple[str, ...]:
        return ()


@dataclass(frozen=True)
class GradientFit(Fit):
    """Minimize the mean of ``loss(x, y)`` over each batch with one optimizer."""

    @property
    def players(self) -> tuple[str, ...]:
        return (MAIN,)


@dataclass(frozen=True)
class EMFit(Fit):
    """Expectation-maximization: E-steps over the batches, then a closed-form M-step, once per
    epoch (``batches_per_step`` 0) or after every ``batches_per_step`` batches (mini-batch EM;
    the model decides how far each M-step moves, e.g. a step size of online EM)."""

    batches_per_step: int = 0

    def __post_init__(self) -> None:
        if self.batches_per_step < 0:
            raise ConfigError(f"batches_per_step must be >= 0, got {self.batches_per_step}")


@dataclass(frozen=True)
class TwoPlayerFit(Fit):
    """A two-player game: ``critic_steps`` steps of ``critic`` per step of ``generator``.

    Each player has its own optimizer (``optim`` with the overrides in the run config's
    ``players.<name>`` section), learning-rate schedule, step counter and non-finite guard. Each
    batch is one critic step; every ``critic_steps``-th batch also gives the generator a step
    (on the same batch, after the critic's update).
    """

    critic: str = "discriminator"
    generator: str = "generator"
    critic_steps: int = 1

    def __post_init__(self) -> None:
        if self.critic_steps < 1:
            raise ConfigError(f"critic_steps must be >= 1, got {self.critic_steps}")
        if self.critic == self.generator:
            raise ConfigError("the two players need different names")

    @property
    def players(self) -> tuple[str, ...]:
        return (self.critic, self.generator)


@dataclass(frozen=True)
class AuxiliaryFit(Fit):
    """A main optimizer on ``loss`` and an auxiliary one on ``auxiliary_loss()``."""

    @property
    def players(self) -> tuple[str, ...]:
        return (MAIN, AUXILIARY)


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass(frozen=True)
class StepInfo:
    """What the trainer tells ``after_step``.

    ``player``: whose optimizer just stepped (``main`` for a one-optimizer model).
    ``step``: that player's optimizer steps taken so far, this one included.
    ``all_reduce_sum``: sums a tensor across processes in place and returns it (identity in one
    process): statistics that move state (a codebook's counts) must be summed before use.
    ``broadcast``: copies rank 0's tensor to every process in place and returns it: state drawn
    at random (a restarted code, a fresh chain) must be the same everywhere.
    """

    player: str = MAIN
    step: int = 1
    all_reduce_sum: Callable[[Tensor], Tensor] = field(default=_identity)
    broadcast: Callable[[Tensor], Tensor] = field(default=_identity)


def em_statistics_begun(stats: list[Tensor] | None, step: str) -> list[Tensor]:
    """A model's EM accumulators, or the error that names the call made before ``em_begin()``."""
    if stats is None:
        raise RuntimeError(f"call em_begin() before {step}()")
    return stats
