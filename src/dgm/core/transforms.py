r"""Invertible transforms for normalizing flows: the base class, composition and coupling layers.

Direction convention (one for the whole library): a transform maps **data to latent**,

    forward(x, c=None) -> (z, logabsdet)      logabsdet = log |det ∂z/∂x|
    inverse(z, c=None) -> (x, logabsdet)      logabsdet = log |det ∂x/∂z|

so each method returns the log-determinant of *its own* Jacobian, one value per example, shape
(N,), and ``forward`` and ``inverse`` log-dets of matching points sum to zero. A flow density is
then the change of variables (Book §4.1.1-4.1.2, Eq. 4.14)

    log p(x) = log π(f(x)) + log |det J_f(x)|,     f = f_K ∘ ... ∘ f_1,

with the log-dets of the parts summed. ``c`` is an optional context (a condition) that
conditioners may read; transforms without conditioners ignore it.

Every transform declares ``event_dim`` (how many trailing dimensions form one event: 1 for the
flat vectors the coupling layers act on) and ``volume_preserving`` (|det J| = 1 everywhere),
which tests and :class:`Compose` read.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import made_network

__all__ = [
    "Transform",
    "Compose",
    "Inverse",
    "AffineCoupling",
    "Permutation",
    "ElementwiseAffine",
    "ActNorm",
    "InvertibleLinear",
    "MaskedAutoregressiveAffine",
    "Squeeze",
    "Householder",
    "Logit",
    "half_mask",
    "alternating_mask",
]


class Transform(nn.Module):
    """Base class of invertible maps x -> z with tractable log |det J|.

    Subclasses implement :meth:`forward` and :meth:`inverse`, each returning
    ``(output, logabsdet)`` with ``logabsdet`` of shape (N,) for a batch of N events.
    """

    event_dim: int = 1
    volume_preserving: bool = False

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Data to latent: ``(z, log |det ∂z/∂x|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define forward")

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Latent to data: ``(x, log |det ∂x/∂z|)``."""
        raise NotImplementedError(f"{type(self).__name__} does not define inverse")


def _zeros(x: Tensor, event_dim: int) -> Tensor:
    return x.new_zeros(x.shape[: x.dim() - event_dim])


