"""The validation score that early stopping and best weights follow (``train.monitor``).

- A likelihood method (``exact``, ``elbo``, ``iwae``, ...; ``auto`` picks the model's natural
  one): mean nats per validation example, labelled by the evaluator's vocabulary.
- ``objective``: the mean training loss on the validation split in eval mode, labelled as a
  training objective (for models without a normalized likelihood, e.g. an EBM or a GAN; it is
  not a likelihood and never shown as one).
- ``fd`` / ``kid``: a sample-quality score of ``train.monitor_samples`` samples against the
  validation split (:mod:`dgm.eval.quality`), lower is better.
- ``error``: the classification error on the labelled validation split, for any model with a
  ``classify(x) -> (N,)`` method (a classifier read as a generative model, e.g. JEM); not a
  likelihood.
- ``mmd``: the unbiased MMD² (Gaussian kernel, median-heuristic bandwidth of the validation
  split; :func:`dgm.eval.quality.mmd`) between the validation split and
  ``train.monitor_samples`` samples, lower is better: a sample-quality score for any model
  with ``sample`` on continuous, low-dimensional data (2-D toys, which have no feature net for
  ``fd`` / ``kid``). Family-agnostic: it only calls ``model.sample(n, generator=g)``.

``auto`` on a model with no normalized likelihood falls back to ``objective``; a model that
declares ``default_monitor`` (the hybrid: ``objective``, its λ-weighted joint loss) gets that.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import Classifies
from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind
from dgm.data.dataset import Dataset, Split
from dgm.eval.likelihood import method_label, per_example_nll, resolve_method

__all__ = ["Monitor", "resolve_monitor", "QUALITY_MONITORS", "ERROR_MONITOR"]

QUALITY_MONITORS = ("fd", "kid")
ERROR_MONITOR = "error"


@dataclass(frozen=True)
class Monitor:
    """A named, labelled validation score (lower is better)."""

    name: str
    label: str
    score: Callable[[GenerativeModel, Split], float]


@contextmanager
def _eval_mode(model: GenerativeModel) -> Iterator[None]:
    """The model in eval mode for the block, its training flag restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _likelihood_monitor(method: str, k: int, batch_size: int, seed: int) -> Callable:
    def score(model: GenerativeModel, split: Split) -> float:
        nll = per_example_nll(model, split, method=method, k=k, batch_size=batch_size, seed=seed)
        return float(nll.mean())

    return score


def _objective_monitor(batch_size: int, seed: int) -> Callable:
    @torch.no_grad()
    def score(model: GenerativeModel, split: Split) -> float:
        total, count = 0.0, 0
        with _eval_mode(model), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(split), batch_size):
                x, y = split.batch(slice(start, start + batch_size), model.spec)
                x = x.to(model.device)
                y = None if y is None else y.to(model.device)
                total += float(model.loss(x, y).double().sum())
                count += x.shape[0]
        return total / max(1, count)

    return score


def _quality_monitor(metric: str, dataset: Dataset, samples: int, seed: int) -> Callable:
    from dgm.eval.quality import sample_quality

    def score(model: GenerativeModel, split: Split) -> float:
        result = sample_quality(model, dataset, metrics=(metric,), n=samples, split="val",
                                seed=seed)
        return float(getattr(result, metric))

    return score


def _error_monitor(batch_size: int) -> Callable:
    @torch.no_grad()
    def score(model: GenerativeModel, split: Split) -> float:
        wrong, count = 0, 0
        with _eval_mode(model):
            for start in range(0, len(split), batch_size):
                x, y = split.batch(slice(start, start + batch_size), model.spec)
                if y is None:
                    raise ConfigError("train.monitor error needs a labelled validation split")
                predicted = model.classify(x.to(model.device))
                wrong += int((predicted.cpu() != y.cpu()).sum())
                count += x.shape[0]
        return wrong / max(1, count)

    return score


MMD_MONITOR = "mmd"


def _mmd_monitor(samples: int, seed: int, batch_size: int) -> Callable:
    from dgm.eval.quality import mmd

    @torch.no_grad()
    def score(model: GenerativeModel, split: Split) -> float:
        real, _ = split.batch(slice(None), model.spec)
        generator = torch.Generator(device=model.device).manual_seed(seed)
        with _eval_mode(model):
            fake = torch.cat([
                model.sample(min(batch_size, samples - start), generator=generator).cpu()
                for start in range(0, samples, batch_size)])
        if not bool(torch.isfinite(fake).all()):
            return math.inf  # a diverged model is never the best
        return mmd(real.cpu().flatten(1).double(), fake.flatten(1).double()).value

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
    if name == "auto":  # a model may declare its own (a hybrid: its weighted objective)
        name = getattr(model, "default_monitor", None) or (
            resolve_method(model, "auto") if normalized else "objective")
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
    if name == MMD_MONITOR:
        if model.spec.kind is not DataKind.CONTINUOUS:
            raise ConfigError(
                f"train.monitor mmd is for continuous data; {model.spec.kind.value} data: "
                f"choose fd or kid (images with a feature net) or a likelihood"
            )
        return Monitor(
            MMD_MONITOR,
            f"MMD² of {samples} samples to the validation split (sample quality)",
            _mmd_monitor(samples, seed, batch_size),
        )
    if name == ERROR_MONITOR:
        if not isinstance(model, Classifies):
            raise ConfigError(
                f"train.monitor error needs a model with a classify method; "
                f"{type(model).__name__} has none"
            )
        if model.spec.num_classes is None:
            raise ConfigError("train.monitor error needs labelled data")
        return Monitor(
            ERROR_MONITOR,
            "classification error on the validation split (not a likelihood)",
            _error_monitor(batch_size),
        )
    try:
        method = resolve_method(model, name)
    except ConfigError as e:
        raise ConfigError(
            f"train.monitor: {e}; or choose objective, {', '.join(QUALITY_MONITORS)}, "
            f"{MMD_MONITOR}, {ERROR_MONITOR}"
        ) from None
    return Monitor(method, method_label(model, method, k), _likelihood_monitor(
        method, k, batch_size, seed))
