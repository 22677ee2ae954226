r"""What a model that classifies is scored by, beside its likelihood (Book ch. 6; deck 003):
the error, the expected calibration error, and how well a score tells in- from
out-of-distribution inputs.

- error: the share of examples whose most probable class is wrong;
- expected calibration error (Naeini et al. 2015; Guo et al. 2017): the confidences
  max_k p(k | x) fall into ``bins`` equal-width bins B_b, and
  ECE = Σ_b |B_b| / N · |accuracy(B_b) - confidence(B_b)|;
- AUROC of an out-of-distribution score (higher = more in-distribution: log p(x), or the max
  softmax of Hendrycks & Gimpel 2017): the probability that a random in-distribution example
  scores above a random out-of-distribution one, ties counting one half (Mann-Whitney U).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.core.spec import DataSpec
from dgm.data.dataset import Split

__all__ = ["error_rate", "expected_calibration_error", "auroc", "ood_sets",
           "ClassificationResult", "evaluate_classifier"]


def error_rate(logits: Tensor, y: Tensor) -> float:
    """The share of rows of ``logits`` (N, K) whose argmax is not ``y`` (N,)."""
    return float((logits.argmax(-1) != y.to(logits.device)).double().mean())


def expected_calibration_error(logits: Tensor, y: Tensor, bins: int = 15) -> float:
    """ECE of the softmax of ``logits`` (N, K) against labels ``y`` with ``bins`` equal bins."""
    probs = torch.softmax(logits.double(), -1)
    confidence, guess = probs.max(-1)
    correct = (guess == y.to(guess.device)).double()
    index = (confidence * bins).long().clamp_max(bins - 1)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add(0, index.cpu(), confidence.cpu())
    acc_sum = torch.zeros(bins, dtype=torch.float64).index_add(0, index.cpu(), correct.cpu())
    return float((conf_sum - acc_sum).abs().sum() / len(y))


def auroc(in_scores: Tensor, out_scores: Tensor) -> float:
    """P(score of an in-distribution example > that of an out-of-distribution one), ties 1/2."""
    a, b = in_scores.double().reshape(-1).cpu(), out_scores.double().reshape(-1).cpu()
    both = torch.cat([a, b])
    order = both.argsort()
    ranks = torch.empty_like(both)
    ranks[order] = torch.arange(1, len(both) + 1, dtype=torch.float64)
    # ties share the average rank
    values, inverse, counts = torch.unique(both, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(values), dtype=torch.float64).index_add(0, inverse, ranks)
    ranks = (sums / counts)[inverse]
    u = ranks[: len(a)].sum() - len(a) * (len(a) + 1) / 2
    return float(u / (len(a) * len(b)))


def ood_sets(x: Tensor, spec: DataSpec, seed: int = 0) -> dict[str, Tensor]:
    """Out-of-distribution inputs as many as x: ``noise`` (uniform over the levels on discrete
    data, N(0, I) on continuous data) and, for images, ``flipped`` (x upside down)."""
    gen = torch.Generator().manual_seed(seed)
    if spec.kind.is_discrete:
        noise = torch.randint(0, int(spec.num_levels or 2), x.shape, generator=gen)
    else:
        noise = torch.randn(x.shape, generator=gen)
    out = {"noise": noise.to(x.dtype)}
    if len(spec.event_shape) == 3:
        out["flipped"] = x.flip(-2)
    return out


@dataclass(frozen=True)
class ClassificationResult:
    """A classifying model on a labelled split: ``error``, ``ece`` and, per OOD set, the AUROC
    of log p(x) (None where the likelihood is not normalized) and of the max softmax."""

    split: str
    n: int
    error: float
    ece: float
    auroc_log_p: dict[str, float | None]
    auroc_softmax: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        ood = "; ".join(
            f"{name}: log p(x) {_fmt(self.auroc_log_p.get(name))}, max softmax "
            f"{self.auroc_softmax[name]:.3f}" for name in self.auroc_softmax)
        return (f"{self.split}: error {100 * self.error:.2f}%, ECE {self.ece:.4f} (15 bins); "
                f"OOD AUROC against {ood} [n={self.n}]")


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


@torch.no_grad()
def evaluate_classifier(model: GenerativeModel, split: Split, *, split_name: str = "test",
                        batch_size: int = 1024, seed: int = 0) -> ClassificationResult:
    """Error, calibration and OOD AUROC of a model with ``class_log_probs`` on ``split``."""
    if not hasattr(model, "class_log_probs"):
        raise ConfigError(f"{type(model).__name__} does not classify")
    spec = model.spec
    x, y = split.all(spec)
    if y is None or bool((y < 0).any()):
        raise ConfigError(f"the {split_name} split has no labels for every example")
    normalized = model.likelihood_on(spec.kind) not in (Likelihood.NONE,
                                                        Likelihood.UNNORMALIZED)
    was_training = model.training
    model.eval()

    def scores(data: Tensor) -> tuple[Tensor, Tensor | None]:
        logits, log_p = [], []
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size].to(model.device)
            logits.append(model.class_log_probs(batch).double().cpu())  # type: ignore[operator]
            if normalized:
                log_p.append(model.log_prob(batch).double().cpu())
        return torch.cat(logits), torch.cat(log_p) if normalized else None

    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            logits, log_p = scores(x)
            by_softmax: dict[str, float] = {}
            by_log_p: dict[str, float | None] = {}
            soft_in = logits.exp().max(-1).values
            for name, x_out in ood_sets(x, spec, seed).items():
                out_logits, out_log_p = scores(x_out)
                by_softmax[name] = auroc(soft_in, out_logits.exp().max(-1).values)
                by_log_p[name] = None if log_p is None else auroc(log_p, out_log_p)
    finally:
        model.train(was_training)
    return ClassificationResult(split_name, len(y), error_rate(logits, y),
                                expected_calibration_error(logits, y), by_log_p, by_softmax)
