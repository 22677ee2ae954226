r"""Hybrid models (Book ch. 6): any likelihood model of the library with a classifier head,
trained on a weighted joint objective, so that one model gives both p(y | x) and p(x).

The joint is factorized as p(x, y) = p(y | x) p(x) (Eq. 6.1). The density p(x) is any
registered model trained by gradients (``density: {name: ..., ...}``); the classifier is an MLP
with a softmax (Eq. 6.10) on

- ``trunk: naive``: the data itself, a separate network (Eq. 6.2; Fig. 6.1): no gradient of the
  density term reaches the classifier, nor of the class term the density (Eqs. 6.3-6.4);
- ``trunk: shared``: the density model's representation (Eqs. 6.5-6.6; Fig. 6.2): a flow's
  z = f(x) (the flow hybrid of Eq. 6.12), an IDF's integer latent (the hybrid IDF, Eq. 6.13,
  §6.4), a VAE's posterior mean (the hybrid VAE, Eq. 6.14, whose density term is the ELBO).

Per labelled example the loss is

- ``weighting: additive`` (Nalisnick et al. 2019; Eq. 6.9): -log p(y | x) - λ log p(x);
- ``weighting: convex`` (Bouchard & Triggs 2004; Eq. 6.8): -(1 - λ) log p(y | x) - λ log p(x);

with log p(x) the density model's own objective (exact, or its bound). Additive at λ = 1 is the
joint -log p(x, y); λ = 0 is the pure classifier. An example whose label is negative (the
``labelled`` option of a dataset hides the rest) is unlabelled and contributes only its density
term λ · (-log p(x)) (semi-supervised training, §6.5). ``log_prob`` is the density's log p(x),
with the density's own label (exact, bound or estimate).

References:
    Tomczak, Deep Generative Modeling, 2nd ed., ch. 6.
    Nalisnick, Matsukawa, Teh, Gorur & Lakshminarayanan, Hybrid Models with Deep and Invertible
    Features, ICML 2019.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.core.base import GenerativeModel
from dgm.core.capabilities import ImportanceWeighted, Represents
from dgm.core.errors import ConfigError, DataError
from dgm.core.fitting import GradientFit, StepInfo
from dgm.core.nn import mlp
from dgm.core.registry import build_model, register_model
from dgm.core.spec import DataKind, DataSpec

__all__ = ["HybridConfig", "Hybrid"]


@dataclass(frozen=True, kw_only=True)
class HybridConfig:
    """Configuration of :class:`Hybrid`.

    Args:
        density: the likelihood model's config, with its ``name`` (any registered model trained
            by gradients).
        trunk: ``naive`` (a classifier on x) or ``shared`` (on the density's representation).
        weighting: ``additive`` (-log p(y|x) - λ log p(x)) or ``convex``
            (-(1-λ) log p(y|x) - λ log p(x)).
        lam: λ (>= 0; at most 1 for ``convex``).
        hidden, num_hidden, dropout: the classifier MLP.
    """

    density: dict[str, Any] = field(default_factory=lambda: {"name": "idf"})
    trunk: Literal["naive", "shared"] = "shared"
    weighting: Literal["additive", "convex"] = "additive"
    lam: float = 1.0
    hidden: int = 256
    num_hidden: int = 2
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.density, dict) or not self.density.get("name"):
            raise ConfigError("model.density needs the density model's name, e.g. "
                              "density: {name: idf}")
        if self.density["name"] == "hybrid":
            raise ConfigError("a hybrid's density cannot itself be a hybrid")
        if self.trunk not in ("naive", "shared"):
            raise ConfigError(f"trunk must be naive or shared, got {self.trunk!r}")
        if self.weighting not in ("additive", "convex"):
            raise ConfigError(f"weighting must be additive or convex, got {self.weighting!r}")
        if self.lam < 0 or (self.weighting == "convex" and self.lam > 1):
            raise ConfigError(f"lam must be >= 0 (in [0, 1] for convex), got {self.lam}")
        if self.hidden < 1 or self.num_hidden < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("hidden must be >= 1, num_hidden >= 0, dropout in [0, 1)")


@register_model("hybrid", HybridConfig)
class Hybrid(GenerativeModel):
    r"""p(y | x) and p(x) from one model: a classifier head on any likelihood model, trained on
    the λ-weighted joint objective of Book §6.2.

    Its likelihood is the density model's (set per instance); the data kinds it takes are the
    density model's too (checked when that model is built).

    Args:
        spec: a labelled dataset's spec (``num_classes`` set).
        config: a :class:`HybridConfig`.
    """

    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})
    likelihood_of_wrapped = "its density model's"
    #: early stopping follows the weighted joint objective, not the likelihood alone
    default_monitor = "objective"

    def __init__(self, spec: DataSpec, config: HybridConfig | None = None) -> None:
        super().__init__(spec)
        config = HybridConfig() if config is None else config
        self.config = config
        if not spec.num_classes:
            raise ConfigError("a hybrid model needs labelled data (a dataset with classes)")
        options = {k: v for k, v in config.density.items() if k != "name"}
        self.density = build_model(config.density["name"], spec, **options)
        if not isinstance(getattr(self.density, "fit", GradientFit()), GradientFit):
            raise ConfigError(f"{config.density['name']} is not trained by gradients, so it "
                              "cannot share the hybrid's objective")
        self.likelihood = self.density.likelihood_on(spec.kind)
        self.dequantization = self.density.dequantization
        if config.trunk == "shared":
            if not isinstance(self.density, Represents):
                raise ConfigError(f"{config.density['name']} has no representation to share "
                                  "(flows, IDFs and VAEs do); use trunk: naive")
            with torch.no_grad():
                probe = torch.zeros(2, *spec.event_shape, dtype=spec.dtype)
                width = self.density.representation(probe).shape[1]
        else:
            width = spec.dim
        self.classifier = mlp(width, config.hidden, spec.num_classes,
                              num_hidden=config.num_hidden, dropout=config.dropout)

    def _features(self, x: Tensor) -> Tensor:
        if self.config.trunk == "shared":
            return self.density.representation(x)  # type: ignore[union-attr]
        flat = x.reshape(x.shape[0], -1).to(self.classifier[0].weight.dtype)
        if self.spec.kind.is_discrete:
            flat = flat / (int(self.spec.num_levels or 2) - 1)
        return flat

    def class_logits(self, x: Tensor) -> Tensor:
        """The classifier's logits of p(y | x), (N, K)."""
        self.check_input(x)
        return self.classifier(self._features(x))

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log p(y | x), (N, K)."""
        return torch.log_softmax(self.class_logits(x), -1)

    def classify(self, x: Tensor) -> Tensor:
        """argmax_y p(y | x), (N,) long."""
        return self.class_logits(x).argmax(-1)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The density's log p(x) (exact or its bound, as ``likelihood`` says); y is ignored."""
        return self.density.log_prob(x)

    def log_joint(self, x: Tensor, y: Tensor) -> Tensor:
        """log p(y | x) + log p(x), (N,)."""
        return -F.cross_entropy(self.class_logits(x), y.long(), reduction="none") \
            + self.log_prob(x)

    def _class_nll(self, x: Tensor, y: Tensor | None) -> Tensor:
        """-log p(y | x) per example, 0 where unlabelled (y negative or absent)."""
        if y is None:
            return torch.zeros(x.shape[0], device=x.device)
        if y.shape != (x.shape[0],):
            raise DataError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        labelled = y >= 0
        logits = self.classifier(self._features(x))
        class_nll = F.cross_entropy(logits, y.clamp_min(0).long(), reduction="none")
        return torch.where(labelled, class_nll, torch.zeros_like(class_nll))

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The two terms per example: ``class_nll`` -log p(y | x) (0 where unlabelled) and
        ``density_nll`` the density's own loss."""
        return {"class_nll": self._class_nll(x, y), "density_nll": self.density.loss(x)}

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The weighted objective per example (see the module docstring)."""
        lam = self.config.lam
        class_weight = (1 - lam) if self.config.weighting == "convex" else 1.0
        class_nll = self._class_nll(x, y)
        if lam == 0:  # the pure classifier: the density is not evaluated at all
            return class_weight * class_nll
        return class_weight * class_nll + lam * self.density.loss(x)

    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Samples of p(x) from the density model."""
        if y is not None:
            raise ConfigError("a hybrid samples p(x); it takes no labels")
        return self.density.sample(n, generator=generator)

    def log_weights(self, x: Tensor, k: int, *, y: Tensor | None = None,
                    generator: torch.Generator | None = None) -> Tensor:
        """The density's importance weights (for its IWAE or dequantization estimates)."""
        if not isinstance(self.density, ImportanceWeighted):
            raise ConfigError(f"{type(self.density).__name__} has no importance weights")
        return self.density.log_weights(x, k, generator=generator)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        self.density.initialize_from_data(x, generator)

    def after_step(self, info: StepInfo) -> None:
        self.density.after_step(info)
