r"""Entropy models of a neural codec (Book §10.4.3): the pmf p(ŷ) that gives the rate
r = -log p(ŷ) in training and drives the entropy coder at deployment.

Each takes the encoder's continuous code y (N, S) (flattened; ``channels`` (S,) says which
channel each coordinate belongs to) and quantizes it itself, so that it can code side
information too:

- :class:`UniformEntropy`: every codeword equally likely, -log p = S log K (the book's baseline;
  a codebook quantizer only);
- :class:`CategoricalEntropy`: a learned categorical over the K codewords per coordinate
  (a codebook quantizer);
- :class:`AutoregressiveEntropy`: the book's ARM over code positions, p(ŷ_s | ŷ_{<s}) from a
  causal convolution of the codeword values (Listing 10.4; a codebook quantizer);
- :class:`FactorizedEntropy`: per channel a learned CDF c (a monotone network, Ballé et al.
  2018, App. 6.1), p(ŷ) = c(ŷ + ½) - c(ŷ - ½) (integers from rounding);
- :class:`AutoregressiveGaussianEntropy`: p(ŷ_s | ŷ_{<s}) = N(μ_s, σ_s²) convolved with
  U(-½, ½), (μ_s, σ_s) from a MADE over the code (a mean-scale context model, Minnen et al.
  2018, over a flat code; integers from rounding);
- :class:`HyperpriorEntropy`: a Gaussian conditional p(ŷ | ẑ) = N(0, σ²(ẑ)) convolved with
  U(-½, ½), whose scales come from a hyper-latent ẑ = round(h_a(y)) coded with a factorized
  model (the scale hyperprior, Ballé et al. 2018).

All give ``rate(y) -> (nats (N,), ŷ)``, ``symbols(y)`` (the integers coded, side information
first), ``values(symbols)`` (ŷ back from them) and ``coding_cursor`` for the coder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.distributions import log_normal_interval
from dgm.core.nn import CausalConv1d, made_network, mlp
from dgm.models.compression.quantizers import CodebookQuantizer, RoundingQuantizer

__all__ = ["UniformEntropy", "CategoricalEntropy", "AutoregressiveEntropy",
           "FactorizedEntropy", "AutoregressiveGaussianEntropy", "HyperpriorEntropy"]

_TINY = 1e-9  # the floor on a relaxed likelihood in training (CompressAI's bound too)
SAMPLE_WINDOW = 256  # integers drawn from a learned CDF lie within ± this


class _OneStep:
    """A cursor with one step over every coordinate: a pmf table fixed in advance."""

    def __init__(self, log_pmf: Tensor) -> None:
        self._log_pmf = log_pmf  # (rows, S, A)
        self.steps = (torch.arange(log_pmf.shape[1]),)

    def log_pmf(self) -> Tensor:
        return self._log_pmf

    def advance(self, values: Tensor) -> None:
        pass


# -- codebook quantizers: symbols are codeword indices 0..K-1 ------------------------------------

class UniformEntropy(nn.Module):
    """p(ŷ) = K^{-S}."""

    def __init__(self, size: int, quantizer: CodebookQuantizer) -> None:
        super().__init__()
        self.size, self.quantizer = size, quantizer

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.quantizer(y)
        nats = torch.full((y.shape[0],), self.size * math.log(self.quantizer.codebook_size),
                          dtype=y.dtype, device=y.device)
        return nats, q.values

    def symbols(self, y: Tensor) -> Tensor:
        return self.quantizer(y).symbols

    def values(self, symbols: Tensor) -> Tensor:
        return self.quantizer.values_of(symbols)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> _OneStep:
        k = self.quantizer.codebook_size
        return _OneStep(torch.zeros(rows, self.size, k))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """ŷ ~ p, (n, S) codeword values."""
        probs = self.coding_cursor(1, torch.arange(1)).log_pmf()[0].exp()  # (S, K)
        index = torch.multinomial(probs, n, replacement=True, generator=generator).T
        return self.quantizer.values_of(index.to(self.quantizer.codebook.device))


class CategoricalEntropy(UniformEntropy):
    """p(ŷ) = Π_s Cat(ŷ_s; softmax(θ_s)) over the codewords."""

    def __init__(self, size: int, quantizer: CodebookQuantizer) -> None:
        super().__init__(size, quantizer)
        self.logits = nn.Parameter(torch.zeros(size, quantizer.codebook_size))

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.quantizer(y)
        assert q.one_hot is not None
        return -(q.one_hot * F.log_softmax(self.logits, -1)).sum((1, 2)), q.values

    def coding_cursor(self, rows: int, alphabet: Tensor) -> _OneStep:
        return _OneStep(F.log_softmax(self.logits, -1).expand(rows, -1, -1))


class AutoregressiveEntropy(UniformEntropy):
    """p(ŷ) = Π_s p(ŷ_s | ŷ_{<s}) (Book Eq. 3.4 over the code, Listing 10.4): a type-A causal
    convolution, then type-B ones, on the codeword values, K logits per position."""

    def __init__(self, size: int, quantizer: CodebookQuantizer, channels: int = 32,
                 kernel: int = 4, layers: int = 3) -> None:
        super().__init__(size, quantizer)
        k = quantizer.codebook_size
        stack: list[nn.Module] = [CausalConv1d(1, channels, kernel, mask_type="A"),
                                  nn.LeakyReLU()]
        for _ in range(layers - 2):
            stack += [CausalConv1d(channels, channels, kernel), nn.LeakyReLU()]
        stack.append(CausalConv1d(channels, k, kernel))
        self.net = nn.Sequential(*stack)

    def log_pmf(self, values: Tensor) -> Tensor:
        """log p(ŷ_s = c_k | ŷ_{<s}) for every position, (N, S, K), from values (N, S)."""
        return F.log_softmax(self.net(values.unsqueeze(1)).transpose(1, 2), -1)

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.quantizer(y)
        assert q.one_hot is not None
        return -(q.one_hot * self.log_pmf(q.values)).sum((1, 2)), q.values

    def coding_cursor(self, rows: int, alphabet: Tensor) -> "_ARMCursor":
        return _ARMCursor(self, rows)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """ŷ ~ p, position by position (the book's `sample`), (n, S) codeword values."""
        values = torch.zeros(n, self.size, device=self.quantizer.codebook.device)
        for s in range(self.size):
            probs = self.log_pmf(values)[:, s].exp()
            index = torch.multinomial(probs, 1, generator=generator)[:, 0]
            values[:, s] = self.quantizer.codebook[index]
        return values


class _ARMCursor:
    def __init__(self, model: AutoregressiveEntropy, rows: int) -> None:
        self._model = model
        self._values = torch.zeros(rows, model.size)
        self.steps = tuple(torch.tensor([s]) for s in range(model.size))
        self._s = 0

    def log_pmf(self) -> Tensor:
        return self._model.log_pmf(self._values)[:, self._s:self._s + 1]

    def advance(self, values: Tensor) -> None:
        self._values[:, self._s] = self._model.quantizer.values_of(values[:, 0])
        self._s += 1


# -- rounding: symbols are the integers ------------------------------------------------------------

class _LearnedCDF(nn.Module):
    """A monotone map f: R -> R per channel, c = sigmoid(f) a CDF (Ballé et al. 2018, App. 6.1):
    f = layers of x -> softplus(H) x + b, then x + tanh(a) tanh(x), softplus keeping every slope
    positive and |tanh(a)| < 1 keeping each gate monotone."""

    def __init__(self, channels: int, filters: tuple[int, ...] = (3, 3, 3),
                 init_scale: float = 10.0) -> None:
        super().__init__()
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((channels, widths[i + 1], widths[i]),
                                                         init)))
            self.biases.append(nn.Parameter(torch.rand(channels, widths[i + 1], 1) - 0.5))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(channels, widths[i + 1], 1)))

    def logits(self, x: Tensor, channels: Tensor) -> Tensor:
        """f(x) for x (N, S) whose coordinates belong to ``channels`` (S,) -> (N, S)."""
        h = x.T.unsqueeze(1)  # (S, 1, N)
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            h = torch.matmul(F.softplus(matrix[channels]), h) + bias[channels]
            if i < len(self.factors):
                h = h + torch.tanh(self.factors[i][channels]) * torch.tanh(h)
        return h[:, 0].T

    def log_mass(self, values: Tensor, channels: Tensor) -> Tensor:
        """log[c(v + ½) - c(v - ½)], (N, S), stable in both tails (the difference is taken
        on the side of the median where both CDF values are small)."""
        upper = self.logits(values + 0.5, channels)
        lower = self.logits(values - 0.5, channels)
        sign = -torch.sign(upper + lower).detach()
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        mass = (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs()
        return torch.log(mass.clamp_min(_TINY))


class FactorizedEntropy(nn.Module):
    """p(ŷ) = Π_s [c_{ch(s)}(ŷ_s + ½) - c_{ch(s)}(ŷ_s - ½)], one learned CDF per channel; in
    training ŷ = y + noise (or straight-through rounding)."""

    def __init__(self, channels: Tensor, quantizer: RoundingQuantizer) -> None:
        super().__init__()
        self.register_buffer("channels", channels.long(), persistent=False)
        self.size = int(channels.numel())
        self.quantizer = quantizer
        self.cdf = _LearnedCDF(int(channels.max()) + 1)

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.quantizer(y)
        return -self.cdf.log_mass(q.values, self.channels).sum(1), q.values

    def symbols(self, y: Tensor) -> Tensor:
        return torch.round(y).long()

    def values(self, symbols: Tensor) -> Tensor:
        return symbols.to(self.cdf.biases[0].dtype)

    def table(self, alphabet: Tensor, rows: int) -> Tensor:
        """log p(ŷ_s = a) for every coordinate and a of the alphabet, (rows, S, A)."""
        a = alphabet.to(self.cdf.biases[0].dtype)
        grid = a.view(-1, 1).expand(-1, self.size)
        return self.cdf.log_mass(grid, self.channels).T.unsqueeze(0).expand(rows, -1, -1)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> _OneStep:
        return _OneStep(self.table(alphabet, rows))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """ŷ ~ p, (n, S) integers, drawn over ±``SAMPLE_WINDOW`` (a learned CDF has no
        closed-form inverse; the mass beyond that window is negligible for a trained code)."""
        alphabet = torch.arange(-SAMPLE_WINDOW, SAMPLE_WINDOW + 1,
                                device=self.cdf.biases[0].device)
        probs = self.table(alphabet, 1)[0].exp()  # (S, A)
        index = torch.multinomial(probs, n, replacement=True, generator=generator).T
        return alphabet[index].to(self.cdf.biases[0].dtype)


def _log_gaussian_bin(values: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """log ∫_{v-½}^{v+½} N(t; μ, σ²) dt: a Gaussian convolved with U(-½, ½), at integers."""
    return log_normal_interval((values - mean - 0.5) / scale, (values - mean + 0.5) / scale)


class AutoregressiveGaussianEntropy(nn.Module):
    r"""p(ŷ) = Π_s ∫_{ŷ_s-½}^{ŷ_s+½} N(t; μ_s, σ_s²) dt with (μ_s, σ_s) = MADE(ŷ_{<s}): the
    mean-scale autoregressive context model of Minnen et al. (2018) over a flat code (the
    book's ARM entropy model, Listing 10.4, for integers instead of codewords). In training
    the context is the noisy ŷ the quantizer gives; the coder walks the S positions in order.
    The masks are drawn once from a fixed seed and saved with the weights."""

    def __init__(self, size: int, quantizer: RoundingQuantizer, hidden: int = 128,
                 num_hidden: int = 2) -> None:
        super().__init__()
        self.size, self.quantizer = size, quantizer
        self.net = made_network(size, 2, hidden, num_hidden,
                                generator=torch.Generator().manual_seed(0))

    def params(self, values: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, σ), each (N, S), from the code values (N, S); σ >= 0.11."""
        out = self.net(values).view(values.shape[0], self.size, 2)
        return out[..., 0], F.softplus(out[..., 1]) + 0.11

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        q = self.quantizer(y)
        mean, scale = self.params(q.values)
        log_mass = _log_gaussian_bin(q.values, mean, scale)
        return -log_mass.clamp_min(math.log(_TINY)).sum(1), q.values

    def symbols(self, y: Tensor) -> Tensor:
        return torch.round(y).long()

    def values(self, symbols: Tensor) -> Tensor:
        return symbols.to(self.net[0].weight.dtype)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> "_GaussianARCursor":
        return _GaussianARCursor(self, rows, alphabet)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """ŷ ~ p position by position: ŷ_s = round(μ_s + σ_s ε) has exactly the binned
        Gaussian's pmf. (n, S)."""
        weight = self.net[0].weight
        values = torch.zeros(n, self.size, dtype=weight.dtype, device=weight.device)
        for s in range(self.size):
            mean, scale = self.params(values)
            eps = torch.randn(n, generator=generator, dtype=weight.dtype, device=weight.device)
            values[:, s] = torch.round(mean[:, s] + scale[:, s] * eps)
        return values


class _GaussianARCursor:
    """One code position per step, each conditioned on the positions decoded before it."""

    def __init__(self, model: AutoregressiveGaussianEntropy, rows: int,
                 alphabet: Tensor) -> None:
        self._model = model
        dtype = model.net[0].weight.dtype
        self._values = torch.zeros(rows, model.size, dtype=dtype)
        self._alphabet = alphabet.to(dtype).view(1, 1, -1)
        self.steps = tuple(torch.tensor([s]) for s in range(model.size))
        self._s = 0

    def log_pmf(self) -> Tensor:
        mean, scale = self._model.params(self._values)
        s = slice(self._s, self._s + 1)
        return _log_gaussian_bin(self._alphabet, mean[:, s, None], scale[:, s, None])

    def advance(self, values: Tensor) -> None:
        self._values[:, self._s] = values[:, 0].to(self._values.dtype)
        self._s += 1


class HyperpriorEntropy(nn.Module):
    r"""The scale hyperprior: ẑ = round(h_a(y)) coded by a factorized model, then
    p(ŷ_s | ẑ) = Φ((ŷ_s + ½) / σ_s) - Φ((ŷ_s - ½) / σ_s) with σ = h_s(ẑ) > 0 (Ballé et al.
    2018). h_a and h_s are MLPs on the flattened code (``hidden`` wide); rate = r(ẑ) + r(ŷ | ẑ).
    The coder writes ẑ first, then ŷ."""

    def __init__(self, size: int, hyper_size: int, quantizer: RoundingQuantizer,
                 hidden: int = 64) -> None:
        super().__init__()
        self.size, self.hyper_size = size, hyper_size
        self.quantizer = quantizer
        self.analysis = mlp(size, hidden, hyper_size, num_hidden=1)
        self.synthesis = mlp(hyper_size, hidden, size, num_hidden=1)
        self.hyper = FactorizedEntropy(torch.arange(hyper_size), quantizer)

    def scales(self, z_values: Tensor) -> Tensor:
        """σ(ẑ) (N, S), at least 0.11 (below it a unit bin holds all the mass anyway)."""
        return F.softplus(self.synthesis(z_values)) + 0.11

    def _log_mass(self, values: Tensor, scale: Tensor) -> Tensor:
        return log_normal_interval((values - 0.5) / scale, (values + 0.5) / scale)

    def rate(self, y: Tensor) -> tuple[Tensor, Tensor]:
        z_nats, z_values = self.hyper.rate(self.analysis(y))
        q = self.quantizer(y)
        y_nats = -self._log_mass(q.values, self.scales(z_values)).clamp_min(
            math.log(_TINY)).sum(1)
        return z_nats + y_nats, q.values

    def symbols(self, y: Tensor) -> Tensor:
        z = torch.round(self.analysis(y)).long()
        return torch.cat([z, torch.round(y).long()], 1)

    def values(self, symbols: Tensor) -> Tensor:
        return symbols[:, self.hyper_size:].to(self.hyper.cdf.biases[0].dtype)

    def coding_cursor(self, rows: int, alphabet: Tensor) -> "_HyperCursor":
        return _HyperCursor(self, rows, alphabet)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """ẑ from its factorized model, then ŷ = round(σ(ẑ) ε), (n, S)."""
        scale = self.scales(self.hyper.sample(n, generator))
        eps = torch.randn(scale.shape, generator=generator, dtype=scale.dtype,
                          device=scale.device)
        return torch.round(scale * eps)


class _HyperCursor:
    """Step 1: ẑ under its factorized model; step 2: ŷ given ẑ."""

    def __init__(self, model: HyperpriorEntropy, rows: int, alphabet: Tensor) -> None:
        self._model, self._rows, self._alphabet = model, rows, alphabet
        h = model.hyper_size
        self.steps = (torch.arange(h), torch.arange(h, h + model.size))
        self._z: Tensor | None = None

    def log_pmf(self) -> Tensor:
        model = self._model
        if self._z is None:
            return model.hyper.table(self._alphabet, self._rows)
        scale = model.scales(self._z).unsqueeze(-1)  # (rows, S, 1)
        a = self._alphabet.to(scale.dtype).view(1, 1, -1)
        return model._log_mass(a, scale)

    def advance(self, values: Tensor) -> None:
        if self._z is None:
            self._z = values.to(self._model.hyper.cdf.biases[0].dtype)
