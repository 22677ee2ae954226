r"""Hierarchical VAEs (Book §5.5.2): L Gaussian latent levels z_1 (next to x) ... z_L (the top).

The generative model is a chain from the top down (Eq. 5.75 for L = 2),

    p(x, z_1, ..., z_L) = p_θ(x | z_1) Π_{l<L} p_θ(z_l | z_{l+1}) p(z_L),    p(z_L) = N(0, I),

with p_θ(z_l | z_{l+1}) = N(μ_l(z_{l+1}), diag σ²_l(z_{l+1})) from a network of the parent. Two
variational posteriors are offered:

- ``bottom_up`` (Book §5.5.2.1, Eq. 5.76-5.82): Q = q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1}).
  z_{l+1} is drawn after z_l, so only the top level has a closed-form KL; the lower levels pay the
  one-sample estimate log q(z_l | z_{l-1}) - log p(z_l | z_{l+1}) (Eq. 5.82). The upper levels
  tend to collapse onto their priors (Book §5.5.2.1; Burda et al. 2016).
- ``top_down`` (Book §5.5.2.2, Eq. 5.85; Ladder VAE, NVAE): a deterministic bottom-up path
  r_1 = f_1(x), r_l = f_l(r_{l-1}) reads x once; then, from the top,

      q(z_L | x) = N(Δμ_L, exp(Δlogvar_L)),
      q(z_l | z_{l+1}, x) = N(μ_l + Δμ_l, exp(logvar_l + Δlogvar_l)),   l < L,

  where (μ_l, logvar_l) is the prior's output for the sampled parent z_{l+1} and (Δμ_l, Δlogvar_l)
  a network of [r_l, d_l], d_l the top-down features the prior network computed from z_{l+1}
  (NVAE feeds both paths to its cells). Δlogvar is clamped with hardtanh to [-7, 2] (Listing
  5.12). Posterior and prior share the parent, so every level's KL is analytic:
  KL = ½ Σ (Δμ²/σ² + Δσ² - log Δσ² - 1) (NVAE's form of kl_normal_diag).

``log_weights`` gives log p(x, z_{1:L}) - log q(z_{1:L} | x) with every level drawn from q, whose
mean is the ELBO and whose log-mean-exp is IWAE(k). The training loss is the reconstruction plus
a weighted sum of the per-level regularizers (KL warm-up, β, free bits per level), or the IWAE
loss.

References:
    Sønderby, Raiko, Maaløe, Sønderby, Winther. Ladder Variational Autoencoders. NeurIPS 2016,
    arXiv:1602.02282.
    Vahdat, Kautz. NVAE: A Deep Hierarchical Variational Autoencoder. NeurIPS 2020,
    arXiv:2007.03898.
    Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016,
    arXiv:1509.00519.
    Kingma et al. Improved Variational Inference with Inverse Autoregressive Flow. NeurIPS 2016,
    arXiv:1606.04934 (free bits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core import objectives
from dgm.core.objectives import check_objective
from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.distributions import (
    kl_normal_diag,
    kl_standard_normal,
    log_normal_diag,
    log_standard_normal,
)
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.heads import check_likelihood, likelihood_head
from dgm.core.nn import EncoderInput, mlp
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "HierarchicalVAEConfig",
    "HierarchicalVAE",
    "LatentLevel",
    "HierarchicalELBOTerms",
]

INFERENCE = ("top_down", "bottom_up")
ACTIVATIONS: dict[str, type[nn.Module]] = {"leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


# ------------------------------------------------------------------------------ one level


@dataclass(frozen=True)
class LatentLevel:
    """One level of a pass through the hierarchy; every tensor has B rows (B = k·N).

    ``z`` is the draw from q (or q's mean), (``mean_q``, ``log_var_q``) the posterior and
    (``mean_p``, ``log_var_p``) the prior p(z_l | z_{l+1}) at the drawn parent (both None at the
    top, where p = N(0, I)). ``analytic`` says whether q and p share their conditioning, so that
    the regularizer is the closed-form KL rather than log q(z) - log p(z) at the draw.
    """

    z: Tensor
    mean_q: Tensor
    log_var_q: Tensor
    mean_p: Tensor | None
    log_var_p: Tensor | None
    analytic: bool

    def log_q(self) -> Tensor:
        """log q(z_l | ·) at the draw, (B,)."""
        return log_normal_diag(self.z, self.mean_q, self.log_var_q).sum(dim=-1)

    def log_p(self) -> Tensor:
        """log p(z_l | z_{l+1}) (or log N(z_L; 0, I)) at the draw, (B,)."""
        if self.mean_p is None or self.log_var_p is None:
            return log_standard_normal(self.z).sum(dim=-1)
        return log_normal_diag(self.z, self.mean_p, self.log_var_p).sum(dim=-1)

    def kl(self) -> Tensor:
        """The level's regularizer, (B,): the closed-form KL if ``analytic``, else the one-sample
        estimate log q - log p (Eq. 5.82's middle term)."""
        if not self.analytic:
            return self.log_q() - self.log_p()
        if self.mean_p is None or self.log_var_p is None:
            return kl_standard_normal(self.mean_q, self.log_var_q).sum(dim=-1)
        return kl_normal_diag(self.mean_q, self.log_var_q, self.mean_p, self.log_var_p).sum(-1)


@dataclass(frozen=True)
class HierarchicalELBOTerms:
    """Single-sample parts of the negative ELBO per example, in nats.

    ``reconstruction`` = -log p(x | z_1); ``kl[i]`` the regularizer of level i + 1 (bottom
    first), each (N,); -ELBO = reconstruction + Σ kl.
    """

    reconstruction: Tensor
    kl: tuple[Tensor, ...]


# ------------------------------------------------------------------------------------ config


@dataclass(frozen=True, kw_only=True)
class HierarchicalVAEConfig:
    """Configuration of :class:`HierarchicalVAE`.

    Args:
        latent_dims: sizes of z_1 ... z_L, bottom level (read by the decoder) first; any
            length >= 1 (length 1 is a plain VAE).
        hidden: width of every network.
        num_hidden: hidden layers of the decoder, of each prior network p(z_l | z_{l+1}), of
            each bottom-up step f_l (top-down inference) and of each encoder q(z_l | z_{l-1})
            (bottom-up inference). The Δ networks have one hidden layer.
        dropout: dropout rate inside every network.
        activation: ``"leaky_relu"`` or ``"gelu"``.
        likelihood: the decoder likelihood, as in :class:`~dgm.models.vae.VAEConfig`.
        num_components: mixture components of the discretized logistic.
        inference: ``"top_down"`` (Ladder/NVAE, Book §5.5.2.2) or ``"bottom_up"`` (§5.5.2.1).
        delta_log_var_min, delta_log_var_max: the hardtanh range of Δlogvar (top-down; Listing
            5.12 uses [-7, 2]).
        beta: final weight of the KL terms (1 gives the negative ELBO).
        warmup_steps: KL warm-up: the weight rises linearly from 0 to ``beta`` over this many
            optimizer steps (0: off).
        free_bits: λ, nats per level: a level whose batch-mean KL is below λ pays λ and gets no
            gradient (0: off).
        iwae_k: train on the IWAE(k) bound when > 1 (then beta = 1, no warm-up, no free bits).
        init_from_data: start the decoder's output bias at the per-coordinate data marginals.
    """

    latent_dims: tuple[int, ...] = (16, 8)
    hidden: int = 256
    num_hidden: int = 1
    dropout: float = 0.0
    activation: Literal["leaky_relu", "gelu"] = "leaky_relu"
    likelihood: Literal[
        "auto", "categorical", "bernoulli", "gaussian", "discretized_logistic"
    ] = "auto"
    num_components: int = 1
    inference: Literal["top_down", "bottom_up"] = "top_down"
    delta_log_var_min: float = -7.0
    delta_log_var_max: float = 2.0
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    iwae_k: int = 1
    init_from_data: bool = True

    def __post_init__(self) -> None:
        if len(self.latent_dims) < 1 or any(m < 1 for m in self.latent_dims):
            raise ConfigError(
                f"model.latent_dims must be a non-empty list of sizes >= 1, got "
                f"{list(self.latent_dims)}"
            )
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.num_hidden < 1:
            raise ConfigError(f"model.num_hidden must be >= 1, got {self.num_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"model.activation: {self.activation!r} is not one of "
                f"{', '.join(map(repr, ACTIVATIONS))}"
            )
        check_likelihood(self.likelihood, self.num_components)
        if self.inference not in INFERENCE:
            raise ConfigError(
                f"model.inference: {self.inference!r} is not one of "
                f"{', '.join(map(repr, INFERENCE))}"
            )
        if not self.delta_log_var_min < self.delta_log_var_max:
            raise ConfigError(
                "model.delta_log_var_min must be below model.delta_log_var_max, got "
                f"{self.delta_log_var_min} and {self.delta_log_var_max}"
            )
        check_objective(self.beta, self.warmup_steps, self.free_bits, self.iwae_k)


# ------------------------------------------------------------------------------------- model


def _hidden_stack(
    in_features: int, hidden: int, num_hidden: int, activation: type[nn.Module], dropout: float
) -> nn.Sequential:
    """``num_hidden`` layers Linear -> act (-> dropout): an MLP without its output layer."""
    layers: list[nn.Module] = [
        mlp(in_features, hidden, hidden, num_hidden=num_hidden - 1, activation=activation,
            dropout=dropout),
        activation(),
    ]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@register_model("hvae", HierarchicalVAEConfig)
class HierarchicalVAE(GenerativeModel):
    r"""A VAE with L Gaussian latent levels, top-down or bottom-up inference (Book §5.5.2).

        ELBO(x) = E_q[log p(x | z_1) + Σ_{l<L} log p(z_l | z_{l+1}) + log p(z_L)
                      - log q(z_{1:L} | x)]
                = E_q[log p(x | z_1)] - Σ_l E_q[KL_l]

    where KL_l is the closed-form KL[q(z_l | ·) || p(z_l | z_{l+1})] given the drawn parent
    (every level of top-down inference; the top level of bottom-up inference) or its one-sample
    estimate (the lower levels of bottom-up inference, Eq. 5.82).

    ``log_prob`` is a one-sample ELBO; ``log_weights`` gives k importance weights for the ELBO
    and IWAE(k); ``loss`` is -log p(x | z_1) + w Σ_l KL_l with the warm-up weight w (the
    negative ELBO when β = 1 with no warm-up and no free bits), or the IWAE(k) loss.

    Networks (W = ``hidden``, H = ``num_hidden``; no BatchNorm, so the bound of an example does
    not depend on its batch):

    - decoder p(x | z_1): an MLP with H hidden layers; its output bias starts at the data
      marginals;
    - prior p(z_l | z_{l+1}): H hidden layers give the top-down features d_l, a linear layer
      (μ_l, logvar_l);
    - top-down inference: f_l, H hidden layers each; the Δ network of level l reads [r_l, d_l]
      (r_L at the top) through one hidden layer;
    - bottom-up inference: q(z_l | z_{l-1}) an MLP with H hidden layers (z_0 = x).

    Args:
        spec: the data spec (discrete, binary or continuous), flattened to D coordinates.
        config: a :class:`HierarchicalVAEConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
        >>> model = HierarchicalVAE(spec, HierarchicalVAEConfig(latent_dims=(4, 2), hidden=32))
        >>> x = torch.randint(0, 17, (5, 1, 8, 8))
        >>> model.log_weights(x, 10).shape  # (k, N): ELBO = mean, IWAE = log-mean-exp
        torch.Size([10, 5])
        >>> [m.shape[1] for m in model.latent_means(x)], model.sample(3).dtype
        ([4, 2], torch.int64)

    References:
        Sønderby et al. Ladder Variational Autoencoders. NeurIPS 2016, arXiv:1602.02282.
        Vahdat, Kautz. NVAE: A Deep Hierarchical Variational Autoencoder. NeurIPS 2020,
        arXiv:2007.03898.
    """

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: HierarchicalVAEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or HierarchicalVAEConfig()
        self.dim = spec.dim
        self.latent_dims = dims = tuple(config.latent_dims)
        self.top_down_inference = config.inference == "top_down"
        act = ACTIVATIONS[config.activation]
        w, h, p = config.hidden, config.num_hidden, config.dropout
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        # Generative side, shared by both inferences.
        self.decoder = mlp(dims[0], w, self.dim * self.head.num_params, num_hidden=h,
                           activation=act, dropout=p)
        self.prior_features = nn.ModuleList(
            _hidden_stack(dims[i + 1], w, h, act, p) for i in range(len(dims) - 1)
        )
        self.prior_params = nn.ModuleList(nn.Linear(w, 2 * dims[i]) for i in range(len(dims) - 1))
        if self.top_down_inference:
            self.bottom_up = nn.ModuleList(
                _hidden_stack(self.dim if i == 0 else w, w, h, act, p) for i in range(len(dims))
            )
            self.delta = nn.ModuleList(
                mlp(w if i == len(dims) - 1 else 2 * w, w, 2 * m, num_hidden=1, activation=act,
                    dropout=p)
                for i, m in enumerate(dims)
            )
        else:
            self.encoders = nn.ModuleList(
                mlp(self.dim if i == 0 else dims[i - 1], w, 2 * m, num_hidden=h, activation=act,
                    dropout=p)
                for i, m in enumerate(dims)
            )
        self.inputs = EncoderInput(spec)
        # Optimizer steps taken, for the KL warm-up: a buffer so that it is checkpointed.
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    # --- networks

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim)

    def _decode(self, z1: Tensor) -> Tensor:
        """Decoder parameters θ(z_1), (B, D, P)."""
        return self.decoder(z1).reshape(z1.shape[0], self.dim, self.head.num_params)

    def prior(self, i: int, parent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """p(z_{i+1} | z_{i+2}) for the 0-based level i < L - 1 and its parent (B, M_{i+1}):
        the top-down features d (B, W), the mean and the log-variance (B, M_i)."""
        d = self.prior_features[i](parent)
        mean, log_var = self.prior_params[i](d).chunk(2, dim=-1)
        return d, mean, log_var

    def _clamp(self, delta_log_var: Tensor) -> Tensor:
        # Listing 5.12: the posterior may shrink the prior's variance by e^-7 and widen it by
        # e^2 at most, which keeps exp(Δlogvar) and the KL's Δσ² - log Δσ² finite.
        c = self.config
        return F.hardtanh(delta_log_var, c.delta_log_var_min, c.delta_log_var_max)

    @staticmethod
    def _draw(
        mean: Tensor, log_var: Tensor, use_mean: bool, generator: torch.Generator | None
    ) -> Tensor:
        if use_mean:
            return mean
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * log_var) * eps

    # --- inference

    def infer(
        self,
        x: Tensor,
        k: int = 1,
        *,
        use_mean: bool = False,
        generator: torch.Generator | None = None,
    ) -> list[LatentLevel]:
        """One pass through q for each of k copies of x (N, D) flat: the L levels, bottom first,
        each with k·N rows ordered (k, N). With ``use_mean`` every level takes q's mean."""
        if self.top_down_inference:
            return self._infer_top_down(x, k, use_mean, generator)
        return self._infer_bottom_up(x, k, use_mean, generator)

    def _infer_top_down(
        self, x: Tensor, k: int, use_mean: bool, generator: torch.Generator | None
    ) -> list[LatentLevel]:
        """Book §5.5.2.2: the deterministic path r_l bottom-up, then z_L, ..., z_1 top-down."""
        h = self.inputs(x)
        r: list[Tensor] = []
        for f in self.bottom_up:
            h = f(h)
            r.append(h.repeat(k, 1))  # (k·N, W), copy j of x in rows j·N ... (j + 1)·N - 1
        top = len(self.latent_dims) - 1
        mean, delta_log_var = self.delta[top](r[top]).chunk(2, dim=-1)
        log_var = self._clamp(delta_log_var)
        z = self._draw(mean, log_var, use_mean, generator)
        levels = [LatentLevel(z, mean, log_var, None, None, analytic=True)]
        for i in reversed(range(top)):
            d, mean_p, log_var_p = self.prior(i, z)
            delta_mean, delta_log_var = self.delta[i](torch.cat([r[i], d], dim=-1)).chunk(2, -1)
            mean_q = mean_p + delta_mean
            log_var_q = log_var_p + self._clamp(delta_log_var)
            z = self._draw(mean_q, log_var_q, use_mean, generator)
            levels.append(LatentLevel(z, mean_q, log_var_q, mean_p, log_var_p, analytic=True))
        return levels[::-1]

    def _infer_bottom_up(
        self, x: Tensor, k: int, use_mean: bool, generator: torch.Generator | None
    ) -> list[LatentLevel]:
        """Book §5.5.2.1: z_1 ~ q(z_1 | x), z_l ~ q(z_l | z_{l-1}); then the priors at the
        draws. Only the top level's KL is analytic: z_{l+1} depends on z_l (Eq. 5.82)."""
        h = self.encoders[0](self.inputs(x)).repeat(k, 1)  # x is read once for all k copies
        posteriors: list[tuple[Tensor, Tensor, Tensor]] = []
        for i in range(len(self.latent_dims)):
            if i > 0:
                h = self.encoders[i](posteriors[-1][0])
            mean, log_var = h.chunk(2, dim=-1)
            posteriors.append((self._draw(mean, log_var, use_mean, generator), mean, log_var))
        top = len(self.latent_dims) - 1
        levels = []
        for i, (z, mean, log_var) in enumerate(posteriors):
            if i == top:
                levels.append(LatentLevel(z, mean, log_var, None, None, analytic=True))
            else:
                _, mean_p, log_var_p = self.prior(i, posteriors[i + 1][0])
                levels.append(LatentLevel(z, mean, log_var, mean_p, log_var_p, analytic=False))
        return levels

    # --- data-dependent initialization

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the input standardization (continuous data) and, if ``init_from_data``, the
        decoder's output bias to the per-coordinate marginals of the training data."""
        self.check_input(x)
        x = self._flat(x)
        self.inputs.fit(x)
        if self.config.init_from_data:
            self.head.set_marginal_bias(self.decoder[-1], x)

    # --- bounds

    def _check(self, x: Tensor) -> Tensor:
        self.check_input(x)
        return self._flat(x)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""log p(x | z_1) + Σ_{l<L} log p(z_l | z_{l+1}) + log p(z_L) - Σ_l log q(z_l | ·),
        all levels drawn from q; shape (k, N). Their mean estimates the ELBO, their
        log-mean-exp is the IWAE(k) bound (Eq. 5.32)."""
        x = self._check(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        levels = self.infer(x, k, generator=generator)
        xk = x.repeat(k, 1)
        log_w = self.head.log_prob(xk, self._decode(levels[0].z))
        for level in levels:
            log_w = log_w + level.log_p() - level.log_q()
        return log_w.reshape(k, x.shape[0])

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """One-sample Monte-Carlo ELBO per example, a stochastic lower bound on log p(x)."""
        return self.log_weights(x, 1)[0]

    def elbo_terms(
        self, x: Tensor, *, generator: torch.Generator | None = None
    ) -> HierarchicalELBOTerms:
        """-log p(x | z_1) and each level's regularizer at one draw of z_{1:L} ~ q."""
        x = self._check(x)
        levels = self.infer(x, 1, generator=generator)
        reconstruction = -self.head.log_prob(x, self._decode(levels[0].z))
        return HierarchicalELBOTerms(reconstruction, tuple(level.kl() for level in levels))

    def kl_weight(self) -> float:
        """The KL weight at the current optimizer step: β · min(1, (step + 1) / warmup)."""
        c = self.config
        return objectives.kl_weight(int(self.num_updates), c.beta, c.warmup_steps)

    def _terms(self, x: Tensor, weight: float) -> dict[str, Tensor]:
        terms = self.elbo_terms(x)
        out = {"reconstruction": terms.reconstruction}
        for i, kl in enumerate(terms.kl):
            # Free bits per level: groups are independent, so level by level equals one call.
            kl = objectives.free_bits(kl.unsqueeze(-1), self.config.free_bits)
            out[f"kl_{i + 1}"] = weight * kl
        return out

    def after_step(self, info: StepInfo) -> None:
        """One optimizer step was taken: advance the KL warm-up's step counter."""
        self.num_updates += 1

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x | z_1) + w Σ_l KL_l per example (the negative ELBO when β = 1 with no
        warm-up and no free bits), or -IWAE(k) when ``iwae_k`` > 1."""
        weight = self.kl_weight()
        if self.config.iwae_k > 1:
            return objectives.iwae_loss(self.log_weights(x, self.config.iwae_k))
        return torch.stack(list(self._terms(x, weight).values())).sum(dim=0)

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``reconstruction`` and ``kl_1`` ... ``kl_L`` (bottom first, weighted as in the loss),
        summing to the loss; with ``iwae_k`` > 1 the single term ``iwae``."""
        if self.config.iwae_k > 1:
            return {"iwae": objectives.iwae_loss(self.log_weights(x, self.config.iwae_k))}
        return self._terms(x, self.kl_weight())

    # --- the LatentVariable protocol

    @torch.no_grad()
    def latent_means(self, x: Tensor) -> list[Tensor]:
        """q's mean of each level, bottom first, each (N, M_l), along one pass that takes the
        mean at every level (top-down: the parent of level l is its posterior mean)."""
        return [level.z for level in self.infer(self._check(x), use_mean=True)]

    @torch.no_grad()
    def kl_per_level(self, x: Tensor) -> list[Tensor]:
        """Each level's regularizer at one draw, bottom first, each (N,) (see ``elbo_terms``)."""
        return list(self.elbo_terms(x).kl)

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z_L; 0, I), z (N, M_L) -> (N,)."""
        return log_standard_normal(z).sum(dim=-1)

    @torch.no_grad()
    def decode_top(self, z: Tensor) -> Tensor:
        """The decoder's mode for top-level latents z (N, M_L), the lower levels at their prior
        means; shape (N, *event_shape) in the data's dtype."""
        for i in reversed(range(len(self.latent_dims) - 1)):
            z = self.prior(i, z)[1]
        x = self.head.mode(self._decode(z))
        return self.as_data(x)

    # --- generation

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """Ancestral sampling from the top: z_L ~ N(0, I), z_l ~ p(z_l | z_{l+1}), x ~ p(x | z_1);
        shape (n, *event_shape) in the data's dtype."""
        dtype, device = self.inputs.scale.dtype, self.device
        z = torch.randn(n, self.latent_dims[-1], generator=generator, dtype=dtype, device=device)
        for i in reversed(range(len(self.latent_dims) - 1)):
            _, mean, log_var = self.prior(i, z)
            z = self._draw(mean, log_var, False, generator)
        x = self.head.sample(self._decode(z), generator=generator)
        return self.as_data(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """z_{1:L} ~ q, then the most probable x under p(x | z_1) (the mean for a Gaussian)."""
        levels = self.infer(self._check(x), generator=generator)
        x_hat = self.head.mode(self._decode(levels[0].z))
        return self.as_data(x_hat)
