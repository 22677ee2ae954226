r"""Sample quality: how close a model's samples are to held-out data, with no download.

Images are compared in the feature space of the library's own classifier for the dataset
(:mod:`dgm.eval.features`); with real features X = {x_i}_{i=1}^N and generated ones
Y = {y_j}_{j=1}^M:

- ``fd``, the Fréchet distance between Gaussians fitted to X and Y (Heusel et al. 2017):
  FD = ||μ_X - μ_Y||² + Tr(Σ_X + Σ_Y - 2 (Σ_X Σ_Y)^{1/2}), computed in float64 by
  torchmetrics' ``FrechetInceptionDistance`` with our feature network.
- ``kid``, the kernel distance (Bińkowski et al. 2018): the unbiased estimate of MMD² with the
  cubic kernel k(a, b) = (aᵀb / F + 1)³ (F the feature dimension), averaged over random
  subsets, with a standard error (:func:`kernel_distance`).
- ``pr``, precision and recall on k-NN manifolds (Kynkäänniemi et al. 2019, k = 3): the real
  manifold is the union of balls B(x_i, NND_k(x_i)), the radius being the distance to the k-th
  nearest other real point; precision is the fraction of Y inside it, recall the fraction of X
  inside the generated manifold built the same way from Y.
- ``dc``, density and coverage (Naeem et al. 2020, k = 5): density
  = 1/(kM) Σ_j Σ_i 1[y_j ∈ B(x_i, NND_k(x_i))] (about 1 when Y is distributed as X, above 1
  where Y crowds the real modes); coverage = 1/N Σ_i 1[∃ j: y_j ∈ B(x_i, NND_k(x_i))].
- ``acc``, for class-conditional models: the feature network's classifier accuracy on samples
  drawn for given labels (:func:`conditional_accuracy`).

2-D toys are compared directly:

- ``mmd``: the unbiased MMD² with a Gaussian kernel exp(-||a - b||² / (2σ²)), σ by the median
  heuristic (the median distance between pairs of real points; Gretton et al. 2012), with a
  standard error.
- ``loglik``: the mean log-density of the generated points under the toy's own density, where
  it is known in closed form: ``eight_gaussians`` and ``two_gaussians`` (Gaussian mixtures).
  ``checkerboard``'s density is known too (:func:`toy_log_prob`) but is 0 off the board, so one
  stray sample makes its mean -inf; it is left out of the metric. ``moons``, ``circles`` and
  ``swissroll`` are noise smeared along a curve with no closed form.

The error bars of ``kid`` and ``mmd`` are jackknife standard errors of the unbiased MMD²
estimate (the two-sample delete-one jackknife of Arvesen 1969, computed in closed form from
kernel row sums). By the Efron-Stein inequality the jackknife variance is biased upwards, so
the bar does not understate the sampling error, even when the two distributions are equal and
the estimate's first-order variance vanishes. For KID over subsets it is the standard error of
the estimate from one subset (root-mean-square over subsets): averaging several subsets can
only lower the error, so it is conservative; when the subsets are the whole sets (sets of at
most ``subset_size``, the default for digits) it is exactly the error of the reported value.
The standard deviation over subsets, which some libraries report, is not an error bar of the
mean: the subsets overlap, and it does not shrink as they get more numerous.

References:
    Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium, 2017, arXiv:1706.08500.
    Bińkowski et al., Demystifying MMD GANs, 2018, arXiv:1801.01401.
    Kynkäänniemi et al., Improved Precision and Recall Metric for Assessing Generative Models,
    2019, arXiv:1904.06991.
    Naeem et al., Reliable Fidelity and Diversity Metrics for Generative Models, 2020,
    arXiv:2002.09797.
    Gretton et al., A Kernel Two-Sample Test, JMLR 2012.
    Arvesen, Jackknifing U-statistics, Ann. Math. Statist. 1969.
    Efron & Stein, The Jackknife Estimate of Variance, Ann. Statist. 1981.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from dgm.core.base import GenerativeModel
from dgm.core.errors import ConfigError, DataError
from dgm.core.spec import DataKind, DataSpec
from dgm.data import Dataset, load
from dgm.eval.features import FeatureNet, feature_net, feature_net_names, feature_net_ready

__all__ = [
    "QualityResult",
    "quality_ready",
    "Estimate",
    "MMDEstimate",
    "PrecisionRecall",
    "DensityCoverage",
    "IMAGE_METRICS",
    "TOY_METRICS",
    "TOY_LOG_DENSITIES",
    "frechet_distance",
    "kernel_distance",
    "precision_recall",
    "density_coverage",
    "mmd",
    "median_bandwidth",
    "toy_log_prob",
    "conditional_accuracy",
    "compare",
    "sample_quality",
]

IMAGE_METRICS = {
    "fd": "Fréchet distance in feature space",
    "kid": "kernel distance (unbiased MMD², cubic kernel) with a standard error",
    "pr": "precision and recall on k-NN manifolds (k=3)",
    "dc": "density and coverage (k=5)",
    "acc": "classifier accuracy on class-conditional samples",
}
TOY_METRICS = {
    "mmd": "MMD² with a Gaussian kernel (median heuristic) with a standard error",
    "loglik": "mean log-density of the samples under the toy's own density",
}
_DEFAULT_IMAGE = ("fd", "kid", "pr", "dc")

# Rows of a distance or kernel block computed at once: keeps a block near 64 MB in float64.
_BLOCK_ENTRIES = 8_000_000


@dataclass(frozen=True)
class Estimate:
    """A number and its standard error."""

    value: float
    stderr: float


@dataclass(frozen=True)
class MMDEstimate:
    """An MMD² estimate, its standard error and the Gaussian kernel's bandwidth σ."""

    value: float
    stderr: float
    bandwidth: float


