"""Capabilities beyond the contract, as protocols that the trainer, evaluator, report and CLI ask.

A model has a capability by defining the methods (``isinstance(model, TwoPlayer)`` checks them
by name); no family is ever named. The update-rule declarations that go with some of them
(``EMFit``, ``TwoPlayerFit``, ``AuxiliaryFit``) are in :mod:`dgm.core.fitting`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = [
    "ImportanceWeighted",
    "BoundedLikelihood",
    "EstimatedLikelihood",
    "LikelihoodEstimate",
    "ExpectationMaximization",
    "TwoPlayer",
    "Auxiliary",
    "LatentVariable",
    "Generates",
    "Reconstructs",
    "Classifies",
    "MarkovChains",
    "Marginalizable",
    "Represents",
    "MostProbableExplanation",
    "CodingCursor",
    "SequentialCoding",
    "IntegerLatent",
    "BitsBackCoding",
    "LossyCodec",
]


@runtime_checkable
class ImportanceWeighted(Protocol):
    """A model with a lower-bound likelihood that can give importance weights."""

    def log_weights(
        self,
        x: Tensor,
        k: int,
        *,
        y: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(x, z_i) - log q(z_i | x) for z_1..z_k ~ q(z | x); shape (k, N).

        ``y`` are the labels, which class-conditional models read (others ignore them).
        """
        ...


@runtime_checkable
class ExpectationMaximization(Protocol):
    """A model fitted by EM: the trainer calls these once per epoch instead of an optimizer."""

    def em_begin(self) -> None:
        """Reset the sufficient statistics."""
        ...

    def em_accumulate(self, x: Tensor) -> Tensor:
        """E-step on a batch: add its statistics; returns the batch's log-likelihoods (N,)."""
        ...

    def em_statistics(self) -> list[Tensor]:
        """The accumulated statistics (summed across processes in distributed runs)."""
        ...

    def em_maximize(self) -> None:
        """M-step from the accumulated statistics."""
        ...


@runtime_checkable
class LatentVariable(Protocol):
    """A latent-variable model whose inside the report can show (Book §5.4.1.2, §5.5.2).

    Levels are numbered from the data up: level 0 is the latent the decoder reads, the last is
    the top of the hierarchy (a one-level VAE has one level).
    """

    def latent_means(self, x: Tensor) -> list[Tensor]:
        """E_q[z_l | x] per level (or the posterior's location), each (N, M_l).

        Used for active units: A_u = Cov_x(E_q[z_u | x]) > 0.01 (Burda et al. 2016, §5.2).
        """
        ...

    def kl_per_level(self, x: Tensor) -> list[Tensor]:
        """The regularizer of each level, each (N,): the KL in closed form where there is one,
        else its one-sample estimate log q - log p; they sum to the ELBO's regularizer."""
        ...

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log p(z) of the top level, z (N, M_top) -> (N,)."""
        ...

    def decode_top(self, z: Tensor) -> Tensor:
        """The most probable example for top-level latents z (N, M_top), lower levels (if any)
        set to their prior means; shape (N, *event_shape) in the data's dtype."""
        ...


@runtime_checkable
class BoundedLikelihood(Protocol):
    """A model whose ``log_prob`` is a lower bound that is *not* built from importance weights
    (a diffusion model's variational bound): the evaluator averages it and never passes it
    through IWAE's log-mean-exp. The method says what the bound is, for the label."""

    def bound_name(self) -> str:
        """A short name of the bound, e.g. ``"diffusion VLB (T = 1000)"``."""
        ...


@dataclass(frozen=True)
class LikelihoodEstimate:
    """An estimate of log p(x) per example with the standard error of that estimate, (N,) each,
    and a note on how it was made (solver, tolerance, function evaluations, probes), which the
    evaluator adds to the number's label; ``nfe`` is the mean number of function evaluations
    per ODE solve (0 where there is no solver). ``shared_stderr`` is the standard error of a term
    common to every example, such as an AIS estimate of log Z: averaging over examples does not
    shrink it, so the evaluator adds it in full to the mean's estimator error."""

    log_prob: Tensor
    stderr: Tensor
    note: str = ""
    nfe: float = 0.0
    shared_stderr: float = 0.0


