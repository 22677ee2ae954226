r"""Generative adversarial networks (Book ch. 8; Goodfellow et al. 2014; deck 004).

An implicit model x = G(z), z ~ N(0, I) (8.6-8.7): no likelihood (``Likelihood.NONE``, no
``log_prob``). A discriminator D = σ(l) (or a critic f = l) and the generator play

    min_G max_D  E_x[log D(x)] + E_z[log(1 - D(G(z)))]                              (8.8-8.9)

or one of its variants (``model.loss``):

- ``minimax``: the book's game, both sides as in Listing 8.3 (with its clamp D ∈ [ε, 1 - ε]
  done on the logits, :func:`~dgm.models.adversarial.losses.clamp_logits`);
- ``nonsaturating``: the same discriminator, the generator minimizing -log D(G(z));
- ``wasserstein``: the WGAN critic (8.10) kept Lipschitz by clipping its weights to [-c, c]
  after every critic step (Arjovsky et al. 2017);
- ``wgan_gp``: the WGAN critic with the gradient penalty λ (||∇f(x̂)|| - 1)², λ = 10
  (Gulrajani et al. 2017);
- ``hinge``: max(0, 1 - l(x)) + max(0, 1 + l(G(z))) against -l(G(z)) (Miyato et al. 2018).

Options: spectral normalisation of every discriminator layer (:mod:`dgm.core.spectral`),
class-conditional G(z, y) and projection D(x, y) (``conditional``), and the improved-training
tricks of Salimans et al. 2016 (deck 004): feature matching, the minibatch standard deviation
feature (for minibatch discrimination), one-sided label smoothing and historical averaging.

Training is the trainer's two-player rule (``TwoPlayerFit``): on each batch a discriminator step
on :meth:`GAN.player_loss` ``("discriminator", ...)`` (fresh z, the generator held fixed), and
every ``critic_steps``-th batch a generator step (fresh z, only the generator's optimizer moves).
The players' optimizers take their own settings from the run config's ``players.<name>``.

Generator EMA (Yazıcı et al. 2019) is the trainer's ``train.ema_decay``: it averages every
floating-point parameter and buffer after each step, and validation, the best weights and the
saved model (hence ``sample``) use the averaged weights. Nothing here duplicates it.

On discrete data the networks work in [-1, 1] (:class:`~.networks.SignedScaling`): real
images are dequantized into their bins, the generator ends in tanh, and ``sample`` reads its
output back as levels in the data's dtype. ``sample(n, y=...)`` of a conditional GAN draws the
given labels (uniformly random labels when y is None).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.fitting import StepInfo, TwoPlayerFit
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.adversarial import losses
from dgm.models.adversarial.networks import (
    NETWORKS,
    SignedScaling,
    build_discriminator,
    build_generator,
)

__all__ = ["GANConfig", "GAN", "make_game", "draw_latents", "draw_labels"]

LOSSES = ("minimax", "nonsaturating", "wasserstein", "wgan_gp", "hinge")
CRITIC, GENERATOR = "discriminator", "generator"


@dataclass(frozen=True, kw_only=True)
class GANConfig:
    """A GAN: the game, the networks and the training tricks.

    Args:
        loss: minimax, nonsaturating, wasserstein (weight clipping), wgan_gp or hinge.
        network: mlp (flat data, 2-D toys, flattened images) or conv (DCGAN-style, images
            with H, W divisible by 4).
        latent_dim: size of z ~ N(0, I).
        hidden: width of the MLPs' hidden layers (and of the conv discriminator's last one).
        num_hidden: hidden layers of each MLP.
        width: channels of the conv networks' first (discriminator) / last (generator) block.
        spectral_norm: spectrally normalise every discriminator layer (Miyato et al. 2018). The
            normalised critic needs SN-GAN's optimizer (Adam β1 = 0, more than one critic
            step; configs/hinge_sn_digits.yaml): with Adam(2e-3, β1 = 0.5) and one critic step
            it lags the generator and the GAN collapses.
        conditional: class-conditional G(z, y) and projection discriminator D(x, y).
        critic_steps: discriminator steps per generator step.
        clamp_eps: the book's clamp D ∈ [ε, 1 - ε] (0: none), on the logits, in the
            discriminator's loss of minimax and nonsaturating and in minimax's generator loss.
        clip: c of the WGAN's weight clipping (``loss = wasserstein``).
        gp_weight: λ of the gradient penalty (``loss = wgan_gp``).
        label_smoothing: s of one-sided label smoothing: real target 1 - s (minimax losses).
        feature_matching: weight of ||E φ(x) - E φ(G(z))||² added to the generator's loss.
        minibatch_std: give the discriminator's head the batch's feature standard deviation.
        historical_averaging: λ of λ ||θ - θ̄||² for each player, θ̄ the mean of its past
            parameters (after each of its steps).
        dequantize: show the discriminator real levels spread uniformly over their bins
            (else at the bin centres).
    """

    loss: str = "nonsaturating"
    network: str = "mlp"
    latent_dim: int = 32
    hidden: int = 256
    num_hidden: int = 2
    width: int = 64
    spectral_norm: bool = False
    conditional: bool = False
    critic_steps: int = 1
    clamp_eps: float = 1e-5
    clip: float = 0.01
    gp_weight: float = 10.0
    label_smoothing: float = 0.0
    feature_matching: float = 0.0
    minibatch_std: bool = False
    historical_averaging: float = 0.0
    dequantize: bool = True

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ConfigError(f"model.loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        if self.network not in NETWORKS:
            raise ConfigError(f"model.network: {self.network!r} is not one of "
                              f"{', '.join(NETWORKS)}")
        if min(self.latent_dim, self.hidden, self.num_hidden, self.width, self.critic_steps) < 1:
            raise ConfigError("model.latent_dim, hidden, num_hidden, width and critic_steps "
                              "must be >= 1")
        if not 0 <= self.label_smoothing < 0.5 or not 0 <= self.clamp_eps < 0.5:
            raise ConfigError("model.label_smoothing and clamp_eps must be in [0, 0.5)")
        if min(self.clip, self.gp_weight) <= 0:
            raise ConfigError("model.clip and gp_weight must be > 0")
        if min(self.feature_matching, self.historical_averaging) < 0:
            raise ConfigError("model.feature_matching and historical_averaging must be >= 0")
        if self.label_smoothing and self.loss not in ("minimax", "nonsaturating"):
            raise ConfigError("model.label_smoothing applies to the minimax and nonsaturating "
                              f"losses, not {self.loss}")


def make_game(config: GANConfig) -> losses.Game:
    """The critic's and the generator's losses that ``config.loss`` names."""
    eps, target = config.clamp_eps, 1.0 - config.label_smoothing
    minimax_critic = partial(losses.minimax_discriminator_loss, eps=eps, real_target=target)
    wasserstein = losses.Game(losses.wasserstein_critic_loss, losses.wasserstein_generator_loss)
    return {
        "minimax": losses.Game(minimax_critic, partial(losses.minimax_generator_loss, eps=eps)),
        "nonsaturating": losses.Game(minimax_critic, losses.nonsaturating_generator_loss),
        "wasserstein": wasserstein,
        "wgan_gp": wasserstein,
        "hinge": losses.Game(losses.hinge_discriminator_loss, losses.hinge_generator_loss),
    }[config.loss]


def draw_latents(n: int, dim: int, device: torch.device,
                 generator: torch.Generator | None = None) -> Tensor:
    """z ~ N(0, I), (n, dim), drawn on the generator's device and moved to ``device``."""
    where = generator.device if generator is not None else device
    return torch.randn(n, dim, generator=generator, device=where).to(device)


