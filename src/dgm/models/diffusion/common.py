r"""What every diffusion, score, flow-matching and continuous-flow model shares.

**The model space.** The networks work on real tensors of the data's event shape:

- discrete data with L levels: level k sits at the centre of the k-th of L equal bins of
  [-1, 1], c_k = (2k + 1)/L - 1, and dequantized points fill the bin:
  y = 2(x + u)/L - 1, u ~ U[0, 1)^D, a map with log-Jacobian D log(2/L);
- continuous data: y = (x - m)/s with the training split's per-coordinate mean and standard
  deviation (fixed at ``initialize_from_data``; its log-Jacobian -Σ log s is counted).

Samples go back with :meth:`ContinuousTimeModel.to_data` (the bin a point falls in; the
inverse standardization).

**Likelihoods in the data's own space.** A density p_Y on the model space scores discrete data
through the dequantization bound (Theis et al. 2016; :mod:`dgm.core.dequantize`)

    log P(x) >= E_u[log p_Y(2(x + u)/L - 1)] + D log(2/L),

and an ODE model's log p_Y comes from :func:`~dgm.core.ode_likelihood.ode_log_likelihood`. A
Gaussian-path model trained on the levels themselves (``prediction: levels``,
:func:`read_levels`) dequantizes instead by its own forward process at its first time, with
the decoder p(x | z) ∝ N(z | α c_x, σ²) (:meth:`ContinuousTimeModel.flow_estimate`).
Diffusion bounds end in a decoder that is itself a pmf over the L levels
(:func:`discretized_gaussian_log_prob`), so their bound needs no dequantization.

**The network and guidance.** :func:`build_network` picks the U-Net for square images and the
residual MLP otherwise. A class-conditional model is trained with labels dropped to the null
class with probability ``label_dropout``, so one network gives both the conditional and the
unconditional prediction, mixed at sampling time by classifier-free guidance (Ho & Salimans
2022; :func:`~dgm.core.denoisers.classifier_free_guidance`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel
from dgm.core.capabilities import LikelihoodEstimate
from dgm.core.denoisers import TimeMLP, UNet, classifier_free_guidance, drop_labels
from dgm.core.distributions import log_min_exp
from dgm.core.errors import ConfigError, DataError, SamplingError
from dgm.core.ode_likelihood import DIVERGENCES, ode_log_likelihood
from dgm.core.schedules import NoiseSchedule
from dgm.core.solvers import ADAPTIVE_SOLVERS, SOLVERS
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "NetworkConfig",
    "OdeEvalConfig",
    "ContinuousTimeModel",
    "build_network",
    "discretized_gaussian_log_prob",
    "level_centres",
    "level_decoder_log_prob",
    "level_decoder_sample",
    "level_posterior_mean",
    "read_levels",
    "standard_normal_log_prob",
    "check_sample_steps",
]


@dataclass(frozen=True, kw_only=True)
class NetworkConfig:
    """The denoising network and its conditioning, shared by every continuous-time model.

    Args:
        network: ``"auto"`` (the U-Net for square images, the MLP otherwise), ``"mlp"`` or
            ``"unet"``.
        hidden, num_hidden: width and residual blocks of the MLP.
        time_dim: width of the sinusoidal time features.
        time_scale: s of the sinusoidal time features sin(s ω_i t), ω_i <= 1: the fastest
            turns s radians per unit of t. 1000 (DDPM's step range) suits denoisers trained at
            every t; ODE flows use less (:class:`~dgm.models.diffusion.cnf.OdeFlowConfig`).
        base, mults, num_res_blocks, attention_at: the U-Net's width, width multipliers per
            level, residual blocks per level and the resolutions with self-attention.
        dropout: dropout inside the network's blocks.
        fourier_features: append VDM's input Fourier features sin/cos(fπy) at f = L/2 and L:
            the frequencies on the lattice of the L levels in [-1, 1] (sin(Lπy) is the
            offset from the nearest level; VDM's 2⁷, 2⁸ for 256 levels; 8.5 and 17 for the
            17-level digits).
        conditional: condition on the class label (the data must have labels).
        label_dropout: probability of training a conditional model with the null label, so
            that it can be sampled with classifier-free guidance.
        seed: seed of the network's initialization.
    """

    network: Literal["auto", "mlp", "unet"] = "auto"
    hidden: int = 512
    num_hidden: int = 3
    time_dim: int = 128
    time_scale: float = 1000.0
    base: int = 32
    mults: tuple[int, ...] = (1, 2)
    num_res_blocks: int = 1
    attention_at: tuple[int, ...] = ()
    dropout: float = 0.0
    fourier_features: bool = False
    conditional: bool = False
    label_dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.network not in ("auto", "mlp", "unet"):
            raise ConfigError(f"model.network must be auto, mlp or unet, got {self.network!r}")
        if self.hidden < 1 or self.num_hidden < 0 or self.base < 1 or not self.mults:
            raise ConfigError("model.hidden, model.base >= 1, model.num_hidden >= 0, "
                              "model.mults not empty")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if not self.time_scale > 0:
            raise ConfigError(f"model.time_scale must be > 0, got {self.time_scale}")
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"model.label_dropout must be in [0, 1), got {self.label_dropout}")


@dataclass(frozen=True, kw_only=True)
class OdeEvalConfig:
    """How an ODE likelihood is computed for evaluation.

    Args:
        eval_solver: an ODE solver (:data:`~dgm.core.solvers.SOLVERS`); adaptive ones use
            ``eval_rtol``/``eval_atol``, fixed-step ones ``eval_steps``.
        eval_divergence: ``"exact"`` (D vector-Jacobian products per evaluation) or
            ``"hutchinson"`` (``eval_probes`` Rademacher probes, with a standard error).
        eval_draws: dequantization draws per example (discrete data); more than one gives a
            standard error of the dequantization noise too.
        eval_chunk: examples per ODE solve (bounds the memory).
        eval_step_limit: an adaptive solver's cap on steps before it stops with an error.
    """

    eval_solver: str = "dopri5"
    eval_rtol: float = 1e-5
    eval_atol: float = 1e-5
    eval_steps: int = 100
    eval_divergence: Literal["exact", "hutchinson"] = "exact"
    eval_probes: int = 4
    eval_draws: int = 1
    eval_chunk: int = 128
    eval_step_limit: int = 5000

    def __post_init__(self) -> None:
        if self.eval_solver not in SOLVERS:
            raise ConfigError(f"model.eval_solver must be one of {', '.join(SOLVERS)}, "
                              f"got {self.eval_solver!r}")
        if self.eval_divergence not in DIVERGENCES:
            raise ConfigError(f"model.eval_divergence must be one of {DIVERGENCES}")
        if min(self.eval_steps, self.eval_probes, self.eval_draws, self.eval_chunk,
               self.eval_step_limit) < 1 or self.eval_rtol <= 0 or self.eval_atol <= 0:
            raise ConfigError("the eval_* counts must be >= 1 and the tolerances > 0")

    def describe(self) -> str:
        """The solver and trace, in words, for the label of an ODE likelihood."""
        if self.eval_solver in ADAPTIVE_SOLVERS:
            solver = f"{self.eval_solver} rtol={self.eval_rtol:g} atol={self.eval_atol:g}"
        else:
            solver = f"{self.eval_solver}, {self.eval_steps} steps"
        trace = ("exact trace" if self.eval_divergence == "exact"
                 else f"Hutchinson trace ({self.eval_probes} Rademacher probes)")
        return f"ODE likelihood: {solver}, {trace}"


def build_network(spec: DataSpec, config: NetworkConfig, *, outputs: int = 1) -> nn.Module:
    """The denoiser ``net(z, t, y)`` for data of ``spec``: a U-Net for square images
    (C, H, W), the residual MLP for anything else (flattened)."""
    shape = spec.event_shape
    image = len(shape) == 3 and shape[1] == shape[2]
    choice = config.network
    if choice == "auto":
        choice = "unet" if image else "mlp"
    if choice == "unet" and not image:
        raise ConfigError(f"model.network unet needs square images (C, H, W), got {shape}")
    num_classes = int(spec.num_classes or 0) if config.conditional else 0
    frequencies: tuple[float, ...] = ()
    if config.fourier_features:
        if not spec.kind.is_discrete:
            raise ConfigError("model.fourier_features resolve the levels of discrete data; "
                              "this data is continuous")
        levels = float(spec.num_levels)
        frequencies = (levels / 2, levels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        if choice == "unet":
            return UNet(shape[0], shape[1], base=config.base, mults=config.mults,
                        num_res_blocks=config.num_res_blocks, time_dim=config.time_dim,
                        num_classes=num_classes, dropout=config.dropout,
                        attention_at=config.attention_at, fourier_frequencies=frequencies,
                        time_scale=config.time_scale, outputs=outputs)
        return TimeMLP(spec.dim, hidden=config.hidden, num_hidden=config.num_hidden,
                       time_dim=config.time_dim, num_classes=num_classes,
                       fourier_frequencies=frequencies, dropout=config.dropout,
                       time_scale=config.time_scale, outputs=outputs)


#: (x, labels, generator) -> (y0 ~ q(y0 | x) in the model space, log P(x | y0) - log q(y0 | x))
Dequantizer = Callable[[Tensor, "Tensor | None", "torch.Generator | None"], tuple[Tensor, Tensor]]


def level_centres(num_levels: int, like: Tensor) -> Tensor:
    """The bin centres c_k = (2k + 1)/L - 1 of the L levels in [-1, 1], (L,)."""
    k = torch.arange(num_levels, device=like.device, dtype=like.dtype)
    return (2 * k + 1) / num_levels - 1


def level_decoder_logits(z: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                         num_levels: int) -> Tensor:
    r"""log N(z | α c_k, σ²) up to a constant, (*z.shape, L): the logits of the decoder
    p(x = k | z) ∝ N(z | α c_k, σ²) over the levels (VDM's decoder, Kingma et al. 2021)."""
    centres = level_centres(num_levels, z)
    return -0.5 * ((z.unsqueeze(-1) - alpha * centres) / sigma) ** 2


def level_decoder_log_prob(x: Tensor, z: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                           num_levels: int) -> Tensor:
    """log p(x | z) per example of the decoder of :func:`level_decoder_logits`, the sum over
    coordinates of log softmax at the levels ``x`` (integers); a pmf over the levels, so a
    bound that ends in it bounds the discrete NLL."""
    logp = torch.log_softmax(level_decoder_logits(z, alpha, sigma, num_levels), -1)
    picked = logp.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    return picked.reshape(x.shape[0], -1).sum(1)


def level_decoder_sample(z: Tensor, alpha: Tensor | float, sigma: Tensor | float,
                         num_levels: int, generator: torch.Generator | None = None) -> Tensor:
    """A draw of the levels (integers, z's shape) from the decoder of
    :func:`level_decoder_logits`."""
    probs = torch.softmax(level_decoder_logits(z, alpha, sigma, num_levels), -1)
    k = torch.multinomial(probs.reshape(-1, num_levels), 1, generator=generator)
    return k.reshape(z.shape)


def read_levels(out: Tensor, z: Tensor, alpha: Tensor, sigma: Tensor, num_levels: int
                ) -> tuple[Tensor, Tensor]:
    """(x̂, ε̂) from a network's logits over the levels, ``out`` of shape (N, L·C, ...) or
    (N, L·D): x̂ the posterior mean of :func:`level_posterior_mean`, ε̂ = (z - α x̂)/σ."""
    correction = out.reshape(z.shape[0], num_levels, *z.shape[1:])
    x_hat = level_posterior_mean(z, alpha, sigma, correction, num_levels)
    return x_hat, (z - alpha * x_hat) / sigma


def level_posterior_mean(z: Tensor, alpha: Tensor, sigma: Tensor, correction: Tensor,
                         num_levels: int) -> Tensor:
    r"""x̂ = E[x | z] for data on the bin centres c_k = (2k + 1)/L - 1 of [-1, 1], coordinate by
    coordinate, with z = αx + σε:

        p(x = c_k | z) ∝ exp(-(z - α c_k)² / (2σ²) + h_k),

    the Gaussian likelihood of each level times a prior whose logits h (N, L, *z.shape[1:])
    the network predicts. At small σ the likelihood alone picks the nearest level, so the
    denoiser is exact there whatever h is; the network only has to learn the noisy middle.
    ``alpha``, ``sigma`` broadcast against z."""
    centres = level_centres(num_levels, z).reshape(1, -1, *([1] * (z.dim() - 1)))
    za, a, s = z.unsqueeze(1), alpha.expand_as(z).unsqueeze(1), sigma.expand_as(z).unsqueeze(1)
    logits = -0.5 * ((za - a * centres) / s) ** 2 + correction
    return (torch.softmax(logits, dim=1) * centres).sum(1)


def standard_normal_log_prob(z: Tensor, var: float = 1.0) -> Tensor:
    """log N(z | 0, var I) summed over all but the first axis, (N,)."""
    d = z[0].numel()
    sq = z.reshape(z.shape[0], -1).pow(2).sum(1)
    return -0.5 * (sq / var + d * math.log(2 * math.pi * var))


def discretized_gaussian_log_prob(levels: Tensor, mean: Tensor, log_scale: Tensor,
                                  num_levels: int) -> Tensor:
    r"""log P(x = k) of a Gaussian N(mean, e^{2 log_scale}) on [-1, 1] discretized into the L
    bins of the model space: the mass of [c_k - 1/L, c_k + 1/L], the outer bins extended to
    ±∞ (Ho et al. 2020, Eq. 13), elementwise; ``levels`` are the integers k.

    A pmf over the L levels for every mean and scale, so a bound that ends in it bounds the
    NLL of the discrete data.
    """
    k = levels.to(mean.dtype)
    centre = (2 * k + 1) / num_levels - 1
    inv = torch.exp(-log_scale)
    upper = (centre + 1 / num_levels - mean) * inv
    lower = (centre - 1 / num_levels - mean) * inv
    log_cdf_upper = torch.special.log_ndtr(upper)
    log_sf_lower = torch.special.log_ndtr(-lower)
    # log(Φ(upper) - Φ(lower)), from the tail on the bin's far side from the mean (stable)
    above = log_min_exp(log_sf_lower, torch.special.log_ndtr(-upper))
    below = log_min_exp(log_cdf_upper, torch.special.log_ndtr(lower))
    middle = torch.where(lower > 0, above, below)
    return torch.where(levels <= 0, log_cdf_upper,
                       torch.where(levels >= num_levels - 1, log_sf_lower, middle))


class ContinuousTimeModel(GenerativeModel):
    """The shared machinery of the continuous-time families: the model space, the network,
    labels and guidance, dequantization and the ODE likelihood (see the module docstring).

    Subclasses build ``self.net`` with :func:`build_network` (or their own), set
    ``self.num_classes`` from :meth:`_init_labels`, and implement ``loss`` and ``sample``.
    """

    data_kinds = frozenset({DataKind.CONTINUOUS, DataKind.DISCRETE, DataKind.BINARY})

    def __init__(self, spec: DataSpec, network: NetworkConfig) -> None:
        super().__init__(spec)
        self.network_config = network
        self.discrete = spec.kind.is_discrete
        self.num_levels = int(spec.num_levels) if self.discrete else 0
        if network.conditional and not spec.num_classes:
            raise ConfigError("model.conditional needs labelled data (spec.num_classes)")
        self.num_classes = int(spec.num_classes or 0) if network.conditional else 0
        self.register_buffer("loc", torch.zeros(spec.event_shape))
        self.register_buffer("scale", torch.ones(spec.event_shape))
        #: network evaluations of the last ``sample`` call (its cost beside its quality)
        self.last_sample_nfe = 0

    # --- the model space ----------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.loc.dtype

    def to_model_space(self, x: Tensor) -> Tensor:
        """Discrete levels to their bin centres in [-1, 1]; continuous data standardized."""
        if self.discrete:
            return (2 * x.to(self.dtype) + 1) / self.num_levels - 1
        return (x.to(self.dtype) - self.loc) / self.scale

    def dequantize(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y = 2(x + u)/L - 1 with u ~ U[0, 1) (discrete data); continuous data standardized."""
        if not self.discrete:
            return self.to_model_space(x)
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=self.dtype)
        return 2 * (x.to(self.dtype) + u) / self.num_levels - 1

    def log_jacobian(self) -> float:
        """log |dy/dx| of the map to the model space: D log(2/L), or -Σ log s."""
        if self.discrete:
            return self.spec.dim * math.log(2 / self.num_levels)
        return -float(torch.log(self.scale).sum())

    def to_data(self, y: Tensor) -> Tensor:
        """Model-space points back to the data: the level whose bin holds y, or y·s + m.
        Non-finite points (a diverged sampler) are one clear error, not garbage integers."""
        if not bool(torch.isfinite(y).all()):
            raise SamplingError(
                f"{type(self).__name__}'s sampler produced non-finite values; try more steps, "
                "another solver, or check the model's training"
            )
        if self.discrete:
            k = torch.floor((y + 1) * self.num_levels / 2)
            return k.clamp(0, self.num_levels - 1).to(self.spec.dtype)
        return (y * self.scale + self.loc).to(self.spec.dtype)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Continuous data: fix the standardization to the training split's statistics."""
        self.check_input(x)
        if not self.discrete:
            xf = x.to(torch.float64)
            self.loc.copy_(xf.mean(0))
            self.scale.copy_(xf.std(0).clamp_min(1e-6))

    # --- labels and guidance -----------------------------------------------------------------

    def training_labels(self, y: Tensor | None, generator: torch.Generator | None = None
                        ) -> Tensor | None:
        """The labels the network is trained with: None (unconditional), or y with a fraction
        ``label_dropout`` replaced by the null class."""
        if not self.num_classes:
            return None
        if y is None:
            raise DataError(f"{type(self).__name__} is class-conditional: pass the labels y")
        return drop_labels(y.long(), self.network_config.label_dropout, self.num_classes,
                           generator)

    def sampling_labels(self, n: int, y: Tensor | None) -> Tensor | None:
        """Labels to sample with: ``y``, or the classes 0, 1, ..., C-1, 0, ... in turn."""
        if not self.num_classes:
            if y is not None:
                raise ConfigError(f"{type(self).__name__} is unconditional: sample() takes no y")
            return None
        if y is None:
            return torch.arange(n, device=self.loc.device) % self.num_classes
        if y.shape != (n,):
            raise DataError(f"y must have shape ({n},), got {tuple(y.shape)}")
        return y.long().to(self.loc.device)

    def likelihood_labels(self, x: Tensor, y: Tensor | None) -> Tensor | None:
        """Labels to score x with: ``y`` (log p(x | y)), or None (the null label: the
        unconditional model's log p(x)) when y is None or the model is unconditional."""
        if not self.num_classes or y is None:
            return None
        if y.shape != (x.shape[0],):
            raise DataError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        return y.long().to(x.device)

    def guided(self, net: Callable[..., Tensor], z: Tensor, t: Tensor, y: Tensor | None,
               guidance: float) -> Tensor:
        """net(z, t, y) with classifier-free guidance of scale ``guidance`` (1: plain
        conditional; 0: unconditional) for a conditional model."""
        if y is None or guidance == 1.0:
            return net(z, t, y)
        null = torch.full_like(y, self.num_classes)
        both = net(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = both.chunk(2)
        return classifier_free_guidance(cond, uncond, guidance)

    def check_guidance(self, guidance: float) -> None:
        if guidance != 1.0 and not self.num_classes:
            raise ConfigError("guidance needs a class-conditional model (model.conditional: true)")

    # --- ODE likelihoods ----------------------------------------------------------------------

    def ode_estimate(
        self,
        x: Tensor,
        velocity: Callable[[Tensor, Tensor, Tensor | None], Tensor],
        base_log_prob: Callable[[Tensor], Tensor],
        config: OdeEvalConfig,
        *,
        t0: float,
        t1: float,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        what: str = "",
        dequantizer: Dequantizer | None = None,
        dequantization: str = "uniform dequantization",
    ) -> LikelihoodEstimate:
        """log P(x) (discrete data: its dequantization bound) from the ODE
        dz/dt = velocity(t, z, labels) carrying the model space at t0 to the base at t1,
        averaged over ``eval_draws`` dequantization draws, with its standard error (Hutchinson
        probes and draws). Solved ``eval_chunk`` examples at a time, each chunk with its own
        slice of ``labels`` (None: unconditional), so that memory stays bounded.

        ``dequantizer(x, labels, generator) -> (y0, c)`` draws y0 ~ q(y0 | x) in the model
        space with the correction c = log P(x | y0) - log q(y0 | x), so that
        log P(x) >= E_q[log p_ODE(y0) + c]; the default is uniform dequantization into the
        bins (c = D log(2/L)), or the standardization of continuous data. ``dequantization``
        names it in the label."""
        self.check_input(x)
        n = x.shape[0]
        size = max(1, config.eval_chunk)
        means, variances = [], []
        nfe = 0.0
        for start in range(0, n, size):
            xc = x[start:start + size]
            lab = None if labels is None else labels[start:start + size]

            def field(t: Tensor, z: Tensor, lab: Tensor | None = lab) -> Tensor:
                return velocity(t, z, lab)

            draws, probe_vars = [], []
            for _ in range(config.eval_draws):
                if dequantizer is None:
                    y0, correction = self.dequantize(xc, generator), self.log_jacobian()
                else:
                    y0, correction = dequantizer(xc, lab, generator)
                res = ode_log_likelihood(
                    field, y0, base_log_prob, t0=t0, t1=t1,
                    solver=config.eval_solver, steps=config.eval_steps, rtol=config.eval_rtol,
                    atol=config.eval_atol, divergence=config.eval_divergence,
                    num_probes=config.eval_probes, chunk=None,
                    max_steps=config.eval_step_limit, generator=generator,
                )
                draws.append(res.log_prob + correction)
                probe_vars.append(res.stderr**2 if res.stderr is not None
                                  else torch.zeros_like(res.log_prob))
                nfe += res.nfe * xc.shape[0]
            stacked = torch.stack(draws)
            var = torch.stack(probe_vars).mean(0) / len(draws)
            if len(draws) > 1:
                var = var + stacked.var(0) / len(draws)
            means.append(stacked.mean(0))
            variances.append(var)
        note = config.describe()
        if what:
            note = f"{what}; {note}"
        if self.discrete:
            k = config.eval_draws
            note += f"; {dequantization}, {k} draw{'s' if k > 1 else ''}"
        if (config.eval_divergence == "hutchinson" and config.eval_probes == 1
                and config.eval_draws == 1):
            note += ("; one probe gives no error bar per example: its noise is only in the "
                     "spread over examples")
        mean_nfe = nfe / max(1, n * config.eval_draws)
        return LikelihoodEstimate(torch.cat(means), torch.cat(variances).sqrt(), note, mean_nfe)

    def levels_decoder(self, schedule: NoiseSchedule, t: float
                       ) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
        """The decoder p(x | z) ∝ N(z | α_t c_x, σ_t²) over the levels, as the ``decoder(x, ε,
        labels)`` of :meth:`flow_estimate` (z = α_t x + σ_t ε): VDM's decoder, for a model
        trained on the levels whose flow starts at t."""
        with torch.no_grad():
            a, s = schedule.alpha_sigma(torch.tensor(t, device=self.loc.device))
        alpha, sigma = float(a), float(s)

        def decoder(xc: Tensor, eps: Tensor, lab: Tensor | None) -> Tensor:
            z = alpha * self.to_model_space(xc) + sigma * eps
            return level_decoder_log_prob(xc, z, alpha, sigma, self.num_levels)

        return decoder

    def flow_estimate(
        self,
        x: Tensor,
        denoiser: Callable[[Tensor | None], Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]],
        schedule: NoiseSchedule,
        config: OdeEvalConfig,
        *,
        t_min: float,
        t_max: float = 1.0,
        labels: Tensor | None = None,
        generator: torch.Generator | None = None,
        what: str = "",
        decoder: Callable[[Tensor, Tensor, Tensor | None], Tensor] | None = None,
    ) -> LikelihoodEstimate:
        """:meth:`ode_estimate` of the probability-flow ODE of a Gaussian-path denoiser from
        ``t_min`` to ``t_max`` (base N(0, σ_{t_max}² I)), integrated in log-SNR time
        (:func:`~dgm.models.diffusion.samplers.log_snr_field`); ``denoiser(labels)`` gives the
        denoiser of a chunk's labels. ``t_max`` < 1 serves paths whose α_1 is 0 (flow
        matching's straight line: log SNR(1) = -∞); the base is part of the ODE model's
        definition, so any t_max gives a valid likelihood of it.

        On discrete data with a ``decoder(x, ε, labels) = log P(x | z)`` at
        z = α_{t_min} x + σ_{t_min} ε, the dequantization is the forward process itself:
        z ~ q(z | x) = N(α x, σ² I) and log P(x) >= E_q[log p_ODE(z) + log P(x | z)
        - log q(z | x)] (the diffusion model's own decoder; a model trained on the levels
        puts its ODE density near them, where uniform noise over the bins lands in its
        tails)."""
        from dgm.models.diffusion.samplers import log_snr_field

        ends = schedule.log_snr(torch.tensor([t_min, t_max], device=x.device)).detach()
        with torch.no_grad():
            var = float(schedule.alpha_sigma(torch.tensor(t_max, device=x.device))[1]) ** 2

        def velocity(s: Tensor, z: Tensor, lab: Tensor | None) -> Tensor:
            return log_snr_field(denoiser(lab), schedule)(s, z)

        dequantizer, dequantization = None, "uniform dequantization"
        if self.discrete and decoder is not None:
            with torch.no_grad():
                a, s = schedule.alpha_sigma(torch.tensor(t_min, device=x.device))
            alpha, sigma = float(a), float(s)

            def dequantizer(xc: Tensor, lab: Tensor | None, gen: torch.Generator | None
                            ) -> tuple[Tensor, Tensor]:
                x0 = self.to_model_space(xc)
                eps = torch.randn(x0.shape, generator=gen, device=x0.device, dtype=x0.dtype)
                log_q = standard_normal_log_prob(eps) - eps[0].numel() * math.log(sigma)
                with torch.no_grad():
                    log_dec = decoder(xc, eps, lab)
                return alpha * x0 + sigma * eps, log_dec - log_q

            dequantization = (f"Gaussian dequantization by the forward process at t = "
                              f"{t_min:g} (σ = {sigma:.3g}) with the model's decoder")
        return self.ode_estimate(
            x, velocity, lambda z: standard_normal_log_prob(z, var), config,
            t0=float(ends[0]), t1=float(ends[1]), labels=labels, generator=generator,
            what=what or f"probability-flow ODE from t = {t_min:g} to {t_max:g} in log-SNR time",
            dequantizer=dequantizer, dequantization=dequantization,
        )

    def extra_repr(self) -> str:
        return f"space={'levels' if self.discrete else 'standardized'}"


def check_sample_steps(steps: Any) -> int:
    """``steps`` as a positive int, or a clear error."""
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}")
    return steps
