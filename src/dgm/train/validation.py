"""The validation score that early stopping and best weights follow (``train.monitor``).

- A likelihood method (``exact``, ``elbo``, ``iwae``, ...; ``auto`` picks the model's natural
  one): mean nats per validation example, labelled by the evaluator's vocabulary.
- ``objective``: the mean training loss on the validation split in eval mode, labelled as a
  training objective (for models without a normalized likelihood, e.g. an EBM or a GAN; it is
  not a likelihood and never shown as one).
- ``fd`` / ``kid``: a sample-quality score of ``train.monitor_samples`` samples against the
  validation split (:mod:`dgm.eval.quality`), lower is better.

``auto`` on a model with no normalized likelihood falls back to ``objective``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError
from dgm.data.dataset import Dataset, Split
from dgm.eval.likelihood import method_label, per_example_nll, resolve_method

__all__ = ["Monitor", "resolve_monitor", "QUALITY_MONITORS"]

QUALITY_MONITORS = ("fd", "kid")


@dataclass(frozen=True)
class Monitor:
    """A named, labelled validation score (lower is better)."""

    name: str
    label: str
    score: Callable[[GenerativeModel, Split], float]


def _likelihood_monitor(method: str, k: int, batch_size: int, seed: int) -> Callable:
    def score(model: GenerativeModel, split: Split) -> float:
        nll = per_example_nll(model, split, method=method, k=k, batch_size=batch_size, seed=seed)
        return float(nll.mean())

    return score


def _objective_monitor(batch_size: int, seed: int) -> Callable:
    @torch.no_grad()
    def score(model: GenerativeModel, split: Split) -> float:
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for start in range(0, len(split), batch_size):
                    x, y = split.batch(slice(start, start + batch_size), model.spec)
                    x = x.to(model.device)
                    y = None if y is None else y.to(model.device)
                    total += float(model.loss(x, y).double().sum())
                    count += x.shape[0]
        finally:
            model.train(was_training)
        return total / max(1, count)

    return score


def _quality_monitor(metric: str, dataset: Dataset, samples: int, seed: int) -> Callable:
    from dgm.eval.quality import sample_quality

    def score(model: GenerativeModel, split: Split) -> float:
        result = sample_quality(model, dataset, metrics=(metric,), n=samples, split="val",
                                seed=seed)
        return float(getattr(result, metric))

    return score


def resolve_monitor(
    model: GenerativeModel,
    name: str,
    dataset: Dataset,
    *,
    k: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    samples: int = 1000,
) -> Monitor:
    """The :class:`Monitor` for ``train.monitor = name`` (see the module docstring)."""
    normalized = model.likelihood_on(model.spec.kind) not in (
        Likelihood.NONE,
        Likelihood.UNNORMALIZED,
    )
    if name == "auto":
        name = resolve_method(model, "auto") if normalized else "objective"
    if name == "objective":
        return Monitor(
            "objective",
            "validation objective (the training loss in eval mode; not a likelihood)",
            _objective_monitor(batch_size, seed),
        )
    if name in QUALITY_MONITORS:
        label = {"fd": "Fréchet distance", "kid": "KID"}[name]
        return Monitor(
            name,
            f"{label} of {samples} samples to the validation split (sample quality)",
            _quality_monitor(name, dataset, samples, seed),
        )
    try:
        method = resolve_method(model, name)
    except ConfigError as e:
        raise ConfigError(
            f"train.monitor: {e}; or choose objective, {', '.join(QUALITY_MONITORS)}"
        ) from None
    return Monitor(method, method_label(model, method, k), _likelihood_monitor(
        method, k, batch_size, seed))
