r"""The VQ-VAE with a learned autoregressive prior over its codes, scored by an honest bound.

An encoder maps x to G latent vectors f(x)_g ∈ R^d; each is replaced by its nearest codebook
vector, c_g(x) = argmin_k ‖f(x)_g - e_k‖, z_q = (e_{c_1}, ..., e_{c_G}); a decoder maps z_q to
the parameters of the data's likelihood p_θ(x | z_q) (categorical over the levels, Bernoulli,
or Gaussian). Training minimizes, per example (van den Oord et al. 2017, Eq. 3),

    -log p_θ(x | z_q) + ‖sg(f(x)) - e_c‖² + β ‖f(x) - sg(e_c)‖²  - log p_ψ(sg(c)),

reconstruction, codebook (VQ) and commitment terms, plus the prior's own loss: the gradient of
the reconstruction passes the quantizer unchanged (straight-through, z_q = f + sg(e_c - f)),
the codebook term moves only the codebook and the commitment term only the encoder. Instead of
the codebook term, the codebook can follow exponential moving averages of the encoder outputs
assigned to each code (the paper's App. A.1), and codes nobody uses can be re-seeded from
encoder outputs (dead-code restarts).

The prior p_ψ(c) = Π_g p_ψ(c_g | c_{<g}) is a small causal transformer over the G code
indices, trained jointly on the detached codes, so one run fits the whole model (the papers
fit a PixelCNN after the auto-encoder; Razavi et al. 2019). With the deterministic one-hot
posterior q(c | x) = δ(c = c(x)), whose entropy is 0,

    log p(x) = log Σ_c p_θ(x | z_q(c)) p_ψ(c)  >=  ELBO(x) = log p_θ(x | z_q(c(x))) + log p_ψ(c(x)),

the gap being -log p(c(x) | x): the bound is tight only where the true posterior puts all its
mass on the encoder's code. This is the likelihood the model reports (``LOWER_BOUND``).

References:
    van den Oord, Vinyals, Kavukcuoglu. Neural Discrete Representation Learning. NeurIPS 2017,
    arXiv:1711.00937.
    Razavi, van den Oord, Vinyals. Generating Diverse High-Fidelity Images with VQ-VAE-2.
    NeurIPS 2019, arXiv:1906.00446.
    Bengio, Léonard, Courville. Estimating or Propagating Gradients Through Stochastic Neurons.
    2013, arXiv:1308.3432 (the straight-through estimator).
    Tomczak, Deep Generative Modeling, 2nd ed., ch. 5 (latent-variable models).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.attention import TransformerBlock
from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.distributions import log_categorical
from dgm.core.errors import ConfigError
from dgm.core.fitting import StepInfo
from dgm.core.heads import CategoricalHead, check_likelihood, likelihood_head
from dgm.core.nn import EncoderInput, mlp
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "VQVAEConfig",
    "VQVAE",
    "VectorQuantizer",
    "Quantized",
    "CodePrior",
    "VQTerms",
]


# ------------------------------------------------------------------------------- quantizer


@dataclass(frozen=True)
class Quantized:
    """The quantizer's output for encoder vectors z_e of shape (N, G, d).

    ``codes`` (N, G) are the nearest codes c; ``vectors`` (N, G, d) are e_c with the gradient
    to the codebook; ``straight_through`` is z_e + sg(e_c - z_e): the value e_c, the gradient
    of z_e.
    """

    codes: Tensor
    vectors: Tensor
    straight_through: Tensor


class VectorQuantizer(nn.Module):
    r"""A codebook e ∈ R^{K×d}, nearest-code quantization and the codebook's own updates.

    With ``update="loss"`` the codebook is a parameter learned by the codebook loss
    ‖sg(z_e) - e_c‖²; with ``update="ema"`` it is a buffer set to the running means of the
    vectors assigned to each code (van den Oord et al. 2017, App. A.1):

        N_k ← γ N_k + (1 - γ) n_k,   m_k ← γ m_k + (1 - γ) Σ_{j: c_j = k} z_{e,j},
        e_k = m_k / N_k,

    with N_k Laplace-smoothed so that an unused code keeps a finite vector. ``usage`` is a
    running mean (rate ``usage_decay``) of the fraction of assignments each code gets; a code
    whose usage falls below ``dead_threshold / K`` is dead, and :meth:`restart_dead` moves it
    onto a random encoder output of the current batch.
    """

    def __init__(
        self,
        num_codes: int,
        code_dim: int,
        *,
        update: Literal["loss", "ema"] = "loss",
        ema_decay: float = 0.99,
        usage_decay: float = 0.99,
        dead_threshold: float = 0.05,
    ) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.code_dim = code_dim
        self.update = update
        self.ema_decay = ema_decay
        self.usage_decay = usage_decay
        self.dead_threshold = dead_threshold
        init = torch.empty(num_codes, code_dim).uniform_(-1.0 / num_codes, 1.0 / num_codes)
        if update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        self.register_buffer("usage", torch.full((num_codes,), 1.0 / num_codes))

    def nearest(self, z: Tensor) -> Tensor:
        """argmin_k ‖z - e_k‖² over the last dimension; z (..., d) -> codes (...) long."""
        flat = z.detach().reshape(-1, self.code_dim)
        e = self.codebook.detach()
        # ‖z‖² is the same for every k, so it does not change the argmin.
        dist = (e * e).sum(dim=-1) - 2.0 * flat @ e.T  # (M, K)
        return dist.argmin(dim=-1).reshape(z.shape[:-1])

    def forward(self, z_e: Tensor) -> Quantized:
        codes = self.nearest(z_e)
        vectors = self.lookup(codes)
        return Quantized(codes, vectors, z_e + (vectors - z_e).detach())

    def lookup(self, codes: Tensor) -> Tensor:
        """e_c for code indices (...) -> (..., d)."""
        return F.embedding(codes, self.codebook)

    def histogram(self, codes: Tensor) -> Tensor:
        """Number of assignments of each code, shape (K,)."""
        return torch.bincount(codes.reshape(-1), minlength=self.num_codes)

    @torch.no_grad()
    def track(
        self, z_e: Tensor, codes: Tensor, reduce: Callable[[Tensor], Tensor] | None = None
    ) -> None:
        """After a training step: update the usage, and the EMA codebook if there is one.

        ``reduce`` sums the batch's statistics (counts n_k and sums Σ z_e) across processes, so
        that every process moves its codebook by the same global-batch statistics.
        """
        reduce = reduce or (lambda t: t)
        counts = reduce(self.histogram(codes).to(self.usage.dtype))
        self.usage.lerp_(counts / counts.sum(), 1.0 - self.usage_decay)
        if self.update != "ema":
            return
        one_hot = F.one_hot(codes.reshape(-1), self.num_codes).to(z_e.dtype)  # (M, K)
        sums = reduce(one_hot.T @ z_e.detach().reshape(-1, self.code_dim))  # (K, d)
        self.ema_count.lerp_(counts.to(self.ema_count.dtype), 1.0 - self.ema_decay)
        self.ema_sum.lerp_(sums, 1.0 - self.ema_decay)
        total = self.ema_count.sum()
        eps = 1e-5
        smoothed = (self.ema_count + eps) / (total + self.num_codes * eps) * total
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(-1))

    @torch.no_grad()
    def restart_dead(
        self, z_e: Tensor, broadcast: Callable[[Tensor], Tensor] | None = None
    ) -> int:
        """Re-seed dead codes from random rows of z_e (..., d); returns how many were.

        ``broadcast`` copies process 0's new vectors to every process (the usage that decides
        which codes are dead is the same everywhere once ``track`` has summed its counts).
        """
        dead = (self.usage < self.dead_threshold / self.num_codes).nonzero().squeeze(-1)
        if dead.numel() == 0:
            return 0
        pool = z_e.detach().reshape(-1, self.code_dim)
        pick = torch.randint(0, pool.shape[0], (dead.numel(),), device=pool.device)
        fresh = pool[pick].to(self.codebook.dtype).contiguous()
        if broadcast is not None:
            fresh = broadcast(fresh)
        self.codebook[dead] = fresh
        self.usage[dead] = 1.0 / self.num_codes  # a grace period before it can die again
        if self.update == "ema":
            count = self.ema_count.mean()
            self.ema_count[dead] = count
            self.ema_sum[dead] = self.codebook[dead] * count
        return int(dead.numel())

    @torch.no_grad()
    def set_codebook(self, e: Tensor) -> None:
        """Overwrite the codebook (and the EMA statistics consistently with it)."""
        self.codebook.copy_(e)
        if self.update == "ema":
            self.ema_count.fill_(1.0)
            self.ema_sum.copy_(e)


# ----------------------------------------------------------------------------------- prior


class CodePrior(nn.Module):
    r"""p_ψ(c) = Π_{g=1}^{G} Cat(c_g | softmax(θ_g(c_{<g}))), a causal transformer over codes.

    It reads [s, c_1, ..., c_{G-1}] (s a learned start vector) with learned position
    embeddings, runs pre-LN causal blocks (:mod:`dgm.core.attention`), and maps position g's
    output to the K logits θ_g, which therefore see c_{<g} only.
    """

    def __init__(
        self,
        num_positions: int,
        num_codes: int,
        *,
        width: int = 64,
        num_layers: int = 2,
        num_heads: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_positions = num_positions
        self.num_codes = num_codes
        self.embedding = nn.Embedding(num_codes, width)
        self.start = nn.Parameter(0.02 * torch.randn(width))
        self.position = nn.Embedding(num_positions, width)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(width, num_heads, dropout=dropout) for _ in range(num_layers)
        )
        self.final_norm = nn.LayerNorm(width)
        self.to_logits = nn.Linear(width, num_codes)
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _run(self, prefix: Tensor) -> Tensor:
        """Logits of positions 1..t+1 from a prefix (N, t), t < G; shape (N, t + 1, K)."""
        h = self.embedding(prefix)
        h = torch.cat([self.start.expand(prefix.shape[0], 1, -1), h], dim=1)
        h = self.drop(h + self.position(torch.arange(h.shape[1], device=h.device)))
        for block in self.blocks:
            h = block(h)
        return self.to_logits(self.final_norm(h))

    def logits(self, codes: Tensor) -> Tensor:
        """θ_g for g = 1..G, shape (N, G, K); θ_g depends on c_{<g} only."""
        return self._run(codes[:, :-1])

    def log_prob(self, codes: Tensor) -> Tensor:
        """log p_ψ(c) = Σ_g log p_ψ(c_g | c_{<g}); codes (N, G) -> (N,)."""
        return log_categorical(codes, self.logits(codes)).sum(dim=-1)

    @torch.no_grad()
    def sample(
        self, n: int, *, generator: torch.Generator | None = None, device: torch.device
    ) -> Tensor:
        """c ~ p_ψ(c), one position at a time; shape (n, G) long."""
        codes = torch.zeros(n, 0, dtype=torch.long, device=device)
        for _ in range(self.num_positions):
            probs = F.softmax(self._run(codes)[:, -1].double(), dim=-1)
            draw = torch.multinomial(probs, 1, generator=generator)
            codes = torch.cat([codes, draw], dim=1)
        return codes


# ------------------------------------------------------------------------------------ terms


@dataclass(frozen=True)
class VQTerms:
    """The parts of the training loss per example, (N,) each.

    ``reconstruction`` = -log p(x | z_q) and ``prior`` = -log p(c) (in nats; their sum is the
    negative ELBO); ``codebook`` = ‖sg(f(x)) - e_c‖² (zero with EMA updates) and
    ``commitment`` = ‖f(x) - sg(e_c)‖², unweighted, summed over the G positions and d dims.
    """

    reconstruction: Tensor
    codebook: Tensor
    commitment: Tensor
    prior: Tensor


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True, kw_only=True)
class VQVAEConfig:
    """Configuration of :class:`VQVAE`.

    Args:
        num_latents: G, the number of latent positions (codes per example).
        codebook_size: K, the number of codebook vectors.
        code_dim: d, the size of each latent vector.
        hidden: width of the encoder and decoder MLPs.
        num_hidden: hidden layers in each MLP.
        dropout: dropout rate inside both MLPs.
        likelihood: the decoder likelihood: ``"auto"`` (from the data kind), ``"categorical"``,
            ``"bernoulli"``, ``"gaussian"`` or ``"discretized_logistic"``.
        num_components: mixture components of the discretized logistic.
        beta: β, the weight of the commitment term (the paper's 0.25).
        codebook_update: ``"loss"`` (the codebook term trains it) or ``"ema"`` (moving averages
            of the assigned encoder outputs, no gradient).
        ema_decay: γ of the EMA codebook.
        restart_dead: re-seed codes whose usage falls below ``dead_threshold / K`` from
            encoder outputs of the current batch.
        dead_threshold: the dead-code threshold as a fraction of the uniform usage 1/K.
        usage_decay: rate of the running mean of code usage (about 1 / (1 - decay) batches).
        prior_hidden: embedding width of the prior's transformer.
        prior_layers: its blocks.
        prior_heads: its attention heads; must divide ``prior_hidden``.
        prior_dropout: its dropout.
        init_from_data: set the decoder's output bias to the per-coordinate marginals and the
            codebook to k-means centres of the initial encoder outputs.
        kmeans_steps: Lloyd iterations of that codebook initialization.
    """

    RENAMED: ClassVar[dict[str, str]] = {"prior_width": "prior_hidden"}  # old key -> new key

    num_latents: int = 8
    codebook_size: int = 32
    code_dim: int = 8
    hidden: int = 256
    num_hidden: int = 1
    dropout: float = 0.0
    likelihood: Literal[
        "auto", "categorical", "bernoulli", "gaussian", "discretized_logistic"
    ] = "auto"
    num_components: int = 1
    beta: float = 0.25
    codebook_update: Literal["loss", "ema"] = "loss"
    ema_decay: float = 0.99
    restart_dead: bool = True
    dead_threshold: float = 0.05
    usage_decay: float = 0.99
    prior_hidden: int = 64
    prior_layers: int = 2
    prior_heads: int = 4
    prior_dropout: float = 0.1
    init_from_data: bool = True
    kmeans_steps: int = 10

    def __post_init__(self) -> None:
        for name in ("num_latents", "codebook_size", "code_dim", "hidden", "prior_hidden",
                     "prior_layers", "prior_heads", "num_components"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.codebook_size < 2:
            raise ConfigError(f"model.codebook_size must be >= 2, got {self.codebook_size}")
        if self.num_hidden < 0 or self.kmeans_steps < 0:
            raise ConfigError("model.num_hidden and model.kmeans_steps must be >= 0")
        if self.prior_hidden % self.prior_heads:
            raise ConfigError(
                f"model.prior_heads ({self.prior_heads}) must divide "
                f"model.prior_hidden ({self.prior_hidden})"
            )
        for name in ("dropout", "prior_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("ema_decay", "usage_decay"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        check_likelihood(self.likelihood, self.num_components)
        if self.codebook_update not in ("loss", "ema"):
            raise ConfigError(
                f"model.codebook_update must be 'loss' or 'ema', got {self.codebook_update!r}"
            )
        if not self.beta >= 0.0:
            raise ConfigError(f"model.beta must be >= 0, got {self.beta}")
        if not 0.0 <= self.dead_threshold < 1.0:
            raise ConfigError(f"model.dead_threshold must be in [0, 1), got {self.dead_threshold}")


@register_model("vqvae", VQVAEConfig)
class VQVAE(GenerativeModel):
    r"""VQ-VAE with a jointly trained autoregressive prior over its codes (van den Oord 2017).

        ELBO(x) = log p_θ(x | z_q(c(x))) + log p_ψ(c(x))  <=  log Σ_c p_θ(x | z_q(c)) p_ψ(c),

    the ELBO of the one-hot posterior q(c | x) = δ(c = c(x)) (H[q] = 0). ``log_prob`` is that
    bound (deterministic: no sampling); ``log_weights`` repeats it k times, since importance
    weighting cannot tighten a point-mass posterior (every draw is c(x), so IWAE(k) = ELBO);
    ``loss`` adds the codebook and β-weighted commitment terms to the negative ELBO, so it is
    the objective, not a bound. The encoder reads x scaled to [0, 1] (discrete and binary
    data) or standardized with the training statistics (continuous data). Dead codes are the
    classic failure: :meth:`codebook_perplexity` measures how many codes are in use.

    Args:
        spec: the data spec; any event shape, flattened to D = ``spec.dim`` coordinates.
        config: a :class:`VQVAEConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
        >>> model = VQVAE(spec, VQVAEConfig(num_latents=4, codebook_size=8, hidden=32))
        >>> x = torch.randint(0, 17, (5, 1, 8, 8))
        >>> model.encode(x).shape, model.log_weights(x, 3).shape
        (torch.Size([5, 4]), torch.Size([3, 5]))
        >>> model.sample(2).dtype, model.reconstruct(x).shape
        (torch.int64, torch.Size([5, 1, 8, 8]))

    References:
        van den Oord, Vinyals, Kavukcuoglu. Neural Discrete Representation Learning. NeurIPS
        2017, arXiv:1711.00937.
        Razavi, van den Oord, Vinyals. Generating Diverse High-Fidelity Images with VQ-VAE-2.
        NeurIPS 2019, arXiv:1906.00446.
    """

    likelihood = Likelihood.LOWER_BOUND
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: VQVAEConfig | None = None) -> None:
        super().__init__(spec)
        self.config = config = config or VQVAEConfig()
        self.dim = spec.dim
        self.num_latents = config.num_latents
        self.code_dim = config.code_dim
        self.head = likelihood_head(spec, config.likelihood, config.num_components)
        latent = config.num_latents * config.code_dim
        self.encoder = mlp(
            self.dim, config.hidden, latent, num_hidden=config.num_hidden, dropout=config.dropout
        )
        self.decoder = mlp(
            latent,
            config.hidden,
            self.dim * self.head.num_params,
            num_hidden=config.num_hidden,
            dropout=config.dropout,
        )
        self.quantizer = VectorQuantizer(
            config.codebook_size,
            config.code_dim,
            update=config.codebook_update,
            ema_decay=config.ema_decay,
            usage_decay=config.usage_decay,
            dead_threshold=config.dead_threshold,
        )
        self.prior = CodePrior(
            config.num_latents,
            config.codebook_size,
            width=config.prior_hidden,
            num_layers=config.prior_layers,
            num_heads=config.prior_heads,
            dropout=config.prior_dropout,
        )
        self.inputs = EncoderInput(spec)
        # The last training batch's encoder outputs and codes, for after_step (not state).
        self._pending: tuple[Tensor, Tensor] | None = None

    # --- the networks

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], self.dim)

    def _encode(self, x: Tensor) -> Tensor:
        """f(x): flat x (N, D) -> (N, G, d)."""
        return self.encoder(self.inputs(x)).reshape(x.shape[0], self.num_latents, self.code_dim)

    def _decode(self, z_q: Tensor) -> Tensor:
        """Decoder parameters for z_q (N, G, d): (N, D, P)."""
        return self.decoder(z_q.reshape(z_q.shape[0], -1)).reshape(
            z_q.shape[0], self.dim, self.head.num_params
        )

    def encode(self, x: Tensor) -> Tensor:
        """The codes c(x) = nearest codes of f(x), shape (N, G) long."""
        self.check_input(x)
        return self.quantizer.nearest(self._encode(self._flat(x)))

    def encode_continuous(self, x: Tensor) -> Tensor:
        """The encoder's outputs f(x) before quantization, shape (N, G, d)."""
        self.check_input(x)
        return self._encode(self._flat(x))

    def decode(self, codes: Tensor) -> Tensor:
        """Decoder parameters θ(z_q(c)) for codes (N, G), shape (N, *event_shape, P)."""
        params = self._decode(self.quantizer.lookup(codes))
        return params.reshape(codes.shape[0], *self.spec.event_shape, -1)

    def log_likelihood(self, x: Tensor, codes: Tensor) -> Tensor:
        """log p_θ(x | z_q(c)) for x (N, *event) and codes (N, G), shape (N,)."""
        return self.head.log_prob(self._flat(x), self._decode(self.quantizer.lookup(codes)))

    # --- data-dependent initialization

    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Fit the encoder's input standardization (continuous data); if ``init_from_data``,
        set the decoder's output bias to the per-coordinate marginals of the training data
        and the codebook to k-means centres of the initial encoder outputs, so that training
        starts at the independent-pixel model with every code in use."""
        self.check_input(x)
        x = self._flat(x)
        self.inputs.fit(x)
        if not self.config.init_from_data:
            return
        self.head.set_marginal_bias(self.decoder[-1], x)
        was_training = self.training
        self.eval()
        z = self._encode(x.to(self.device)).reshape(-1, self.code_dim)
        self.train(was_training)
        self.quantizer.set_codebook(_kmeans(z, self.quantizer.num_codes,
                                            self.config.kmeans_steps, generator))

    # --- the terms of the loss

    def terms(self, x: Tensor) -> VQTerms:
        """The loss terms per example (see :class:`VQTerms`).

        In training mode with gradients on, the encoder outputs and codes are kept for
        :meth:`after_step`, which moves the codebook once the trainer has taken the step.
        """
        self.check_input(x)
        x = self._flat(x)
        z_e = self._encode(x)
        q = self.quantizer(z_e)
        if self.training and torch.is_grad_enabled():
            self._pending = (z_e.detach(), q.codes)
        reconstruction = -self.head.log_prob(x, self._decode(q.straight_through))
        if self.config.codebook_update == "loss":
            codebook = ((z_e.detach() - q.vectors) ** 2).sum(dim=(1, 2))
        else:
            codebook = torch.zeros_like(reconstruction)
        commitment = ((z_e - q.vectors.detach()) ** 2).sum(dim=(1, 2))
        prior = -self.prior.log_prob(q.codes)  # the codes are indices: no gradient reaches f
        return VQTerms(reconstruction, codebook, commitment, prior)

    def after_step(self, info: StepInfo) -> None:
        """After a step the trainer took: track code usage and, with ``codebook_update: ema``,
        move the codebook by the batch's statistics (summed across processes); then restart
        dead codes from the batch's encoder outputs (process 0's, broadcast)."""
        if self._pending is None:
            return
        z_e, codes = self._pending
        self._pending = None
        self.quantizer.track(z_e, codes, info.all_reduce_sum)
        if self.config.restart_dead:
            self.quantizer.restart_dead(z_e, info.broadcast)

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log p(x | z_q) + ‖sg(f) - e‖² + β ‖f - sg(e)‖² - log p(sg(c)) per example."""
        t = self.terms(x)
        return t.reconstruction + t.codebook + self.config.beta * t.commitment + t.prior

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``reconstruction``, ``codebook``, ``commitment`` (β-weighted) and ``prior``, which
        sum to the loss; ``reconstruction + prior`` is the negative ELBO."""
        t = self.terms(x)
        return {
            "reconstruction": t.reconstruction,
            "codebook": t.codebook,
            "commitment": self.config.beta * t.commitment,
            "prior": t.prior,
        }

    # --- the bound

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """ELBO(x) = log p_θ(x | z_q(c(x))) + log p_ψ(c(x)) <= log p(x), shape (N,).

        Deterministic: the posterior is a point mass at the encoder's code.
        """
        codes = self.encode(x)
        return self.log_likelihood(x, codes) + self.prior.log_prob(codes)

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        r"""log p_θ(x, c_i) - log q(c_i | x) with c_i ~ q(c | x) = δ(c = c(x)); shape (k, N).

        Every draw is c(x) and log q(c(x) | x) = 0, so the k rows are equal and the IWAE(k)
        bound equals the ELBO for every k: a deterministic posterior cannot be tightened by
        importance sampling.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        return self.log_prob(x).unsqueeze(0).repeat(k, 1)

    @torch.no_grad()
    def log_marginal(self, x: Tensor, *, chunk: int = 4096) -> Tensor:
        r"""Exact log p(x) = log Σ_c p_θ(x | z_q(c)) p_ψ(c) by enumerating all K^G codes, (N,).

        Costs K^G decoder passes, ``chunk`` codes at a time: for small codebooks only (64³ on
        the digits takes about 20 s). ELBO(x) - log p(x) = log p(c(x) | x) shows how loose
        the one-hot bound is.
        """
        self.check_input(x)
        k, g = self.quantizer.num_codes, self.num_latents
        if k**g > 2**24:
            raise ConfigError(f"log_marginal enumerates K^G = {k}^{g} codes; too many")
        flat = self._flat(x)
        n = flat.shape[0]
        grids = torch.meshgrid(*[torch.arange(k, device=self.device)] * g, indexing="ij")
        every = torch.stack([t.reshape(-1) for t in grids], dim=1)  # (K^G, G)
        categorical = isinstance(self.head, CategoricalHead)
        if categorical:  # Σ_d log p(x_d | c) for all (c, x) pairs as one matmul with one-hot x
            one_hot = F.one_hot(flat.long(), self.head.num_params).reshape(n, -1).double()
        total = torch.full((n,), -math.inf, dtype=torch.float64, device=self.device)
        for codes in every.split(chunk):
            params = self._decode(self.quantizer.lookup(codes)).double()  # (C, D, P)
            if categorical:
                log_px = F.log_softmax(params, dim=-1).reshape(len(codes), -1) @ one_hot.T
            else:
                log_px = torch.stack([self.head.log_prob(flat, p.expand(n, -1, -1))
                                      for p in params])
            joint = log_px + self.prior.log_prob(codes).double().unsqueeze(1)  # (C, N)
            total = torch.logaddexp(total, torch.logsumexp(joint, dim=0))
        return total

    def rate(self, x: Tensor) -> Tensor:
        """-log p_ψ(c(x)) per example, in nats: the KL of the one-hot posterior to the prior."""
        return -self.prior.log_prob(self.encode(x))

    # --- codebook usage

    @torch.no_grad()
    def codebook_perplexity(self, x: Tensor) -> float:
        r"""exp(H) of the histogram of the codes of x over all N·G positions.

        Between 1 (one code used) and K (all used equally); far below K means dead codes.
        """
        counts = self.quantizer.histogram(self.encode(x)).double()
        p = counts / counts.sum()
        return float(torch.exp(-(p * torch.log(p.clamp_min(1e-300))).sum()))

    @torch.no_grad()
    def codes_used(self, x: Tensor) -> int:
        """How many of the K codes x's codes use at least once."""
        return int((self.quantizer.histogram(self.encode(x)) > 0).sum())

    # --- the LatentVariable protocol (the latent is z_q ∈ R^{G·d}, on the codebook's grid)

    def latent_means(self, x: Tensor) -> list[Tensor]:
        """The posterior's location: z_q(c(x)) flattened, shape (N, G·d) (one level)."""
        codes = self.encode(x)
        return [self.quantizer.lookup(codes).reshape(codes.shape[0], -1)]

    def kl_per_level(self, x: Tensor) -> list[Tensor]:
        """KL[δ_{c(x)} || p_ψ] = -log p_ψ(c(x)) (the entropy of q is 0), shape (N,)."""
        return [self.rate(x)]

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p_ψ(c) of the codes nearest to z (N, G·d): exact for z on the codebook grid."""
        codes = self.quantizer.nearest(z.reshape(z.shape[0], self.num_latents, self.code_dim))
        return self.prior.log_prob(codes)

    def decode_top(self, z: Tensor) -> Tensor:
        """The decoder's mode at z (N, G·d) (any z, not only grid points), in the data dtype."""
        params = self._decode(z.reshape(z.shape[0], self.num_latents, self.code_dim))
        return self.head.mode(params).reshape(z.shape[0], *self.spec.event_shape).to(
            self.spec.dtype
        )

    # --- generation

    @torch.no_grad()
    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """c ~ p_ψ(c), then x ~ p_θ(x | z_q(c)); shape (n, *event_shape) in the data's dtype."""
        codes = self.prior.sample(n, generator=generator, device=self.device)
        x = self.head.sample(self._decode(self.quantizer.lookup(codes)), generator=generator)
        return self.as_data(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """The decoder's mode at the encoder's codes (the mean for a Gaussian)."""
        codes = self.encode(x)
        x_hat = self.head.mode(self._decode(self.quantizer.lookup(codes)))
        return self.as_data(x_hat)


def _kmeans(z: Tensor, k: int, steps: int, generator: torch.Generator) -> Tensor:
    """k centres of the rows of z (M, d): k distinct random rows, then Lloyd iterations.

    With fewer than k rows the rest are the rows plus small noise; an emptied centre keeps
    its place.
    """
    pick = torch.randperm(z.shape[0], generator=generator)[:k].to(z.device)
    centres = z[pick].clone()
    if centres.shape[0] < k:
        extra = k - centres.shape[0]
        rows = z[torch.arange(extra, device=z.device) % z.shape[0]]
        noise = torch.randn(rows.shape, generator=generator).to(z)
        centres = torch.cat([centres, rows + 1e-3 * math.sqrt(z.var().item() + 1e-12) * noise])
    for _ in range(steps):
        assign = torch.cdist(z, centres).argmin(dim=1)
        counts = torch.bincount(assign, minlength=k).to(z.dtype)
        sums = torch.zeros_like(centres).index_add_(0, assign, z)
        filled = counts > 0
        centres[filled] = sums[filled] / counts[filled].unsqueeze(-1)
    return centres
