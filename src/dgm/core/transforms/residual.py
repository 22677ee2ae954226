r"""Invertible residual flows: i-ResNet, Residual Flows and invertible DenseNets (Book §4.1.7).

A residual block maps data to latent by

    z = f(x) = x + g(x, c),        Lip_x(g) < 1,

which is invertible because x = z - g(x, c) is a contraction in x (Banach fixed-point theorem;
Behrmann et al. 2019, "Invertible Residual Networks", arXiv:1811.00995). Its log-determinant is
the power series of the matrix logarithm (valid since ||J_g||_2 < 1),

    log |det(I + J_g(x))| = Σ_{k≥1} (-1)^{k+1} / k · tr(J_g(x)^k),

with each trace estimated by Hutchinson's estimator tr(A) = E_v[vᵀ A v] (E[v vᵀ] = I, v
Rademacher or Gaussian) and vᵀ J_g^k computed by k vector-Jacobian products. Truncating the
series after n terms (i-ResNet) is biased; Residual Flows (Chen et al. 2019, arXiv:1906.02735)
draw the number of terms N at random and reweight term k by 1 / P(N ≥ k) (the "Russian
roulette" estimator), which is unbiased. Invertible DenseNets (Perugachi-Diaz, Tomczak & Bhulai
2021, arXiv:2102.02694; Book §4.1.7.2) replace the MLP g by a densely connected network with
normalised concatenations and the concatenated LipSwish (CLipSwish) activation.

The Lipschitz constraint is kept by spectral normalisation (:class:`SpectralNormLinear`, from its
one home :mod:`dgm.core.spectral`, shared with the GAN discriminators) and
activations with Lipschitz constant ≤ 1 (:class:`LipSwish`, :class:`CLipSwish`): a composition
of maps with Lipschitz constants L_i has Lipschitz constant ≤ Π L_i.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.estimators import jacobian, probe
from dgm.core.spectral import SpectralNormLinear
from dgm.core.transforms.base import Transform, check_flat

__all__ = [
    "SpectralNormLinear",
    "LipSwish",
    "CLipSwish",
    "LipschitzMLP",
    "DenseLayer",
    "DenseNetResidual",
    "ResidualBlock",
]

LOGDET_METHODS = ("exact", "series", "roulette")


def _check_coeff(coeff: float) -> None:
    if not 0.0 < coeff < 1.0:
        raise ConfigError(f"coeff must be in (0, 1), got {coeff}")


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LipSwish(nn.Module):
    r"""LipSwish(x) = x · sigmoid(βx) / 1.1 with learnable β > 0 (Chen et al. 2019 §4).

    The Swish derivative d/dx [x sigmoid(βx)] = s + βx s (1 - s), s = sigmoid(βx), is a function
    of t = βx only, with range ≈ [-0.0998, 1.0998]; dividing by 1.1 makes the Lipschitz
    constant ≤ 1 for every β. β = softplus(raw) keeps it positive.
    """

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        if beta <= 0:
            raise ConfigError(f"beta must be positive, got {beta}")
        self.raw_beta = nn.Parameter(torch.tensor(_inverse_softplus(beta)))

    @property
    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.beta * x) / 1.1


def _clipswish_bound() -> float:
    # With d(t) the Swish derivative, d(t) + d(-t) = 1 (since x s(βx) - (-x) s(-βx) = x), so
    # the 2x1 Jacobian of [φ(x), φ(-x)] has norm sqrt(d² + (1 - d)²) / 1.1, largest where d
    # is largest (t ≈ 2.4). The grid maximum is rounded up by a relative 1e-6.
    t = torch.linspace(0.0, 6.0, 600001, dtype=torch.float64)
    s = torch.sigmoid(t)
    d = s + t * s * (1 - s)
    return float(torch.sqrt(d**2 + (1 - d) ** 2).max()) / 1.1 * (1 + 1e-6)


class CLipSwish(nn.Module):
    r"""Concatenated LipSwish of i-DenseNets (Perugachi-Diaz et al. 2021 §3.2; Book §4.1.7.2).

        CLipSwish(x) = [φ(x), φ(-x)] / L,    φ = LipSwish (shared β),    L ≈ 1.004,

    which doubles the width (N, H) -> (N, 2H). Per coordinate the Jacobian is the column
    (φ'(x), -φ'(-x)) of norm sqrt(φ'(x)² + φ'(-x)²) ≤ L, the bound computed in
    :func:`_clipswish_bound`; the Jacobian of the whole map is a stack of two diagonals, whose
    spectral norm is the largest such column norm, so Lip(CLipSwish) ≤ 1. Unlike LipSwish alone,
    the concatenation keeps the information of negative inputs (its derivative does not vanish).
    """

    bound: float = _clipswish_bound()

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__()
        self.lipswish = LipSwish(beta)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.lipswish(x), self.lipswish(-x)], dim=-1) / self.bound


def _make_activation(name: str) -> tuple[nn.Module, int]:
    """The activation and its width multiplier."""
    if name == "lipswish":
        return LipSwish(), 1
    if name == "clipswish":
        return CLipSwish(), 2
    raise ConfigError(f"activation must be 'lipswish' or 'clipswish', got {name!r}")


class _ContextMixin(nn.Module):
    """A bias-free projection of the context added to the first pre-activation.

    Only Lip_x(g) must be < 1: for a fixed c the term V c is a constant shift, so V needs no
    constraint (equivalent to concatenating c to the first layer's input).
    """

    dim: int
    context_dim: int

    def _init_context(self, context_dim: int, width: int) -> None:
        if context_dim < 0:
            raise ConfigError(f"context_dim must be >= 0, got {context_dim}")
        self.context_dim = context_dim
        self.context = nn.Linear(context_dim, width, bias=False) if context_dim > 0 else None

    def _context_shift(self, c: Tensor | None, n: int) -> Tensor | float:
        if self.context is None:
            return 0.0  # transforms without a conditioner ignore c
        if c is None:
            raise DataError(f"this residual function needs a context c of width {self.context_dim}")
        c = c.reshape(c.shape[0], -1)
        if c.shape != (n, self.context_dim):
            raise DataError(f"c must have shape ({n}, {self.context_dim}), got {tuple(c.shape)}")
        return self.context(c)


class LipschitzMLP(_ContextMixin):
    r"""The i-ResNet / Residual Flow residual function g: R^D -> R^D with Lip_x(g) ≤ coeff.

        g(x, c) = W_L φ(... φ(W_2 φ(W_1 x + V c + b_1) + b_2) ...) + b_L,

    every W_l spectrally normalised to ||W_l||_2 ≤ coeff and φ with Lipschitz ≤ 1, so
    Lip_x(g) ≤ coeff^L < 1.

    Args:
        dim: D.
        hidden_dim: width of the hidden layers (doubled after a CLipSwish).
        num_hidden: number of hidden layers (L = num_hidden + 1 linear layers).
        context_dim: width C of an optional context c (0: none).
        coeff: spectral-norm coefficient of every linear layer.
        activation: "lipswish" or "clipswish".
        n_power_iterations: power-iteration steps per training call.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int = 64,
        *,
        num_hidden: int = 2,
        context_dim: int = 0,
        coeff: float = 0.97,
        activation: str = "lipswish",
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or hidden_dim < 1 or num_hidden < 1:
            raise ConfigError("dim, hidden_dim and num_hidden must be >= 1")
        _check_coeff(coeff)
        self.dim = dim
        self.coeff = coeff
        self._init_context(context_dim, hidden_dim)
        layers: list[nn.Module] = []
        width = dim
        for _ in range(num_hidden):
            act, mult = _make_activation(activation)
            layers += [
                SpectralNormLinear(
                    width, hidden_dim, coeff=coeff, n_power_iterations=n_power_iterations
                ),
                act,
            ]
            width = hidden_dim * mult
        layers.append(
            SpectralNormLinear(width, dim, coeff=coeff, n_power_iterations=n_power_iterations)
        )
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.layers[0](x) + self._context_shift(c, x.shape[0])
        for layer in self.layers[1:]:
            h = layer(h)
        return h


class DenseLayer(nn.Module):
    r"""One dense layer of an i-DenseNet (Perugachi-Diaz et al. 2021 §3.1; Book §4.1.7.2):

        h ↦ [η₁ h, η₂ CLipSwish(W h + s)],    (η₁, η₂) = a / ||a||  so  η₁² + η₂² = 1,

    with ||W||_2 ≤ coeff, learnable a ∈ R² and s an optional constant shift (the context).
    Since ||[η₁ Δ, η₂ Δ']||² = η₁²||Δ||² + η₂²||Δ'||² ≤ (η₁² + η₂² coeff²) ||Δ||² ≤ ||Δ||², the
    layer has Lipschitz constant ≤ 1. Widths: in_features -> in_features + 2 growth.
    """

    def __init__(
        self, in_features: int, growth: int, *, coeff: float = 0.97, n_power_iterations: int = 1
    ) -> None:
        super().__init__()
        _check_coeff(coeff)
        self.in_features, self.growth = in_features, growth
        self.out_features = in_features + 2 * growth
        self.linear = SpectralNormLinear(
            in_features, growth, coeff=coeff, n_power_iterations=n_power_iterations
        )
        self.activation = CLipSwish()
        self.eta_raw = nn.Parameter(torch.ones(2))

    def eta(self) -> Tensor:
        """(η₁, η₂) on the unit circle."""
        return self.eta_raw / self.eta_raw.norm().clamp_min(1e-12)

    def forward(self, h: Tensor, shift: Tensor | float = 0.0) -> Tensor:
        eta = self.eta()
        new = self.activation(self.linear(h) + shift)
        return torch.cat([eta[0] * h, eta[1] * new], dim=1)


class DenseNetResidual(_ContextMixin):
    r"""The i-DenseNet residual function g: R^D -> R^D with Lip_x(g) ≤ coeff (Book §4.1.7.2).

        g(x, c) = W_out (D_K ∘ ... ∘ D_1)(x) + b,     ||W_out||_2 ≤ coeff,

    with :class:`DenseLayer` s D_k (Lipschitz ≤ 1 each, widths D -> D + 2·growth·K) and the
    context shift V c added inside the first dense layer.

    Args:
        dim: D.
        growth: new features per dense layer before the CLipSwish doubling.
        depth: number of dense layers K.
        context_dim: width C of an optional context (0: none).
        coeff: spectral-norm coefficient of every linear layer.
        n_power_iterations: power-iteration steps per training call.
    """

    def __init__(
        self,
        dim: int,
        growth: int = 16,
        *,
        depth: int = 3,
        context_dim: int = 0,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
    ) -> None:
        super().__init__()
        if dim < 1 or growth < 1 or depth < 1:
            raise ConfigError("dim, growth and depth must be >= 1")
        _check_coeff(coeff)
        self.dim = dim
        self.coeff = coeff
        self._init_context(context_dim, growth)
        layers = []
        width = dim
        for _ in range(depth):
            layers.append(
                DenseLayer(width, growth, coeff=coeff, n_power_iterations=n_power_iterations)
            )
            width = layers[-1].out_features
        self.dense = nn.ModuleList(layers)
        self.out = SpectralNormLinear(
            width, dim, coeff=coeff, n_power_iterations=n_power_iterations
        )

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        h = self.dense[0](x, self._context_shift(c, x.shape[0]))
        for layer in self.dense[1:]:
            h = layer(h)
        return self.out(h)


def _spectral_layers(module: nn.Module) -> Iterator[SpectralNormLinear]:
    return (m for m in module.modules() if isinstance(m, SpectralNormLinear))


@contextmanager
def _frozen_power_iteration(module: nn.Module) -> Iterator[None]:
    """No training-mode power-iteration step inside: g stays one function across calls."""
    layers = list(_spectral_layers(module))
    saved = [layer.update_enabled for layer in layers]
    for layer in layers:
        layer.update_enabled = False
    try:
        yield
    finally:
        for layer, flag in zip(layers, saved):
            layer.update_enabled = flag


class ResidualBlock(Transform):
    r"""Invertible residual block z = x + g(x, c) (i-ResNet / Residual Flow / i-DenseNet layer;
    Book §4.1.7).

    ``residual`` is a module g(x, c) with attributes ``dim`` and Lip_x(g) < 1, e.g.
    :class:`LipschitzMLP` (i-ResNet, Residual Flows) or :class:`DenseNetResidual`
    (i-DenseNets); :meth:`mlp` and :meth:`densenet` build the block with one.

    Forward log-det, log |det(I + J_g)| = Σ_{k≥1} (-1)^{k+1}/k tr(J_g^k), by ``logdet``:

    * ``"exact"``: the full Jacobian from D vector-Jacobian products and ``slogdet`` (cost
      O(D) backward passes + O(D³); for small D, tests and evaluation);
    * ``"series"``: the first ``n_terms`` terms, tr(J^k) ≈ vᵀ J^k v averaged over ``n_probes``
      probes v (Hutchinson); biased by at most D Σ_{k>n} Lip(g)^k / k (i-ResNet);
    * ``"roulette"``: N = ``n_exact_terms`` + G, G ~ Geometric(``roulette_p``) on {0, 1, ...}
      drawn once per call, and Σ_{k=1}^{N} (-1)^{k+1}/k · vᵀ J^k v / P(N ≥ k) with
      P(N ≥ k) = (1 - p)^{max(0, k - n_exact_terms)}; its expectation is the full series
      (Residual Flows' Russian-roulette estimator).

    Gradients flow by backprop through the estimator (``create_graph=True`` whenever grad mode
    is on); the Neumann-series gradient of Residual Flows is not used. The training-mode method
    is ``logdet``; in eval mode ``eval_logdet`` decides: ``"auto"`` is ``"exact"`` when
    D ≤ ``exact_max_dim`` (so reported likelihoods are exact, e.g. 8x8 digits) and ``logdet``
    otherwise, or name a method.

    Inverse: the Banach fixed-point iteration x_{k+1} = z - g(x_k, c), x_0 = z. With L =
    Lip_x(g) < 1 it converges geometrically, ||x_k - x*|| ≤ L^k/(1 - L) ||x_1 - x_0||; it stops
    when every |x_{k+1} - x_k| ≤ tol · max(1, |x_{k+1}|) (tol 1e-10 in float64, 1e-6 otherwise,
    unless ``inverse_tol`` is set) or after ``inverse_max_iter`` steps. The inverse log-det is
    minus the forward log-det at the solution. The inverse is computed without gradients with
    respect to z (it is meant for sampling), and no power-iteration step is taken inside it, so
    it inverts the function the last forward call used.

    Args:
        residual: the residual function g.
        logdet: "exact", "series" or "roulette" (training-mode method).
        eval_logdet: "auto" or one of the methods (eval-mode method).
        n_terms: series terms for "series".
        n_probes: Hutchinson probes per example.
        probe: "rademacher" or "gaussian".
        n_exact_terms: terms always computed by "roulette".
        roulette_p: success probability of the geometric distribution of "roulette".
        exact_max_dim: the largest D for which "auto" uses the exact log-det.
        inverse_tol: fixed-point tolerance (None: by dtype).
        inverse_max_iter: cap on the fixed-point steps.
    """

    event_dim = 1
    volume_preserving = False

    def __init__(
        self,
        residual: nn.Module,
        *,
        logdet: str = "roulette",
        eval_logdet: str = "auto",
        n_terms: int = 8,
        n_probes: int = 1,
        probe: str = "rademacher",
        n_exact_terms: int = 2,
        roulette_p: float = 0.5,
        exact_max_dim: int = 64,
        inverse_tol: float | None = None,
        inverse_max_iter: int = 1000,
    ) -> None:
        super().__init__()
        if logdet not in LOGDET_METHODS:
            raise ConfigError(f"logdet must be one of {LOGDET_METHODS}, got {logdet!r}")
        if eval_logdet not in ("auto",) + LOGDET_METHODS:
            raise ConfigError(f"eval_logdet must be 'auto' or one of {LOGDET_METHODS}")
        if probe not in ("rademacher", "gaussian"):
            raise ConfigError(f"probe must be 'rademacher' or 'gaussian', got {probe!r}")
        if n_terms < 1 or n_probes < 1 or n_exact_terms < 0 or inverse_max_iter < 1:
            raise ConfigError("n_terms, n_probes, inverse_max_iter >= 1, n_exact_terms >= 0")
        if not 0.0 < roulette_p < 1.0:
            raise ConfigError(f"roulette_p must be in (0, 1), got {roulette_p}")
        if not hasattr(residual, "dim"):
            raise ConfigError("residual must have an attribute dim (its input and output width)")
        self.residual = residual
        self.dim = int(residual.dim)
        self.logdet = logdet
        self.eval_logdet = eval_logdet
        self.n_terms = n_terms
        self.n_probes = n_probes
        self.probe = probe
        self.n_exact_terms = n_exact_terms
        self.roulette_p = roulette_p
        self.exact_max_dim = exact_max_dim
        self.inverse_tol = inverse_tol
        self.inverse_max_iter = inverse_max_iter
        self.last_inverse_iterations = 0

    @classmethod
    def mlp(
        cls,
        dim: int,
        hidden_dim: int = 64,
        *,
        num_hidden: int = 2,
        context_dim: int = 0,
        coeff: float = 0.97,
        activation: str = "lipswish",
        n_power_iterations: int = 1,
        **block_kwargs: object,
    ) -> ResidualBlock:
        """An i-ResNet / Residual Flow block with a :class:`LipschitzMLP` residual."""
        g = LipschitzMLP(
            dim,
            hidden_dim,
            num_hidden=num_hidden,
            context_dim=context_dim,
            coeff=coeff,
            activation=activation,
            n_power_iterations=n_power_iterations,
        )
        return cls(g, **block_kwargs)  # type: ignore[arg-type]

    @classmethod
    def densenet(
        cls,
        dim: int,
        growth: int = 16,
        *,
        depth: int = 3,
        context_dim: int = 0,
        coeff: float = 0.97,
        n_power_iterations: int = 1,
        **block_kwargs: object,
    ) -> ResidualBlock:
        """An i-DenseNet block with a :class:`DenseNetResidual` residual."""
        g = DenseNetResidual(
            dim,
            growth,
            depth=depth,
            context_dim=context_dim,
            coeff=coeff,
            n_power_iterations=n_power_iterations,
        )
        return cls(g, **block_kwargs)  # type: ignore[arg-type]

    def current_method(self) -> str:
        """The log-det method the next forward call uses."""
        if self.training:
            return self.logdet
        if self.eval_logdet == "auto":
            return "exact" if self.dim <= self.exact_max_dim else self.logdet
        return self.eval_logdet

    def _term_weights(self, method: str) -> list[float]:
        """(-1)^{k+1} / k, divided by P(N ≥ k) for the roulette, for k = 1..N."""
        if method == "series":
            n = self.n_terms
            survival = [1.0] * n
        else:
            extra = int(torch.distributions.Geometric(probs=self.roulette_p).sample())
            n = max(1, self.n_exact_terms + extra)
            q = 1.0 - self.roulette_p
            survival = [q ** max(0, k - self.n_exact_terms) for k in range(1, n + 1)]
        return [(-1) ** (k + 1) / k / survival[k - 1] for k in range(1, n + 1)]

    def _logabsdet(self, x: Tensor, gx: Tensor, method: str, create_graph: bool) -> Tensor:
        """log |det(I + J_g(x))| by ``method``; x must be in gx's graph."""
        if method == "exact":
            d = x.shape[1]
            jac = jacobian(gx, x, create_graph=create_graph, block=d)  # (N, D, D)
            eye = torch.eye(d, dtype=x.dtype, device=x.device)
            return torch.linalg.slogdet(eye + jac)[1]
        weights = self._term_weights(method)
        total = x.new_zeros(x.shape[0])
        for _ in range(self.n_probes):
            v = probe(x, self.probe)
            w = v
            for weight in weights:
                # w ← wᵀ J_g, so after k steps w·v = vᵀ J_g^k v.
                (w,) = torch.autograd.grad(
                    gx, x, w, retain_graph=True, create_graph=create_graph
                )
                total = total + weight * (w * v).sum(dim=1)
        return total / self.n_probes

    def _forward(self, x: Tensor, c: Tensor | None, method: str) -> tuple[Tensor, Tensor]:
        grad_on = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x if x.requires_grad else x.detach().requires_grad_(True)
            gx = self.residual(xg, c)
            logabsdet = self._logabsdet(xg, gx, method, create_graph=grad_on)
            z = x + gx
        if not grad_on:
            z, logabsdet = z.detach(), logabsdet.detach()
        return z, logabsdet

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        return self._forward(x, c, self.current_method())

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        tol = self.inverse_tol
        if tol is None:
            tol = 1e-10 if z.dtype == torch.float64 else 1e-6
        with _frozen_power_iteration(self.residual):
            with torch.no_grad():
                z = z.detach()
                x = z.clone()
                for step in range(1, self.inverse_max_iter + 1):
                    x_new = z - self.residual(x, c)
                    done = bool(((x_new - x).abs() <= tol * x_new.abs().clamp_min(1.0)).all())
                    x = x_new
                    if done:
                        break
                self.last_inverse_iterations = step
            _, logabsdet = self._forward(x, c, self.current_method())
        return x, -logabsdet
