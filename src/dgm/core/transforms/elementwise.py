"""Elementwise and per-channel transforms: standardization, logit, ActNorm, the invertible 1x1
convolution (Glow) and the squeeze."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.transforms.base import Transform, zeros_logabsdet

__all__ = ["ElementwiseAffine", "Logit", "ActNorm", "InvertibleLinear", "Squeeze"]


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
        return z.reshape(n, 4 * ch, h // 2, w // 2), zeros_logabsdet(x, 3)

    def inverse(self, z: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        n, ch4, h, w = z.shape
        if ch4 % 4:
            raise DataError(f"unsqueeze needs channels divisible by 4, got {ch4}")
        x = z.reshape(n, ch4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(n, ch4 // 4, 2 * h, 2 * w), zeros_logabsdet(z, 3)