@dataclass(frozen=True)
class PrecisionRecall:
    """k-NN precision (fidelity) and recall (diversity), both in [0, 1]."""

    precision: float
    recall: float


@dataclass(frozen=True)
class DensityCoverage:
    """Density (about 1 for matching distributions) and coverage (in [0, 1])."""

    density: float
    coverage: float


@dataclass(frozen=True)
class QualityResult:
    """Sample-quality scores of one generated set against one real set.

    A metric that was not asked for is ``None``. Distances (fd, kid, mmd) are 0 for identical
    distributions; precision, recall and coverage lie in [0, 1]; density is about 1 for
    matching distributions.

    Attributes:
        dataset: the dataset's name.
        split: the real split compared against.
        n_real: number of real examples.
        n_fake: number of generated examples.
        feature_net: the feature network's tag (dataset and sha256 prefix); None for toys.
        fd: Fréchet distance.
        kid, kid_stderr: KID and its standard error.
        precision, recall: k-NN precision and recall (k = ``k_pr``).
        density, coverage: density and coverage (k = ``k_dc``).
        accuracy: classifier accuracy on class-conditional samples.
        mmd, mmd_stderr: MMD² with a Gaussian kernel and its standard error.
        mmd_bandwidth: the kernel's σ (median heuristic on the real set).
        log_likelihood: mean log-density of the generated points under the toy's density (nats).
        log_likelihood_stderr: its standard error (std / sqrt(n)).
        log_likelihood_real: the same mean over the real points, for scale.
    """

    dataset: str
    split: str
    n_real: int
    n_fake: int
    feature_net: str | None = None
    fd: float | None = None
    kid: float | None = None
    kid_stderr: float | None = None
    precision: float | None = None
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    accuracy: float | None = None
    mmd: float | None = None
    mmd_stderr: float | None = None
    mmd_bandwidth: float | None = None
    log_likelihood: float | None = None
    log_likelihood_stderr: float | None = None
    log_likelihood_real: float | None = None
    k_pr: int = 3
    k_dc: int = 5

    def line(self) -> str:
        """The scores on one labelled line."""
        parts = []
        if self.fd is not None:
            parts.append(f"FD {self.fd:.3f}")
        if self.kid is not None:
            parts.append(f"KID {self.kid:.5f} ± {self.kid_stderr:.5f}")
        if self.precision is not None:
            parts.append(f"precision {self.precision:.3f}  recall {self.recall:.3f}")
        if self.density is not None:
            parts.append(f"density {self.density:.3f}  coverage {self.coverage:.3f}")
        if self.accuracy is not None:
            parts.append(f"class accuracy {self.accuracy:.3f}")
        if self.mmd is not None:
            sigma = f"σ {self.mmd_bandwidth:.3g}"
            parts.append(f"MMD² {self.mmd:.5f} ± {self.mmd_stderr:.5f} ({sigma})")
        if self.log_likelihood is not None:
            parts.append(
                f"log p_toy {self.log_likelihood:.3f} ± {self.log_likelihood_stderr:.3f} "
                f"(real {self.log_likelihood_real:.3f}) nats"
            )
        source = f", features {self.feature_net}" if self.feature_net else ""
        sets = f"{self.n_fake} samples vs {self.n_real} {self.dataset} {self.split}{source}"
        return "  ".join(parts) + f"  [{sets}]"

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON-ready (unasked metrics are null)."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Helpers


