"""Update rules: the strategies that carry out a model's declared ``fit`` (dgm.core.fitting).

The trainer's loop owns what every rule shares (batches, the non-finite guard and rollback,
checkpoints, EMA, validation, budgets) and hands each rule a :class:`Steps`, which takes one
optimizer step of one player: forward, finiteness check, backward, gradient reduction across
processes, clipping, learning rate, ``optimizer.step()``, then the model's ``after_step``. A rule
only decides which players step, on which objective and in which order:

- :class:`GradientUpdate`: one ``main`` step per batch on ``loss``.
- :class:`EMUpdate`: an E-step per batch, then the statistics summed across processes and a
  closed-form M-step at the end of the epoch. No optimizer.
- :class:`TwoPlayerUpdate`: a critic step per batch and a generator step every ``critic_steps``
  batches, each player with its own optimizer, schedule and guard.
- :class:`AuxiliaryUpdate`: a ``main`` step on ``loss``, then an ``aux`` step on the scalar
  ``auxiliary_loss`` (CompressAI's two-optimizer recipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Protocol, cast

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel
from dgm.core.capabilities import Auxiliary, ExpectationMaximization, TwoPlayer
from dgm.core.errors import ConfigError
from dgm.core.fitting import (
    AUXILIARY,
    MAIN,
    AuxiliaryFit,
    EMFit,
    Fit,
    GradientFit,
    TwoPlayerFit,
)
from dgm.train import distributed as dist

__all__ = [
    "Player",
    "Steps",
    "UpdateRule",
    "GradientUpdate",
    "EMUpdate",
    "TwoPlayerUpdate",
    "AuxiliaryUpdate",
    "RULES",
    "player_parameters",
    "make_update_rule",
]


@dataclass
class Player:
    """One optimizer and the parameters it moves."""

    name: str
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer


class Steps(Protocol):
    """What the trainer offers a rule within one batch."""

    def take(
        self, player: str, objective: Callable[[], Tensor], *, per_example: bool = True
    ) -> Tensor | None:
        """One optimizer step of ``player`` on ``objective()``: per-example values (N,) whose
        global-batch mean is minimized, or (``per_example=False``) a scalar. Returns the
        detached values, or None if the non-finite guard skipped the step."""
        ...

    def record(self, player: str, values: Tensor) -> None:
        """Add per-example objective values to the epoch's training metric of ``player``."""
        ...


def _trainable(params: list[nn.Parameter]) -> list[nn.Parameter]:
    return [p for p in params if p.requires_grad]


def _require(model: GenerativeModel, capability: type, fit: Fit, methods: str) -> None:
    if not isinstance(model, capability):
        raise ConfigError(f"{type(model).__name__} declares {type(fit).__name__} but lacks {methods}")


class UpdateRule:
    """A strategy for one declared ``fit``; subclasses override :meth:`groups` and
    :meth:`batch`."""

    #: wrap the model in DistributedDataParallel (else gradients are averaged by hand)
    uses_ddp = False

    def __init__(self, model: GenerativeModel, players: list[Player], fit: Fit) -> None:
        self.model = model
        self.players = {p.name: p for p in players}
        self.fit = fit

    @staticmethod
    def groups(model: GenerativeModel, fit: Fit) -> dict[str, list[nn.Parameter]]:
        """The parameters each player's optimizer moves (checked by the caller)."""
        return {MAIN: _trainable(list(model.parameters()))}

    def steps_per_batch(self, player: str) -> float:
        """Expected optimizer steps of ``player`` per batch (for learning-rate schedules)."""
        return 1.0

    def begin_epoch(self) -> None:
        """Called before the first batch of every epoch."""

    def batch(self, x: Tensor, y: Tensor | None, steps: Steps, forward: Callable) -> None:
        """Train on one (local) batch. ``forward(x, y)`` is the model's loss (DDP-wrapped)."""
        raise NotImplementedError

    def end_epoch(self) -> None:
        """Called after the last batch of every epoch (EM's M-step)."""

    def state(self) -> dict[str, Any]:
        """JSON-able state of the rule itself (checkpointed)."""
        return {}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""


class GradientUpdate(UpdateRule):
    """One optimizer step on ``loss`` per batch."""

    uses_ddp = True

    def batch(self, x: Tensor, y: Tensor | None, steps: Steps, forward: Callable) -> None:
        steps.take(MAIN, lambda: forward(x, y))


class EMUpdate(UpdateRule):
    """E-steps over the batches, then a closed-form M-step (Book §2 / §5.2): once per epoch, or
    every ``fit.batches_per_step`` batches (mini-batch EM)."""

    fit: EMFit

    def __init__(self, model: GenerativeModel, players: list[Player], fit: Fit) -> None:
        super().__init__(model, players, fit)
        self.pending = 0  # batches accumulated since the last M-step

    @staticmethod
    def groups(model: GenerativeModel, fit: Fit) -> dict[str, list[nn.Parameter]]:
        _require(model, ExpectationMaximization, fit,
                 "em_begin/em_accumulate/em_statistics/em_maximize")
        return {}

    def begin_epoch(self) -> None:
        cast(Any, self.model).em_begin()
        self.pending = 0

    def batch(self, x: Tensor, y: Tensor | None, steps: Steps, forward: Callable) -> None:
        with torch.no_grad():
            steps.record(MAIN, -cast(Any, self.model).em_accumulate(x))
        self.pending += 1
        if self.fit.batches_per_step and self.pending == self.fit.batches_per_step:
            self._maximize()
            cast(Any, self.model).em_begin()

    def _maximize(self) -> None:
        em = cast(Any, self.model)
        with torch.no_grad():
            for stat in em.em_statistics():
                dist.all_reduce_sum(stat)
            em.em_maximize()
        self.pending = 0

    def end_epoch(self) -> None:
        if self.pending:
            self._maximize()


