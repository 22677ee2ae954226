r"""Per-coordinate likelihood heads: what a network's outputs mean as a distribution of x.

A VAE decoder (Book §5.3.3) and an autoregressive network (Book §3.2) both emit a few numbers
θ_d per coordinate; a head turns them into Σ_d log p(x_d | θ_d), samples and modes:

- categorical over the L levels, θ_d the L logits (Eq. 2.7, 3.8, 5.27);
- Bernoulli for binary data, θ_d one logit (Eq. 2.5);
- Gaussian with a learned per-coordinate variance, for continuous data;
- a mixture of K logistics discretized to the unit bins of 0..L-1 (Eq. 4.43; PixelCNN++),
  the edge bins taking the tails, θ_d = 2 (K = 1) or 3K numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.distributions import (
    log_bernoulli,
    log_categorical,
    log_discretized_logistic,
    log_mix_discretized_logistic,
    log_normal_diag,
    sample_mix_discretized_logistic,
)
from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "LIKELIHOODS",
    "LikelihoodHead",
    "CategoricalHead",
    "BernoulliHead",
    "GaussianHead",
    "DiscretizedLogisticHead",
    "likelihood_head",
    "check_likelihood",
]

LIKELIHOODS = ("auto", "categorical", "bernoulli", "gaussian", "discretized_logistic")


class LikelihoodHead(nn.Module):
    """A per-coordinate likelihood p(x_d | θ_d) whose θ a network outputs.

    A VAE decoder or an autoregressive network emits ``num_params`` numbers per coordinate,
    shaped (N, D, P); the head turns them into log-probabilities, samples and modes.
    """

    num_params: int = 1
    num_levels: int | None = None  # the size of a discrete head's support 0..L-1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        """Σ_d log p(x_d | θ_d); x (N, D) in the data space, params (N, D, P) -> (N,)."""
        return self.log_prob_each(x, params).sum(dim=-1)

    def log_prob_each(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x_d | θ_d) for every coordinate, shape (N, D)."""
        raise NotImplementedError

    def log_pmf(self, params: Tensor) -> Tensor:
        """log p(x_d = l | θ_d) for every level l: params (N, D, P) -> (N, D, L), the table an
        entropy coder reads. Only for discrete heads."""
        if self.num_levels is None:
            raise NotImplementedError(f"{type(self).__name__} is not a discrete likelihood")
        n, d = params.shape[:2]
        grid = torch.arange(self.num_levels, device=params.device).view(-1, 1, 1)
        each = self.log_prob_each(grid.expand(-1, n, d).reshape(-1, d),
                                  params.repeat(self.num_levels, 1, 1))
        return each.reshape(self.num_levels, n, d).permute(1, 2, 0)

    @torch.no_grad()
    def set_marginal_bias(self, layer: nn.Module, x: Tensor) -> None:
        """Set the bias of the network's last linear layer (D * P outputs) to the per-coordinate
        marginals fitted on x (N, D), so that the network starts at the independent model."""
        if not isinstance(layer, nn.Linear) or layer.bias is None:
            raise TypeError(f"expected a linear output layer with a bias, got {layer!r}")
        layer.bias.copy_(self.marginal_params(x).reshape(-1))

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x | θ), shape (N, D), in the data's dtype."""
        raise NotImplementedError

    def mode(self, params: Tensor) -> Tensor:
        """The most probable x (the mean for a Gaussian), shape (N, D)."""
        raise NotImplementedError

    def marginal_params(self, x: Tensor) -> Tensor:
        """Parameters (D, P) that fit each coordinate's marginal in x (N, D): a bias init."""
        raise NotImplementedError


class CategoricalHead(LikelihoodHead):
    r"""p(x_d | θ_d) = Cat(x_d | softmax(θ_d)) over ``num_levels`` values (Eq. 5.27)."""

    def __init__(self, num_levels: int) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.num_params = num_levels

    def log_prob_each(self, x: Tensor, params: Tensor) -> Tensor:
        return log_categorical(x, params)

    def log_pmf(self, params: Tensor) -> Tensor:
        return F.log_softmax(params, dim=-1)

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        probs = F.softmax(params, dim=-1).reshape(-1, self.num_levels)
        draws = torch.multinomial(probs, 1, generator=generator)
        return draws.reshape(params.shape[:-1])

    def mode(self, params: Tensor) -> Tensor:
        return params.argmax(dim=-1)

    def marginal_params(self, x: Tensor) -> Tensor:
        # Add-one smoothing keeps unseen levels finite.
        counts = F.one_hot(x.long(), self.num_levels).sum(dim=0).to(torch.float64) + 1.0
        return torch.log(counts / counts.sum(dim=-1, keepdim=True))


class BernoulliHead(LikelihoodHead):
    r"""p(x_d | θ_d) = Bern(x_d | sigmoid(θ_d)) for binary data."""

    num_levels = 2

    def log_prob_each(self, x: Tensor, params: Tensor) -> Tensor:
        return log_bernoulli(x, params[..., 0])

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params[..., 0]), generator=generator).long()

    def mode(self, params: Tensor) -> Tensor:
        return (params[..., 0] > 0).long()

    def marginal_params(self, x: Tensor) -> Tensor:
        p = (x.to(torch.float64).sum(dim=0) + 1.0) / (x.shape[0] + 2.0)
        return torch.logit(p).unsqueeze(-1)