def draw_labels(n: int, num_classes: int, y: Tensor | None, device: torch.device,
                generator: torch.Generator | None = None) -> Tensor:
    """The labels to sample for: y (checked to be (n,) in 0..K-1) or uniform ones."""
    if y is None:
        where = generator.device if generator is not None else device
        return torch.randint(num_classes, (n,), generator=generator, device=where).to(device)
    if y.shape != (n,):
        raise DataError(f"y must have shape ({n},) for n = {n} samples, got {tuple(y.shape)}")
    if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise DataError(f"y must hold integer labels in 0..{num_classes - 1}")
    return y.to(device, torch.long)


@register_model("gan", GANConfig)
class GAN(GenerativeModel):
    """A GAN with the minimax, non-saturating, WGAN (clipping or gradient penalty) or hinge
    game, MLP or DCGAN networks, optional spectral norm, class conditioning and the training
    tricks of deck 004 (Book ch. 8; module docstring)."""

    likelihood = Likelihood.NONE
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: GANConfig) -> None:
        super().__init__(spec)
        self.config = config
        self.fit = TwoPlayerFit(critic=CRITIC, generator=GENERATOR,
                                critic_steps=config.critic_steps)
        self.num_classes = 0
        if config.conditional:
            if not spec.num_classes:
                raise ConfigError("model.conditional needs a dataset with labels")
            self.num_classes = spec.num_classes
        self.scaling = SignedScaling(spec, dequantize=config.dequantize)
        self.game = make_game(config)
        self.gp_weight = config.gp_weight if config.loss == "wgan_gp" else 0.0
        self.clip = config.clip if config.loss == "wasserstein" else None
        c = config
        self.generator = build_generator(spec, c.network, latent_dim=c.latent_dim,
                                         hidden=c.hidden, num_hidden=c.num_hidden,
                                         width=c.width, num_classes=self.num_classes)
        self.discriminator = build_discriminator(
            spec, c.network, hidden=c.hidden, num_hidden=c.num_hidden, width=c.width,
            spectral=c.spectral_norm, num_classes=self.num_classes, mb_std=c.minibatch_std)
        if c.historical_averaging:
            for name in (CRITIC, GENERATOR):
                flat = torch.cat([p.detach().reshape(-1) for p in self.player_parameters(name)])
                self.register_buffer(f"average_{name}", flat.clone())

    # --- the two players ------------------------------------------------------------------

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        if player == CRITIC:
            return list(self.discriminator.parameters())
        if player == GENERATOR:
            return list(self.generator.parameters())
        raise ConfigError(f"GAN has the players {CRITIC} and {GENERATOR}, not {player!r}")

    def generate(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """G(z, y) in the signed space the discriminator sees."""
        return self.scaling.squash(self.generator(z, y))

    def _labels(self, y: Tensor | None) -> Tensor | None:
        if not self.num_classes:
            return None
        if y is None:
            raise DataError("a conditional GAN trains on labelled data; the batch has no y")
        return y.to(self.device, torch.long)

    def _fake(self, n: int, y: Tensor | None) -> Tensor:
        return self.generate(draw_latents(n, self.config.latent_dim, self.device), y)

    def _history_penalty(self, player: str, n: int) -> Tensor:
        flat = torch.cat([p.reshape(-1) for p in self.player_parameters(player)])
        gap = flat - getattr(self, f"average_{player}")
        return (self.config.historical_averaging * gap.square().sum()).expand(n)

    def critic_loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The discriminator's adversarial loss per example, (N,), without penalties."""
        real = self.scaling.to_signed(x)
        y = self._labels(y)
        with torch.no_grad():
            fake = self._fake(x.shape[0], y)
        return self._critic_terms(real, fake, y)

    def _critic_terms(self, real: Tensor, fake: Tensor, y: Tensor | None) -> Tensor:
        return self.game.critic(self.discriminator(real, y).logits,
                                self.discriminator(fake, y).logits)

    def player_loss(self, player: str, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The objective of ``player`` per example (N,), minimized (module docstring)."""
        self.check_input(x)
        c, n = self.config, x.shape[0]
        real = self.scaling.to_signed(x)
        y = self._labels(y)
        if player == CRITIC:
            with torch.no_grad():
                fake = self._fake(n, y)
            value = self._critic_terms(real, fake, y)
            if self.gp_weight:
                value = value + self.gp_weight * losses.gradient_penalty(
                    lambda h: self.discriminator(h, y).logits, real, fake)
        elif player == GENERATOR:
            fake_out = self.discriminator(self._fake(n, y), y)
            value = self.game.generator(fake_out.logits)
            if c.feature_matching:
                with torch.no_grad():
                    real_features = self.discriminator(real, y).features
                value = value + c.feature_matching * losses.feature_matching_loss(
                    real_features, fake_out.features)
        else:
            raise ConfigError(f"GAN has the players {CRITIC} and {GENERATOR}, not {player!r}")
        if c.historical_averaging:
            value = value + self._history_penalty(player, n)
        return value

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The discriminator's adversarial loss per example (no gradient penalty or history
        term), what ``train.monitor = objective`` follows; not a likelihood, and a poor guide
        to sample quality (prefer ``train.monitor = fd``)."""
        self.check_input(x)
        return self.critic_loss(x, y)

    @torch.no_grad()
    def after_step(self, info: StepInfo) -> None:
        """Clip the WGAN critic's weights to [-c, c]; move the historical averages."""
        if info.player == CRITIC and self.clip is not None:
            for p in self.discriminator.parameters():
                p.clamp_(-self.clip, self.clip)
        if self.config.historical_averaging and info.player in (CRITIC, GENERATOR):
            average = getattr(self, f"average_{info.player}")
            flat = torch.cat([p.reshape(-1) for p in self.player_parameters(info.player)])
            average.add_((flat - average) / (info.step + 1))

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """n examples G(z, y), z ~ N(0, I), in the data's space and dtype (module docstring)."""
        labels = None
        if self.num_classes:
            labels = draw_labels(n, self.num_classes, y, self.device, generator)
        elif y is not None:
            raise DataError("y given to an unconditional GAN (model.conditional = false)")
        z = draw_latents(n, self.config.latent_dim, self.device, generator)
        return self.scaling.to_data(self.generate(z, labels))

    def extra_repr(self) -> str:
        c = self.config
        return (f"loss={c.loss}, network={c.network}, spectral_norm={c.spectral_norm}, "
                f"conditional={c.conditional}")
