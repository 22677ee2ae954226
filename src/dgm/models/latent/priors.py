r"""Priors p_λ(z) of a VAE, each a normalized density over the whole latent vector (Book §5.4.1).

Rewriting the ELBO (Book Eq. 5.40-5.46) shows what the prior is for: averaged over the data,
the regularizer is the cross-entropy between the aggregated posterior q(z) = (1/N) Σ_n q(z|x_n)
and p_λ(z) minus the posterior's entropy, so the best prior is the aggregated posterior, and
a fixed N(0, I) leaves "holes" where it puts mass that no encoder uses. The learnable priors
here approximate the aggregated posterior in different ways:

- :class:`StandardNormalPrior`: N(0, I) (Eq. 5.29).
- :class:`MixturePrior`: Σ_k w_k N(z | μ_k, diag σ_k²) with learnable components (Eq. 5.47).
- :class:`VampPrior`: Σ_k w_k q_φ(z | u_k), the encoder at K learnable pseudo-inputs u_k,
  uniform weights 1/K (Eq. 5.48) or learnable ones (Eq. 5.49) (Tomczak & Welling 2018).
- :class:`GTMPrior`: Σ_k w_k N(z | g_γ(u_k)) with u_k a fixed grid in R² (Eq. 5.50-5.52;
  Bishop et al. 1998).
- :class:`GTMVampPrior`: Σ_k w_k q_φ(z | g_γ(u_k)), pseudo-inputs generated from the grid
  (Eq. 5.53).
- :class:`FlowPrior`: a RealNVP p(z) = N(f(z); 0, I) |det ∂f/∂z| (Eq. 5.54 context; Book
  §5.4.1.8).

Every mixture sums the per-coordinate log-densities over the whole latent vector **before** the
log-sum-exp over components, and the flow adds its log-determinant once per vector: the book's
listings take the mixture per coordinate and count the flow's log-det once per coordinate,
which gives densities that do not integrate to one.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.distributions import log_normal_diag, log_standard_normal
from dgm.core.errors import ConfigError
from dgm.core.nn import mlp
from dgm.core.spherical import HypersphericalUniform
from dgm.core.transforms import AffineCoupling, Compose, Permutation, half_mask

__all__ = [
    "PRIORS",
    "PriorConfig",
    "Prior",
    "StandardNormalPrior",
    "MixturePrior",
    "VampPrior",
    "GTMPrior",
    "GTMVampPrior",
    "FlowPrior",
    "SphericalUniformPrior",
    "GaussianEncoder",
    "build_prior",
]

PRIORS = ("standard", "mog", "vamp", "gtm", "gtm_vamp", "flow")

# Maps encoder inputs (K, D), already in the encoder's input space, to Gaussian (mean, log_var).
GaussianEncoder = Callable[[Tensor], tuple[Tensor, Tensor]]


@dataclass(frozen=True, kw_only=True)
class PriorConfig:
    """Configuration of a VAE prior.

    Args:
        kind: ``"standard"``, ``"mog"``, ``"vamp"``, ``"gtm"``, ``"gtm_vamp"`` or ``"flow"``.
        num_components: K for ``mog`` and ``vamp``; for the GTM priors the number of grid points,
            a square number (a √K x √K grid; the book uses 16 = 4 x 4).
        weights: mixture weights: ``"auto"`` (uniform for ``vamp`` as in Eq. 5.48, learned for
            the others), ``"uniform"`` or ``"learned"`` (softmax of zero-initialized logits).
        init_scale: standard deviation of the MoG means at initialization (the book's
            ``multiplier``).
        grid_range: the GTM grid covers [-r, r]².
        hidden: width of the GTM and flow networks.
        num_flows: affine couplings in the flow prior (each followed by a reversal).
        pseudo_init: VampPrior pseudo-inputs from random training examples (``"data"``) or
            uniform noise in the encoder's input range (``"random"``).
    """

    kind: Literal["standard", "mog", "vamp", "gtm", "gtm_vamp", "flow"] = "standard"
    num_components: int = 16
    weights: Literal["auto", "uniform", "learned"] = "auto"
    init_scale: float = 1.0
    grid_range: float = 1.0
    hidden: int = 256
    num_flows: int = 3
    pseudo_init: Literal["data", "random"] = "data"

    def __post_init__(self) -> None:
        if self.kind not in PRIORS:
            raise ConfigError(
                f"model.prior.kind: {self.kind!r} is not one of {', '.join(map(repr, PRIORS))}"
            )
        if self.num_components < 1:
            raise ConfigError(
                f"model.prior.num_components must be >= 1, got {self.num_components}"
            )
        if self.kind in ("gtm", "gtm_vamp") and math.isqrt(self.num_components) ** 2 != (
            self.num_components
        ):
            raise ConfigError(
                "model.prior.num_components must be a square number for a GTM grid, "
                f"got {self.num_components}"
            )
        if self.weights not in ("auto", "uniform", "learned"):
            raise ConfigError(f"model.prior.weights: {self.weights!r} is not auto/uniform/learned")
        if not self.init_scale > 0:
            raise ConfigError(f"model.prior.init_scale must be > 0, got {self.init_scale}")
        if not self.grid_range > 0:
            raise ConfigError(f"model.prior.grid_range must be > 0, got {self.grid_range}")
        if self.hidden < 1 or self.num_flows < 1:
            raise ConfigError("model.prior.hidden and model.prior.num_flows must be >= 1")
        if self.pseudo_init not in ("data", "random"):
            raise ConfigError(f"model.prior.pseudo_init: {self.pseudo_init!r} is not data/random")

    @property
    def learned_weights(self) -> bool:
        if self.weights == "auto":
            return self.kind != "vamp"
        return self.weights == "learned"


class Prior(nn.Module):
    """A normalized density p_λ(z) over R^M: ``log_prob`` (..., M) -> (...) and ``sample``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError

    def initialize_from_data(self, x_encoder: Tensor, generator: torch.Generator) -> None:
        """Data-dependent initialization from training inputs in the encoder's input space."""

    def _noise(self, *shape: int, generator: torch.Generator | None) -> Tensor:
        tensors = itertools.chain(self.parameters(), self.buffers())
        ref = next(t for t in tensors if t.is_floating_point())
        return torch.randn(shape, generator=generator, dtype=ref.dtype, device=ref.device)