@runtime_checkable
class EstimatedLikelihood(Protocol):
    """A model whose likelihood is an estimate with an error bar (AIS for log Z, an ODE
    likelihood with a Hutchinson trace): ``likelihood = Likelihood.ESTIMATE``."""

    def log_prob_estimate(
        self, x: Tensor, y: Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> LikelihoodEstimate:
        ...


@runtime_checkable
class TwoPlayer(Protocol):
    """Two players with their own parameters and objectives (``fit = TwoPlayerFit(...)``).

    ``player_loss(name, x, y)`` is that player's objective per example (N,) (minimized);
    ``player_parameters(name)`` the parameters its optimizer moves (disjoint between players).
    """

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        ...

    def player_loss(self, player: str, x: Tensor, y: Tensor | None = None) -> Tensor:
        ...


@runtime_checkable
class Auxiliary(Protocol):
    """A main objective (``loss``) and a scalar auxiliary one on disjoint parameters
    (``fit = AuxiliaryFit()``), e.g. an entropy bottleneck's quantile parameters."""

    def auxiliary_parameters(self) -> list[nn.Parameter]:
        ...

    def auxiliary_loss(self) -> Tensor:
        """A scalar, minimized by the auxiliary optimizer only."""
        ...


@runtime_checkable
class Generates(Protocol):
    """A sequence model that continues a prompt of token ids (text, SMILES)."""

    def generate(self, prefix: Tensor, steps: int, **options: object) -> Tensor:
        ...


@runtime_checkable
class Reconstructs(Protocol):
    """A model that maps an example through its latent space and back (autoencoders)."""

    def reconstruct(self, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        """x (N, *event_shape) -> reconstructions in the data's space and dtype."""
        ...


@runtime_checkable
class Classifies(Protocol):
    """A generative model that is also a classifier (JEM, hybrids): ``train.monitor: error``
    asks it, and ``dgm eval`` and the report show its error, calibration and OOD scores."""

    def classify(self, x: Tensor) -> Tensor:
        """The most probable class of each example, (N,) integers."""
        ...

    def class_log_probs(self, x: Tensor) -> Tensor:
        """log p(y | x), (N, K)."""
        ...


@runtime_checkable
class MarkovChains(Protocol):
    """A model sampled by persistent Markov chains (Boltzmann machines) whose mixing can be
    diagnosed: the report shows it."""

    def mixing(self, steps: int = 500, *, generator: torch.Generator | None = None) -> object:
        """A :class:`dgm.core.chains.ChainDiagnostics` of ``steps`` further sweeps."""
        ...


@runtime_checkable
class Marginalizable(Protocol):
    """A model with exact marginals over any subset of coordinates (mixtures, probabilistic
    circuits): the evaluator scores "NLL with missing pixels" and the conditional NLL of the
    missing ones; the report and ``dgm sample --observed --mask`` inpaint."""

    def log_marginal(self, x: Tensor, observed: Tensor) -> Tensor:
        """log p(x_O), (N,): ``observed`` a bool mask of the data's shape or (N, *event);
        the unobserved values of x are ignored."""
        ...

    def sample_conditional(self, x: Tensor, observed: Tensor, *,
                           generator: torch.Generator | None = None) -> Tensor:
        """x with its unobserved coordinates drawn from p(x_U | x_O), exactly."""
        ...


@runtime_checkable
class Represents(Protocol):
    """A likelihood model with a representation of x that a classifier can share (Book §6.1.2):
    a flow's latent z = f(x), an IDF's integer latent, a VAE's posterior mean."""

    def representation(self, x: Tensor) -> Tensor:
        """Features (N, M), differentiable with respect to the model's parameters."""
        ...


@runtime_checkable
class MostProbableExplanation(Protocol):
    """A model that can complete x with its most probable values (a circuit's max-product
    pass): ``dgm sample --mpe``."""

    def mpe(self, x: Tensor | None = None, observed: Tensor | None = None) -> object:
        """An object with ``x`` (the completion), ``log_value`` (N,) and ``exact`` (whether it
        is the exact MPE or an approximation, as for a non-deterministic circuit)."""
        ...


@runtime_checkable
class CodingCursor(Protocol):
    """The conditionals of one block of rows, step by step, for a lossless coder. ``steps``
    lists the symbol positions of each step (together every position once); ``log_pmf`` gives
    the next step's log-probabilities over the alphabet, (rows, G, A), from the symbols of the
    earlier steps alone; ``advance`` hands over that step's symbol values (rows, G). Encoder
    and decoder make the same calls in the same order, so they see the same numbers."""

    steps: tuple[Tensor, ...]

    def log_pmf(self) -> Tensor:
        ...

    def advance(self, values: Tensor) -> None:
        ...


@runtime_checkable
class SequentialCoding(Protocol):
    """A model with exact conditionals that a lossless coder can follow (ARMs, PixelCNN, the
    transformer with its cache, mixtures, the IDF's latent): ``dgm compress --lossless``.
    (Models that are only :class:`Marginalizable`, such as circuits, are coded through their
    marginals.)"""

    def coding_cursor(self, rows: int, alphabet: Tensor) -> CodingCursor:
        """A cursor for ``rows`` examples; ``alphabet`` (A,) the symbol values the pmfs range
        over (the data's levels, or the window of an integer latent)."""
        ...


@runtime_checkable
class IntegerLatent(Protocol):
    """A model that codes an integer latent instead of x (an integer discrete flow): the
    coder codes ``coding_symbols(x)`` and returns ``coding_inverse`` of the decoded ones."""

    def coding_symbols(self, x: Tensor) -> Tensor:
        """x (N, *event) -> integer symbols (N, S), a bijection."""
        ...

    def coding_inverse(self, symbols: Tensor) -> Tensor:
        """The inverse of :meth:`coding_symbols`."""
        ...


@runtime_checkable
class BitsBackCoding(Protocol):
    """A latent-variable model that codes x by bits-back (BB-ANS): a diagonal Gaussian
    posterior, a prior that is a mixture of diagonal Gaussians (one standard normal included)
    and a decoder with a pmf over the data's levels (Townsend et al. 2019)."""

    def coding_posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z | x) = N(mean, diag exp(log_var)): (mean, log_var), each (N, M)."""
        ...

    def coding_prior(self) -> tuple[Tensor, Tensor, Tensor]:
        """p(z) = Σ_k w_k N(μ_k, diag σ²_k): (log w (K,), μ (K, M), log σ² (K, M))."""
        ...

    def coding_likelihood(self, z: Tensor) -> Tensor:
        """log p(x_d = l | z) for every coordinate and level: z (N, M) -> (N, D, L)."""
        ...


@runtime_checkable
class LossyCodec(Protocol):
    """A neural codec (Book ch. 10): x -> integer symbols -> a reconstruction, the symbols
    coded under its entropy model: ``dgm compress`` writes them, ``dgm decompress`` gives the
    reconstruction."""

    def coding_symbols(self, x: Tensor) -> Tensor:
        """x (N, *event) -> the integers to code, (N, S)."""
        ...

    def coding_inverse(self, symbols: Tensor) -> Tensor:
        """Symbols -> the reconstruction, (N, *event), in the data's levels."""
        ...

    def coding_alphabet(self) -> Tensor | None:
        """A fixed alphabet (codeword indices), or None: the file's window of integers."""
        ...

    def coding_cursor(self, rows: int, alphabet: Tensor) -> CodingCursor:
        ...
