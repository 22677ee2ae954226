r"""The deep belief network: RBMs stacked greedily, scored by a variational bound (Book §7.6;
deck 004; Hinton, Osindero & Teh 2006).

Layers u_0 = x, u_1, ..., u_L with one RBM per pair (u_i, u_{i+1}). The generative model keeps
the top RBM as an undirected prior over u_{L-1} and turns the others into directed layers:

    p(x, u_1, ..., u_{L-1}) = p(u_{L-1}) Π_{i < L-1} p(u_i | u_{i+1}),

p(u_i | u_{i+1}) being RBM i's visible conditional and p(u_{L-1}) = e^{-F_top(u_{L-1})} / Z_top
the top RBM's marginal. Greedy training (``layer_steps`` updates per layer, CD-k/PCD) fits RBM i
on samples of u_i from the recognition conditionals q(u_{i+1} | u_i) (RBM i's hidden
conditionals) of the layers below. The recognition model gives importance weights

    log w = log p(u_{L-1}) + Σ_{i < L-1} [log p(u_i | u_{i+1}) - log q(u_{i+1} | u_i)],

u ~ q(· | x): their mean is the variational lower bound of Hinton et al. (2006) and their
log-mean-exp the tighter IWAE(k) bound; log Z_top is exact when the top RBM's hidden layer can be
enumerated (else AIS, and the bound is then an estimate of a bound). Sampling runs Gibbs in the
top RBM, then one ancestral pass down (deck 004).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.energy.rbm import RBM, RBMConfig

__all__ = ["DBNConfig", "DeepBeliefNetwork"]


@dataclass(frozen=True, kw_only=True)
class DBNConfig:
    """Args:
        hidden: the sizes of u_1, ..., u_L (two or more).
        layer_steps: greedy updates per layer; the top layer trains for the rest of the run.
        rbm: options of every layer's RBM (cd_k, persistent, chains, init_std, ...; its
            ``hidden`` is taken from ``hidden``).
    """

    hidden: tuple[int, ...] = (100, 20)
    layer_steps: int = 2000
    rbm: RBMConfig = RBMConfig()

    def __post_init__(self) -> None:
        if len(self.hidden) < 2 or min(self.hidden) < 1:
            raise ConfigError("model.hidden must list two or more layer sizes >= 1")
        if self.layer_steps < 1:
            raise ConfigError("model.layer_steps must be >= 1")


def _bernoulli_log_prob(h: Tensor, logits: Tensor) -> Tensor:
    return -F.binary_cross_entropy_with_logits(logits, h, reduction="none").sum(-1)


@register_model("dbn", DBNConfig)
class DeepBeliefNetwork(GenerativeModel):
    """A deep belief network trained greedily, with its variational bound (module docstring)."""

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE})

    def __init__(self, spec: DataSpec, config: DBNConfig) -> None:
        super().__init__(spec)
        self.config = config
        layers = []
        visible = spec
        for size in config.hidden:
            layers.append(RBM(visible, replace(config.rbm, hidden=size)))
            visible = DataSpec((size,), DataKind.BINARY, num_levels=2)
        self.layers = nn.ModuleList(layers)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self._active: int | None = None
        self._features: Tensor | None = None

    @property
    def active_layer(self) -> int:
        """The layer that greedy training is fitting now."""
        return min(int(self.steps) // self.config.layer_steps, len(self.layers) - 1)

    def _up(self, v: Tensor, layer: int, generator: torch.Generator | None = None) -> Tensor:
        """u_{i+1} ~ q(u_{i+1} | u_i) (RBM i's hidden conditional), as integer units."""
        p = torch.sigmoid(self.layers[layer].hidden_input(v))
        return torch.bernoulli(p, generator=generator).long()

    def _features_for(self, x: Tensor, layer: int) -> Tensor:
        v = self.layers[0].flat(x)
        with torch.no_grad():
            for i in range(layer):
                v = self._up(v, i)
        return v

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The active layer's CD/PCD loss on the samples its lower layers pass up."""
        layer = self.active_layer
        v = self._features_for(x, layer)
        self._active, self._features = layer, v
        return self.layers[layer].loss(x if layer == 0 else v)

    def after_step(self, info: StepInfo) -> None:
        """Move the active layer's chains; when its turn ends, start the next layer at the
        features of the last batch (visible biases at their log-odds, chains at them)."""
        if self._active is None:
            return
        self.layers[self._active].after_step(info)
        self.steps += 1
        nxt = self.active_layer
        if nxt != self._active and self._features is not None:
            feats = self._features
            with torch.no_grad():
                for i in range(self._active, nxt):
                    feats = self._up(feats, i)
            gen = torch.Generator(device=feats.device).manual_seed(int(self.steps))
            self.layers[nxt].initialize_from_data(feats.to(torch.uint8), gen)
        self._active, self._features = None, None

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        self.layers[0].initialize_from_data(x, generator)

    def log_weights(self, x: Tensor, k: int, *, y: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """log w for k draws u ~ q(· | x) (module docstring), shape (k, N)."""
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        v = self.layers[0].flat(x)
        n = v.shape[0]
        u = v.repeat(k, 1)
        total = torch.zeros(k * n, device=v.device)
        for i in range(len(self.layers) - 1):
            rbm = self.layers[i]
            logits = rbm.hidden_input(u)
            up = torch.bernoulli(torch.sigmoid(logits), generator=generator)
            total = total - _bernoulli_log_prob(up, logits)
            log_px = torch.log_softmax(rbm.visible_logits(up), -1)
            total = total + log_px.gather(-1, u[..., None]).squeeze(-1).sum(-1)
            u = up.long()
        top = self.layers[-1]
        log_z = top.log_partition() if top.exact else top.log_partition_ais().log_z
        total = total - top.free_energy(u) - log_z
        return total.reshape(k, n)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The variational bound with one draw of the recognition layers."""
        return self.log_weights(x, 1)[0]

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Gibbs in the top RBM, then one ancestral pass down."""
        top = self.layers[-1]
        u = top.gibbs(top.random_visible(n, generator).to(self.device), top.sample_steps,
                      generator)
        for rbm in reversed(self.layers[:-1]):
            probs = torch.softmax(rbm.visible_logits(u.to(rbm.weight.dtype)), -1)
            u = torch.multinomial(probs.reshape(-1, rbm.levels), 1, generator=generator)
            u = u.reshape(n, -1)
        return u.reshape(n, *self.spec.event_shape).to(self.spec.dtype)

    def extra_repr(self) -> str:
        return f"layers={(self.spec.dim, *self.config.hidden)}"