def _check_sets(real: Tensor, fake: Tensor, least: int, what: str) -> None:
    for name, x in (("real", real), ("generated", fake)):
        if x.dim() != 2:
            raise DataError(f"{what}: {name} sets must have shape (N, F), got {tuple(x.shape)}")
        if x.shape[0] < least:
            raise DataError(f"{what} needs at least {least} {name} examples, got {x.shape[0]}")
    if real.shape[1] != fake.shape[1]:
        raise DataError(
            f"{what}: real and generated features differ in width: {real.shape[1]} vs "
            f"{fake.shape[1]}"
        )


def _block_size(cols: int) -> int:
    """Rows of a (rows, cols) block that fit in ``_BLOCK_ENTRIES``."""
    return max(1, _BLOCK_ENTRIES // max(cols, 1))


def _sq_dists(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_j||², (A, B), float64; exactly 0 for equal rows."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    na, nb = a.square().sum(1, keepdim=True), b.square().sum(1)
    d2 = (na + nb - 2 * a @ b.T).clamp_min(0)
    # ||a||² + ||b||² - 2aᵀb leaves rounding of order 1e-16 ||a||² for equal rows; snap it to 0
    # so that a point lies inside its own zero-radius ball (duplicates in the data).
    return torch.where(d2 <= 1e-12 * (na + nb), torch.zeros_like(d2), d2)


# ---------------------------------------------------------------------------------------------
# Fréchet distance


class _Precomputed(nn.Module):
    """The identity on features that are already computed, sized for torchmetrics."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    r"""Fréchet distance between Gaussians fitted to two feature sets.

    FD = ||μ_r - μ_f||² + Tr(Σ_r + Σ_f - 2 (Σ_r Σ_f)^{1/2}) with unbiased covariances, in
    float64 (torchmetrics' ``FrechetInceptionDistance``, fed our features).

    Args:
        real: (N, F) features of real examples, N >= 2.
        fake: (M, F) features of generated examples, M >= 2.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    _check_sets(real, fake, 2, "the Fréchet distance")
    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]))
    metric.update(real.to(torch.float64), real=True)
    metric.update(fake.to(torch.float64), real=False)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------
# MMD² (KID and the toys' Gaussian-kernel MMD)


Kernel = Callable[[Tensor, Tensor], Tensor]