class Compose(Transform):
    r"""Apply transforms in list order on ``forward`` and in reverse order on ``inverse``.

    ``Compose([t1, t2]).forward(x)`` is ``t2(t1(x))``, with log |det J| = Σ_k log |det J_k|
    (Eq. 4.14): the chain rule turns the product of Jacobian determinants into a sum of logs.

    Example:
        >>> from dgm.core.nn import mlp
        >>> flow = Compose([AffineCoupling(half_mask(4), mlp(2, 16, 4)), Permutation.reverse(4)])
        >>> x = torch.randn(3, 4)
        >>> z, logabsdet = flow(x)
        >>> x_back, inv_logabsdet = flow.inverse(z)
        >>> torch.allclose(x_back, x, atol=1e-6), torch.allclose(logabsdet, -inv_logabsdet)
        (True, True)
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        super().__init__()
        if len(transforms) == 0:
            raise ConfigError("Compose needs at least one transform")
        self.transforms = nn.ModuleList(transforms)
        self.event_dim = max(t.event_dim for t in transforms)
        self.volume_preserving = all(t.volume_preserving for t in transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Iterator[Transform]:
        return iter(self.transforms)  # type: ignore[arg-type]

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = _zeros(x, self.event_dim)
        for t in self.transforms:
            x, ld = t(x, c)
            logabsdet = logabsdet + ld
        return x, logabsdet

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logabsdet = _zeros(z, self.event_dim)
        for t in reversed(self.transforms):
            z, ld = t.inverse(z, c)
            logabsdet = logabsdet + ld
        return z, logabsdet


class Inverse(Transform):
    """The inverse of a transform: its ``forward`` is the wrapped ``inverse`` and vice versa."""

    def __init__(self, transform: Transform) -> None:
        super().__init__()
        self.transform = transform
        self.event_dim = transform.event_dim
        self.volume_preserving = transform.volume_preserving

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform.inverse(x, c)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.transform(z, c)


def half_mask(dim: int, *, first: bool = True) -> Tensor:
    """Boolean mask of length ``dim``: the first (or last) ⌈dim/2⌉ coordinates stay fixed."""
    mask = torch.arange(dim) < (dim + 1) // 2
    return mask if first else ~mask


def alternating_mask(dim: int, *, even: bool = True) -> Tensor:
    """Boolean mask of length ``dim`` that keeps the even (or odd) coordinates fixed."""
    mask = torch.arange(dim) % 2 == 0
    return mask if even else ~mask


def _check_flat(x: Tensor, dim: int, name: str) -> None:
    if x.dim() != 2 or x.shape[1] != dim:
        raise DataError(f"{name} must have shape (N, {dim}), got {tuple(x.shape)}")


class AffineCoupling(Transform):
    r"""Affine coupling layer on flat vectors (RealNVP; Book §4.1.3, Eq. 4.15-4.20).

    The mask splits x into a fixed part x_a (``mask`` True) and a transformed part x_b:

        z_a = x_a,    z_b = x_b ⊙ exp(s) + t,    (s̃, t) = conditioner([x_a, c]),
        s = α ⊙ tanh(s̃),    log |det ∂z/∂x| = Σ_j s_j.

    The Jacobian is triangular after reordering, so its determinant is the product of the
    scales. The tanh bounds every log-scale to (-α, α), which keeps exp(s) from overflowing;
    α is a per-coordinate factor, learnable when ``learn_scale_bound`` is set (as the book's
    tanh head with a learnable output scale). The inverse is x_b = (z_b - t) ⊙ exp(-s), with
    (s, t) computed from z_a = x_a.

    Args:
        mask: boolean (D,), True where the coordinate conditions the others and passes
            through unchanged. Halves (``half_mask``) give the book's split; alternating
            masks give a checkerboard on flat vectors. Both parts must be non-empty.
        conditioner: a module mapping (N, D_a + C) to (N, 2 D_b): raw log-scales then shifts,
            where D_a = mask.sum(), D_b = D - D_a and C is the context width (0 without one).
        scale_bound: initial α.
        learn_scale_bound: make α a parameter.
        affine: False gives NICE's additive coupling z_b = x_b + t (Dinh et al. 2015; Book
            §4.1.3): volume preserving, the conditioner outputs the D_b shifts only.
    """

    event_dim = 1

    def __init__(
        self,
        mask: Tensor,
        conditioner: nn.Module,
        *,
        scale_bound: float = 1.0,
        learn_scale_bound: bool = True,
        affine: bool = True,
    ) -> None:
        super().__init__()
        self.affine = affine
        self.volume_preserving = not affine
        mask = torch.as_tensor(mask, dtype=torch.bool)
        if mask.dim() != 1:
            raise ConfigError(f"mask must be 1-D, got shape {tuple(mask.shape)}")
        if bool(mask.all()) or not bool(mask.any()):
            raise ConfigError("mask must leave both parts non-empty")
        if scale_bound <= 0:
            raise ConfigError(f"scale_bound must be positive, got {scale_bound}")
        idx_a = torch.nonzero(mask).squeeze(1)
        idx_b = torch.nonzero(~mask).squeeze(1)
        self.dim = int(mask.numel())
        self.register_buffer("idx_a", idx_a)
        self.register_buffer("idx_b", idx_b)
        # [x_a, x_b][:, unsplit] puts every coordinate back in its place.
        self.register_buffer("unsplit", torch.argsort(torch.cat([idx_a, idx_b])))
        self.conditioner = conditioner
        bound = torch.full((idx_b.numel(),), float(scale_bound))
        if learn_scale_bound and affine:
            self.scale_bound = nn.Parameter(bound)
        else:
            self.register_buffer("scale_bound", bound)

    def _scale_shift(self, x_a: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
        h = x_a if c is None else torch.cat([x_a, c.reshape(c.shape[0], -1)], dim=1)
        if not self.affine:
            t = self.conditioner(h)
            return torch.zeros_like(t), t
        raw_s, t = self.conditioner(h).chunk(2, dim=1)
        return self.scale_bound * torch.tanh(raw_s), t

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "x")
        x_a, x_b = x[:, self.idx_a], x[:, self.idx_b]
        s, t = self._scale_shift(x_a, c)
        z_b = x_b * torch.exp(s) + t
        return torch.cat([x_a, z_b], dim=1)[:, self.unsplit], s.sum(dim=1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(z, self.dim, "z")
        z_a, z_b = z[:, self.idx_a], z[:, self.idx_b]
        s, t = self._scale_shift(z_a, c)
        x_b = (z_b - t) * torch.exp(-s)
        return torch.cat([z_a, x_b], dim=1)[:, self.unsplit], -s.sum(dim=1)


class Permutation(Transform):
    r"""Fixed reordering of the coordinates of flat vectors, z = x[:, π] (Book §4.1.3).

    A permutation matrix has |det| = 1, so both log-dets are zero. Use :meth:`reverse` for the
    book's flip and :meth:`random` for a fixed random order.
    """

    event_dim = 1
    volume_preserving = True

    def __init__(self, perm: Tensor) -> None:
        super().__init__()
        perm = torch.as_tensor(perm, dtype=torch.long)
        n = perm.numel()
        if perm.dim() != 1 or not torch.equal(torch.sort(perm).values, torch.arange(n)):
            raise ConfigError(f"perm must be a permutation of 0..{n - 1}, got {perm.tolist()}")
        self.register_buffer("perm", perm)
        self.register_buffer("inv_perm", torch.argsort(perm))

    @classmethod
    def reverse(cls, dim: int) -> "Permutation":
        """The flip x[:, ::-1], its own inverse."""
        return cls(torch.arange(dim - 1, -1, -1))

    @classmethod
    def random(cls, dim: int, *, generator: torch.Generator | None = None) -> "Permutation":
        """A fixed uniformly random order (drawn once, stored as a buffer)."""
        return cls(torch.randperm(dim, generator=generator))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.perm.numel(), "x")
        return x[:, self.perm], _zeros(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(z, self.perm.numel(), "z")
        return z[:, self.inv_perm], _zeros(z, 1)


class ElementwiseAffine(Transform):
    r"""Per-coordinate affine map z = (x - μ) ⊙ exp(-log σ), log |det ∂z/∂x| = -Σ log σ.

    With μ and σ the mean and standard deviation of the training data (set once by
    :meth:`fit`) this is the fixed standardization in front of a flow; its Jacobian is counted
    exactly, so the density stays a density of x. ``learnable=True`` makes μ and log σ
    parameters instead of buffers (an ActNorm-style layer).

    Args:
        event_shape: shape of one event; ``event_dim`` is its length.
        learnable: store μ and log σ as parameters.
    """

    def __init__(self, event_shape: Sequence[int], *, learnable: bool = False) -> None:
        super().__init__()
        shape = tuple(int(s) for s in event_shape)
        self.event_dim = len(shape)
        loc, log_scale = torch.zeros(shape), torch.zeros(shape)
        if learnable:
            self.loc = nn.Parameter(loc)
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("loc", loc)
            self.register_buffer("log_scale", log_scale)

    @torch.no_grad()
    def fit(self, x: Tensor, *, min_scale: float = 1e-3) -> None:
        """Set μ and σ to the per-coordinate mean and standard deviation of ``x`` (N, *event)."""
        if tuple(x.shape[1:]) != tuple(self.loc.shape):
            raise DataError(
                f"x must have shape (N, {', '.join(map(str, self.loc.shape))}), "
                f"got {tuple(x.shape)}"
            )
        x = x.to(self.loc.dtype)
        self.loc.copy_(x.mean(dim=0))
        self.log_scale.copy_(torch.log(x.std(dim=0).clamp_min(min_scale)))

    def _logabsdet(self, x: Tensor) -> Tensor:
        return (-self.log_scale.sum()).expand(x.shape[: x.dim() - self.event_dim])

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (x - self.loc) * torch.exp(-self.log_scale), self._logabsdet(x)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z * torch.exp(self.log_scale) + self.loc, -self._logabsdet(z)


class Logit(Transform):
    r"""Elementwise z = logit(α + (1 - 2α) x) for x in [0, 1] (the RealNVP paper's
    preprocessing, Dinh et al. 2017 §4.1).

    log |det ∂z/∂x| = Σ_d [log(1 - 2α) - log u_d - log(1 - u_d)],  u = α + (1 - 2α) x.
    The margin α keeps the edges of [0, 1] at a finite distance.

    Args:
        alpha: the margin, in [0, 0.5).
        event_dim: trailing dimensions of one event (1 for flat vectors).
    """

    def __init__(self, alpha: float = 0.05, *, event_dim: int = 1) -> None:
        super().__init__()
        if not 0.0 <= alpha < 0.5:
            raise ConfigError(f"alpha must be in [0, 0.5), got {alpha}")
        self.alpha = float(alpha)
        self.event_dim = event_dim

    def _logabsdet(self, u: Tensor) -> Tensor:
        ld = math.log(1.0 - 2.0 * self.alpha) - torch.log(u) - torch.log1p(-u)
        return ld.flatten(start_dim=ld.dim() - self.event_dim).sum(dim=-1)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = self.alpha + (1.0 - 2.0 * self.alpha) * x
        return torch.log(u) - torch.log1p(-u), self._logabsdet(u)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u = torch.sigmoid(z)
        return (u - self.alpha) / (1.0 - 2.0 * self.alpha), -self._logabsdet(u)


def _channel_view(t: Tensor, event_dim: int) -> Tensor:
    """A per-channel vector (C,) shaped to broadcast over events of ``event_dim`` dimensions:
    (C,) for flat vectors, (C, 1, 1) for (C, H, W) images."""
    return t.reshape(-1, *([1] * (event_dim - 1)))


def _positions(x: Tensor, event_dim: int) -> int:
    """How many positions share one channel's parameters: 1 for flat, H·W for images."""
    return math.prod(x.shape[x.dim() - event_dim + 1 :])


