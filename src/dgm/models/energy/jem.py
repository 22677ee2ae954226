r"""JEM: a classifier read as an energy-based model of p(x, y) (Book §7.2-7.4; Grathwohl et
al. 2020).

A network f_θ: x -> R^K (class logits) defines

    E_θ(x, y) = -f_θ(x)[y],    p_θ(x, y) = exp(f_θ(x)[y]) / Z_θ            (Book eqs. 7.5-7.7)
    E_θ(x) = -logsumexp_y f_θ(x)[y],    p̃_θ(x) = exp(logsumexp_y f_θ(x)[y])   (eqs. 7.8-7.13)
    p_θ(y | x) = softmax(f_θ(x))[y]                                            (eqs. 7.14-7.16)

and the loss per example is

    L(x, y) = CE(f_θ(x), y) + λ [E_θ(x) - E_θ(x⁻) + α_E (E_θ(x)² + E_θ(x⁻)²)],

the cross-entropy of p(y | x) plus ``gen_weight`` λ times the :class:`~dgm.models.energy.ebm.EBM`
contrastive term on the marginal energy (Book eqs. 7.29-7.31, with the energy regularizer of
Du & Mordatch). The negatives x⁻ come from the same Langevin sampler and replay buffer as
``ebm`` (persistent chains, which the book's listing does not have: it restarts from uniform
noise each step). Unlike the book's listing, p(y | x) is computed with ``log_softmax`` and the
sampler keeps the input's device and dtype.

``sample(n, y=...)`` runs Langevin on the class energy E(x, y) (class-conditional samples);
without labels, on the marginal E(x). :meth:`JEM.classify` and :meth:`JEM.class_log_probs`
make the classifier usable; :meth:`JEM.error_rate` is its test error.

References:
    Grathwohl et al. Your classifier is secretly an energy based model and you should treat it
    like one. ICLR 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import register_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.energy.ebm import EBM, EBMConfig

__all__ = ["JEMConfig", "JEM"]


@dataclass(frozen=True, kw_only=True)
class JEMConfig(EBMConfig):
    """:class:`~dgm.models.energy.ebm.EBMConfig` (the energy network, sampler and buffer) plus

    Args:
        gen_weight: λ >= 0, the weight of the generative (contrastive) term; 0 trains a plain
            classifier.
        class_weight: the weight of the cross-entropy term.
    """

    gen_weight: float = 1.0
    class_weight: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("gen_weight", "class_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(f"model.{name} must be a finite number >= 0, got {value}")


@register_model("jem", JEMConfig)
class JEM(EBM):
    """A classifier f_θ(x) -> K logits read as the energy-based model E(x, y) = -f_θ(x)[y]
    of the joint, trained on cross-entropy plus the contrastive Langevin term of its marginal
    E(x) = -logsumexp_y f_θ(x)[y] (Book §7.2-7.4; Grathwohl et al. 2020)."""

    def __init__(self, spec: DataSpec, config: JEMConfig) -> None:
        if spec.num_classes is None or spec.num_classes < 2:
            raise ConfigError("jem needs labelled data (a dataset with num_classes >= 2)")
        super().__init__(spec, config, outputs=spec.num_classes)

    def logits(self, u: Tensor) -> Tensor:
        """f_θ(u), (N, K), on model-space inputs."""
        return self.net(u)

    def energy(self, u: Tensor) -> Tensor:
        """The marginal energy E(u) = -logsumexp_y f_θ(u)[y], (N,)."""
        return -torch.logsumexp(self.logits(u), -1)

    def class_energy(self, u: Tensor, y: Tensor) -> Tensor:
        """E(u, y) = -f_θ(u)[y], (N,)."""
        return -self.logits(u).gather(1, y.long().reshape(-1, 1)).squeeze(1)

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log p(y | x) = log_softmax(f_θ(u(x))), (N, K), for data x."""
        self.check_input(x)
        return torch.log_softmax(self.logits(self.to_model_space(x)), -1)

    def classify(self, x: Tensor) -> Tensor:
        """argmax_y p(y | x), (N,) long."""
        return self.class_log_probs(x).argmax(-1)

    @torch.no_grad()
    def error_rate(self, x: Tensor, y: Tensor) -> float:
        """The fraction of x whose most probable class is not y."""
        return float((self.classify(x) != y.to(x.device)).double().mean())

    def _check_labels(self, x: Tensor, y: Tensor | None) -> Tensor:
        if y is None:
            raise DataError("jem's loss needs the labels y (a labelled dataset)")
        if y.shape != (x.shape[0],):
            raise DataError(f"y must have shape ({x.shape[0]},), got {tuple(y.shape)}")
        return y.long()

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """class_weight · CE(f(x), y) plus gen_weight times the contrastive terms of the
        marginal energy, per example. Not a likelihood."""
        self.check_input(x)
        y = self._check_labels(x, y)
        c = self.config
        u = self.to_model_space(x, dequantize=True)
        logits = self.logits(u)
        terms = {"classification": c.class_weight * F.cross_entropy(logits, y, reduction="none")}
        if c.gen_weight > 0:
            e_pos = -torch.logsumexp(logits, -1)
            e_neg = self.energy(self._negatives(x.shape[0]))
            for name, value in self.contrastive_terms(e_pos, e_neg).items():
                terms[name] = value if name == "energy_blowup" else c.gen_weight * value
        return terms

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """Langevin on E(x, y) for the given labels y (n,), else on the marginal E(x); started
        as ``sample_init`` says; in the data space."""
        if y is None:
            return super().sample(n, generator=generator)
        if y.shape != (n,) or int(y.min()) < 0 or int(y.max()) >= self.spec.num_classes:
            raise DataError(f"y must be ({n},) labels in 0..{self.spec.num_classes - 1}")
        labels = y.to(self.shift.device)
        u = self.langevin(self._initial(n, generator), self.config.sample_steps,
                          energy=lambda u: self.class_energy(u, labels), generator=generator)
        return self.to_data(u)
