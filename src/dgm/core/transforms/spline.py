r"""Neural spline flows: monotonic rational-quadratic splines with linear tails (Durkan et al.
2019, "Neural Spline Flows", arXiv:1906.04032; Book §4.1), as coupling and autoregressive layers.

A spline with K bins maps [-B, B] onto itself through K+1 knots (x^k, y^k), k = 0..K, with
x^0 = y^0 = -B, x^K = y^K = B, and positive derivatives δ^k at the knots. In bin k, with
w_k = x^{k+1} - x^k, h_k = y^{k+1} - y^k, s_k = h_k / w_k and ξ = (x - x^k) / w_k ∈ [0, 1],

    g(x) = y^k + h_k [s_k ξ² + δ^k ξ(1-ξ)] / [s_k + (δ^{k+1} + δ^k - 2 s_k) ξ(1-ξ)],

    g'(x) = s_k² [δ^{k+1} ξ² + 2 s_k ξ(1-ξ) + δ^k (1-ξ)²]
            / [s_k + (δ^{k+1} + δ^k - 2 s_k) ξ(1-ξ)]²,

and log |g'(x)| is the elementwise log-det. The denominator is at least s_k / 2 > 0 (since
ξ(1-ξ) <= 1/4), so g is smooth and strictly increasing in every bin, g(x^k) = y^k and
g'(x^k) = δ^k: the spline is C¹ across knots. Outside [-B, B] it is the identity (linear tails);
δ^0 = δ^K = 1 makes value and slope match at ±B.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import made_network, mlp
from dgm.core.transforms.base import Transform, check_flat
from dgm.core.transforms.coupling import register_mask_split

__all__ = [
    "rational_quadratic_spline",
    "spline_params_per_dim",
    "SplineCoupling",
    "MaskedAutoregressiveSpline",
]

DEFAULT_MIN_BIN_WIDTH = 1e-3
DEFAULT_MIN_BIN_HEIGHT = 1e-3
DEFAULT_MIN_DERIVATIVE = 1e-3


def spline_params_per_dim(num_bins: int) -> int:
    """Raw parameters per transformed coordinate: K widths, K heights, K-1 derivatives."""
    return 3 * num_bins - 1


def _check_spline_settings(
    num_bins: int, bound: float, min_bin_width: float, min_bin_height: float, min_derivative: float
) -> None:
    if num_bins < 1:
        raise ConfigError(f"num_bins must be >= 1, got {num_bins}")
    if not bound > 0:
        raise ConfigError(f"bound must be positive, got {bound}")
    for name, value in (("min_bin_width", min_bin_width), ("min_bin_height", min_bin_height)):
        if not 0 <= value * num_bins < 1:
            raise ConfigError(f"{name} * num_bins must lie in [0, 1), got {value} * {num_bins}")
    if not 0 <= min_derivative < 1:
        raise ConfigError(f"min_derivative must lie in [0, 1), got {min_derivative}")


def _knots(raw: Tensor, min_size: float, bound: float) -> tuple[Tensor, Tensor]:
    """Knot positions (..., K+1) on [-B, B] and bin sizes (..., K) from raw sizes (..., K).

    Sizes are min_size + (1 - K min_size) softmax(raw), scaled by 2B, so every bin keeps at
    least 2B min_size. The end knots are set to exactly ±B so that the tails join exactly.
    """
    k = raw.shape[-1]
    sizes = min_size + (1.0 - min_size * k) * torch.softmax(raw, dim=-1)
    inner = 2.0 * bound * torch.cumsum(sizes[..., :-1], dim=-1) - bound
    ends = raw.new_full(raw.shape[:-1] + (1,), bound)
    knots = torch.cat([-ends, inner, ends], dim=-1)
    return knots, knots[..., 1:] - knots[..., :-1]


def _gather(t: Tensor, idx: Tensor) -> Tensor:
    return torch.gather(t, -1, idx).squeeze(-1)


def rational_quadratic_spline(
    x: Tensor,
    widths: Tensor,
    heights: Tensor,
    derivatives: Tensor,
    *,
    inverse: bool = False,
    bound: float = 3.0,
    min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
    min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
    min_derivative: float = DEFAULT_MIN_DERIVATIVE,
) -> tuple[Tensor, Tensor]:
    r"""Elementwise monotonic rational-quadratic spline on [-B, B], identity outside.

    Returns ``(y, logabsdet)``, both shaped like x, with logabsdet = log |∂y/∂x| elementwise
    (``inverse=False``: y = g(x)) or log |∂g⁻¹/∂y| = -log g'(g⁻¹(y)) (``inverse=True``).

    Parametrization (raw values are unconstrained):

    * bin widths w = 2B [m_w + (1 - K m_w) softmax(widths)], heights likewise with m_h;
    * interior derivatives δ^k = m_δ + softplus(d_k + log(e^{1-m_δ} - 1)), so a raw 0 gives
      δ = 1 and all-zero raw parameters give the identity map;
    * boundary derivatives δ^0 = δ^K = 1 (the slope of the linear tails).

    The inverse solves g(x) = y in bin k for ξ: a ξ² + b ξ + c = 0 with

        a = h_k (s_k - δ^k) + (y - y^k) Δ,   b = h_k δ^k - (y - y^k) Δ,   c = -s_k (y - y^k),
        Δ = δ^{k+1} + δ^k - 2 s_k,

    by the cancellation-free root ξ = 2c / (-b - √(b² - 4ac)) (Durkan et al. 2019, App. A).

    Args:
        x: inputs, any shape (...).
        widths: raw bin widths (..., K).
        heights: raw bin heights (..., K).
        derivatives: raw derivatives at the K-1 interior knots (..., K-1).
        inverse: evaluate g⁻¹ instead of g.
        bound: B, the half-width of the interval that the spline covers.
        min_bin_width, min_bin_height: m_w, m_h, fractions of 2B; K m must stay below 1.
        min_derivative: m_δ, a lower bound on the interior derivatives.
    """
    num_bins = widths.shape[-1]
    _check_spline_settings(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
    if (
        heights.shape[-1] != num_bins
        or derivatives.shape[-1] != num_bins - 1
        or widths.shape[:-1] != x.shape
        or heights.shape[:-1] != x.shape
        or derivatives.shape[:-1] != x.shape
    ):
        raise DataError(
            f"for x of shape {tuple(x.shape)} expected widths and heights (..., K) and "
            f"derivatives (..., K-1) with leading shape {tuple(x.shape)}, got "
            f"{tuple(widths.shape)}, {tuple(heights.shape)}, {tuple(derivatives.shape)}"
        )
    knots_x, bin_w = _knots(widths, min_bin_width, bound)
    knots_y, bin_h = _knots(heights, min_bin_height, bound)
    shift = math.log(math.expm1(1.0 - min_derivative))
    inner_d = min_derivative + F.softplus(derivatives + shift)
    one = inner_d.new_ones(inner_d.shape[:-1] + (1,))
    knots_d = torch.cat([one, inner_d, one], dim=-1)

    # The spline is evaluated on clamped inputs everywhere and only selected inside [-B, B]:
    # torch.where passes 0 * (gradient of the unused branch), which must not be 0 * inf = nan.
    inside = (x >= -bound) & (x <= bound)
    v = x.clamp(-bound, bound)
    knots = knots_y if inverse else knots_x
    idx = torch.searchsorted(knots[..., 1:-1].contiguous(), v.unsqueeze(-1).contiguous())
    x_k, y_k = _gather(knots_x, idx), _gather(knots_y, idx)
    w_k, h_k = _gather(bin_w, idx), _gather(bin_h, idx)
    d_k, d_k1 = _gather(knots_d, idx), _gather(knots_d, idx + 1)
    s_k = h_k / w_k
    delta = d_k1 + d_k - 2.0 * s_k

    if inverse:
        dy = v - y_k
        a = h_k * (s_k - d_k) + dy * delta
        b = h_k * d_k - dy * delta
        c = -s_k * dy
        disc = (b * b - 4.0 * a * c).clamp_min(0.0)  # >= 0 in exact arithmetic
        xi = (2.0 * c / (-b - torch.sqrt(disc))).clamp(0.0, 1.0)
    else:
        xi = ((v - x_k) / w_k).clamp(0.0, 1.0)
    t = xi * (1.0 - xi)
    denom = s_k + delta * t
    log_grad = (
        2.0 * torch.log(s_k)
        + torch.log(d_k1 * xi**2 + 2.0 * s_k * t + d_k * (1.0 - xi) ** 2)
        - 2.0 * torch.log(denom)
    )
    if inverse:
        out, log_grad = x_k + xi * w_k, -log_grad
    else:
        out = y_k + h_k * (s_k * xi**2 + d_k * t) / denom
    return torch.where(inside, out, x), torch.where(inside, log_grad, torch.zeros_like(x))


class _SplineSettings:
    """Mixin: shared spline hyperparameters and the raw-parameter split of both layers."""

    def _init_spline(
        self,
        num_bins: int,
        bound: float,
        min_bin_width: float,
        min_bin_height: float,
        min_derivative: float,
    ) -> None:
        _check_spline_settings(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
        self.num_bins = num_bins
        self.bound = float(bound)
        self.min_bin_width = min_bin_width
        self.min_bin_height = min_bin_height
        self.min_derivative = min_derivative

    def _spline(self, x: Tensor, raw: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Spline each x (N, M) with raw parameters (N, M, 3K-1): widths, heights, derivs."""
        k = self.num_bins
        return rational_quadratic_spline(
            x,
            raw[..., :k],
            raw[..., k : 2 * k],
            raw[..., 2 * k :],
            inverse=inverse,
            bound=self.bound,
            min_bin_width=self.min_bin_width,
            min_bin_height=self.min_bin_height,
            min_derivative=self.min_derivative,
        )