def _cubic_kernel(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3


def _gaussian_kernel(bandwidth: float) -> Kernel:
    def k(a: Tensor, b: Tensor) -> Tensor:
        return torch.exp(-_sq_dists(a, b) / (2 * bandwidth**2))

    return k


def _row_sums(a: Tensor, b: Tensor, kernel: Kernel, *, same: bool) -> tuple[Tensor, Tensor]:
    """Row and column sums of K = kernel(a, b), block by block; the diagonal left out if
    ``same`` (then a is b)."""
    rows = torch.zeros(a.shape[0], dtype=torch.float64)
    cols = torch.zeros(b.shape[0], dtype=torch.float64)
    step = _block_size(b.shape[0])
    for i in range(0, a.shape[0], step):
        block = kernel(a[i : i + step], b).to(torch.float64)
        if same:
            idx = torch.arange(block.shape[0])
            block[idx, i + idx] = 0
        rows[i : i + step] = block.sum(1)
        cols += block.sum(0)
    return rows, cols


def _mmd2_jackknife(x: Tensor, y: Tensor, kernel: Kernel) -> Estimate:
    r"""Unbiased MMD² of two samples and its delete-one jackknife standard error.

    MMD²_u = A / (m(m-1)) + B / (n(n-1)) - 2C / (mn), with A = Σ_{i≠i'} k(x_i, x_i'),
    B = Σ_{j≠j'} k(y_j, y_j'), C = Σ_{i,j} k(x_i, y_j) (Gretton et al. 2012, Eq. 3). Leaving
    x_i out removes 2 r_i from A (r_i its off-diagonal row sum) and c_i from C (its cross row
    sum), so each leave-one-out value is O(1) from the row sums; the two-sample jackknife
    variance is (m-1)/m Σ_i (θ_{-i} - θ̄_x)² + (n-1)/n Σ_j (θ_{-j} - θ̄_y)² (Arvesen 1969).
    """
    m, n = x.shape[0], y.shape[0]
    rx, _ = _row_sums(x, x, kernel, same=True)
    ry, _ = _row_sums(y, y, kernel, same=True)
    cx, cy = _row_sums(x, y, kernel, same=False)
    a, b, c = rx.sum(), ry.sum(), cx.sum()
    xx, yy = a / (m * (m - 1)), b / (n * (n - 1))
    value = xx + yy - 2 * c / (m * n)
    without_x = (a - 2 * rx) / ((m - 1) * (m - 2)) + yy - 2 * (c - cx) / ((m - 1) * n)
    without_y = xx + (b - 2 * ry) / ((n - 1) * (n - 2)) - 2 * (c - cy) / (m * (n - 1))
    var = (m - 1) / m * (without_x - without_x.mean()).square().sum()
    var = var + (n - 1) / n * (without_y - without_y.mean()).square().sum()
    return Estimate(float(value), float(var.sqrt()))


def kernel_distance(
    real: Tensor,
    fake: Tensor,
    *,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> Estimate:
    r"""KID: the unbiased MMD² with the cubic kernel k(a, b) = (aᵀb / F + 1)³, over subsets.

    Each of ``subsets`` draws takes min(subset_size, N) real and min(subset_size, M) generated
    features without replacement and computes MMD²_u; KID is their mean (Bińkowski et al. 2018).
    When both sets are no larger than ``subset_size`` every draw is the whole set, so one is
    computed. The standard error is the root-mean-square over subsets of each subset's
    jackknife standard error (module docstring: conservative for the mean over subsets, exact
    when the subsets are the whole sets).

    Args:
        real: (N, F) real features, N >= 3.
        fake: (M, F) generated features, M >= 3.
        subsets: number of subset draws.
        subset_size: examples per subset from each set.
        generator: seeds the subset draws.
    """
    _check_sets(real, fake, 3, "KID")
    if subsets < 1 or subset_size < 3:
        raise ConfigError(
            f"KID needs subsets >= 1 and subset_size >= 3, got {subsets} and {subset_size}"
        )
    real, fake = real.to(torch.float64), fake.to(torch.float64)
    m, n = min(subset_size, len(real)), min(subset_size, len(fake))
    if m == len(real) and n == len(fake):
        return _mmd2_jackknife(real, fake, _cubic_kernel)
    draws = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=generator)[:m]]
        y = fake[torch.randperm(len(fake), generator=generator)[:n]]
        draws.append(_mmd2_jackknife(x, y, _cubic_kernel))
    value = sum(d.value for d in draws) / len(draws)
    stderr = math.sqrt(sum(d.stderr**2 for d in draws) / len(draws))
    return Estimate(value, stderr)


def median_bandwidth(real: Tensor, max_points: int = 2000) -> float:
    """The median heuristic: the median distance between pairs of distinct real points.

    Uses the first ``max_points`` points (the toys' points are in random order).
    """
    x = real[:max_points].to(torch.float64)
    d2 = _sq_dists(x, x)
    upper = torch.triu_indices(len(x), len(x), offset=1)
    return float(d2[upper[0], upper[1]].median().sqrt())