class ActNorm(Transform):
    r"""Per-channel affine map with data-dependent initialization (Glow; Kingma & Dhariwal 2018).

        z = (x - b) ⊙ exp(-log σ),      log |det ∂z/∂x| = -(H W) Σ_c log σ_c,

    with b and σ per channel (per coordinate for flat vectors), shared over the positions of an
    image. The first call of :meth:`forward` in training mode (or :meth:`initialize`) sets them
    to the mean and standard deviation of that batch, so the output starts standardized; after
    that they are ordinary parameters. A model should call :meth:`initialize` from its
    ``initialize_from_data`` (the trainer gives every process the same data there), so that
    the processes of a distributed run start alike.

    Args:
        channels: C.
        event_dim: 1 for flat vectors (N, C), 3 for images (N, C, H, W).
    """

    def __init__(self, channels: int, *, event_dim: int = 1) -> None:
        super().__init__()
        if event_dim not in (1, 3):
            raise ConfigError(f"event_dim must be 1 or 3, got {event_dim}")
        self.event_dim = event_dim
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))

    @torch.no_grad()
    def initialize(self, x: Tensor, *, min_scale: float = 1e-3) -> None:
        """Set b and σ from a batch x so that z has zero mean and unit variance per channel."""
        flat = x.transpose(0, 1).reshape(x.shape[1], -1)  # (C, N·positions)
        self.loc.copy_(flat.mean(dim=1))
        self.log_scale.copy_(torch.log(flat.std(dim=1).clamp_min(min_scale)))
        self.initialized.fill_(True)

    def _logabsdet(self, x: Tensor) -> Tensor:
        ld = -self.log_scale.sum() * _positions(x, self.event_dim)
        return ld.expand(x.shape[0])

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if self.training and not bool(self.initialized):
            self.initialize(x)
        loc = _channel_view(self.loc, self.event_dim)
        scale = _channel_view(self.log_scale, self.event_dim)
        return (x - loc) * torch.exp(-scale), self._logabsdet(x)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        loc = _channel_view(self.loc, self.event_dim)
        scale = _channel_view(self.log_scale, self.event_dim)
        return z * torch.exp(scale) + loc, -self._logabsdet(z)


