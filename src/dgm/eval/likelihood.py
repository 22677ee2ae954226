r"""One evaluator for every family: NLL in nats per example and bits per dimension, labelled.

Methods:

- ``exact``: -log p(x) of a model whose ``likelihood_on(kind)`` is EXACT.
- ``elbo``: -ELBO, the mean of log importance weights (k draws per example, averaged; more draws
  lower the variance, not the bias). An upper bound on the NLL.
- ``iwae``: -log (1/k) Σ_i w_i, the importance-weighted bound (Burda et al. 2016; Book Eq. 5.32).
  Still an upper bound on the NLL in expectation, tighter with k, consistent as k -> ∞; labelled
  an estimate. For dequantized models the weights are p(x + u_i) with u_i ~ U[0,1)^D.

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
from typing import Any

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, ImportanceWeighted, Likelihood
from dgm.core.errors import ConfigError
from dgm.data.dataset import Split
from dgm.data.spec import DataKind

__all__ = ["Evaluation", "evaluate", "bits_per_dim", "resolve_method", "per_example_nll"]

METHODS = ("auto", "exact", "elbo", "iwae")


@dataclass(frozen=True)
class Evaluation:
    """The result of scoring one split.

    ``kind`` is what the number is: "exact" (exact NLL), "upper_bound" (-ELBO), "estimate"
    (IWAE(k)), or "density" (negative log-density of continuous data; no bits per dimension).
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        bpd = f"{self.bpd:.4f} bits/dim" if self.bpd is not None else "no bits/dim (continuous)"
        if self.perplexity is not None:
            bpd = f"{self.bpd:.4f} bits/token, perplexity {self.perplexity:.3f}"
            if self.bits_per_char is not None:
                bpd += f", {self.bits_per_char:.4f} bits/char"
        return (
            f"{self.split}: {self.nll_nats:.3f} ± {self.stderr_nats:.3f} nats/example, {bpd} "
            f"[{self.label}; n={self.n}, median {self.median_nats:.3f}]"
        )


def bits_per_dim(nats_per_example: float, dim: int) -> float:
    """nats per example -> bits per dimension: nats / (D ln 2)."""
    return nats_per_example / (dim * math.log(2.0))


def resolve_method(model: GenerativeModel, method: str) -> str:
    """Map ``auto`` to the model's natural method and refuse methods the model cannot do."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    kind = model.likelihood_on(model.spec.kind)
    if kind in (Likelihood.NONE, Likelihood.UNNORMALIZED):
        raise ConfigError(
            f"{type(model).__name__} has no normalized likelihood ({kind.value}); "
            "it cannot be scored in nats"
        )
    if method == "auto":
        return "exact" if kind is Likelihood.EXACT else "elbo"
    if method == "exact" and kind is not Likelihood.EXACT:
        raise ConfigError(
            f"{type(model).__name__} has no exact likelihood on {model.spec.kind.value} data "
            f"({kind.value}); use --method elbo or --method iwae"
        )
    if method in ("elbo", "iwae") and not isinstance(model, ImportanceWeighted):
        raise ConfigError(
            f"{type(model).__name__} has an exact likelihood and no importance weights; "
            "use --method exact"
        )
    return method


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


@torch.no_grad()
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
    """NLL (or its bound/estimate) of every example of ``split``, in nats, float64, shape (N,).

    ``max_weights`` caps batch size x importance samples held at once: k up to thousands is
    evaluated in chunks of samples.
    """
    method = resolve_method(model, method)
    device = model.device
    generator = torch.Generator(device=device).manual_seed(seed)
    was_training = model.training
    model.eval()
    out = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(split), batch_size):
                x, y = split.batch(slice(start, start + batch_size), model.spec)
                x = x.to(device)
                y = None if y is None else y.to(device)
                if method == "exact":
                    nll = -model.log_prob(x, y).double()
                else:
                    chunk = max(1, min(k, max_weights // max(1, x.shape[0])))
                    fn = _iwae_nll if method == "iwae" else _elbo_nll
                    nll = fn(model, x, y, k, chunk, generator)
                out.append(nll.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)


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
    method = resolve_method(model, method)
    if k is None:
        k = 1 if method != "iwae" else 1000
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    nll = per_example_nll(model, split, method=method, k=k, batch_size=batch_size, seed=seed)
    spec = model.spec
    continuous = spec.kind is DataKind.CONTINUOUS
    dequant = model.dequantization if spec.kind.is_discrete else None
    if method == "exact":
        kind = "density" if continuous else "exact"
        label = "negative log-density (continuous data)" if continuous else "exact NLL"
        k_out = None
    elif method == "elbo":
        kind = "upper_bound" if not continuous else "density_bound"
        draws = f"{k} draw{'s' if k > 1 else ''} per example"
        target = "negative log-density" if continuous else "NLL"
        label = f"-ELBO, an upper bound on the {target} ({draws})"
        k_out = k
    else:
        kind = "estimate" if not continuous else "density_estimate"
        label = f"IWAE({k}) estimate of the NLL (an upper bound in expectation)"
        k_out = k
    if dequant:
        label += f"; {dequant} dequantization"
    mean = float(nll.mean())
    stderr = float(nll.std() / math.sqrt(len(nll))) if len(nll) > 1 else 0.0
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
        method=method,
        label=label,
        split=split_name,
        n=len(nll),
        k=k_out,
        stderr_nats=stderr,
        median_nats=float(nll.median()),
        dequantization=dequant,
        seed=seed,
        perplexity=perplexity,
        bits_per_char=bits_per_char,
    )