class StandardNormalPrior(Prior):
    r"""p(z) = N(0, I_M) (Book Eq. 5.29)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return log_standard_normal(z).sum(dim=-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self._noise(n, self.latent_dim, generator=generator)


class MixturePrior(Prior):
    r"""p(z) = Σ_k w_k N(z | μ_k, diag σ_k²) over the whole vector (Book Eq. 5.47).

        log p(z) = logsumexp_k [log w_k + Σ_m log N(z_m | μ_km, σ²_km)],

    the sum over the M coordinates inside each component. Subclasses say where the components
    come from by overriding :meth:`components`; this class learns them directly.

    Args:
        latent_dim: M.
        num_components: K.
        learned_weights: learn w = softmax(logits) from zero logits; else w_k = 1/K.
        init_scale: the means start at init_scale · N(0, I); the log-variances at 0.
    """

    def __init__(
        self,
        latent_dim: int,
        num_components: int,
        *,
        learned_weights: bool = True,
        init_scale: float = 1.0,
        create_components: bool = True,
    ) -> None:
        super().__init__(latent_dim)
        self.num_components = num_components
        logits = torch.zeros(num_components)
        if learned_weights:
            self.weight_logits = nn.Parameter(logits)
        else:
            self.register_buffer("weight_logits", logits)
        if create_components:
            self.means = nn.Parameter(torch.randn(num_components, latent_dim) * init_scale)
            self.log_vars = nn.Parameter(torch.zeros(num_components, latent_dim))

    def components(self) -> tuple[Tensor, Tensor]:
        """Means and log-variances of the K components, each (K, M)."""
        return self.means, self.log_vars

    def log_weights(self) -> Tensor:
        """log w, shape (K,)."""
        return F.log_softmax(self.weight_logits, dim=0)

    def log_prob(self, z: Tensor) -> Tensor:
        means, log_vars = self.components()
        comp = log_normal_diag(z.unsqueeze(-2), means, log_vars).sum(dim=-1)  # (..., K)
        return torch.logsumexp(comp + self.log_weights(), dim=-1)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        means, log_vars = self.components()
        pick = torch.multinomial(self.log_weights().exp(), n, replacement=True, generator=generator)
        eps = self._noise(n, self.latent_dim, generator=generator)
        return means[pick] + torch.exp(0.5 * log_vars[pick]) * eps


class VampPrior(MixturePrior):
    r"""The variational mixture of posteriors p(z) = Σ_k w_k q_φ(z | u_k) (Book Eq. 5.48-5.49).

    The K pseudo-inputs u_k live in the encoder's input space and are learned by backprop
    together with the shared encoder φ (Tomczak & Welling 2018). For bounded inputs (discrete
    and binary data scaled to [0, 1]) u = sigmoid(raw) keeps them in range; for continuous data
    u = raw in the standardized space. With a flow posterior the components are the encoder's
    base Gaussians q_0(z | u_k), so the prior stays a normalized Gaussian mixture.

    Args:
        latent_dim: M.
        input_dim: D, the encoder's input width.
        encoder: the VAE's own encoder as a function (shared φ; not registered here again).
        num_components: K.
        learned_weights: uniform 1/K (Eq. 5.48) when False, learnable (Eq. 5.49) when True.
        bounded: squash the pseudo-inputs to (0, 1).
        pseudo_init: ``"data"`` (set in :meth:`initialize_from_data`) or ``"random"``.
    """

    def __init__(
        self,
        latent_dim: int,
        input_dim: int,
        encoder: GaussianEncoder,
        num_components: int,
        *,
        learned_weights: bool = False,
        bounded: bool = True,
        pseudo_init: str = "data",
    ) -> None:
        super().__init__(
            latent_dim, num_components, learned_weights=learned_weights, create_components=False
        )
        self._encoder = encoder
        self.bounded = bounded
        self.pseudo_init = pseudo_init
        # Random start: uniform on (0.05, 0.95) after the sigmoid (the book draws them uniformly
        # over the pixel range), or N(0, 1) in a standardized space.
        if bounded:
            raw = torch.logit(torch.rand(num_components, input_dim) * 0.9 + 0.05)
        else:
            raw = torch.randn(num_components, input_dim)
        self.pseudo_raw = nn.Parameter(raw)

    def pseudo_inputs(self) -> Tensor:
        """u_k, (K, D), in the encoder's input space."""
        return torch.sigmoid(self.pseudo_raw) if self.bounded else self.pseudo_raw

    def components(self) -> tuple[Tensor, Tensor]:
        return self._encoder(self.pseudo_inputs())

    @torch.no_grad()
    def initialize_from_data(self, x_encoder: Tensor, generator: torch.Generator) -> None:
        if self.pseudo_init != "data":
            return
        idx = torch.randint(0, x_encoder.shape[0], (self.num_components,), generator=generator)
        u = x_encoder[idx].to(self.pseudo_raw)
        if self.bounded:  # keep away from 0 and 1, where the logit is infinite
            u = torch.logit(u.clamp(0.0, 1.0) * 0.9 + 0.05)
        self.pseudo_raw.copy_(u)