def mmd(real: Tensor, fake: Tensor, *, bandwidth: float | None = None) -> MMDEstimate:
    r"""Unbiased MMD² with a Gaussian kernel k(a, b) = exp(-||a - b||² / (2σ²)).

    Args:
        real: (N, D) real points, N >= 3.
        fake: (M, D) generated points, M >= 3.
        bandwidth: σ; default :func:`median_bandwidth` of ``real``.

    Returns:
        The estimate with its jackknife standard error, and σ.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> a, b = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
        >>> same, shifted = mmd(a, b), mmd(a, b + 2)
        >>> abs(same.value) < 2 * same.stderr, shifted.value > 10 * shifted.stderr
        (True, True)
    """
    _check_sets(real, fake, 3, "MMD")
    sigma = median_bandwidth(real) if bandwidth is None else float(bandwidth)
    if not sigma > 0:
        raise DataError(f"MMD needs a positive bandwidth, got {sigma} (all real points equal?)")
    estimate = _mmd2_jackknife(real.double(), fake.double(), _gaussian_kernel(sigma))
    return MMDEstimate(estimate.value, estimate.stderr, sigma)


# ---------------------------------------------------------------------------------------------
# Precision, recall, density, coverage


def _kth_neighbour_sq_radius(x: Tensor, k: int) -> Tensor:
    """Squared distance of each point to its k-th nearest other point, (N,)."""
    if x.shape[0] <= k:
        raise DataError(f"k-NN radii with k={k} need more than {k} points, got {x.shape[0]}")
    out = torch.empty(x.shape[0], dtype=torch.float64)
    step = _block_size(x.shape[0])
    for i in range(0, x.shape[0], step):
        # The point itself is at distance 0: the (k+1)-th smallest is the k-th other point.
        out[i : i + step] = _sq_dists(x[i : i + step], x).kthvalue(k + 1, dim=1).values
    return out


def _balls_containing(points: Tensor, centers: Tensor, sq_radii: Tensor) -> Tensor:
    """For each point, how many balls B(center_i, radius_i) contain it, (P,) long."""
    out = torch.empty(points.shape[0], dtype=torch.long)
    step = _block_size(centers.shape[0])
    for i in range(0, points.shape[0], step):
        out[i : i + step] = (_sq_dists(points[i : i + step], centers) <= sq_radii).sum(1)
    return out


def _covered(centers: Tensor, sq_radii: Tensor, points: Tensor) -> Tensor:
    """For each center, whether its ball contains at least one point, (C,) bool."""
    out = torch.empty(centers.shape[0], dtype=torch.bool)
    step = _block_size(points.shape[0])
    for i in range(0, centers.shape[0], step):
        nearest = _sq_dists(centers[i : i + step], points).min(1).values
        out[i : i + step] = nearest <= sq_radii[i : i + step]
    return out


def precision_recall(real: Tensor, fake: Tensor, *, k: int = 3) -> PrecisionRecall:
    r"""Precision and recall on k-NN manifolds (Kynkäänniemi et al. 2019).

    precision = 1/M Σ_j 1[∃ i: ||y_j - x_i|| <= NND_k(x_i)], recall the same with the roles of
    the real x and generated y swapped.

    Args:
        real: (N, F) real features, N > k.
        fake: (M, F) generated features, M > k.
        k: the neighbour that sets each ball's radius.
    """
    _check_sets(real, fake, k + 1, "precision and recall")
    r_real = _kth_neighbour_sq_radius(real, k)
    r_fake = _kth_neighbour_sq_radius(fake, k)
    precision = (_balls_containing(fake, real, r_real) > 0).double().mean()
    recall = (_balls_containing(real, fake, r_fake) > 0).double().mean()
    return PrecisionRecall(float(precision), float(recall))


