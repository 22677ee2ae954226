r"""One evaluator for every family: NLL in nats per example and bits per dimension, labelled.

Methods are a registry (:func:`register_method`); each says which models it applies to, how it
scores one batch and what its number is, in one label vocabulary (``kind``): ``exact``,
``upper_bound`` (a bound on the NLL), ``estimate`` (an estimate, with a standard error where the
estimator gives one); on continuous data ``density``, ``density_bound``, ``density_estimate``.
Built in:

- ``exact``: -log p(x) of a model whose ``likelihood_on(kind)`` is EXACT.
- ``elbo``: -ELBO, the mean of log importance weights (k draws per example, averaged; more draws
  lower the variance, not the bias). An upper bound on the NLL.
- ``iwae``: -log (1/k) Σ_i w_i, the importance-weighted bound (Burda et al. 2016; Book Eq. 5.32).
  Still an upper bound on the NLL in expectation, tighter with k, consistent as k -> ∞; labelled
  an estimate. For dequantized models the weights are p(x + u_i) with u_i ~ U[0,1)^D.
- ``bound``: -log_prob of a model whose bound is not importance-weighted
  (:class:`~dgm.core.capabilities.BoundedLikelihood`, e.g. a diffusion model's variational bound),
  averaged over k draws. It is never passed through IWAE's log-mean-exp, which would not be a
  bound of anything.
- ``estimate``: -log p̂(x) of a model whose likelihood is an estimate with an error bar
  (:class:`~dgm.core.capabilities.EstimatedLikelihood`: AIS, an ODE likelihood with a
  stochastic trace); the estimator's own standard error is reported beside the sampling one.

Bits per dimension are nats / (D ln 2) in the data's own discrete space. A continuous density
on continuous data is reported as a negative log-density ("density"), with no bits per dimension.

Token data (text, SMILES) are scored per token as well: the total nats over the scored tokens
(up to and including each sequence's end token, if the data has one), giving bits per token in
``bpd`` and the perplexity exp(nats per token); where the split knows how many characters each
example decodes to, bits per character = total nats / (characters ln 2) (Book §11.2.4 [X]).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import BoundedLikelihood, EstimatedLikelihood, ImportanceWeighted
from dgm.core.errors import ConfigError
from dgm.data.dataset import Split
from dgm.core.spec import DataKind

__all__ = [
    "Evaluation",
    "EvalMethod",
    "Scores",
    "evaluate",
    "bits_per_dim",
    "resolve_method",
    "register_method",
    "method_names",
    "method_label",
    "per_example_nll",
    "per_example_scores",
]

#: what a number is, by method kind, on discrete and on continuous data
CONTINUOUS_KIND = {"exact": "density", "upper_bound": "density_bound", "estimate": "density_estimate"}


@dataclass(frozen=True)
class Evaluation:
    """The result of scoring one split.

    ``kind`` is what the number is: "exact" (exact NLL), "upper_bound" (-ELBO or another
    bound), "estimate" (IWAE(k), AIS, an ODE likelihood), or on continuous data "density",
    "density_bound", "density_estimate" (negative log-density; no bits per dimension).
    ``stderr_nats`` is the standard error of the mean over examples; ``estimator_stderr_nats``
    (estimates only) that of the estimator itself, sqrt(Σ se_i² / N² + se_shared²), where
    se_shared is the error of a term common to every example (AIS's log Ẑ).
    """

    nll_nats: float
    bpd: float | None
    kind: str
    method: str
    label: str
    split: str
    n: int
    k: int | None
    stderr_nats: float
    median_nats: float
    dequantization: str | None
    seed: int
    perplexity: float | None = None  # token data: exp(nats per scored token)
    bits_per_char: float | None = None  # token data whose split counts characters
    estimator_stderr_nats: float | None = None
    nfe: float | None = None  # ODE likelihoods: mean function evaluations per solve

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        bpd = f"{self.bpd:.4f} bits/dim" if self.bpd is not None else "no bits/dim (continuous)"
        if self.perplexity is not None:
            bpd = f"{self.bpd:.4f} bits/token, perplexity {self.perplexity:.3f}"
            if self.bits_per_char is not None:
                bpd += f", {self.bits_per_char:.4f} bits/char"
        se = f"± {self.stderr_nats:.3f}"
        if self.estimator_stderr_nats is not None:
            se += f" (estimator ± {self.estimator_stderr_nats:.3f})"
        nfe = f" ({self.nfe:.0f} function evaluations per solve)" if self.nfe else ""
        return (
            f"{self.split}: {self.nll_nats:.3f} {se} nats/example{nfe}, {bpd} "
            f"[{self.label}; n={self.n}, median {self.median_nats:.3f}]"
        )


@dataclass(frozen=True)
class Scores:
    """Per-example negative log-likelihoods (or bounds, estimates), float64 (N,), and the
    estimator's standard error per example where the method gives one."""

    nll: Tensor
    stderr: Tensor | None = None
    note: str = ""
    nfe: float = 0.0
    shared_stderr: float = 0.0  # of a term common to every example (AIS's log Z)


BatchScorer = Callable[[Any, Tensor, "Tensor | None", int, int, torch.Generator], Scores]


@dataclass(frozen=True)
class EvalMethod:
    """One evaluation method.

    ``kind``: "exact", "upper_bound" or "estimate" (see :class:`Evaluation`).
    ``refusal(model)``: None if the method applies to the model, else why not (one sentence).
    ``score(model, x, y, k, chunk, generator)``: :class:`Scores` of one batch; ``chunk`` caps
    the importance samples held at once.
    ``label(model, k)``: what the number is, in words.
    ``default_k``: draws per example when the user gives none (None: the method takes no k).
    """

    name: str
    kind: str
    refusal: Callable[[GenerativeModel], str | None]
    score: BatchScorer
    label: Callable[[GenerativeModel, int], str]
    default_k: int | None = None


_METHODS: dict[str, EvalMethod] = {}


def register_method(method: EvalMethod) -> EvalMethod:
    """Add an evaluation method (a later family plugs its own in: AIS, an ODE likelihood)."""
    if method.name in _METHODS or method.name == "auto":
        raise RuntimeError(f"evaluation method {method.name!r} registered twice")
    if method.kind not in CONTINUOUS_KIND:
        raise RuntimeError(f"method kind must be one of {', '.join(CONTINUOUS_KIND)}")
    _METHODS[method.name] = method
    return method


def method_names() -> list[str]:
    """``auto`` and every registered method."""
    return ["auto", *_METHODS]


def bits_per_dim(nats_per_example: float, dim: int) -> float:
    """nats per example -> bits per dimension: nats / (D ln 2)."""
    return nats_per_example / (dim * math.log(2.0))


def _natural_method(model: GenerativeModel, kind: Likelihood) -> str:
    if kind is Likelihood.EXACT:
        return "exact"
    if kind is Likelihood.ESTIMATE:
        return "estimate"
    return "elbo" if isinstance(model, ImportanceWeighted) else "bound"


def resolve_method(model: GenerativeModel, method: str) -> str:
    """Map ``auto`` to the model's natural method and refuse methods the model cannot do."""
    if method != "auto" and method not in _METHODS:
        raise ConfigError(
            f"unknown method {method!r}; choose one of {', '.join(method_names())}"
        )
    kind = model.likelihood_on(model.spec.kind)
    if kind in (Likelihood.NONE, Likelihood.UNNORMALIZED):
        raise ConfigError(
            f"{type(model).__name__} has no normalized likelihood ({kind.value}); "
            "it cannot be scored in nats"
        )
    if method == "auto":
        method = _natural_method(model, kind)
    reason = _METHODS[method].refusal(model)
    if reason is not None:
        raise ConfigError(f"--method {method}: {reason}")
    return method


def method_label(model: GenerativeModel, method: str, k: int) -> str:
    """What ``method`` with ``k`` draws measures on ``model``, in words."""
    return _METHODS[resolve_method(model, method)].label(model, k)


# --- the built-in methods ----------------------------------------------------------------------


def _name(model: GenerativeModel) -> str:
    return type(model).__name__


def _target(model: GenerativeModel) -> str:
    return "negative log-density" if model.spec.kind is DataKind.CONTINUOUS else "NLL"


def _refuse_unless_exact(model: GenerativeModel) -> str | None:
    kind = model.likelihood_on(model.spec.kind)
    if kind is Likelihood.EXACT:
        return None
    better = "elbo or --method iwae" if isinstance(model, ImportanceWeighted) else "auto"
    return (f"{_name(model)} has no exact likelihood on {model.spec.kind.value} data "
            f"({kind.value}); use --method {better}")


def _refuse_unless_weighted(model: GenerativeModel) -> str | None:
    if isinstance(model, ImportanceWeighted):
        return None
    if isinstance(model, BoundedLikelihood):
        return (f"{_name(model)}'s bound ({model.bound_name()}) is not built from importance "
                "weights; IWAE's log-mean-exp of it would bound nothing. Use --method bound")
    kind = model.likelihood_on(model.spec.kind)
    if kind is Likelihood.EXACT:
        return f"{_name(model)} has an exact likelihood and no importance weights; use --method exact"
    return f"{_name(model)} has no importance weights (its likelihood is {kind.value}); use --method auto"


def _refuse_unless_bounded(model: GenerativeModel) -> str | None:
    if isinstance(model, BoundedLikelihood) and not isinstance(model, ImportanceWeighted):
        return None
    return f"{_name(model)} has no bound of its own kind; use --method auto"


def _refuse_unless_estimated(model: GenerativeModel) -> str | None:
    if isinstance(model, EstimatedLikelihood):
        return None
    return f"{_name(model)} gives no likelihood estimate with an error bar; use --method auto"


def _exact_scores(model: Any, x: Tensor, y: Tensor | None, k: int, chunk: int,
                  generator: torch.Generator) -> Scores:
    return Scores(-model.log_prob(x, y).double())


def _iwae_nll(
    model: Any, x: Tensor, y: Tensor | None, k: int, chunk: int, generator: torch.Generator
) -> Tensor:
    total = None
    done = 0
    while done < k:
        m = min(chunk, k - done)
        lse = torch.logsumexp(model.log_weights(x, m, y=y, generator=generator).double(), dim=0)
        total = lse if total is None else torch.logaddexp(total, lse)
        done += m
    return -(total - math.log(k))


def _elbo_nll(
    model: Any, x: Tensor, y: Tensor | None, k: int, chunk: int, generator: torch.Generator
) -> Tensor:
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    done = 0
    while done < k:
        m = min(chunk, k - done)
        total += model.log_weights(x, m, y=y, generator=generator).double().sum(0)
        done += m
    return -total / k


def _bound_scores(model: Any, x: Tensor, y: Tensor | None, k: int, chunk: int,
                  generator: torch.Generator) -> Scores:
    # The plain mean of k independent bounds: never a log-mean-exp.
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for _ in range(k):
        total += model.log_prob(x, y).double()
    return Scores(-total / k)


def _estimate_scores(model: Any, x: Tensor, y: Tensor | None, k: int, chunk: int,
                     generator: torch.Generator) -> Scores:
    est = model.log_prob_estimate(x, y, generator=generator)
    return Scores(-est.log_prob.double(), est.stderr.double(), est.note, est.nfe,
                  est.shared_stderr)


def _draws(k: int) -> str:
    return f"{k} draw{'s' if k > 1 else ''} per example"


register_method(EvalMethod(
    "exact", "exact", _refuse_unless_exact, _exact_scores,
    lambda m, k: "exact NLL" if m.spec.kind is not DataKind.CONTINUOUS
    else "negative log-density (continuous data)",
))
register_method(EvalMethod(
    "elbo", "upper_bound", _refuse_unless_weighted,
    lambda m, x, y, k, c, g: Scores(_elbo_nll(m, x, y, k, c, g)),
    lambda m, k: f"-ELBO, an upper bound on the {_target(m)} ({_draws(k)})",
    default_k=1,
))
register_method(EvalMethod(
    "iwae", "estimate", _refuse_unless_weighted,
    lambda m, x, y, k, c, g: Scores(_iwae_nll(m, x, y, k, c, g)),
    lambda m, k: f"IWAE({k}) estimate of the {_target(m)} (an upper bound in expectation)",
    default_k=1000,
))
register_method(EvalMethod(
    "bound", "upper_bound", _refuse_unless_bounded, _bound_scores,
    lambda m, k: f"-{m.bound_name()}, an upper bound on the {_target(m)} ({_draws(k)})",
    default_k=1,
))
register_method(EvalMethod(
    "estimate", "estimate", _refuse_unless_estimated, _estimate_scores,
    lambda m, k: f"estimate of the {_target(m)} with the estimator's standard error",
))


# --- scoring a split ---------------------------------------------------------------------------


@torch.no_grad()
def per_example_scores(
    model: GenerativeModel,
    split: Split,
    *,
    method: str = "auto",
    k: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    max_weights: int = 2**20,
) -> Scores:
    """:class:`Scores` of every example of ``split`` with ``method`` (seeded, eval mode).

    ``max_weights`` caps batch size x importance samples held at once: k up to thousands is
    evaluated in chunks of samples.
    """
    m = _METHODS[resolve_method(model, method)]
    if batch_size < 1 or k < 1:
        raise ConfigError(f"batch size and k must be >= 1, got {batch_size} and {k}")
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    nll, stderr, notes = [], [], []
    nfe = shared = 0.0
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(split), batch_size):
                x, y = split.batch(slice(start, start + batch_size), model.spec)
                x = x.to(device)
                y = None if y is None else y.to(device)
                chunk = max(1, min(k, max_weights // max(1, x.shape[0])))
                scores = m.score(model, x, y, k, chunk, generator)
                nll.append(scores.nll.cpu())
                if scores.stderr is not None:
                    stderr.append(scores.stderr.cpu())
                if scores.note and scores.note not in notes:
                    notes.append(scores.note)
                nfe += scores.nfe * x.shape[0]
                shared = max(shared, scores.shared_stderr)
    finally:
        model.train(was_training)
    total = torch.cat(nll)
    return Scores(total, torch.cat(stderr) if stderr else None, "; ".join(notes),
                  nfe / max(1, len(total)), shared)


def per_example_nll(
    model: GenerativeModel,
    split: Split,
    *,
    method: str = "auto",
    k: int = 1,
    batch_size: int = 1024,
    seed: int = 0,
    max_weights: int = 2**20,
) -> Tensor:
    """NLL (or its bound/estimate) of every example of ``split``, in nats, float64, shape (N,)."""
    return per_example_scores(model, split, method=method, k=k, batch_size=batch_size,
                              seed=seed, max_weights=max_weights).nll


def evaluate(
    model: GenerativeModel,
    split: Split,
    *,
    split_name: str = "test",
    method: str = "auto",
    k: int | None = None,
    batch_size: int = 1024,
    seed: int = 0,
) -> Evaluation:
    """Score ``split`` and label the number with what it is (see the module docstring)."""
    name = resolve_method(model, method)
    m = _METHODS[name]
    if k is None:
        k = m.default_k or 1
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    scores = per_example_scores(model, split, method=name, k=k, batch_size=batch_size,
                                seed=seed)
    nll = scores.nll
    spec = model.spec
    continuous = spec.kind is DataKind.CONTINUOUS
    dequant = model.dequantization if spec.kind.is_discrete else None
    kind = CONTINUOUS_KIND[m.kind] if continuous else m.kind
    label = m.label(model, k)
    if scores.note:
        label += f"; {scores.note}"
    if dequant and "dequantization" not in label:
        label += f"; {dequant} dequantization"
    mean = float(nll.mean())
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
    estimator_se = None
    if scores.stderr is not None:
        independent = float(scores.stderr.pow(2).sum() / len(nll) ** 2)
        estimator_se = math.sqrt(independent + scores.shared_stderr**2)
    bpd = None if continuous else bits_per_dim(mean, spec.dim)
    perplexity = bits_per_char = None
    if spec.kind is DataKind.TOKENS:
        tokens = int(spec.lengths(split.all(spec)[0]).sum())
        nats_per_token = float(nll.sum()) / tokens
        bpd, perplexity = nats_per_token / math.log(2.0), math.exp(nats_per_token)
        if split.characters is not None:
            bits_per_char = float(nll.sum()) / (int(split.characters.sum()) * math.log(2.0))
        label += "; per token over the scored tokens"
    return Evaluation(
        nll_nats=mean,
        bpd=bpd,
        kind=kind,
        method=name,
        label=label,
        split=split_name,
        n=len(nll),
        k=k if m.default_k is not None else None,
        stderr_nats=stderr,
        median_nats=float(nll.median()),
        dequantization=dequant,
        seed=seed,
        perplexity=perplexity,
        bits_per_char=bits_per_char,
        estimator_stderr_nats=estimator_se,
        nfe=scores.nfe or None,
    )