def _grid(points_per_axis: int, radius: float) -> Tensor:
    axis = torch.linspace(-radius, radius, points_per_axis)
    return torch.cartesian_prod(axis, axis)  # (n², 2), every point once


class GTMPrior(MixturePrior):
    r"""Generative topographic mapping prior p(z) = Σ_k w_k N(z | μ_γ(u_k), diag σ²_γ(u_k))
    (Book Eq. 5.50-5.52; Bishop, Svensén & Williams 1998).

    The u_k form a fixed √K x √K grid on [-r, r]² (a buffer, not trained) and a small network
    g_γ: R² -> R^{2M} maps each to a component's mean and log-variance, so the components lie
    on a smooth 2-D manifold in the latent space.

    Args:
        latent_dim: M.
        num_components: K, a square number.
        grid_range: r.
        hidden: width of g_γ (two tanh hidden layers).
        learned_weights: learn w (the book's code does) or keep 1/K.
    """

    def __init__(
        self,
        latent_dim: int,
        num_components: int,
        *,
        grid_range: float = 1.0,
        hidden: int = 256,
        learned_weights: bool = True,
    ) -> None:
        super().__init__(
            latent_dim, num_components, learned_weights=learned_weights, create_components=False
        )
        self.register_buffer("grid", _grid(math.isqrt(num_components), grid_range))
        self.net = mlp(2, hidden, 2 * latent_dim, num_hidden=2, activation=nn.Tanh)

    def components(self) -> tuple[Tensor, Tensor]:
        mean, log_var = self.net(self.grid).chunk(2, dim=-1)
        return mean, log_var