def density_coverage(real: Tensor, fake: Tensor, *, k: int = 5) -> DensityCoverage:
    r"""Density and coverage (Naeem et al. 2020).

    density = 1/(kM) Σ_j Σ_i 1[y_j ∈ B(x_i, NND_k(x_i))],
    coverage = 1/N Σ_i 1[∃ j: y_j ∈ B(x_i, NND_k(x_i))].

    Args:
        real: (N, F) real features, N > k.
        fake: (M, F) generated features, M >= 1.
        k: the neighbour that sets each real ball's radius.
    """
    _check_sets(real, fake, 1, "density and coverage")
    r_real = _kth_neighbour_sq_radius(real, k)
    density = _balls_containing(fake, real, r_real).double().sum() / (k * fake.shape[0])
    coverage = _covered(real, r_real, fake).double().mean()
    return DensityCoverage(float(density), float(coverage))


# ---------------------------------------------------------------------------------------------
# Toy densities


def _log_gaussian_mixture(x: Tensor, centers: Tensor, std: float) -> Tensor:
    """log (1/K) Σ_k N(x | c_k, std² I) for 2-D x, (N,)."""
    x = x.to(torch.float64)
    d2 = (x.unsqueeze(1) - centers.unsqueeze(0)).square().sum(-1)  # (N, K)
    log_normal = -d2 / (2 * std**2) - math.log(2 * math.pi * std**2)
    return torch.logsumexp(log_normal, dim=1) - math.log(centers.shape[0])


def _eight_gaussians(x: Tensor) -> Tensor:
    # Eight N(3 (cos θ_k, sin θ_k), 0.3² I), θ_k = 2πk/8, equal weights (dgm.data.toys).
    angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    centers = 3.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return _log_gaussian_mixture(x, centers, 0.3)


def _two_gaussians(x: Tensor) -> Tensor:
    # N((±2, 0), 0.5² I), equal weights (dgm.data.toys).
    centers = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    return _log_gaussian_mixture(x, centers, 0.5)


def _checkerboard(x: Tensor) -> Tensor:
    # Uniform on the 8 squares of side 2 in [-4, 4)² whose cell indices floor(x/2) have an even
    # sum (dgm.data.toys): density 1 / (8 * 4) on them, 0 elsewhere.
    u = x.to(torch.float64) / 2
    on_board = ((u >= -2) & (u < 2)).all(1)
    even = (torch.floor(u).sum(1) % 2) == 0
    inside = on_board & even
    return torch.where(inside, torch.full_like(u[:, 0], -math.log(32.0)), -torch.inf)


TOY_LOG_DENSITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "eight_gaussians": _eight_gaussians,
    "two_gaussians": _two_gaussians,
    "checkerboard": _checkerboard,
}
# Toys whose mean log-density is a usable score (checkerboard's is -inf for one stray point).
_LOGLIK_TOYS = ("eight_gaussians", "two_gaussians")


def toy_log_prob(name: str, x: Tensor) -> Tensor:
    """log p(x) under the 2-D toy ``name``'s own density, (N,) float64, in nats.

    Known for eight_gaussians, two_gaussians and checkerboard (-inf off its squares).
    """
    if name not in TOY_LOG_DENSITIES:
        raise ConfigError(
            f"no closed-form density for toy {name!r}; known: {', '.join(TOY_LOG_DENSITIES)}"
        )
    if x.dim() != 2 or x.shape[1] != 2:
        raise DataError(f"toy points must have shape (N, 2), got {tuple(x.shape)}")
    return TOY_LOG_DENSITIES[name](x)


# ---------------------------------------------------------------------------------------------
# Class-conditional accuracy


def conditional_accuracy(samples: Tensor, labels: Tensor, net: FeatureNet) -> float:
    """Fraction of class-conditional samples that ``net``'s classifier assigns their label.

    Args:
        samples: (N, *event_shape) examples in the data's own space, drawn for ``labels``.
        labels: (N,) the labels the samples were drawn for.
        net: the dataset's feature network (its classifier head is used).
    """
    if labels.shape != (samples.shape[0],):
        raise DataError(
            f"labels must have shape ({samples.shape[0]},) to match the samples, got "
            f"{tuple(labels.shape)}"
        )
    return float((net.predict(samples) == labels.to(torch.long)).double().mean())


