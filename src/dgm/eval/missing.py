r"""Missing data: the NLL of the observed coordinates and the conditional NLL of the missing
ones, for any model with exact marginals (:class:`~dgm.core.capabilities.Marginalizable`).

With observed coordinates O and missing ones M = not O,

    -log p(x_O) = -log Σ_{x_M} p(x_O, x_M)          ("NLL with missing pixels")
    -log p(x_M | x_O) = -log p(x) + log p(x_O)       (the inpainting NLL)

both exact for circuits and mixtures, in nats per example and bits per observed (resp.
missing) dimension. Named masks (:func:`observed_mask`) hide a half of an image or a random
fraction of the coordinates (seeded, one mask per example).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.capabilities import Marginalizable
from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind, DataSpec
from dgm.data.dataset import Split

__all__ = ["MASKS", "observed_mask", "MissingEvaluation", "evaluate_missing"]

MASKS = ("lower_half", "upper_half", "left_half", "right_half", "random")


def observed_mask(spec: DataSpec, name: str, n: int = 1, *, fraction: float = 0.5,
                  seed: int = 0) -> Tensor:
    """A bool mask (n, *event) of the *observed* coordinates: ``lower_half`` hides the lower
    half of every image (rows H//2 onwards), ``upper_half``, ``left_half``, ``right_half``
    likewise, ``random`` hides a random ``fraction`` of each example's coordinates."""
    if name not in MASKS:
        raise ConfigError(f"unknown mask {name!r}; choose one of {', '.join(MASKS)}")
    shape = spec.event_shape
    if name == "random":
        if not 0.0 < fraction < 1.0:
            raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
        gen = torch.Generator().manual_seed(seed)
        return torch.rand(n, *shape, generator=gen) >= fraction
    if len(shape) != 3:
        raise ConfigError(f"mask {name} needs (C, H, W) images, got {shape}; use random")
    _, h, w = shape
    mask = torch.ones(shape, dtype=torch.bool)
    if name == "lower_half":
        mask[:, h // 2:] = False
    elif name == "upper_half":
        mask[:, : h // 2] = False
    elif name == "left_half":
        mask[:, :, : w // 2] = False
    else:
        mask[:, :, w // 2:] = False
    return mask.expand(n, *shape).clone()


@dataclass(frozen=True)
class MissingEvaluation:
    """-log p(x_O) and -log p(x_M | x_O) over a split, exact, with standard errors of the mean
    and bits per observed / missing dimension (None on continuous data)."""

    mask: str
    split: str
    n: int
    observed_nats: float
    observed_stderr: float
    observed_bpd: float | None
    missing_nats: float
    missing_stderr: float
    missing_bpd: float | None
    observed_dims: float
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        def bpd(v: float | None) -> str:
            return "" if v is None else f", {v:.4f} bits/dim"

        what = "exact" if self.kind == "exact" else "exact density (continuous)"
        where = self.mask.replace("masked", "the mask's pixels")
        target = "x_query" if "query" in self.mask else "x_missing"
        return (f"{self.split}, {where} missing ({what}; n={self.n}): "
                f"-log p(x_observed) {self.observed_nats:.3f} ± {self.observed_stderr:.3f} "
                f"nats{bpd(self.observed_bpd)}; -log p({target} | x_observed) "
                f"{self.missing_nats:.3f} ± {self.missing_stderr:.3f} nats"
                f"{bpd(self.missing_bpd)}")


@torch.no_grad()
def evaluate_missing(model: GenerativeModel, split: Split, mask: str | Tensor, *,
                     query: Tensor | None = None, split_name: str = "test",
                     fraction: float = 0.5, batch_size: int = 1024,
                     seed: int = 0) -> MissingEvaluation:
    """Score ``split`` with the coordinates of ``mask`` missing (see the module docstring):
    a name of :func:`observed_mask`, or a bool tensor of observed coordinates (the data's shape,
    or one row per example). With a ``query`` mask (disjoint from the observed coordinates),
    the conditional is that of the query alone, -log p(x_Q | x_O), the other missing
    coordinates summed out."""
    if not isinstance(model, Marginalizable):
        raise ConfigError(f"{type(model).__name__} has no exact marginals, so it cannot score "
                          "missing data (circuits and mixtures can)")
    if model.likelihood_on(model.spec.kind) is not Likelihood.EXACT:
        raise ConfigError(f"{type(model).__name__}'s likelihood is not exact here")
    spec = model.spec
    if isinstance(mask, Tensor):
        masks = spec.flat_mask(mask, len(split)).reshape(len(split), *spec.event_shape)
        mask = "masked"
    else:
        masks = observed_mask(spec, mask, len(split), fraction=fraction, seed=seed)
    queries = None
    if query is not None:
        queries = spec.flat_mask(query, len(split)).reshape(masks.shape)
        if bool((queries & masks).any()):
            raise ConfigError("the query and the observed coordinates overlap")
        mask = f"{mask}; query: the query mask's pixels"
    was_training = model.training
    model.eval()
    marg, cond = [], []
    try:
        for start in range(0, len(split), batch_size):
            x, _ = split.batch(slice(start, start + batch_size), spec)
            x = x.to(model.device)
            observed = masks[start:start + x.shape[0]].to(model.device)
            log_o = model.log_marginal(x, observed).double()
            marg.append(-log_o.cpu())
            if queries is None:
                log_joint = model.log_prob(x).double()
            else:
                both = observed | queries[start:start + x.shape[0]].to(model.device)
                log_joint = model.log_marginal(x, both).double()
            cond.append((log_o - log_joint).cpu())
    finally:
        model.train(was_training)
    o, m = torch.cat(marg), torch.cat(cond)
    dims_o = float(masks.reshape(len(split), -1).sum(1).double().mean())
    dims_m = spec.dim - dims_o if queries is None else float(
        queries.reshape(len(split), -1).sum(1).double().mean())
    continuous = spec.kind is DataKind.CONTINUOUS

    def se(t: Tensor) -> float:
        return float(t.std() / math.sqrt(len(t))) if len(t) > 1 else 0.0

    def bits(nats: float, dims: float) -> float | None:
        return None if continuous or dims <= 0 else nats / (dims * math.log(2.0))

    return MissingEvaluation(mask, split_name, len(o), float(o.mean()), se(o),
                             bits(float(o.mean()), dims_o), float(m.mean()), se(m),
                             bits(float(m.mean()), dims_m), dims_o,
                             "density" if continuous else "exact")