class GTMVampPrior(MixturePrior):
    r"""GTM-VampPrior p(z) = Σ_k w_k q_φ(z | g_γ(u_k)) (Book Eq. 5.53).

    A network g_γ maps the fixed 2-D grid u_k into the encoder's input space (through a
    sigmoid for bounded inputs), and the shared encoder turns these generated pseudo-inputs into
    the components. The grid replaces the VampPrior's free pseudo-inputs, whose initialization
    is its weak point.

    Args:
        latent_dim: M.
        input_dim: D.
        encoder: the VAE's encoder as a function.
        num_components: K, a square number.
        grid_range: r.
        hidden: width of g_γ.
        learned_weights: learn w or keep 1/K.
        bounded: squash g_γ's output to (0, 1).
    """

    def __init__(
        self,
        latent_dim: int,
        input_dim: int,
        encoder: GaussianEncoder,
        num_components: int,
        *,
        grid_range: float = 1.0,
        hidden: int = 256,
        learned_weights: bool = True,
        bounded: bool = True,
    ) -> None:
        super().__init__(
            latent_dim, num_components, learned_weights=learned_weights, create_components=False
        )
        self._encoder = encoder
        self.bounded = bounded
        self.register_buffer("grid", _grid(math.isqrt(num_components), grid_range))
        self.net = mlp(2, hidden, input_dim, num_hidden=2, activation=nn.Tanh)

    def pseudo_inputs(self) -> Tensor:
        """g_γ(u_k), (K, D), in the encoder's input space."""
        h = self.net(self.grid)
        return torch.sigmoid(h) if self.bounded else h

    def components(self) -> tuple[Tensor, Tensor]:
        return self._encoder(self.pseudo_inputs())


class FlowPrior(Prior):
    r"""A RealNVP prior p(z) = N(f(z); 0, I) |det ∂f/∂z| (Book §5.4.1.8, Listing 5.11).

    f is ``num_flows`` affine couplings (half masks, tanh-bounded log-scales), each followed by
    a reversal of the coordinates; the log-determinant is added once per latent vector.
    Sampling inverts f exactly: z = f⁻¹(ε), ε ~ N(0, I).

    Args:
        latent_dim: M >= 2.
        num_flows: couplings.
        hidden: width of the coupling networks (two hidden layers).
    """

    def __init__(self, latent_dim: int, num_flows: int = 3, hidden: int = 256) -> None:
        super().__init__(latent_dim)
        if latent_dim < 2:
            raise ConfigError("a flow prior needs model.latent_dim >= 2")
        layers: list[nn.Module] = []
        mask = half_mask(latent_dim)
        d_a, d_b = int(mask.sum()), latent_dim - int(mask.sum())
        for _ in range(num_flows):
            net = mlp(d_a, hidden, 2 * d_b, num_hidden=2)
            layers += [AffineCoupling(mask, net), Permutation.reverse(latent_dim)]
        self.flow = Compose(layers)

    def log_prob(self, z: Tensor) -> Tensor:
        flat = z.reshape(-1, self.latent_dim)
        eps, log_det = self.flow(flat)
        return (log_standard_normal(eps).sum(dim=-1) + log_det).reshape(z.shape[:-1])

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        eps = self._noise(n, self.latent_dim, generator=generator)
        return self.flow.inverse(eps)[0]


class SphericalUniformPrior(Prior):
    r"""The uniform distribution on the unit sphere S^{M-1} ⊂ R^M, the prior of a hyperspherical
    VAE (Book §5.4.2.3): log p(z) = -log |S^{M-1}| = lgamma(M/2) - log 2 - (M/2) log π.

    A density with respect to the sphere's surface measure, not on R^M: it pairs with a von
    Mises-Fisher posterior, whose density is on the same sphere.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.uniform = HypersphericalUniform(latent_dim)
        self.register_buffer("_ref", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return self.uniform.log_prob(z)

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        return self.uniform.sample(
            (n,), generator=generator, dtype=self._ref.dtype, device=self._ref.device
        )


def build_prior(
    config: PriorConfig,
    latent_dim: int,
    *,
    input_dim: int,
    encoder: GaussianEncoder,
    bounded_inputs: bool,
    posterior: str = "gaussian",
) -> Prior:
    """The prior named by ``config.kind`` for an M = ``latent_dim`` latent; with a ``"vmf"``
    posterior the standard prior is the uniform distribution on the sphere S^{M-1}."""
    learned = config.learned_weights
    if config.kind == "standard":
        if posterior == "vmf":
            return SphericalUniformPrior(latent_dim)
        return StandardNormalPrior(latent_dim)
    if config.kind == "mog":
        return MixturePrior(
            latent_dim, config.num_components, learned_weights=learned,
            init_scale=config.init_scale,
        )
    if config.kind == "vamp":
        return VampPrior(
            latent_dim, input_dim, encoder, config.num_components, learned_weights=learned,
            bounded=bounded_inputs, pseudo_init=config.pseudo_init,
        )
    if config.kind == "gtm":
        return GTMPrior(
            latent_dim, config.num_components, grid_range=config.grid_range,
            hidden=config.hidden, learned_weights=learned,
        )
    if config.kind == "gtm_vamp":
        return GTMVampPrior(
            latent_dim, input_dim, encoder, config.num_components,
            grid_range=config.grid_range, hidden=config.hidden, learned_weights=learned,
            bounded=bounded_inputs,
        )
    return FlowPrior(latent_dim, config.num_flows, config.hidden)
