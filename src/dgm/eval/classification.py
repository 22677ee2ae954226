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

import torch
from torch import Tensor

__all__ = ["error_rate", "expected_calibration_error", "auroc"]


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
