r"""The variational auto-encoder: a Gaussian encoder, a decoder likelihood and a N(0, I) prior.

For a latent z ∈ R^M with prior p(z) = N(0, I), decoder p_θ(x | z) and amortized posterior
q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)) (Book §5.3.1-5.3.4, Eq. 5.11-5.31),

    log p(x) >= ELBO(x) = E_q[log p_θ(x | z)] - KL[q_φ(z | x) || p(z)],

with z = μ + σ ⊙ ε, ε ~ N(0, I) (the reparameterization trick, Eq. 5.30). The importance
weights log w = log p_θ(x | z) + log p(z) - log q_φ(z | x), z ~ q, give the ELBO as their mean
and the tighter IWAE(k) bound as log (1/k) Σ_i w_i (Eq. 5.32).

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

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.distributions import log_normal_diag, log_standard_normal
from dgm.core.errors import ConfigError
from dgm.core.heads import LIKELIHOODS, likelihood_head
from dgm.core.nn import mlp
from dgm.core.registry import register_model
from dgm.data.spec import DataKind, DataSpec

__all__ = [
    "VAEConfig",
    "VAE",
    "GaussianPosterior",
    "ELBOTerms",
]



# --------------------------------------------------------------------------- posterior, terms


@dataclass(frozen=True)
class GaussianPosterior:
    """q(z | x) = N(mean, diag exp(log_var)); tensors of shape (N, M)."""

    mean: Tensor
    log_var: Tensor

    def rsample(self, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """k reparameterized draws z = μ + σ ⊙ ε (Eq. 5.30); shape (k, N, M)."""
        eps = torch.randn(
            (k, *self.mean.shape),
            generator=generator,
            dtype=self.mean.dtype,
            device=self.mean.device,
        )
        return self.mean + torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """log q(z | x) summed over the latent coordinates; z (..., N, M) -> (..., N)."""
        return log_normal_diag(z, self.mean, self.log_var).sum(dim=-1)

    def kl_standard_normal(self) -> Tensor:
        r"""KL[N(μ, σ²) || N(0, I)] = ½ Σ_m (μ² + σ² - log σ² - 1), shape (N,)."""
        return 0.5 * (self.mean**2 + torch.exp(self.log_var) - self.log_var - 1.0).sum(dim=-1)


@dataclass(frozen=True)
class ELBOTerms:
    """Single-sample parts of the negative ELBO per example, in nats.

    ``reconstruction`` = -log p(x | z) at z ~ q(z | x); ``kl`` = KL[q(z | x) || p(z)], either in
    closed form or as the one-sample estimate log q(z | x) - log p(z) at the same z.
    """

    reconstruction: Tensor
    kl: Tensor


# ------------------------------------------------------------------------------------- model


@dataclass(frozen=True, kw_only=True)
class VAEConfig:
    """Configuration of :class:`VAE`.

    Args:
        latent_dim: M, the size of z.
        hidden: width of the encoder and decoder MLPs.
        num_hidden: hidden layers in each MLP (the book's Listing 5.5 uses 2).
        dropout: dropout rate inside both MLPs (a regularizer for small data).
        likelihood: the decoder likelihood: ``"auto"`` (from the data kind), ``"categorical"``,
            ``"bernoulli"``, ``"gaussian"`` or ``"discretized_logistic"``.
        num_components: mixture components of the discretized logistic (1: a single one).
        analytic_kl: use the closed-form KL in the training loss (lower variance). Evaluation
            through ``log_weights`` always uses the Monte-Carlo weights.
        beta: weight of the KL term in the loss. beta = 1 gives the negative ELBO; any other
            value (a beta-VAE) is *not* a bound on -log p(x), and the loss is then not an NLL.
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
    analytic_kl: bool = True
    beta: float = 1.0
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
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(
                f"model.likelihood: {self.likelihood!r} is not one of "
                f"{', '.join(map(repr, LIKELIHOODS))}"
            )
        if self.num_components < 1:
            raise ConfigError(f"model.num_components must be >= 1, got {self.num_components}")
        if not self.beta >= 0.0:
            raise ConfigError(f"model.beta must be >= 0, got {self.beta}")


@register_model("vae", VAEConfig)
class VAE(GenerativeModel):
    r"""Variational auto-encoder with a Gaussian encoder and a N(0, I) prior (Book §5.3).

        ELBO(x) = E_{q(z|x)}[log p_θ(x | z)] - KL[q_φ(z | x) || N(0, I)]      (Eq. 5.17, 5.31)

    ``log_prob`` is a one-sample ELBO estimate (a stochastic lower bound on log p(x));
    ``log_weights`` gives k importance weights for the ELBO and IWAE(k) bounds (Eq. 5.32);
    ``loss`` is the negative ELBO (with ``beta`` != 1 a weighted objective, not a bound).
    The encoder reads x scaled to [0, 1] (discrete and binary data) or standardized with the
    training statistics (continuous data).

    Args:
        spec: the data spec; any event shape, flattened to D = ``spec.dim`` coordinates.
        config: a :class:`VAEConfig`.

    Example:
        >>> from dgm.data.spec import DataKind, DataSpec
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
    """

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: VAEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or VAEConfig()
        self.dim = spec.dim
        self.latent_dim = config.latent_dim
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        self.encoder = mlp(
            self.dim,
            config.hidden,
            2 * config.latent_dim,
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
        # Encoder input (x - loc) / scale: [0, 1] for integer data, fitted for continuous.
        scale = 1.0 if spec.num_levels is None else float(spec.num_levels - 1)
        self.register_buffer("input_loc", torch.zeros(self.dim))
        self.register_buffer("input_scale", torch.full((self.dim,), scale))

    # --- the two networks

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim)

    def encode(self, x: Tensor) -> GaussianPosterior:
        """q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)) (Eq. 5.28); x (N, *event) -> (N, M) each."""
        self.check_input(x)
        return self._encode(self._flat(x))

    def _encode(self, x: Tensor) -> GaussianPosterior:
        h = (x.to(self.input_scale.dtype) - self.input_loc) / self.input_scale
        mean, log_var = self.encoder(h).chunk(2, dim=-1)
        return GaussianPosterior(mean, log_var)

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
        """Fit the encoder's input standardization (continuous data) and the decoder's output
        bias to the per-coordinate marginals of the training data (if ``init_from_data``)."""
        self.check_input(x)
        x = self._flat(x)
        if self.spec.kind is DataKind.CONTINUOUS:
            xf = x.to(torch.float64)
            self.input_loc.copy_(xf.mean(dim=0))
            self.input_scale.copy_(xf.std(dim=0).clamp_min(1e-6))
        if self.config.init_from_data:
            last = self.decoder[-1]
            assert isinstance(last, nn.Linear)
            last.bias.copy_(self.head.marginal_params(x).reshape(-1))

    # --- bounds

    def _log_weights(self, x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
        q = self._encode(x)
        z = q.rsample(k, generator=generator)  # (k, N, M)
        xk = x.unsqueeze(0).expand(k, *x.shape).reshape(k * x.shape[0], self.dim)
        log_px_z = self.head.log_prob(xk, self._decode(z.reshape(-1, self.latent_dim)))
        log_pz = log_standard_normal(z).sum(dim=-1)
        return log_px_z.reshape(k, -1) + log_pz - q.log_prob(z)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""log p_θ(x | z_i) + log p(z_i) - log q_φ(z_i | x), z_i ~ q_φ(z | x); shape (k, N).

        Their mean over i estimates the ELBO; log (1/k) Σ_i exp(·) is the IWAE(k) bound.
        """
        self.check_input(x)
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        return self._log_weights(self._flat(x), k, generator)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """One-sample Monte-Carlo ELBO per example, a stochastic lower bound on log p(x)."""
        return self.log_weights(x, 1)[0]

    def elbo_terms(self, x: Tensor, *, generator: torch.Generator | None = None) -> ELBOTerms:
        """Reconstruction -log p(x | z) at one z ~ q(z | x), and the KL (closed form if
        ``analytic_kl``, else log q(z | x) - log p(z) at the same z)."""
        self.check_input(x)
        x = self._flat(x)
        q = self._encode(x)
        z = q.rsample(1, generator=generator)[0]
        reconstruction = -self.head.log_prob(x, self._decode(z))
        if self.config.analytic_kl:
            kl = q.kl_standard_normal()
        else:
            kl = q.log_prob(z) - log_standard_normal(z).sum(dim=-1)
        return ELBOTerms(reconstruction=reconstruction, kl=kl)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x | z) + β KL per example: the negative ELBO when β = 1."""
        terms = self.elbo_terms(x)
        return terms.reconstruction + self.config.beta * terms.kl

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``reconstruction`` (-log p(x | z)) and ``kl`` (β-weighted), summing to the loss."""
        terms = self.elbo_terms(x)
        return {"reconstruction": terms.reconstruction, "kl": self.config.beta * terms.kl}

    # --- generation

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """z ~ N(0, I), then x ~ p_θ(x | z); shape (n, *event_shape) in the data's dtype."""
        dtype = self.input_scale.dtype
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=dtype, device=self.device)
        x = self.head.sample(self._decode(z), generator=generator)
        return x.reshape(n, *self.spec.event_shape).to(self.spec.dtype)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """z ~ q(z | x), then the most probable x under p_θ(x | z) (the mean for a Gaussian).

        The decoder's mode rather than a draw: pixel noise would hide what z holds.
        """
        self.check_input(x)
        z = self._encode(self._flat(x)).rsample(1, generator=generator)[0]
        x_hat = self.head.mode(self._decode(z))
        return x_hat.reshape(x.shape[0], *self.spec.event_shape).to(self.spec.dtype)
