r"""Energy-based models trained with Langevin samples from a replay buffer (Book ch. 7).

A network E_θ(x) defines the Boltzmann distribution p_θ(x) = exp(-E_θ(x)) / Z_θ (Book §7.1,
eq. 7.1). The gradient of the log-likelihood is a contrastive difference (Book §7.3,
eqs. 7.20-7.25):

    -∇_θ log p_θ(x) = ∇_θ E_θ(x) - E_{x⁻ ~ p_θ}[∇_θ E_θ(x⁻)],

and the model minimizes, per example (Du & Mordatch 2019),

    L(x) = E_θ(x) - E_θ(x⁻) + α_E (E_θ(x)² + E_θ(x⁻)²),

whose first part has that gradient when x⁻ ~ p_θ, and whose second (``energy_reg``) keeps the
energies near 0, which is what keeps the sampler and the training stable. The negatives x⁻ come
from K steps of Langevin dynamics, x <- x - α ∇_x E(x) + η ε (:func:`dgm.core.mcmc.langevin`,
score -∇E), started from a persistent replay buffer (:class:`dgm.core.mcmc.ReplayBuffer`) in
which each drawn chain restarts from noise with probability ``reinit_prob``. The moved chains
are written back in :meth:`EBM.after_step`, never inside ``loss``.

**Noise.** ``noise: tied`` uses η = sqrt(2α), the Langevin discretization whose stationary law
is p_θ as α -> 0. A float η decouples the noise from the step, as the book's listing and
most EBM practice do (α = 1, η = 0.01 in JEM): for small steps the chain then targets the
sharpened density p_θ^(2α/η²) (see :mod:`dgm.core.mcmc`); with so few steps it is better
read as a noisy gradient descent on E from the buffer's states.

**Data space.** The sampler runs in a continuous model space u. Discrete data with L levels
(the 17-level digits) map to u = 2v/(L-1) - 1 ∈ [-1, 1] (the book's scaling, "similar to
JEM"), plus Gaussian dequantization noise of std ``dequant_std`` in training; the chains are
clipped to [-1, 1]; ``sample`` rounds u back to the nearest level and returns integers.
Continuous data are standardized by the training mean and standard deviation (fitted in
``initialize_from_data``) and not clipped. Restarts draw u uniformly on [-1, 1] (discrete) or
on [-3, 3] (standardized continuous data).

**Likelihood.** ``log_prob`` is -E_θ(u(x)), unnormalized (``Likelihood.UNNORMALIZED``): the
evaluator does not report it as an NLL. On discrete data :meth:`EBM.log_prob_estimate` gives
an AIS estimate for the discrete model p(v) ∝ exp(-E_θ(u(v))) over the L^D lattice: log Z by
annealed importance sampling (Neal 2001; Book §7.6) along the geometric path q^(1-β) f^β from a
normalized, exactly sampleable base q. ``ais_base: data`` takes the independent per-pixel
categorical of the training data; ``ais_base: samples`` a mixture of independent categoricals
(:class:`CategoricalMixture`) fitted by EM to the model's own chains (replay-buffer states run
``ais_base_steps`` more Langevin steps, rounded to levels). The base is fixed before AIS draws
its chains, so Ẑ stays unbiased whatever the base; a base near p_θ leaves less to anneal. Each
temperature applies ``ais_sweeps`` times: a Metropolis-Hastings move that redraws a random
block of pixels from the data's categorical (:func:`lattice_block_mh_step`), an independence
move proposing from the base (``samples`` only) and exact single-site Gibbs updates over the L
levels of ``ais_gibbs_sites`` random pixels (:func:`lattice_gibbs_step`). Every move leaves
q^(1-β) f^β invariant. The AIS likelihood is only as good as its convergence: a model trained
with a sampler that does not mix can hide deep energy minima that its own chains never reach
and AIS keeps finding as it works harder (a log Ẑ that grows with the temperature count).

**Divergence.** If |E| of a data point or a negative exceeds ``max_energy`` (or is not
finite), the loss term ``energy_blowup`` is +inf for that example: the trainer's non-finite
guard names it, skips the step, and after ``train.max_bad_steps`` such steps rolls back to the
last good state, halves the learning rate and calls :meth:`EBM.after_rollback`, which reseeds
the replay buffer from noise; ``run.json`` counts the ``rollbacks``.

References:
    Du & Mordatch. Implicit generation and generalization in energy-based models. NeurIPS 2019.
    Grathwohl et al. Your classifier is secretly an energy based model and you should treat it
    like one. ICLR 2020. Welling & Teh. Bayesian learning via stochastic gradient Langevin
    dynamics. ICML 2011. Neal. Annealed importance sampling. Statistics and Computing 2001.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.ais import AISCache, AISResult, annealed_importance_sampling, ais_temperatures
from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.mcmc import ReplayBuffer, langevin
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.core.sampling import draw_categorical
from dgm.core.spec import DataKind, DataSpec
from dgm.models.mixtures.categorical import CategoricalMixture, CategoricalMixtureConfig

__all__ = ["EBMConfig", "EBM", "energy_network",
           "lattice_block_mh_step", "lattice_gibbs_step"]

# Restarts of continuous (standardized) data are uniform on [-CONTINUOUS_BOX, CONTINUOUS_BOX].
CONTINUOUS_BOX = 3.0


@dataclass(frozen=True, kw_only=True)
class EBMConfig:
    """An energy network and its Langevin contrastive training.

    Args:
        network: ``mlp`` (flattened input), ``conv`` (image data) or ``auto`` (conv for
            images, else MLP).
        hidden: width of the MLP layers (and of the conv net's dense head).
        num_hidden: hidden layers of the MLP.
        channels: channels of the conv net's first layer (doubled after each downsampling).
        energy_reg: α_E >= 0, the weight of E(x)² + E(x⁻)² in the loss.
        step_size: α > 0, the Langevin step on -∇E.
        noise: ``"tied"`` (η = sqrt(2α), samples p) or a noise std η >= 0 (decoupled: targets
            p^(2α/η²), see the module docstring).
        langevin_steps: K, Langevin steps per update (from the buffer).
        buffer_size: chains kept in the replay buffer (saved with every checkpoint).
        reinit_prob: probability that a drawn chain restarts from noise.
        dequant_std: std of the Gaussian noise added to discrete data in training (model space
            [-1, 1], where neighbouring levels are 2/(L-1) apart).
        max_energy: |E| above this (or a non-finite E) is a divergence (``energy_blowup``).
        sample_init: ``buffer`` (``sample`` continues stored chains) or ``noise`` (fresh
            chains from the restart distribution).
        sample_steps: Langevin steps of ``sample``.
        ais_chains: AIS chains of :meth:`EBM.log_prob_estimate` (discrete data).
        ais_temperatures: AIS temperatures.
        ais_block: pixels redrawn per Metropolis-Hastings move of AIS.
        ais_sweeps: Markov moves per AIS temperature (each: one block Metropolis-Hastings
            move, one independence move from the base when ``ais_base`` is ``samples``, and
            ``ais_gibbs_sites`` single-site Gibbs updates).
        ais_gibbs_sites: pixels per move updated by exact single-site Gibbs over the L levels
            (one batched energy evaluation of the L candidates per pixel); 0 for none.
        ais_base: the normalized base of AIS: ``data`` (the independent per-pixel categorical
            fitted to the training data) or ``samples`` (a mixture of ``ais_components``
            independent categoricals fitted by EM to the model's own replay-buffer chains
            when the estimate is made; closer to p_θ, so AIS has less to anneal).
        ais_components: components of the ``samples`` base.
        ais_base_steps: Langevin steps run from ``ais_base_chains`` replay-buffer chains
            before the ``samples`` base is fitted to them (the buffer itself lags behind p_θ).
        ais_base_chains: chains the ``samples`` base is fitted to.
        likelihood: ``unnormalized`` (``log_prob`` = -E, no NLL is reported) or ``ais``
            (discrete data only: ``Likelihood.ESTIMATE``, ``log_prob`` = -E - log Ẑ with log Ẑ
            by AIS, computed once per parameter state; the evaluator reports it as an
            estimate with the AIS standard error).
    """

    network: Literal["auto", "mlp", "conv"] = "auto"
    hidden: int = 256
    num_hidden: int = 2
    channels: int = 32
    energy_reg: float = 0.1
    step_size: float = 1.0
    noise: str | float = 0.01
    langevin_steps: int = 20
    buffer_size: int = 2000
    reinit_prob: float = 0.05
    dequant_std: float = 0.03
    max_energy: float = 1.0e4
    sample_init: Literal["buffer", "noise"] = "buffer"
    sample_steps: int = 100
    ais_chains: int = 100
    ais_temperatures: int = 1000
    ais_block: int = 8
    ais_sweeps: int = 1
    ais_gibbs_sites: int = 0
    ais_base: Literal["data", "samples"] = "data"
    ais_components: int = 20
    ais_base_steps: int = 1000
    ais_base_chains: int = 500
    likelihood: Literal["unnormalized", "ais"] = "unnormalized"

    def __post_init__(self) -> None:
        noise = self.noise
        if isinstance(noise, str) and noise != "tied":
            try:
                noise = float(noise)  # "--set model.noise=0.01" arrives as a string
            except ValueError:
                raise ConfigError(
                    f"model.noise must be 'tied' or a noise std >= 0, got {noise!r}"
                ) from None
            object.__setattr__(self, "noise", noise)
        if isinstance(noise, float) and not (math.isfinite(noise) and noise >= 0):
            raise ConfigError(f"model.noise must be 'tied' or a noise std >= 0, got {noise}")
        counts = ("hidden", "num_hidden", "channels", "langevin_steps", "buffer_size",
                  "ais_chains", "ais_block", "ais_sweeps", "ais_components")
        for name in counts:
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.sample_steps < 0 or self.ais_temperatures < 3:
            raise ConfigError("model.sample_steps must be >= 0 and ais_temperatures >= 3")
        if not (math.isfinite(self.step_size) and self.step_size > 0):
            raise ConfigError(f"model.step_size must be > 0, got {self.step_size}")
        if not (self.energy_reg >= 0 and self.dequant_std >= 0 and self.max_energy > 0):
            raise ConfigError("model.energy_reg and dequant_std must be >= 0, max_energy > 0")
        if self.ais_base_steps < 0 or self.ais_base_chains < 1:
            raise ConfigError("model.ais_base_steps must be >= 0 and ais_base_chains >= 1")
        if self.ais_gibbs_sites < 0:
            raise ConfigError(f"model.ais_gibbs_sites must be >= 0, got {self.ais_gibbs_sites}")
        if self.ais_base not in ("data", "samples"):
            raise ConfigError(f"model.ais_base must be data or samples, got {self.ais_base!r}")
        if not 0 <= self.reinit_prob <= 1:
            raise ConfigError(f"model.reinit_prob must lie in [0, 1], got {self.reinit_prob}")


class _ConvEnergy(nn.Module):
    """A 3x3 conv with SiLU, then 4x4 stride-2 convs with SiLU (each halving H and W, rounding
    down) until both are at most 4 (8x8 -> 4x4; 28x28 -> 14 -> 7 -> 3), then a dense head:
    (N, C, H, W) -> (N, out)."""

    def __init__(self, shape: tuple[int, int, int], channels: int, hidden: int, out: int):
        super().__init__()
        c, h, w = shape
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.SiLU()]
        width = channels
        while True:
            layers += [nn.Conv2d(width, 2 * width, 4, stride=2, padding=1), nn.SiLU()]
            width, h, w = 2 * width, h // 2, w // 2  # kernel 4, stride 2, padding 1
            if max(h, w) <= 4:
                break
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(width * h * w, hidden), nn.SiLU(),
                                  nn.Linear(hidden, out))

    def forward(self, u: Tensor) -> Tensor:
        return self.head(self.features(u))


class _FlatEnergy(nn.Module):
    """An MLP with SiLU on the flattened input: (N, *shape) -> (N, out)."""

    def __init__(self, dim: int, hidden: int, num_hidden: int, out: int):
        super().__init__()
        self.net = mlp(dim, hidden, out, num_hidden=num_hidden, activation=nn.SiLU)

    def forward(self, u: Tensor) -> Tensor:
        return self.net(u.reshape(u.shape[0], -1))


def energy_network(spec: DataSpec, config: EBMConfig, out: int) -> nn.Module:
    """The network u -> (N, out) of ``config.network`` for data of ``spec``: an MLP or, for
    (C, H, W) images, a small conv net. Smooth activations (SiLU) give Langevin dynamics a
    smooth ∇_u E."""
    kind = config.network
    if kind == "auto":
        kind = "conv" if spec.is_image else "mlp"
    if kind == "conv":
        if not spec.is_image:
            raise ConfigError(f"model.network conv needs (C, H, W) images, got {spec.event_shape}")
        return _ConvEnergy(spec.event_shape, config.channels, config.hidden, out)  # type: ignore[arg-type]
    return _FlatEnergy(spec.dim, config.hidden, config.num_hidden, out)


def lattice_block_mh_step(
    v: Tensor,
    log_p: Callable[[Tensor], Tensor],
    proposal_logits: Tensor,
    block: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""One Metropolis-Hastings move for any unnormalized log p on the lattice (v: (M, D)).

    A random block B of ``block`` coordinates (the same for the whole batch) is redrawn from
    the independent categorical r_B with logits ``proposal_logits`` (D, L); acceptance
    min(1, p(v') r_B(v_B) / (p(v) r_B(v'_B))) leaves p invariant.
    """
    m, d = v.shape
    gen_device = generator.device if generator is not None else v.device
    sites = torch.randperm(d, generator=generator, device=gen_device)[:block].to(v.device)
    log_r = torch.log_softmax(proposal_logits, -1)[sites]  # (B, L)
    proposal = draw_categorical(log_r.expand(m, -1, -1), generator)
    v_new = v.clone()
    v_new[:, sites] = proposal
    arange = torch.arange(len(sites), device=v.device)
    log_accept = (log_p(v_new) - log_p(v) + log_r[arange, v[:, sites]].sum(1)
                  - log_r[arange, proposal].sum(1))
    accept = torch.rand(m, generator=generator, device=gen_device).to(v.device).log() < log_accept
    return torch.where(accept.unsqueeze(1), v_new, v)


def lattice_gibbs_step(
    v: Tensor,
    log_p: Callable[[Tensor], Tensor],
    levels: int,
    sites: int,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Exact single-site Gibbs updates of ``sites`` random coordinates (the same for the whole
    batch, in turn): coordinate s is redrawn from p(v_s = l | v_rest) ∝ p(v with v_s = l),
    the L candidates of all M chains scored by one batched call of ``log_p``. Each update
    leaves p invariant."""
    m, d = v.shape
    gen_device = generator.device if generator is not None else v.device
    order = torch.randperm(d, generator=generator, device=gen_device)[:sites].tolist()
    candidates = torch.arange(levels, device=v.device)
    for s in order:
        cand = v.unsqueeze(1).repeat(1, levels, 1)  # (M, L, D)
        cand[:, :, s] = candidates
        logits = log_p(cand.reshape(m * levels, d)).reshape(m, levels)
        v = v.clone()
        v[:, s] = draw_categorical(logits, generator)
    return v


@register_model("ebm", EBMConfig)
class EBM(GenerativeModel):
    """An energy-based model p(x) ∝ exp(-E_θ(x)) with an MLP or conv energy, trained by
    contrastive Langevin samples from a persistent replay buffer (Book ch. 7; Du & Mordatch
    2019)."""

    likelihood = Likelihood.UNNORMALIZED
    data_kinds = frozenset({DataKind.BINARY, DataKind.DISCRETE, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: EBMConfig, *, outputs: int = 1) -> None:
        super().__init__(spec)
        self.config = config
        self.net = energy_network(spec, config, outputs)
        self.discrete = spec.kind.is_discrete
        # Continuous data: u = (x - shift) / scale, fitted in initialize_from_data.
        self.register_buffer("shift", torch.zeros(spec.event_shape))
        self.register_buffer("scale", torch.ones(spec.event_shape))
        # The base of AIS on discrete data: per-pixel categorical logits, fitted to the data.
        levels = int(spec.num_levels) if self.discrete else 1
        self.register_buffer("base_logits", torch.zeros(spec.dim, levels))
        self.buffer = ReplayBuffer(config.buffer_size, spec.event_shape, config.reinit_prob)
        self.buffer.reseed(lambda n: self.restart_noise(n, torch.Generator().manual_seed(0)))
        self._pending: tuple[Tensor, Tensor] | None = None
        self._ais = AISCache()
        if config.likelihood == "ais":
            if not self.discrete:
                raise ConfigError("model.likelihood ais needs discrete data (AIS on the lattice)")
            self.likelihood = Likelihood.ESTIMATE

    # --- spaces ------------------------------------------------------------------------------

    @property
    def _box(self) -> float:
        return 1.0 if self.discrete else CONTINUOUS_BOX

    def to_model_space(self, x: Tensor, *, dequantize: bool = False) -> Tensor:
        """Data x -> u: 2v/(L-1) - 1 for L-level data (plus N(0, dequant_std²) noise if
        ``dequantize``), (x - mean)/std for continuous data."""
        if self.discrete:
            u = 2 * x.to(self.shift.dtype) / (self.spec.num_levels - 1) - 1
            if dequantize and self.config.dequant_std > 0:
                u = u + self.config.dequant_std * torch.randn_like(u)
            return u
        return (x.to(self.shift.dtype) - self.shift) / self.scale

    def to_data(self, u: Tensor) -> Tensor:
        """u -> data: the nearest level (integers) for discrete data, else x = u·std + mean."""
        if self.discrete:
            top = self.spec.num_levels - 1
            return torch.round((u + 1) * top / 2).clamp(0, top).to(self.spec.dtype)
        return (u * self.scale + self.shift).to(self.spec.dtype)

    def restart_noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n restart states, uniform on the box [-b, b]^shape of the model space."""
        gen_device = generator.device if generator is not None else self.shift.device
        u = torch.rand(n, *self.spec.event_shape, generator=generator, device=gen_device)
        return ((2 * u - 1) * self._box).to(self.shift)

    # --- energies ----------------------------------------------------------------------------

    def energy(self, u: Tensor) -> Tensor:
        """E_θ(u), (N,), on model-space inputs."""
        return self.net(u).squeeze(-1)

    def langevin(
        self,
        u0: Tensor,
        steps: int,
        energy: Callable[[Tensor], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """``steps`` Langevin steps u <- u - α ∇_u E(u) + η ε from u0 (clipped to [-1, 1] on
        discrete data), through :func:`dgm.core.mcmc.langevin`; no parameter gradients."""
        energy_fn = self.energy if energy is None else energy

        def score(u: Tensor) -> Tensor:
            with torch.enable_grad():
                u = u.detach().requires_grad_(True)
                return -torch.autograd.grad(energy_fn(u).sum(), u)[0]

        if steps == 0:
            return u0.detach()
        clamp = (-1.0, 1.0) if self.discrete else None
        return langevin(u0, score, self.config.step_size, steps, noise=self.config.noise,
                        generator=generator, clamp=clamp)

    def _blowup(self, *energies: Tensor) -> Tensor:
        """+inf for every example with |E| > max_energy (or a non-finite E), else 0."""
        ok = torch.ones_like(energies[0], dtype=torch.bool)
        for e in energies:
            ok &= e.detach().abs() <= self.config.max_energy
        return torch.where(ok, 0.0, math.inf).to(energies[0].dtype)

    def _negatives(self, n: int) -> Tensor:
        """Draw n chains from the buffer, move them K steps, remember them for after_step."""
        u0, index = self.buffer.draw(n, self.restart_noise)
        negative = self.langevin(u0, self.config.langevin_steps)
        self._pending = (index, negative)
        return negative

    def contrastive_terms(self, e_pos: Tensor, e_neg: Tensor) -> dict[str, Tensor]:
        """The per-example terms E(x) - E(x⁻), α_E (E(x)² + E(x⁻)²) and the blow-up guard."""
        return {
            "contrastive": e_pos - e_neg,
            "energy_reg": self.config.energy_reg * (e_pos**2 + e_neg**2),
            "energy_blowup": self._blowup(e_pos, e_neg),
        }

    # --- the contract ------------------------------------------------------------------------

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The terms of L(x) = E(x) - E(x⁻) + α_E (E(x)² + E(x⁻)²) (+ the blow-up guard), per
        example; x⁻ from the replay buffer after K Langevin steps. Not a likelihood."""
        self.check_input(x)
        u = self.to_model_space(x, dequantize=True)
        negative = self._negatives(x.shape[0])
        return self.contrastive_terms(self.energy(u), self.energy(negative))

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The sum of :meth:`loss_terms`, (N,)."""
        return sum(self.loss_terms(x, y).values())  # type: ignore[return-value]

    def after_step(self, info: StepInfo) -> None:
        """The replay buffer takes the chains the last loss moved."""
        if self._pending is not None:
            self.buffer.update(*self._pending)
        self._pending = None

    def after_rollback(self) -> None:
        """After a divergence: every chain restarts from noise (they may sit where the
        diverged energy sent them)."""
        self._pending = None
        self.buffer.reseed(self.restart_noise)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Continuous data: the standardization; discrete data: AIS's base categorical
        (add-one smoothed per-pixel frequencies). The buffer restarts from noise."""
        with torch.no_grad():
            if self.discrete:
                flat = x.reshape(x.shape[0], -1).long()
                counts = F.one_hot(flat, self.spec.num_levels).sum(0).to(self.base_logits) + 1
                self.base_logits.copy_(torch.log(counts / counts.sum(-1, keepdim=True)))
            else:
                xf = x.to(self.shift.dtype)
                self.shift.copy_(xf.mean(0))
                self.scale.copy_(xf.std(0).clamp_min(1e-6))
        self.buffer.reseed(lambda n: self.restart_noise(n, generator))

    def unnormalized_log_prob(self, x: Tensor) -> Tensor:
        """-E_θ(u(x)), (N,)."""
        self.check_input(x)
        return -self.energy(self.to_model_space(x))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-E_θ(u(x)), the unnormalized log-density (log Z unknown), (N,); with
        ``likelihood: ais`` the estimate -E_θ(u(x)) - log Ẑ of :meth:`log_prob_estimate`."""
        if self.likelihood is Likelihood.ESTIMATE:
            return self.log_prob_estimate(x, y).log_prob
        return self.unnormalized_log_prob(x)

    def _initial(self, n: int, generator: torch.Generator | None) -> Tensor:
        if self.config.sample_init == "noise":
            return self.restart_noise(n, generator)
        gen_device = generator.device if generator is not None else self.shift.device
        index = torch.randint(self.config.buffer_size, (n,), generator=generator,
                              device=gen_device)
        return self.buffer.states[index.to(self.shift.device)]

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``sample_steps`` Langevin steps from stored buffer chains (``sample_init: buffer``)
        or from noise, mapped to the data space (levels as integers for discrete data)."""
        u = self.langevin(self._initial(n, generator), self.config.sample_steps,
                          generator=generator)
        return self.to_data(u)

    # --- AIS on the discrete lattice ---------------------------------------------------------

    def _lattice_log_f(self, v: Tensor) -> Tensor:
        """-E(u(v)) for flat levels v (M, D)."""
        return -self.energy(self.to_model_space(v.reshape(v.shape[0], *self.spec.event_shape)))

    @torch.no_grad()
    def log_partition_ais(
        self,
        *,
        chains: int | None = None,
        temperatures: int | None = None,
        generator: torch.Generator | None = None,
    ) -> AISResult:
        """log Z of the discrete model p(v) ∝ exp(-E_θ(u(v))) over the L^D lattice by AIS from
        the base q of :meth:`ais_base` (geometric path q^(1-β) f^β; :func:`lattice_block_mh_step`
        moves, with independence moves from q and single-site Gibbs as configured)."""
        if not self.discrete:
            raise ConfigError("the AIS likelihood is defined for discrete data only")
        c = self.config
        m = chains or c.ais_chains
        betas = ais_temperatures(temperatures or c.ais_temperatures)
        base = self.ais_base(generator)
        v0 = base.sample(m, generator=generator)
        levels, dim = int(self.spec.num_levels), self.spec.dim

        def log_intermediate(v: Tensor, beta: float) -> Tensor:
            return (1 - beta) * base.log_prob(v) + beta * self._lattice_log_f(v)

        def transition(v: Tensor, beta: float, gen: torch.Generator | None) -> Tensor:
            def log_p(w: Tensor) -> Tensor:
                return log_intermediate(w, beta)

            for _ in range(c.ais_sweeps):
                v = lattice_block_mh_step(v, log_p, self.base_logits, min(c.ais_block, dim),
                                          gen)
                if c.ais_base == "samples":  # an independence move: propose from the base
                    v = self._independence_mh_step(v, base, log_p, gen)
                if c.ais_gibbs_sites > 0:
                    v = lattice_gibbs_step(v, log_p, levels, min(c.ais_gibbs_sites, dim), gen)
            return v

        return annealed_importance_sampling(v0, log_intermediate, transition, betas,
                                            log_z_base=0.0, generator=generator)

    @staticmethod
    def _independence_mh_step(v: Tensor, base: CategoricalMixture,
                              log_p: Callable[[Tensor], Tensor],
                              generator: torch.Generator | None) -> Tensor:
        """Metropolis-Hastings with the base q as an independent proposal: accept v' ~ q with
        min(1, p(v') q(v) / (p(v) q(v')))."""
        gen_device = generator.device if generator is not None else v.device
        v_new = base.sample(v.shape[0], generator=generator).to(v.device)
        log_accept = log_p(v_new) - log_p(v) + base.log_prob(v) - base.log_prob(v_new)
        u = torch.rand(v.shape[0], generator=generator, device=gen_device).to(v.device)
        return torch.where((u.log() < log_accept).unsqueeze(1), v_new, v)

    @torch.no_grad()
    def ais_base(self, generator: torch.Generator | None = None) -> CategoricalMixture:
        """The normalized base of AIS (``model.ais_base``): the per-pixel categorical of the
        training data, or a mixture of categoricals fitted by EM to the replay buffer's chains
        (rounded to levels). Either is fixed before AIS draws anything, so Ẑ stays unbiased."""
        levels, dim = int(self.spec.num_levels), self.spec.dim
        flat = DataSpec((dim,), DataKind.DISCRETE, num_levels=levels)
        c = self.config
        if c.ais_base == "data":
            base = CategoricalMixture(flat, CategoricalMixtureConfig(num_components=1))
            base = base.to(self.base_logits.device, torch.float64)
            base.theta_logits.data.copy_(self.base_logits.unsqueeze(0))
            return base
        gen_device = generator.device if generator is not None else self.shift.device
        n = min(c.ais_base_chains, c.buffer_size)
        index = torch.randperm(c.buffer_size, generator=generator, device=gen_device)[:n]
        u = self.langevin(self.buffer.states[index.to(self.shift.device)], c.ais_base_steps,
                          generator=generator)
        v = self.to_data(u).reshape(n, -1).long()
        base = CategoricalMixture(flat, CategoricalMixtureConfig(num_components=c.ais_components))
        return base.to(v.device, torch.float64).fit_em(v, 50, generator=generator)

    def log_prob_estimate(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LikelihoodEstimate:
        """log p(x) ≈ -E_θ(u(x)) - log Ẑ for the discrete model, with log Ẑ by AIS
        (:meth:`log_partition_ais`, run once per parameter state and reused, so that every
        batch of a split shares one Ẑ); its standard error is shared by all x."""
        ais = self._ais.get((*self.parameters(), self.base_logits),
                            lambda: self.log_partition_ais(generator=generator))
        with torch.no_grad():
            log_p = self.unnormalized_log_prob(x) - ais.log_z
        return LikelihoodEstimate(log_p, torch.zeros_like(log_p), ais.note(),
                                  shared_stderr=ais.stderr)

    def extra_repr(self) -> str:
        return (f"buffer={self.config.buffer_size}, langevin_steps={self.config.langevin_steps}, "
                f"step_size={self.config.step_size}, noise={self.config.noise}")