class GaussianHead(LikelihoodHead):
    r"""p(x_d | θ_d) = N(x_d | θ_d, σ²_d), log σ²_d a learned parameter per coordinate."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.log_var = nn.Parameter(torch.zeros(dim))

    def log_prob_each(self, x: Tensor, params: Tensor) -> Tensor:
        return log_normal_diag(x.to(params.dtype), params[..., 0], self.log_var)

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        mean = params[..., 0]
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * self.log_var) * eps

    def mode(self, params: Tensor) -> Tensor:
        return params[..., 0]

    def marginal_params(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64)
        with torch.no_grad():
            self.log_var.copy_(torch.log(x.var(dim=0).clamp_min(1e-6)))
        return x.mean(dim=0).unsqueeze(-1)


class DiscretizedLogisticHead(LikelihoodHead):
    r"""p(x_d | θ_d) = a mixture of K logistics discretized to the unit bins of 0..L-1
    (Eq. 4.43; PixelCNN++ for the mixture), the edge bins taking the tails.

    Per component, (a, b) give the mean μ = (L - 1) a and log-scale log s = b + log(L - 1),
    so the network works in units of the whole range; K > 1 adds K mixture logits. 2 (K = 1)
    or 3K numbers per coordinate instead of L keep 256-level images cheap, and a mixture can
    put mass at both ends of the range, as MNIST's mostly-black-or-white pixels need.
    """

    def __init__(self, num_levels: int, num_components: int = 1) -> None:
        super().__init__()
        self.num_levels = num_levels
        self.num_components = num_components
        self.num_params = 2 if num_components == 1 else 3 * num_components

    def _split(self, params: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
        """(mixture logits or None, means, log-scales), each (..., K) or (...) for K = 1."""
        width = self.num_levels - 1
        if self.num_components == 1:
            return None, params[..., 0] * width, params[..., 1] + math.log(width)
        logits, a, b = params.chunk(3, dim=-1)
        return logits, a * width, b + math.log(width)

    def log_prob_each(self, x: Tensor, params: Tensor) -> Tensor:
        logits, mean, log_scale = self._split(params)
        if logits is None:
            return log_discretized_logistic(x, mean, log_scale, self.num_levels)
        return log_mix_discretized_logistic(x, logits, mean, log_scale, self.num_levels)

    def _pick(self, logits: Tensor | None, t: Tensor, k: Tensor | None) -> Tensor:
        if logits is None or k is None:
            return t
        return torch.gather(t, -1, k.unsqueeze(-1)).squeeze(-1)

    def sample(self, params: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        logits, mean, log_scale = self._split(params)
        if logits is None:
            logits, mean, log_scale = (
                torch.zeros_like(mean).unsqueeze(-1), mean.unsqueeze(-1), log_scale.unsqueeze(-1)
            )
        y = sample_mix_discretized_logistic(logits, mean, log_scale, generator=generator)
        return y.clamp(0, self.num_levels - 1).long()

    def mode(self, params: Tensor) -> Tensor:
        """The rounded mean of the most probable component (the exact mode has no closed form)."""
        logits, mean, _ = self._split(params)
        k = None if logits is None else logits.argmax(dim=-1)
        return torch.round(self._pick(logits, mean, k)).clamp(0, self.num_levels - 1).long()

    def marginal_params(self, x: Tensor) -> Tensor:
        x = x.to(torch.float64) / (self.num_levels - 1)
        k = self.num_components
        # A logistic with scale s has standard deviation s π / √3; K components share the
        # spread, their means at the K quantiles of each coordinate.
        scale = (x.std(dim=0) * math.sqrt(3.0) / math.pi / k).clamp_min(1e-3)
        if k == 1:
            return torch.stack([x.mean(dim=0), torch.log(scale)], dim=-1)
        levels = (torch.arange(k, dtype=torch.float64) + 0.5) / k
        means = torch.quantile(x, levels, dim=0).T  # (D, K)
        logits = torch.zeros_like(means)
        return torch.cat([logits, means, torch.log(scale).unsqueeze(-1).expand_as(means)], -1)


def likelihood_head(
    spec: DataSpec, likelihood: str = "auto", num_components: int = 1
) -> LikelihoodHead:
    """The per-coordinate likelihood for data of ``spec``; ``"auto"`` picks it from the kind.

    auto: categorical for discrete data, Bernoulli for binary data, Gaussian for continuous.
    ``num_components`` is the number of mixture components of the discretized logistic.
    """
    kind = spec.kind
    if likelihood == "auto":
        likelihood = {
            DataKind.DISCRETE: "categorical",
            DataKind.BINARY: "bernoulli",
            DataKind.CONTINUOUS: "gaussian",
        }.get(kind, "categorical")
    fits = {
        "categorical": kind.is_discrete,
        "discretized_logistic": kind.is_discrete,
        "bernoulli": kind is DataKind.BINARY,
        "gaussian": kind is DataKind.CONTINUOUS,
    }
    if likelihood not in fits:
        raise ConfigError(
            f"model.likelihood: {likelihood!r} is not one of {', '.join(map(repr, LIKELIHOODS))}"
        )
    if not fits[likelihood]:
        raise ConfigError(
            f"model.likelihood: {likelihood!r} does not fit {kind.value} data"
        )
    if likelihood == "categorical":
        assert spec.num_levels is not None
        return CategoricalHead(spec.num_levels)
    if likelihood == "discretized_logistic":
        assert spec.num_levels is not None
        return DiscretizedLogisticHead(spec.num_levels, num_components)
    if likelihood == "bernoulli":
        return BernoulliHead()
    return GaussianHead(spec.dim)


def check_likelihood(likelihood: str, num_components: int) -> None:
    """Raise a ConfigError naming the field unless the decoder likelihood settings are valid."""
    if likelihood not in LIKELIHOODS:
        raise ConfigError(
            f"model.likelihood: {likelihood!r} is not one of {', '.join(map(repr, LIKELIHOODS))}"
        )
    if num_components < 1:
        raise ConfigError(f"model.num_components must be >= 1, got {num_components}")
