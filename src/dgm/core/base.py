"""The contract every dgm model follows.

A model is an ``nn.Module`` that subclasses :class:`GenerativeModel` and answers

- ``loss(x, y=None) -> (N,)``: the training objective per example, in nats;
- ``sample(n, *, y=None, generator=None) -> (n, *event_shape)``: new examples in the data's own
  space and dtype (integers stay integers);
- ``log_prob(x, y=None) -> (N,)``: where defined, with the meaning declared by ``likelihood``.

Models whose ``log_prob`` is a lower bound (VAEs, dequantized flows and mixtures) also give
``log_weights(x, k)``: ``k`` log importance weights ``log p(x, z) - log q(z | x)`` per example,
so that one evaluator can form the ELBO (their mean) and the IWAE(k) bound (their log-mean-exp).
"""

from __future__ import annotations

import types
from enum import Enum
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from dgm.core.capabilities import ExpectationMaximization, ImportanceWeighted, LatentVariable
from dgm.core.errors import ConfigError
from dgm.core.fitting import Fit, GradientFit, StepInfo
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "Likelihood",
    "Fit",
    "GenerativeModel",
    "ImportanceWeighted",
    "ExpectationMaximization",
    "LatentVariable",
]


class Likelihood(str, Enum):
    """What ``log_prob`` returns."""

    EXACT = "exact"  # log p(x) exactly (up to float error)
    LOWER_BOUND = "lower_bound"  # a stochastic lower bound on log p(x), e.g. the ELBO
    ESTIMATE = "estimate"  # an estimate of log p(x) with a standard error (AIS, ODE + Hutchinson)
    UNNORMALIZED = "unnormalized"  # -E(x), the normalizer unknown
    NONE = "none"  # no likelihood (implicit models)


class _ClassOrInstanceMethod:
    """Binds to the instance when looked up on one, else to the class: a class declares what
    its ``log_prob`` means, and a built model may refine that from its config (an RBM whose
    hidden layer is too large to enumerate gives an AIS estimate instead of the exact value)."""

    def __init__(self, func: Callable[..., Any]) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __get__(self, obj: object, owner: type) -> Callable[..., Any]:
        return types.MethodType(self.func, owner if obj is None else obj)


class GenerativeModel(nn.Module):
    """Base class of every model.

    Subclasses set ``likelihood`` and ``data_kinds`` and implement ``loss`` and ``sample`` (and
    ``log_prob`` unless ``likelihood`` is ``NONE``). Calling the module runs ``loss``, so that
    ``DistributedDataParallel`` sees the training objective as ``forward``.
    """

    likelihood: ClassVar[Likelihood] = Likelihood.NONE
    data_kinds: ClassVar[frozenset[DataKind]] = frozenset(DataKind)
    fit: Fit = GradientFit()  # the update rule (dgm.core.fitting); an instance may set its own
    # How a continuous density is scored on discrete data (e.g. "uniform"); None if it is not.
    dequantization: str | None = None
    # Keyword options that ``sample`` takes besides y and generator (e.g. temperature, top_k).
    sample_options: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, spec: DataSpec) -> None:
        super().__init__()
        if spec.kind not in self.data_kinds:
            supported = ", ".join(sorted(k.value for k in self.data_kinds))
            raise ConfigError(
                f"{type(self).__name__} does not support {spec.kind.value} data "
                f"(supported: {supported})"
            )
        self.spec = spec

    def _likelihood_on(self_or_cls: Any, kind: DataKind) -> Likelihood:
        """What ``log_prob`` means on data of this kind (dequantized models override it with a
        classmethod). Called on a class it reads the class's declaration; called on a model it
        reads the model's own ``likelihood``, which ``__init__`` may set from the config."""
        return self_or_cls.likelihood

    likelihood_on = _ClassOrInstanceMethod(_likelihood_on)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def forward(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        return self.loss(x, y)

    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Data-dependent initialization, called once by the trainer before the first epoch.

        ``x`` is (a random subset of) the training split in the data space; every process of a
        distributed run gets the same ``x``. Used, e.g., for a flow's fixed standardization or
        a mixture's initial means. The default does nothing.
        """

    def after_step(self, info: StepInfo) -> None:
        """Move the state kept between steps (counters, codebooks, chains, replay buffers).

        The trainer calls it once after every optimizer step that was taken, never for a step
        that the non-finite guard skipped; ``info`` says which player stepped and gives the
        cross-process reductions. A loop of your own should call it after each
        ``optimizer.step()`` (``model.after_step(StepInfo(step=t))``). The default does nothing.
        """

    def after_rollback(self) -> None:
        """Repair the state kept between steps after the trainer's non-finite guard has rolled
        the weights back to the last good state (e.g. reseed an EBM's replay buffer, whose
        chains may sit where the diverged energy sent them). The default does nothing.
        """

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Training objective per example, shape (N,), in nats."""
        raise NotImplementedError(f"{type(self).__name__} does not define loss")

    def loss_terms(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The named parts of the loss, per example, for diagnostics (they sum to ``loss``)."""
        return {"loss": self.loss(x, y)}

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) per example, shape (N,), in nats; its meaning is ``likelihood_on(kind)``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no likelihood (likelihood = {self.likelihood.value})"
        )

    def sample(
        self, n: int, *, y: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """``n`` new examples, shape (n, *event_shape), in the data's own space and dtype."""
        raise NotImplementedError(f"{type(self).__name__} does not define sample")

    def as_data(self, x: Tensor) -> Tensor:
        """Flat values (N, D) (or any shape with N first) as examples: (N, *event_shape) in the
        data's dtype."""
        return x.reshape(x.shape[0], *self.spec.event_shape).to(self.spec.dtype)

    def check_input(self, x: Tensor) -> None:
        """Raise a clear :class:`~dgm.core.errors.DataError` unless x fits the data spec."""
        self.spec.validate(x)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