class TwoPlayerUpdate(UpdateRule):
    """A critic step on every batch, a generator step on every ``critic_steps``-th."""

    fit: TwoPlayerFit

    def __init__(self, model: GenerativeModel, players: list[Player], fit: Fit) -> None:
        super().__init__(model, players, fit)
        self.critic_batches = 0  # batches since training began (checkpointed)

    @staticmethod
    def groups(model: GenerativeModel, fit: Fit) -> dict[str, list[nn.Parameter]]:
        _require(model, TwoPlayer, fit, "player_parameters/player_loss")
        return {p: _trainable(cast(Any, model).player_parameters(p)) for p in fit.players}

    def steps_per_batch(self, player: str) -> float:
        return 1.0 if player == self.fit.critic else 1.0 / self.fit.critic_steps

    def batch(self, x: Tensor, y: Tensor | None, steps: Steps, forward: Callable) -> None:
        game: Any = self.model
        critic, generator = self.fit.critic, self.fit.generator
        steps.take(critic, lambda: game.player_loss(critic, x, y))
        self.critic_batches += 1
        if self.critic_batches % self.fit.critic_steps == 0:
            steps.take(generator, lambda: game.player_loss(generator, x, y))

    def state(self) -> dict[str, Any]:
        return {"critic_batches": self.critic_batches}

    def load_state(self, state: dict[str, Any]) -> None:
        self.critic_batches = int(state.get("critic_batches", 0))


class AuxiliaryUpdate(UpdateRule):
    """A main step on ``loss`` and an auxiliary step on the scalar ``auxiliary_loss``."""

    @staticmethod
    def groups(model: GenerativeModel, fit: Fit) -> dict[str, list[nn.Parameter]]:
        _require(model, Auxiliary, fit, "auxiliary_parameters/auxiliary_loss")
        aux = _trainable(cast(Any, model).auxiliary_parameters())
        aux_ids = {id(p) for p in aux}
        main = [p for p in _trainable(list(model.parameters())) if id(p) not in aux_ids]
        return {MAIN: main, AUXILIARY: aux}

    def batch(self, x: Tensor, y: Tensor | None, steps: Steps, forward: Callable) -> None:
        aux: Any = self.model
        steps.take(MAIN, lambda: aux.loss(x, y))
        steps.take(AUXILIARY, lambda: aux.auxiliary_loss(), per_example=False)


#: the strategy that carries out each declaration
RULES: dict[type[Fit], type[UpdateRule]] = {
    GradientFit: GradientUpdate,
    EMFit: EMUpdate,
    TwoPlayerFit: TwoPlayerUpdate,
    AuxiliaryFit: AuxiliaryUpdate,
}


def _rule(model: GenerativeModel, fit: Fit) -> type[UpdateRule]:
    if type(fit) not in RULES:
        raise ConfigError(f"{type(model).__name__} declares an unknown fit {fit!r}")
    return RULES[type(fit)]


def player_parameters(model: GenerativeModel, fit: Fit) -> dict[str, list[nn.Parameter]]:
    """The parameters each player's optimizer moves; checks that they are disjoint and that
    the model has the capability its ``fit`` needs."""
    groups = _rule(model, fit).groups(model, fit)
    name = type(model).__name__
    seen: set[int] = set()
    for player, params in groups.items():
        if not params:
            raise ConfigError(f"{name}: player {player!r} has no trainable parameters")
        ids = {id(p) for p in params}
        if ids & seen:
            raise ConfigError(f"{name}: players share parameters (player {player!r})")
        seen |= ids
    return groups


def make_update_rule(
    model: GenerativeModel, make_optimizer: Callable[[str, list[nn.Parameter]], Any]
) -> UpdateRule:
    """The strategy for ``model.fit``, with one optimizer per player from ``make_optimizer``."""
    fit = model.fit
    groups = player_parameters(model, fit)
    players = [Player(name, params, make_optimizer(name, params)) for name, params in groups.items()]
    return _rule(model, fit)(model, players, fit)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Average ``.grad`` across processes (one flat all-reduce); a no-op in one process."""
    if world == 1:
        return
    for p in params:  # a parameter unused on this process still takes part in the sum
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce_sum(flat)
    flat /= world
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def total_steps(rule: UpdateRule, player: str, batches: int) -> int:
    """Optimizer steps of ``player`` over ``batches`` batches (the schedules' horizon)."""
    return max(1, math.floor(batches * rule.steps_per_batch(player)))
