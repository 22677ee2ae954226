"""Tiny models with known answers for each update rule (registered for the trainer tests).

- ``test_game``: a two-player game whose equilibrium is the data mean.
- ``test_chain``: an energy-based Gaussian trained by persistent contrastive divergence, its
  chains kept in buffers and moved in ``after_step``.
- ``test_aux``: a Gaussian mean (main optimizer) and an auxiliary copy of it (auxiliary
  optimizer) whose optimum is the main parameter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.fitting import AuxiliaryFit, StepInfo, TwoPlayerFit
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec


@dataclass(frozen=True, kw_only=True)
class RuleConfig:
    critic_steps: int = 1
    penalty: float = 1.0  # λ of the critic's weight penalty
    chains: int = 256
    langevin_steps: int = 5
    langevin_step: float = 0.1  # η
    nan_player: str = ""  # this player's loss is NaN ...
    nan_at_call: int = -1  # ... on this call (-1: never)
    nan_always: bool = False


class _Poison:
    """Counts a player's objective calls and makes the configured one NaN."""

    def __init__(self, config: RuleConfig) -> None:
        self.config = config
        self.calls: dict[str, int] = {}

    def __call__(self, player: str, value: Tensor, training: bool) -> Tensor:
        if not training or player != self.config.nan_player:
            return value
        self.calls[player] = self.calls.get(player, 0) + 1
        if self.config.nan_always or self.calls[player] == self.config.nan_at_call:
            return value + float("nan")
        return value


@register_model("test_game", RuleConfig)
class MeanGame(GenerativeModel):
    r"""min_g max_d  d·(E[x] - g) - λ/2 ‖d‖²: a linear critic f(x) = d·x against a generator
    that outputs the point g. The critic's best response is d* = (E[x] - g)/λ and the generator
    moves along d, so the only equilibrium is g = E[x], d = 0."""

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: RuleConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.fit = TwoPlayerFit(critic_steps=config.critic_steps)
        self.d = nn.Parameter(torch.zeros(spec.dim))
        self.g = nn.Parameter(torch.full((spec.dim,), 3.0))
        self.poison = _Poison(config)

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        return [self.d] if player == "discriminator" else [self.g]

    def player_loss(self, player: str, x: Tensor, y: Tensor | None = None) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        if player == "discriminator":
            value = -(x @ self.d - self.g.detach() @ self.d) + 0.5 * self.config.penalty * (
                self.d @ self.d)
        else:
            value = (-(self.d.detach() @ self.g)).expand(x.shape[0])
        return self.poison(player, value, self.training)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.player_loss("discriminator", x, y)

    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        return self.g.detach().expand(n, -1).reshape(n, *self.spec.event_shape).clone()


@register_model("test_chain", RuleConfig)
class PersistentGaussianEBM(GenerativeModel):
    r"""E_θ(x) = ‖x - θ‖²/2, trained by persistent contrastive divergence:

        loss_i = E_θ(x_i) - mean_j E_θ(x̃_j),  x̃ the persistent chains (no gradient through them)

    and after every step each chain takes ``langevin_steps`` Langevin steps
    x̃ ← x̃ - (η/2) ∇E(x̃) + √η ξ. At the fixed point θ = E[x] and the chains are N(θ, I)."""

    likelihood = Likelihood.UNNORMALIZED
    data_kinds = frozenset({DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: RuleConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.theta = nn.Parameter(torch.zeros(spec.dim))
        self.register_buffer("chains", torch.zeros(config.chains, spec.dim))
        self.poison = _Poison(config)

    def energy(self, x: Tensor) -> Tensor:
        return 0.5 * ((x - self.theta) ** 2).sum(-1)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        value = self.energy(x) - self.energy(self.chains).mean()
        return self.poison("main", value, self.training)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return -self.energy(x.reshape(x.shape[0], -1))

    @torch.no_grad()
    def after_step(self, info: StepInfo) -> None:
        eta = self.config.langevin_step
        for _ in range(self.config.langevin_steps):
            grad = self.chains - self.theta
            self.chains.add_(-0.5 * eta * grad + math.sqrt(eta) * torch.randn_like(self.chains))
        info.broadcast(self.chains)

    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.spec.dim, generator=generator)
        return (self.theta.detach() + z).reshape(n, *self.spec.event_shape)


@register_model("test_aux", RuleConfig)
class AuxiliaryMean(GenerativeModel):
    r"""log N(x; θ, I) trained by the main optimizer, and an auxiliary copy a with
    auxiliary_loss = ‖a - sg(θ)‖², whose optimum is a = θ (like an entropy bottleneck's
    quantiles that follow its density)."""

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.CONTINUOUS})
    fit = AuxiliaryFit()

    def __init__(self, spec: DataSpec, config: RuleConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.theta = nn.Parameter(torch.zeros(spec.dim))
        self.a = nn.Parameter(torch.full((spec.dim,), -2.0))
        self.poison = _Poison(config)

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        return [self.a]

    def auxiliary_loss(self) -> Tensor:
        return self.poison("aux", ((self.a - self.theta.detach()) ** 2).sum(), self.training)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        x = x.reshape(x.shape[0], -1)
        return -0.5 * ((x - self.theta) ** 2).sum(-1) - 0.5 * self.spec.dim * math.log(2 * math.pi)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.poison("main", -self.log_prob(x), self.training)

    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.spec.dim, generator=generator)
        return (self.theta.detach() + z).reshape(n, *self.spec.event_shape)