# ---------------------------------------------------------------------------------------------
# Front ends


def _is_toy(spec: DataSpec) -> bool:
    return spec.kind is DataKind.CONTINUOUS and spec.event_shape == (2,)


def quality_ready(name: str, spec: DataSpec) -> bool:
    """Whether samples of dataset ``name`` can be scored now, with no feature network to train
    first: 2-D toy data, or images whose network is shipped or cached."""
    return _is_toy(spec) or (spec.is_image and feature_net_ready(name))


def _resolve_metrics(name: str, spec: DataSpec, metrics: Sequence[str] | None) -> tuple[str, ...]:
    """Check the metric names against the data; the defaults when ``metrics`` is None."""
    if _is_toy(spec):
        valid, other = TOY_METRICS, IMAGE_METRICS
        default = ("mmd", "loglik") if name in _LOGLIK_TOYS else ("mmd",)
    elif spec.is_image and name in feature_net_names():
        valid, other, default = IMAGE_METRICS, TOY_METRICS, _DEFAULT_IMAGE
    else:
        raise DataError(
            f"sample quality needs an image dataset with a feature network "
            f"({', '.join(feature_net_names())}) or 2-D toy data; {name} has "
            f"{spec.kind.value} examples of shape {spec.event_shape}"
        )
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    chosen = tuple(default if metrics is None else metrics)
    kind = "2-D toy" if valid is TOY_METRICS else "image"
    for m in chosen:
        if m not in valid:
            hint = f" ({m} is for {'image' if m in IMAGE_METRICS else '2-D toy'} data)"
            raise ConfigError(
                f"unknown metric {m!r} for {kind} data{hint if m in other else ''}; choose "
                f"from {', '.join(valid)}"
            )
    if "loglik" in chosen and name not in _LOGLIK_TOYS:
        raise ConfigError(
            f"loglik needs a toy with a closed-form density of full support "
            f"({', '.join(_LOGLIK_TOYS)}); {name} has none"
        )
    if not chosen:
        raise ConfigError(f"no metrics chosen; choose from {', '.join(valid)}")
    return chosen


def compare(
    real: Tensor,
    fake: Tensor,
    *,
    dataset: str,
    spec: DataSpec,
    metrics: Sequence[str] | None = None,
    split: str = "test",
    seed: int = 0,
    net: FeatureNet | None = None,
    labels: Tensor | None = None,
) -> QualityResult:
    """Score a generated set against a real set of the same data.

    Args:
        real: (N, *event_shape) real examples in the data's own space.
        fake: (M, *event_shape) generated examples in the same space.
        dataset: the dataset's name (chooses the feature network or the toy density).
        spec: the data spec; both sets are validated against it.
        metrics: names from ``IMAGE_METRICS`` or ``TOY_METRICS`` (a list, or one
            comma-separated string such as ``"fd,kid,pr"``); None for the defaults (images:
            fd, kid, pr, dc; toys: mmd, and loglik where the density is known).
        split: the real split's name, for the record.
        seed: seeds KID's subset draws.
        net: the feature network (default :func:`~dgm.eval.features.feature_net` of
            ``dataset``).
        labels: (M,) the labels ``fake`` was drawn for; needed by ``acc``.

    Example:
        >>> data = load("digits")
        >>> x = data.test.all(data.spec)[0]
        >>> r = compare(x, x, dataset="digits", spec=data.spec, metrics=["fd", "pr"])
        >>> abs(r.fd) < 1e-6, r.precision, r.recall
        (True, 1.0, 1.0)
    """
    chosen = _resolve_metrics(dataset, spec, metrics)
    spec.validate(real, "real examples")
    spec.validate(fake, "generated examples")
    base = QualityResult(dataset=dataset, split=split, n_real=len(real), n_fake=len(fake))
    if _is_toy(spec):
        return _compare_toy(real, fake, chosen, base)
    if "acc" in chosen and labels is None:
        raise ConfigError("the acc metric needs the labels the samples were drawn for")
    net = net or feature_net(dataset)
    fields: dict[str, Any] = {"feature_net": net.tag}
    f_real, f_fake = net.embed(real), net.embed(fake)
    if "fd" in chosen:
        fields["fd"] = frechet_distance(f_real, f_fake)
    if "kid" in chosen:
        generator = torch.Generator().manual_seed(seed)
        kid = kernel_distance(f_real, f_fake, generator=generator)
        fields.update(kid=kid.value, kid_stderr=kid.stderr)
    if "pr" in chosen:
        fields.update(asdict(precision_recall(f_real, f_fake, k=base.k_pr)))
    if "dc" in chosen:
        fields.update(asdict(density_coverage(f_real, f_fake, k=base.k_dc)))
    if "acc" in chosen:
        fields["accuracy"] = conditional_accuracy(fake, labels, net)
    return QualityResult(**{**asdict(base), **fields})