def _with_context(x: Tensor, c: Tensor | None) -> Tensor:
    return x if c is None else torch.cat([x, c.reshape(c.shape[0], -1).to(x.dtype)], dim=1)


class SplineCoupling(_SplineSettings, Transform):
    r"""Rational-quadratic spline coupling layer on flat vectors (Durkan et al. 2019, §3.2;
    Book §4.1.3 for coupling layers).

    The mask splits x into a conditioning part x_a (``mask`` True) and a transformed part x_b:

        z_a = x_a,    z_b,j = g_j(x_b,j),    θ = conditioner([x_a, c]),
        log |det ∂z/∂x| = Σ_j log g_j'(x_b,j),

    where g_j is the rational-quadratic spline of :func:`rational_quadratic_spline` with raw
    parameters θ_j. The Jacobian is triangular after reordering; the inverse applies g_j⁻¹
    with the same θ, computed from z_a = x_a.

    Args:
        mask: boolean (D,), True where the coordinate conditions the others and passes
            through unchanged. Both parts must be non-empty.
        conditioner: a module mapping (N, D_a + C) to (N, D_b (3K - 1)), coordinate-major: for
            each transformed coordinate K raw widths, K raw heights, K-1 raw derivatives.
            D_a = mask.sum(), D_b = D - D_a, C the context width (0 without one).
            :meth:`with_mlp` builds one.
        num_bins: K.
        bound: B; the spline acts on [-B, B] and is the identity outside.
        min_bin_width, min_bin_height, min_derivative: see :func:`rational_quadratic_spline`.
    """

    event_dim = 1
    volume_preserving = False

    def __init__(
        self,
        mask: Tensor,
        conditioner: nn.Module,
        *,
        num_bins: int = 8,
        bound: float = 3.0,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ) -> None:
        super().__init__()
        self._init_spline(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
        register_mask_split(self, mask)
        self.conditioner = conditioner

    @classmethod
    def with_mlp(
        cls,
        mask: Tensor,
        hidden: int = 64,
        num_hidden: int = 2,
        *,
        num_bins: int = 8,
        bound: float = 3.0,
        context: int = 0,
        dropout: float = 0.0,
        zero_init: bool = True,
        **spline_kwargs: float,
    ) -> "SplineCoupling":
        """A spline coupling with an MLP conditioner (:func:`~dgm.core.nn.mlp`).

        ``zero_init`` zeroes the MLP's last layer: all raw parameters are then 0, which gives
        uniform bins with unit derivatives, so the layer starts as the exact identity.
        """
        if num_bins < 1:
            raise ConfigError(f"num_bins must be >= 1, got {num_bins}")
        mask = torch.as_tensor(mask, dtype=torch.bool)
        d_a = int(mask.sum())
        d_b = int(mask.numel()) - d_a
        out = d_b * spline_params_per_dim(num_bins)
        net = mlp(d_a + context, hidden, out, num_hidden=num_hidden, dropout=dropout)
        if zero_init:
            nn.init.zeros_(net[-1].weight)
            nn.init.zeros_(net[-1].bias)
        return cls(mask, net, num_bins=num_bins, bound=bound, **spline_kwargs)

    def _params(self, x_a: Tensor, c: Tensor | None) -> Tensor:
        raw = self.conditioner(_with_context(x_a, c))
        return raw.reshape(x_a.shape[0], self.idx_b.numel(), spline_params_per_dim(self.num_bins))

    def _transform(self, x: Tensor, c: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
        y_b, logabsdet = self._spline(x_b, self._params(x_a, c), inverse)
        return torch.cat([x_a, y_b], dim=1)[:, self.unsplit], logabsdet.sum(dim=1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        return self._transform(x, c, inverse=False)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        return self._transform(z, c, inverse=True)


class MaskedAutoregressiveSpline(_SplineSettings, Transform):
    r"""A masked autoregressive rational-quadratic spline layer on flat vectors (Durkan et al.
    2019, §3.3; MAF-style, Papamakarios et al. 2017; Book §4.1).

        z_d = g_d(x_d; θ_d(x_{<d}, c)),     log |det ∂z/∂x| = Σ_d log g_d'(x_d),

    with all θ_d (3K-1 raw spline parameters each, see :func:`rational_quadratic_spline`) from
    one MADE pass (:func:`~dgm.core.nn.made_network`, whose degree-0 hidden units carry the
    context c to every θ_d, θ_1 included). The Jacobian is lower triangular. The
    density direction (``forward``) is one pass; ``inverse`` is D passes,
    x_d = g_d⁻¹(z_d; θ_d(x_{<d}, c)), coordinate by coordinate. Wrapped in :class:`Inverse`
    it is the inverse-autoregressive variant (one-pass sampling, sequential density).

    Args:
        dim: D.
        hidden: width of the MADE's hidden layers.
        num_hidden: number of hidden layers.
        num_bins: K.
        bound: B; the spline acts on [-B, B] and is the identity outside.
        context: width C of a context vector c (N, C) every output may read (0: none).
        zero_init: zero the MADE's last layer so the layer starts as the identity.
        dropout: dropout after each hidden layer of the MADE.
        generator: for the MADE's random degrees.
        min_bin_width, min_bin_height, min_derivative: see :func:`rational_quadratic_spline`.
    """

    event_dim = 1
    volume_preserving = False

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        num_hidden: int = 2,
        *,
        num_bins: int = 8,
        bound: float = 3.0,
        context: int = 0,
        zero_init: bool = False,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        min_bin_width: float = DEFAULT_MIN_BIN_WIDTH,
        min_bin_height: float = DEFAULT_MIN_BIN_HEIGHT,
        min_derivative: float = DEFAULT_MIN_DERIVATIVE,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a masked autoregressive layer needs dim >= 2, got {dim}")
        self._init_spline(num_bins, bound, min_bin_width, min_bin_height, min_derivative)
        self.dim = dim
        self.context = context
        params = spline_params_per_dim(num_bins)
        self.net = made_network(
            dim, params, hidden, num_hidden, dropout, generator, context=context
        )
        if zero_init:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

    def _params(self, x: Tensor, c: Tensor | None) -> Tensor:
        if (c is None) != (self.context == 0):
            raise DataError(f"this layer takes a context of width {self.context}, got "
                            f"{'none' if c is None else tuple(c.shape)}")
        raw = self.net(_with_context(x, c))
        return raw.reshape(x.shape[0], self.dim, spline_params_per_dim(self.num_bins))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        z, logabsdet = self._spline(x, self._params(x, c), inverse=False)
        return z, logabsdet.sum(dim=1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        x = torch.zeros_like(z)
        logabsdet = z.new_zeros(z.shape[0])
        for d in range(self.dim):  # θ_d needs x_{<d} only, which are final by now
            raw = self._params(x, c)[:, d : d + 1]
            x_d, ld = self._spline(z[:, d : d + 1], raw, inverse=True)
            x = torch.cat([x[:, :d], x_d, x[:, d + 1 :]], dim=1)
            logabsdet = logabsdet + ld[:, 0]
        return x, logabsdet
