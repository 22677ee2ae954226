r"""Residual flows with a closed-form log-determinant: planar, radial and Sylvester transforms.

Each layer is a residual map x -> z = x + g(x), used as ``forward`` (data to latent):

    planar     z = x + û h(wᵀx + b),                         h = tanh
    radial     z = x + β / (α + r) (x - x0),                 r = |x - x0|
    Sylvester  z = x + Q R h(R̃ Qᵀ x + b),                    h = tanh

(Rezende & Mohamed 2015, arXiv:1505.05770; van den Berg, Hasenclever, Tomczak & Welling 2018,
"Sylvester normalizing flows", arXiv:1803.05649; Book §4.1 and §5.4.2 "Sylvester flows").
Their Jacobian determinants follow from the matrix determinant lemma and Sylvester's identity
det(I_D + A B) = det(I_M + B A), so ``forward`` costs O(D M) per example. The maps are
invertible only under constraints on the parameters, which each class enforces by a
reparametrization of unconstrained raw parameters (documented per class).

None of them has an analytic inverse, except the radial flow (a quadratic in r). ``inverse``
reduces the problem to scalar strictly increasing equations and solves them, batched over the
examples, by a safeguarded Newton method: Newton steps that leave a bracket that always holds
the root, or that do not shrink fast enough, are replaced by bisection, until the step is below
4 machine epsilons relative to 1 + |root|. The root is found without autograd and then refined
by one Newton step with the derivative detached: the value is unchanged (to solver tolerance)
and its gradient is the exact implicit-function gradient, so ``inverse`` is differentiable in z
and in the parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.errors import ConfigError
from dgm.core.transforms.base import Transform, check_flat
from dgm.core.transforms.householder import Householder, householder_matrix

__all__ = [
    "Planar",
    "Radial",
    "Sylvester",
    "SYLVESTER_VARIANTS",
    "sylvester_map",
    "orthonormal_columns",
    "upper_triangular",
]

SYLVESTER_VARIANTS = ("orthogonal", "householder", "triangular")


def _solve_increasing(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    max_iter: int = 100,
) -> Tensor:
    """Solve fn(v) = target elementwise for a strictly increasing fn with the root in [lo, hi].

    ``fn`` returns (value, derivative). Safeguarded Newton ("rtsafe"), vectorized: each
    iterate shrinks the bracket; a Newton step is taken only if it stays in the bracket and at
    least halves the step before last, otherwise the midpoint. The returned root carries the
    implicit-function gradient (one Newton step with the derivative detached, see module doc).
    """
    tol = 4.0 * torch.finfo(target.dtype).eps
    with torch.no_grad():
        t, lo, hi = target.detach(), lo.detach().clone(), hi.detach().clone()
        v = 0.5 * (lo + hi)
        step_old = hi - lo
        done = torch.zeros_like(v, dtype=torch.bool)
        for _ in range(max_iter):
            g, dg = fn(v)
            f = g - t
            lo = torch.where(f <= 0, v, lo)
            hi = torch.where(f >= 0, v, hi)
            newton = v - f / dg
            bisect = (
                ~torch.isfinite(newton)
                | (newton < lo)
                | (newton > hi)
                | (2.0 * f.abs() > (step_old * dg).abs())
            )
            v_new = torch.where(bisect, 0.5 * (lo + hi), newton)
            # Converged entries stay put: at the root f is rounding noise, and the rule above
            # would otherwise send them back to the middle of a possibly one-sided bracket.
            v_new = torch.where(done, v, v_new)
            step_old = v_new - v
            v = v_new
            done = done | (step_old.abs() <= tol * (1.0 + v.abs()))
            if bool(done.all()):
                break
    g, dg = fn(v)
    return v - (g - target) / dg.detach()


def _tanh_and_derivative(a: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.tanh(a)
    return h, 1.0 - h * h


def _vecmat(x: Tensor, a: Tensor) -> Tensor:
    """x (..., P) times a (P, Q) or (..., P, Q) -> (..., Q)."""
    return torch.matmul(x.unsqueeze(-2), a).squeeze(-2)


def sylvester_map(
    x: Tensor, q: Tensor, r: Tensor, r_tilde: Tensor, b: Tensor
) -> tuple[Tensor, Tensor]:
    r"""z = x + Q R tanh(R̃ Qᵀ x + b) and log |det ∂z/∂x| = Σ_m log(1 + h'(ã_m) R̃_mm R_mm).

    Shared by the layer (one set of parameters) and amortized posteriors (parameters per
    example): x (N, D); q (D, M) or (N, D, M) with orthonormal columns; r, r_tilde (M, M) or
    (N, M, M) upper triangular with R_mm R̃_mm > -1; b (M,) or (N, M).
    """
    pre = _vecmat(_vecmat(x, q), r_tilde.transpose(-1, -2)) + b
    h, dh = _tanh_and_derivative(pre)
    z = x + _vecmat(_vecmat(h, r.transpose(-1, -2)), q.transpose(-1, -2))
    diag = torch.diagonal(r, dim1=-2, dim2=-1) * torch.diagonal(r_tilde, dim1=-2, dim2=-1)
    return z, torch.log1p(dh * diag).sum(-1)


def orthonormal_columns(raw: Tensor) -> Tensor:
    r"""The Q factor of a thin QR of raw (..., D, M), M ≤ D, signs fixed so diag(R_qr) > 0:
    a smooth map onto matrices with QᵀQ = I_M, batched over the leading dimensions."""
    q, r = torch.linalg.qr(raw, mode="reduced")
    sign = torch.where(torch.diagonal(r, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(q)
    return q * sign.unsqueeze(-2)


def upper_triangular(raw: Tensor, raw_diag: Tensor) -> Tensor:
    r"""Upper-triangular (..., M, M): the strict upper part of raw and tanh(raw_diag) (..., M)
    on the diagonal, so |R_mm| < 1 and any two such matrices have R_mm R̃_mm > -1."""
    return raw.triu(1) + torch.diag_embed(torch.tanh(raw_diag))


class Planar(Transform):
    r"""Planar flow z = x + û tanh(wᵀx + b) (Rezende & Mohamed 2015; Book §4.1, §5.4.2).

    By the matrix determinant lemma,

        log |det ∂z/∂x| = log |1 + h'(wᵀx + b) wᵀû|,    h' = 1 - tanh² ∈ (0, 1].

    Invertibility: the map is invertible iff wᵀû ≥ -1. It is enforced by projecting the raw u,

        û = u + (m(wᵀu) - wᵀu) w / |w|²,    m(a) = -1 + softplus(a),

    so that wᵀû = m(wᵀu) > -1 and 1 + h' wᵀû = tanh² + h' softplus(wᵀu) > 0 (computed in that
    cancellation-free form).

    Inverse: with a = wᵀx, wᵀz = a + wᵀû tanh(a + b), a strictly increasing scalar equation whose
    root lies in [wᵀz - |wᵀû|, wᵀz + |wᵀû|]; then x = z - û tanh(a + b).

    Args:
        dim: D.
    """

    event_dim = 1
    volume_preserving = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.w = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.u = nn.Parameter(torch.randn(dim) / math.sqrt(dim))
        self.b = nn.Parameter(torch.zeros(()))

    def u_hat(self) -> tuple[Tensor, Tensor]:
        """(û, softplus(wᵀu)); wᵀû = -1 + softplus(wᵀu) > -1."""
        wu = self.w @ self.u
        sp = F.softplus(wu)
        u_hat = self.u + (sp - 1.0 - wu) * self.w / (self.w @ self.w)
        return u_hat, sp

    def _logabsdet(self, a: Tensor, sp: Tensor) -> Tensor:
        h, dh = _tanh_and_derivative(a)
        return torch.log(h * h + dh * sp)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        u_hat, sp = self.u_hat()
        a = x @ self.w + self.b
        z = x + torch.tanh(a).unsqueeze(1) * u_hat
        return z, self._logabsdet(a, sp)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        u_hat, sp = self.u_hat()
        wu_hat = sp - 1.0  # = wᵀû
        target = z @ self.w

        def fn(v: Tensor) -> tuple[Tensor, Tensor]:
            h, dh = _tanh_and_derivative(v + self.b)
            return v + wu_hat * h, 1.0 + wu_hat * dh

        radius = wu_hat.detach().abs().expand_as(target)
        proj = _solve_increasing(fn, target, target - radius, target + radius)
        a = proj + self.b
        x = z - torch.tanh(a).unsqueeze(1) * u_hat
        return x, -self._logabsdet(a, sp)


class Radial(Transform):
    r"""Radial flow z = x + β h(r) (x - x0), h(r) = 1 / (α + r), r = |x - x0|
    (Rezende & Mohamed 2015; Book §4.1, §5.4.2).

    The Jacobian is (1 + βh) I + β h'(r) r e eᵀ with e = (x - x0) / r, so

        log |det ∂z/∂x| = (D - 1) log(1 + βh) + log(1 + βh + β h' r),    h' = -1 / (α + r)².

    Invertibility: α > 0 and β ≥ -α, enforced by α = softplus(α̃) and β = -α + softplus(β̃).
    With s = softplus(β̃) the two factors are, in cancellation-free form,

        1 + βh = (s + r) / (α + r) > 0,    1 + βh + β h' r = (r (2α + r) + α s) / (α + r)² > 0.

    Inverse: z - x0 = (1 + βh(r)) (x - x0) is parallel to x - x0, and ρ = |z - x0| = r (s + r) /
    (α + r) is strictly increasing in r. This scalar equation is the quadratic
    r² + (s - ρ) r - α ρ = 0, whose non-negative root is taken in closed form (in the stable
    branch of the quadratic formula, so no solver is needed), then x = x0 + (z - x0) / (1 + βh).

    Args:
        dim: D.
    """

    event_dim = 1
    volume_preserving = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.x0 = nn.Parameter(torch.randn(dim))
        self.alpha_raw = nn.Parameter(torch.zeros(()))
        self.beta_raw = nn.Parameter(torch.zeros(()))

    def alpha_beta(self) -> tuple[Tensor, Tensor]:
        """(α, β) with α > 0 and β ≥ -α."""
        alpha = F.softplus(self.alpha_raw)
        return alpha, F.softplus(self.beta_raw) - alpha

    def _scale_and_logabsdet(self, r: Tensor) -> tuple[Tensor, Tensor]:
        """(1 + βh(r), log |det ∂z/∂x|) at radius r."""
        alpha, s = F.softplus(self.alpha_raw), F.softplus(self.beta_raw)
        ar = alpha + r
        scale = (s + r) / ar
        radial = (r * (2.0 * alpha + r) + alpha * s) / (ar * ar)
        return scale, (self.dim - 1) * torch.log(scale) + torch.log(radial)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        diff = x - self.x0
        scale, logabsdet = self._scale_and_logabsdet(torch.linalg.vector_norm(diff, dim=1))
        return self.x0 + scale.unsqueeze(1) * diff, logabsdet

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        alpha, s = F.softplus(self.alpha_raw), F.softplus(self.beta_raw)
        diff = z - self.x0
        rho = torch.linalg.vector_norm(diff, dim=1)
        p = rho - s  # r² - p r - α ρ = 0
        root = torch.sqrt(p * p + 4.0 * alpha * rho)
        # p ≥ 0: (p + root) / 2 adds positives; p < 0: the equal 2αρ / (root - p) does.
        r = torch.where(p >= 0, 0.5 * (p + root), 2.0 * alpha * rho / (root - p))
        scale, logabsdet = self._scale_and_logabsdet(r)
        return self.x0 + diff / scale.unsqueeze(1), -logabsdet


class Sylvester(Transform):
    r"""Sylvester flow z = x + Q R h(R̃ Qᵀ x + b), h = tanh (van den Berg et al. 2018;
    Book §5.4.2 "Sylvester flows").

    Q is D x M with orthonormal columns (M ≤ D), R and R̃ are M x M upper triangular, b ∈ R^M.
    By Sylvester's determinant identity, with ã = R̃ Qᵀ x + b,

        log |det ∂z/∂x| = log |det(I_M + diag(h'(ã)) R̃ R)| = Σ_m log |1 + h'(ã_m) R̃_mm R_mm|,

    since diag(h') R̃ R is upper triangular. Invertibility: the map is invertible if
    R_mm R̃_mm > -1 / sup h' = -1 for every m; as in the paper's code the diagonals are
    R_mm = tanh(ρ_m), R̃_mm = tanh(ρ̃_m) (raw ρ, ρ̃ unconstrained), so |R_mm R̃_mm| < 1 and every
    factor 1 + h' R̃_mm R_mm lies in (0, 2). The strict off-diagonals are unconstrained.

    Variants of Q (``variant``):
        "orthogonal": M = ``num_ortho`` ≤ D columns, Q = the Q factor of a thin QR decomposition
            of an unconstrained D x M matrix, with column signs fixed so that diag(R_qr) > 0
            (the unique, smooth QR). This is orthonormal to rounding error at every step and
            differentiable (torch.linalg.qr has a backward for M ≤ D), where the paper's
            iterative Björck orthogonalization is only approximately orthogonal, needs a
            spectral-norm rescaling to converge and a stopping tolerance; the paper prefers it
            for amortized, batched Q on GPUs, which this unamortized layer does not need.
        "householder": M = D, Q = H_K ... H_1 a product of K = ``num_reflections`` Householder
            reflections (:class:`~dgm.core.transforms.householder.Householder`).
        "triangular": M = D, Q = I, or the reversal permutation when ``reverse`` is set;
            alternate ``reverse`` between stacked layers so that the triangular structure
            does not always favour the same coordinates.

    Inverse: with v = Qᵀ x, y = Qᵀ z satisfies y = v + R h(R̃ v + b), and the orthogonal
    complement passes unchanged: z - Q y = x - Q v. Since R, R̃ are upper triangular, v is found by
    back substitution, m = M, ..., 1: with c_m = Σ_{k>m} R̃_mk v_k + b_m,

        v_m + R_mm tanh(R̃_mm v_m + c_m) = y_m - Σ_{k>m} R_mk tanh(ã_k),

    a strictly increasing scalar equation (derivative 1 + R_mm R̃_mm h' > 0) whose root is within
    |R_mm| < 1 of the right-hand side; then x = z - Q (y - v).

    Args:
        dim: D.
        num_ortho: M, only for "orthogonal" (default D); other variants have M = D.
        variant: "orthogonal", "householder" or "triangular".
        num_reflections: K for "householder" (default D).
        reverse: use the reversal permutation as Q in "triangular".
    """

    event_dim = 1
    volume_preserving = False

    def __init__(
        self,
        dim: int,
        num_ortho: int | None = None,
        variant: str = "orthogonal",
        *,
        num_reflections: int | None = None,
        reverse: bool = False,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ConfigError(f"dim must be >= 1, got {dim}")
        if variant not in SYLVESTER_VARIANTS:
            raise ConfigError(f"variant must be one of {SYLVESTER_VARIANTS}, got {variant!r}")
        if variant == "orthogonal":
            m = dim if num_ortho is None else num_ortho
            if not 1 <= m <= dim:
                raise ConfigError(f"num_ortho must be in [1, {dim}], got {num_ortho}")
        else:
            if num_ortho not in (None, dim):
                raise ConfigError(f"variant {variant!r} has num_ortho = dim = {dim}")
            m = dim
        if num_reflections is not None and variant != "householder":
            raise ConfigError("num_reflections is only for variant 'householder'")
        if reverse and variant != "triangular":
            raise ConfigError("reverse is only for variant 'triangular'")
        self.dim, self.num_ortho, self.variant, self.reverse = dim, m, variant, reverse
        if variant == "orthogonal":
            self.q_raw = nn.Parameter(torch.randn(dim, m) / math.sqrt(dim))
        elif variant == "householder":
            self.householder = Householder(dim, dim if num_reflections is None else num_reflections)
        else:
            eye = torch.eye(dim)
            self.register_buffer("q_fixed", eye.flip(1) if reverse else eye)
        self.r_raw = nn.Parameter(torch.randn(m, m) * 0.1 / math.sqrt(m))
        self.r_tilde_raw = nn.Parameter(torch.randn(m, m) * 0.1 / math.sqrt(m))
        self.r_diag_raw = nn.Parameter(torch.rand(m) * 2.0 - 1.0)
        self.r_tilde_diag_raw = nn.Parameter(torch.rand(m) * 2.0 - 1.0)
        self.b = nn.Parameter(torch.zeros(m))

    def orthogonal_matrix(self) -> Tensor:
        """Q, D x M with QᵀQ = I_M."""
        if self.variant == "orthogonal":
            return orthonormal_columns(self.q_raw)
        if self.variant == "householder":
            return householder_matrix(self.householder.vectors)
        return self.q_fixed

    def triangular_matrices(self) -> tuple[Tensor, Tensor]:
        """(R, R̃), upper triangular with diagonals tanh(ρ), tanh(ρ̃)."""
        r = upper_triangular(self.r_raw, self.r_diag_raw)
        rt = upper_triangular(self.r_tilde_raw, self.r_tilde_diag_raw)
        return r, rt

    def _logabsdet(self, pre: Tensor, r: Tensor, rt: Tensor) -> Tensor:
        _, dh = _tanh_and_derivative(pre)
        return torch.log1p(dh * (torch.diagonal(r) * torch.diagonal(rt))).sum(1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(x, self.dim, "x")
        r, rt = self.triangular_matrices()
        return sylvester_map(x, self.orthogonal_matrix(), r, rt, self.b)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        check_flat(z, self.dim, "z")
        q = self.orthogonal_matrix()
        r, rt = self.triangular_matrices()
        y = z @ q
        # v_k and tanh(ã_k) for the k > m solved so far, in order k = m + 1, ..., M.
        v_after = y.new_zeros(y.shape[0], 0)
        h_after = y.new_zeros(y.shape[0], 0)
        for m in range(self.num_ortho - 1, -1, -1):
            c_m = v_after @ rt[m, m + 1:] + self.b[m]
            target = y[:, m] - h_after @ r[m, m + 1:]
            r_mm, rt_mm = r[m, m], rt[m, m]

            def fn(
                vm: Tensor, c_m: Tensor = c_m, r_mm: Tensor = r_mm, rt_mm: Tensor = rt_mm
            ) -> tuple[Tensor, Tensor]:
                h, dh = _tanh_and_derivative(rt_mm * vm + c_m)
                return vm + r_mm * h, 1.0 + r_mm * rt_mm * dh

            radius = r_mm.detach().abs().expand_as(target)
            v_m = _solve_increasing(fn, target, target - radius, target + radius)
            v_after = torch.cat([v_m.unsqueeze(1), v_after], 1)
            h_after = torch.cat([torch.tanh(rt_mm * v_m + c_m).unsqueeze(1), h_after], 1)
        vs = v_after
        pre = vs @ rt.T + self.b
        x = z - (y - vs) @ q.T
        return x, -self._logabsdet(pre, r, rt)
