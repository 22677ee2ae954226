r"""The variational auto-encoder with any prior and posterior of Book §5.3-5.4.

For a latent z with prior p_λ(z), decoder p_θ(x | z) and amortized posterior q_φ(z | x)
(Book §5.3.1-5.3.4, Eq. 5.11-5.31),

    log p(x) >= ELBO(x) = E_q[log p_θ(x | z)] - KL[q_φ(z | x) || p_λ(z)],

with reparameterized draws z (Eq. 5.30). The importance weights log w = log p_θ(x | z) +
log p_λ(z) - log q_φ(z | x), z ~ q, give the ELBO as their mean and the tighter IWAE(k) bound as
log (1/k) Σ_i w_i (Eq. 5.32). The prior is one of :mod:`dgm.models.latent.priors` (standard, mixture
of Gaussians, VampPrior, GTM, GTM-VampPrior, RealNVP flow) and the posterior one of
:mod:`dgm.models.latent.posteriors` (diagonal Gaussian, Householder, Sylvester and IAF flows, or a von
Mises-Fisher on the sphere with the uniform prior, Book §5.4.2.3).

Training objectives (:mod:`dgm.core.objectives`): the negative ELBO, a β-weighted KL
(β-VAE), KL warm-up, free bits, or the IWAE(k) bound itself.

The decoder likelihood follows the data: categorical over the levels for discrete data (Eq.
5.27), Bernoulli for binary data, a Gaussian with a learned per-coordinate variance for
continuous data, or (by choice) a discretized logistic for many-level discrete data.

References:
    Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014, arXiv:1312.6114.
    Rezende, Mohamed, Wierstra. Stochastic Backpropagation and Approximate Inference in Deep
    Generative Models. ICML 2014, arXiv:1401.4082.
    Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016, arXiv:1509.00519.
    Higgins et al. beta-VAE. ICLR 2017.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import CodecError, ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.heads import check_likelihood, likelihood_head
from dgm.core.nn import EncoderInput, mlp
from dgm.core.objectives import check_objective, free_bits, iwae_loss, kl_weight
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.latent.posteriors import (
    AmortizedPosterior,
    DiagonalGaussianPosterior,
    GaussianPosterior,
    PosteriorConfig,
    PosteriorDraw,
    build_posterior,
)
from dgm.models.latent.priors import (
    MixturePrior,
    Prior,
    PriorConfig,
    StandardNormalPrior,
    build_prior,
)

__all__ = [
    "VAEConfig",
    "VAE",
    "GaussianPosterior",
    "ELBOTerms",
]


@dataclass(frozen=True)
class ELBOTerms:
    """Single-sample parts of the negative ELBO per example, in nats.

    ``reconstruction`` = -log p(x | z) at z ~ q(z | x); ``kl_groups`` (N, G) = KL[q(z | x) ||
    p(z)] per group of latent units: in closed form per unit where the posterior and prior
    allow it (G = M), else the one-sample estimate log q(z | x) - log p(z) at the same z (G = 1).
    """

    reconstruction: Tensor
    kl_groups: Tensor

    @property
    def kl(self) -> Tensor:
        """The whole KL per example, (N,)."""
        return self.kl_groups.sum(dim=-1)


# ------------------------------------------------------------------------------------- model


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Configuration of :class:`VAE`.

    Args:
        latent_dim: M, the size of z (the ambient dimension for the sphere of a vMF posterior).
        hidden: width of the encoder and decoder MLPs.
        num_hidden: hidden layers in each MLP (the book's Listing 5.5 uses 2).
        dropout: dropout rate inside both MLPs (a regularizer for small data).
        likelihood: the decoder likelihood: ``"auto"`` (from the data kind), ``"categorical"``,
            ``"bernoulli"``, ``"gaussian"`` or ``"discretized_logistic"``.
        num_components: mixture components of the discretized logistic (1: a single one).
        prior: the prior p_λ(z) (:class:`~dgm.models.priors.PriorConfig`).
        posterior: the posterior q_φ(z | x) (:class:`~dgm.models.posteriors.PosteriorConfig`).
        analytic_kl: use the closed-form KL in the training loss where the posterior and prior
            have one (lower variance). Evaluation through ``log_weights`` always uses the
            Monte-Carlo weights.
        beta: weight of the KL term in the loss. beta = 1 gives the negative ELBO; any other
            value (a beta-VAE) is *not* a bound on -log p(x), and the loss is then not an NLL.
        warmup_steps: KL warm-up: the KL weight rises linearly from 0 to beta over this many
            optimizer steps (0: none).
        free_bits: λ, nats per latent unit below which the KL is not penalized (0: none).
        iwae_k: train on the IWAE(k) bound (k > 1) instead of the ELBO.
        init_from_data: set the decoder's output bias to each coordinate's marginal fitted on
            the training data, so that training starts at the independent-pixel model.
    """

    latent_dim: int = 16
    hidden: int = 256
    num_hidden: int = 2
    dropout: float = 0.0
    likelihood: Literal[
        "auto", "categorical", "bernoulli", "gaussian", "discretized_logistic"
    ] = "auto"
    num_components: int = 1
    prior: PriorConfig = field(default_factory=PriorConfig)
    posterior: PosteriorConfig = field(default_factory=PosteriorConfig)
    analytic_kl: bool = True
    beta: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    iwae_k: int = 1
    init_from_data: bool = True

    def __post_init__(self) -> None:
        if self.latent_dim < 1:
            raise ConfigError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        if self.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1, got {self.hidden}")
        if self.num_hidden < 0:
            raise ConfigError(f"model.num_hidden must be >= 0, got {self.num_hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        check_likelihood(self.likelihood, self.num_components)
        check_objective(self.beta, self.warmup_steps, self.free_bits, self.iwae_k)
        if self.posterior.kind == "vmf" and self.prior.kind != "standard":
            raise ConfigError(
                "a vMF posterior lives on the sphere and pairs with the uniform prior there: "
                "set model.prior.kind to 'standard' (the uniform on the sphere)"
            )


@register_model("vae", VAEConfig)
class VAE(GenerativeModel):
    r"""Variational auto-encoder (Book §5.3-5.4) with a configurable prior and posterior.

        ELBO(x) = E_{q(z|x)}[log p_θ(x | z)] - KL[q_φ(z | x) || p_λ(z)]      (Eq. 5.17, 5.31)

    ``log_prob`` is a one-sample ELBO estimate (a stochastic lower bound on log p(x));
    ``log_weights`` gives k importance weights for the ELBO and IWAE(k) bounds (Eq. 5.32);
    ``loss`` is the training objective of the config (the negative ELBO by default).
    The encoder reads x scaled to [0, 1] (discrete and binary data) or standardized with the
    training statistics (continuous data) and outputs the posterior's parameters.

    Args:
        spec: the data spec; any event shape, flattened to D = ``spec.dim`` coordinates.
        config: a :class:`VAEConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
        >>> model = VAE(spec, VAEConfig(latent_dim=4, hidden=32))
        >>> x = torch.randint(0, 17, (5, 1, 8, 8))
        >>> model.log_weights(x, 10).shape  # (k, N): ELBO = mean, IWAE = log-mean-exp
        torch.Size([10, 5])
        >>> model.encode(x).mean.shape, model.reconstruct(x).dtype
        (torch.Size([5, 4]), torch.int64)

    References:
        Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014, arXiv:1312.6114.
        Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. ICLR 2016,
        arXiv:1509.00519.
        Tomczak, Welling. VAE with a VampPrior. AISTATS 2018, arXiv:1705.07120.
    """

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: VAEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or VAEConfig()
        self.dim = spec.dim
        self.latent_dim = config.latent_dim
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        self.inputs = EncoderInput(spec)
        self.posterior: AmortizedPosterior = build_posterior(config.posterior, config.latent_dim)
        self.encoder = mlp(
            self.dim,
            config.hidden,
            self.posterior.num_params,
            num_hidden=config.num_hidden,
            dropout=config.dropout,
        )
        self.decoder = mlp(
            config.latent_dim,
            config.hidden,
            self.dim * self.head.num_params,
            num_hidden=config.num_hidden,
            dropout=config.dropout,
        )
        self.prior: Prior = build_prior(
            config.prior,
            config.latent_dim,
            input_dim=self.dim,
            encoder=self._gaussian_of_scaled,
            bounded_inputs=self.inputs.bounded,
            posterior=config.posterior.kind,
        )
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    # --- the two networks

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim)

    def _params(self, x: Tensor) -> Tensor:
        """The posterior's parameters e(x), (N, P), for flat x in the data space."""
        return self.encoder(self.inputs(x))

    def _gaussian_of_scaled(self, u: Tensor) -> tuple[Tensor, Tensor]:
        # The VampPrior's view of the encoder: inputs already in the encoder's space.
        q = self.posterior.gaussian(self.encoder(u))
        return q.mean, q.log_var

    def encode(self, x: Tensor) -> GaussianPosterior:
        """The Gaussian q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)) (Eq. 5.28), or a flow posterior's
        base q_0; x (N, *event) -> (N, M) each."""
        self.check_input(x)
        return self.posterior.gaussian(self._params(self._flat(x)))

    def decode(self, z: Tensor) -> Tensor:
        """Decoder parameters θ(z), shape (N, *event_shape, P).

        P and the meaning follow the likelihood: L logits (categorical), one logit (Bernoulli),
        the mean (Gaussian; the variance is the parameter ``head.log_var``), or the mean and
        log-scale in units of the range (discretized logistic).
        """
        return self._decode(z).reshape(z.shape[0], *self.spec.event_shape, -1)

    def _decode(self, z: Tensor) -> Tensor:
        return self.decoder(z).reshape(*z.shape[:-1], self.dim, self.head.num_params)

    # --- data-dependent initialization

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the encoder's input standardization (continuous data), the decoder's output
        bias to the per-coordinate marginals (if ``init_from_data``), and the prior's
        data-dependent parts (VampPrior pseudo-inputs from training examples)."""
        self.check_input(x)
        x = self._flat(x)
        self.inputs.fit(x)
        if self.config.init_from_data:
            self.head.set_marginal_bias(self.decoder[-1], x)
        self.prior.initialize_from_data(self.inputs(x), generator)

    # --- bounds

    def _draw(self, x: Tensor, k: int, generator: torch.Generator | None) -> tuple[
        Tensor, PosteriorDraw, Tensor
    ]:
        """Encoder outputs, k posterior draws, and log p(x | z) (k, N), for flat x."""
        params = self._params(x)
        draw = self.posterior.rsample(params, k, generator=generator)
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], self.dim)
        log_px_z = self.head.log_prob(xk, self._decode(draw.z.reshape(-1, self.latent_dim)))
        return params, draw, log_px_z.reshape(k, -1)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""log p_θ(x | z_i) + log p_λ(z_i) - log q_φ(z_i | x), z_i ~ q_φ(z | x); shape (k, N).

        Their mean over i estimates the ELBO; log (1/k) Σ_i exp(·) is the IWAE(k) bound.
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        _, draw, log_px_z = self._draw(self._flat(x), k, generator)
        return log_px_z + self.prior.log_prob(draw.z) - draw.log_q

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """One-sample Monte-Carlo ELBO per example, a stochastic lower bound on log p(x)."""
        return self.log_weights(x, 1)[0]

    def elbo_terms(self, x: Tensor, *, generator: torch.Generator | None = None) -> ELBOTerms:
        """Reconstruction -log p(x | z) at one z ~ q(z | x), and the KL per group of units
        (closed form if ``analytic_kl`` and available, else log q(z | x) - log p(z) at z)."""
        self.check_input(x)
        params, draw, log_px_z = self._draw(self._flat(x), 1, generator)
        kl = self.posterior.closed_form_kl(params, self.prior) if self.config.analytic_kl else None
        if kl is None:
            kl = (draw.log_q[0] - self.prior.log_prob(draw.z[0])).unsqueeze(-1)
        reconstruction = -log_px_z[0]
        if draw.log_proposal is not None:  # same value; adds the rejection sampler's score
            score = draw.log_proposal[0] - draw.log_proposal[0].detach()
            reconstruction = reconstruction + reconstruction.detach() * score
        return ELBOTerms(reconstruction=reconstruction, kl_groups=kl)

    def kl_weight(self) -> float:
        """The KL's weight in the loss now: β, ramped up over ``warmup_steps``."""
        return kl_weight(int(self.num_updates), self.config.beta, self.config.warmup_steps)

    def _regularizer(self, kl: Tensor) -> Tensor:
        # Free bits are per latent unit; a KL that does not factorize is one group of M units.
        lam = self.config.free_bits * self.latent_dim / kl.shape[-1]
        return self.kl_weight() * free_bits(kl, lam)

    def after_step(self, info: StepInfo) -> None:
        """One optimizer step was taken: advance the KL warm-up's step counter."""
        self.num_updates += 1

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The config's objective per example: -log p(x | z) + w_t · KL (the negative ELBO
        with β = 1, no warm-up and no free bits), or -IWAE(k) when ``iwae_k`` > 1."""
        if self.config.iwae_k > 1:
            loss = iwae_loss(self.log_weights(x, self.config.iwae_k))
        else:
            terms = self.elbo_terms(x)
            loss = terms.reconstruction + self._regularizer(terms.kl_groups)
        return loss

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``reconstruction`` (-log p(x | z)) and ``kl`` (weighted), summing to the loss; or
        ``iwae`` alone when training on the IWAE bound."""
        if self.config.iwae_k > 1:
            return {"iwae": iwae_loss(self.log_weights(x, self.config.iwae_k))}
        terms = self.elbo_terms(x)
        return {"reconstruction": terms.reconstruction, "kl": self._regularizer(terms.kl_groups)}

    # --- inside the latent space (the report's diagnostics)

    def representation(self, x: Tensor) -> Tensor:
        """The posterior mean E_q[z | x] (N, M): what the hybrid VAE's classifier reads
        (Book §6.5, Eq. 6.14)."""
        return self.encode(x).mean

    @torch.no_grad()
    def latent_means(self, x: Tensor) -> list[Tensor]:
        """[the posterior's location], (N, M): its mean, or the flow applied to the base mean."""
        self.check_input(x)
        return [self.posterior.location(self._params(self._flat(x)))]

    @torch.no_grad()
    def kl_per_level(self, x: Tensor) -> list[Tensor]:
        """[KL[q(z | x) || p(z)]], (N,): closed form where available, else one-sample."""
        return [self.elbo_terms(x).kl]

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p_λ(z), z (N, M) -> (N,)."""
        return self.prior.log_prob(z)

    @torch.no_grad()
    def decode_top(self, z: Tensor) -> Tensor:
        """The decoder's most probable x for latents z (N, M), in the data's dtype."""
        x = self.head.mode(self._decode(z))
        return self.as_data(x)

    # --- generation

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ p_λ(z), then x ~ p_θ(x | z); shape (n, *event_shape) in the data's dtype."""
        z = self.prior.sample(n, generator=generator).to(self.inputs.scale.dtype)
        x = self.head.sample(self._decode(z), generator=generator)
        return self.as_data(x)

    # --- bits-back coding (BB-ANS)

    def coding_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x) as (mean, log σ²), (N, M) each: only a diagonal Gaussian posterior codes."""
        if not isinstance(self.posterior, DiagonalGaussianPosterior):
            raise CodecError(f"bits-back coding needs a diagonal Gaussian posterior, not "
                             f"{type(self.posterior).__name__}")
        q = self.encode(x)
        return q.mean, q.log_var

    def coding_prior(self) -> tuple[Tensor, Tensor, Tensor]:
        """p(z) as a mixture of diagonal Gaussians: (log w (K,), μ (K, M), log σ² (K, M))."""
        if isinstance(self.prior, MixturePrior):
            means, log_vars = self.prior.components()
            return self.prior.log_weights(), means, log_vars
        if isinstance(self.prior, StandardNormalPrior):
            zeros = self.inputs.scale.new_zeros(1, self.latent_dim)
            return zeros.new_zeros(1), zeros, zeros
        raise CodecError(f"bits-back coding needs a Gaussian or mixture prior, not "
                         f"{type(self.prior).__name__}")

    def coding_likelihood(self, z: Tensor) -> Tensor:
        """log p(x_d = l | z), (N, D, L), for a discrete decoder."""
        if self.head.num_levels is None:
            raise CodecError("bits-back coding needs a discrete decoder (a pmf over the levels)")
        return self.head.log_pmf(self._decode(z))

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ q(z | x), then the most probable x under p_θ(x | z) (the mean for a Gaussian).

        The decoder's mode rather than a draw: pixel noise would hide what z holds.
        """
        self.check_input(x)
        z = self.posterior.rsample(self._params(self._flat(x)), 1, generator=generator).z[0]
        return self.decode_top(z)