class InvertibleLinear(Transform):
    r"""An invertible linear map of the channels in LU form: Glow's invertible 1x1 convolution.

        W = P L (U + diag(sign ⊙ exp(log|s|))),     log |det ∂z/∂x| = (H W) Σ_c log |s_c|,

    P a fixed permutation, L unit lower-triangular and U strictly upper-triangular (learned),
    s the learned diagonal, so the log-determinant costs O(C) instead of O(C³) (Kingma &
    Dhariwal 2018, §3.2). Flat vectors (N, C) are multiplied by W; images (N, C, H, W) get W
    at every pixel (a 1x1 convolution). Initialized from a random rotation.

    Args:
        channels: C.
        event_dim: 1 for flat vectors, 3 for images.
        generator: for the random initial rotation.
    """

    def __init__(
        self, channels: int, *, event_dim: int = 1, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        if event_dim not in (1, 3):
            raise ConfigError(f"event_dim must be 1 or 3, got {event_dim}")
        self.event_dim = event_dim
        q, _ = torch.linalg.qr(torch.randn(channels, channels, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        self.register_buffer("perm", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def weight(self) -> Tensor:
        """W (C, C)."""
        eye = torch.eye(self.lower.shape[0], dtype=self.lower.dtype, device=self.lower.device)
        lower = self.lower * self.lower_mask + eye
        upper = torch.triu(self.upper, 1) + torch.diag(self.sign * torch.exp(self.log_s))
        return self.perm @ lower @ upper

    def _multiply(self, x: Tensor, w: Tensor) -> Tensor:
        if self.event_dim == 1:
            return x @ w.T
        return torch.einsum("ij,njhw->nihw", w, x)

    def _logabsdet(self, x: Tensor) -> Tensor:
        return (self.log_s.sum() * _positions(x, self.event_dim)).expand(x.shape[0])

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._multiply(x, self.weight()), self._logabsdet(x)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._multiply(z, torch.linalg.inv(self.weight())), -self._logabsdet(z)


class MaskedAutoregressiveAffine(Transform):
    r"""A masked autoregressive affine layer on flat vectors: MAF (Papamakarios et al. 2017).

        z_d = (x_d - μ_d(x_{<d})) ⊙ exp(-α_d(x_{<d})),     log |det ∂z/∂x| = -Σ_d α_d,

    with (μ, α̃) from one MADE pass (:func:`~dgm.core.nn.made_network`) and α = a ⊙ tanh(α̃)
    bounded by ``scale_bound`` a. The density direction (``forward``) is one pass; sampling
    (``inverse``) is D passes, x_d = z_d exp(α_d) + μ_d, coordinate by coordinate. Wrapped in
    :class:`Inverse` it is an IAF layer (Kingma et al. 2016): one-pass sampling, sequential
    density.

    Args:
        dim: D.
        hidden: width of the MADE's hidden layers.
        num_hidden: number of hidden layers.
        scale_bound: a, the bound on |α_d|.
        generator: for the MADE's random degrees.
    """

    event_dim = 1

    def __init__(
        self,
        dim: int,
        hidden: int = 64,
        num_hidden: int = 2,
        *,
        scale_bound: float = 2.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if dim < 2:
            raise ConfigError(f"a masked autoregressive layer needs dim >= 2, got {dim}")
        if scale_bound <= 0:
            raise ConfigError(f"scale_bound must be positive, got {scale_bound}")
        self.dim = dim
        self.scale_bound = float(scale_bound)
        self.net = made_network(dim, 2, hidden, num_hidden, generator=generator)

    def _shift_log_scale(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x).reshape(x.shape[0], self.dim, 2)
        return out[..., 0], self.scale_bound * torch.tanh(out[..., 1])

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "x")
        mu, alpha = self._shift_log_scale(x)
        return (x - mu) * torch.exp(-alpha), -alpha.sum(dim=1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(z, self.dim, "z")
        x = torch.zeros_like(z)
        for d in range(self.dim):  # x_d needs x_{<d} only, which are final by now
            mu, alpha = self._shift_log_scale(x)
            x = x.clone()
            x[:, d] = z[:, d] * torch.exp(alpha[:, d]) + mu[:, d]
        _, alpha = self._shift_log_scale(x)
        return x, alpha.sum(dim=1)


class Squeeze(Transform):
    r"""Space-to-depth: (C, H, W) -> (4C, H/2, W/2), each 2x2 patch into the channels (RealNVP's
    squeeze, Dinh et al. 2017 §3.6; Book §4.1.6). A permutation of the coordinates, so
    log |det| = 0."""

    event_dim = 3
    volume_preserving = True

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, ch, h, w = x.shape
        if h % 2 or w % 2:
            raise DataError(f"squeeze needs an even height and width, got {h}x{w}")
        z = x.reshape(n, ch, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return z.reshape(n, 4 * ch, h // 2, w // 2), _zeros(x, 3)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, ch4, h, w = z.shape
        if ch4 % 4:
            raise DataError(f"unsqueeze needs channels divisible by 4, got {ch4}")
        x = z.reshape(n, ch4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, ch4 // 4, 2 * h, 2 * w), _zeros(z, 3)


class Householder(Transform):
    r"""A product of K Householder reflections, z = H_K ... H_1 x with H_k = I - 2 v_k v_kᵀ / |v_k|²
    (Tomczak & Welling 2016; Book §5.4.2.1). Each H_k is orthogonal and symmetric,
    so the map is volume preserving (log |det| = 0) and its inverse applies the reflections in
    the reverse order.

    Args:
        dim: D.
        num_reflections: K.
    """

    event_dim = 1
    volume_preserving = True

    def __init__(self, dim: int, num_reflections: int = 2) -> None:
        super().__init__()
        if num_reflections < 1:
            raise ConfigError(f"num_reflections must be >= 1, got {num_reflections}")
        self.dim = dim
        self.vectors = nn.Parameter(torch.randn(num_reflections, dim) / math.sqrt(dim))

    @staticmethod
    def _reflect(x: Tensor, v: Tensor) -> Tensor:
        return x - 2.0 * (x @ v).unsqueeze(1) * v / (v @ v)

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(x, self.dim, "x")
        for v in self.vectors:
            x = self._reflect(x, v)
        return x, _zeros(x, 1)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        _check_flat(z, self.dim, "z")
        for v in reversed(list(self.vectors)):
            z = self._reflect(z, v)
        return z, _zeros(z, 1)