def _compare_toy(
    real: Tensor, fake: Tensor, chosen: tuple[str, ...], base: QualityResult
) -> QualityResult:
    fields: dict[str, Any] = {}
    if "mmd" in chosen:
        e = mmd(real, fake)
        fields.update(mmd=e.value, mmd_stderr=e.stderr, mmd_bandwidth=e.bandwidth)
    if "loglik" in chosen:
        log_p = toy_log_prob(base.dataset, fake)
        fields.update(
            log_likelihood=float(log_p.mean()),
            log_likelihood_stderr=float(log_p.std() / math.sqrt(len(log_p))),
            log_likelihood_real=float(toy_log_prob(base.dataset, real).mean()),
        )
    return QualityResult(**{**asdict(base), **fields})


@torch.no_grad()
def _draw(
    model: GenerativeModel, n: int, labels: Tensor | None, batch_size: int, seed: int
) -> Tensor:
    """``n`` samples in batches from one seeded generator, in eval mode, on the CPU."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    was_training = model.training
    model.eval()
    try:
        parts = []
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            y = None if labels is None else labels[i : i + b].to(model.device)
            parts.append(model.sample(b, y=y, generator=generator).cpu())
    finally:
        model.train(was_training)
    return torch.cat(parts)


def sample_quality(
    model: GenerativeModel,
    dataset: Dataset | str,
    *,
    metrics: Sequence[str] | None = None,
    n: int | None = None,
    split: str = "test",
    seed: int = 0,
    batch_size: int = 1000,
) -> QualityResult:
    """Draw ``n`` samples from ``model`` and score them against a split of ``dataset``.

    Samples come from ``model.sample(b, y=..., generator=g)`` in batches of ``batch_size`` with
    one generator seeded by ``seed``; the real set is the whole split. With the ``acc`` metric
    the samples are drawn for the split's labels (repeated to ``n``), and every metric is then
    computed on those class-balanced samples.

    Args:
        model: a trained model of ``dataset``'s data.
        dataset: the Dataset, or a name for :func:`dgm.data.load`.
        metrics: metric names (see :func:`compare`); None for the defaults of the data.
        n: number of samples; default the split's size.
        split: train, val or test.
        seed: seeds the samples and KID's subsets.
        batch_size: samples drawn per call of ``model.sample``.
    """
    data = load(dataset) if isinstance(dataset, str) else dataset
    chosen = _resolve_metrics(data.name, data.spec, metrics)
    part = data.split(split)
    n = len(part) if n is None else n
    if n < 1 or batch_size < 1:
        raise ConfigError(f"n and batch_size must be >= 1, got n={n}, batch_size={batch_size}")
    # A seeded generator: a dynamically binarized split draws the same real pixels every time.
    real, y_real = part.batch(slice(None), data.spec, torch.Generator().manual_seed(seed))
    labels = None
    if "acc" in chosen:
        if y_real is None:
            raise DataError(f"the acc metric needs labels; {data.name} {split} has none")
        labels = y_real[torch.arange(n) % len(y_real)]
    fake = _draw(model, n, labels, batch_size, seed)
    return compare(
        real, fake, dataset=data.name, spec=data.spec, metrics=chosen, split=split, seed=seed,
        labels=labels,
    )
