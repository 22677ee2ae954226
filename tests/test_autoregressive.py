"""ARM with causal convolutions (Book §3.2.3-3.2.4): normalization, causality, sampling."""

import itertools

import pytest
import torch
from torch import nn

from dgm.core.base import Likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.autoregressive.arm import ARM, ARMConfig

SMALL = dict(hidden=8, kernel_size=2, num_layers=3)


def small_arm(spec: DataSpec, **overrides) -> ARM:
    return ARM(spec, ARMConfig(**{**SMALL, **overrides})).double().eval()


def all_sequences(levels: int, event_shape: tuple[int, ...]) -> torch.Tensor:
    dim = torch.Size(event_shape).numel()
    grid = torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.long)
    return grid.reshape(-1, *event_shape)


@pytest.mark.parametrize("event_shape", [(3,), (1, 1, 3)])
@pytest.mark.parametrize("encoding", ["scaled", "one_hot"])
@pytest.mark.parametrize("residual", [False, True])
def test_pmf_sums_to_one_over_all_sequences(event_shape, encoding, residual):
    spec = DataSpec(event_shape, DataKind.DISCRETE, num_levels=3)
    model = small_arm(spec, input_encoding=encoding, residual=residual, num_layers=4)
    x = all_sequences(3, event_shape)  # 27 sequences
    log_p = model.log_prob(x)
    assert log_p.shape == (27,) and log_p.dtype == torch.float64
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-12)
    assert log_p.std() > 0.01  # a random net is not uniform: the test could fail


@pytest.mark.parametrize(
    "kind, levels, likelihood, components",
    [
        (DataKind.BINARY, 2, "bernoulli", 1),
        (DataKind.DISCRETE, 4, "discretized_logistic", 1),
        (DataKind.DISCRETE, 4, "discretized_logistic", 3),
    ],
)
def test_pmf_sums_to_one_for_every_likelihood(kind, levels, likelihood, components):
    spec = DataSpec((1, 2, 2), kind, num_levels=levels)
    model = small_arm(spec, likelihood=likelihood, num_components=components)
    x = all_sequences(levels, (1, 2, 2))
    log_p = model.log_prob(x)
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-9)
    assert log_p.std() > 0.01
    s = model.sample(20, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.long and int(s.min()) >= 0 and int(s.max()) < levels


def test_gaussian_likelihood_and_temperature_misuse_are_refused():
    from dgm.core.errors import ConfigError

    with pytest.raises(ConfigError, match="likelihood"):
        small_arm(DataSpec((4,), DataKind.DISCRETE, num_levels=3), likelihood="gaussian")
    model = small_arm(DataSpec((4,), DataKind.DISCRETE, num_levels=3), likelihood="discretized_logistic")
    with pytest.raises(ConfigError, match="temperature"):
        model.sample(2, temperature=-0.5)
    # a discretized logistic takes a temperature by scaling its logistics (as PixelCNN does)
    cold = model.sample(2, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, model.sample(2, temperature=0.0))


def test_log_prob_is_sum_of_categorical_terms():
    spec = DataSpec((1, 2, 3), DataKind.DISCRETE, num_levels=4)
    model = small_arm(spec)
    x = torch.randint(0, 4, (5, 1, 2, 3))
    logits = model.params(x)  # (5, 6, 4)
    manual = torch.log_softmax(logits, -1).gather(-1, x.reshape(5, 6, 1)).squeeze(-1).sum(-1)
    assert torch.allclose(model.log_prob(x), manual)
    assert torch.allclose(model.loss(x), -manual)


def test_first_position_does_not_depend_on_x():
    spec = DataSpec((10,), DataKind.DISCRETE, num_levels=5)
    model = small_arm(spec)
    x = torch.randint(0, 5, (50, 10))
    theta_1 = model.params(x)[:, 0]  # (50, 5)
    assert torch.allclose(theta_1, theta_1[:1].expand_as(theta_1))
    assert not torch.allclose(model.params(x)[:, 1], model.params(x)[:1, 1].expand(50, 5))


@pytest.mark.parametrize("j", [0, 3, 8])
def test_perturbing_x_j_changes_only_later_positions(j):
    spec = DataSpec((12,), DataKind.DISCRETE, num_levels=5)
    model = small_arm(spec, kernel_size=3)
    x = torch.randint(0, 5, (4, 12))
    x2 = x.clone()
    x2[:, j] = (x[:, j] + 2) % 5
    a, b = model.params(x), model.params(x2)
    assert torch.equal(a[:, : j + 1], b[:, : j + 1])  # θ_{<=j} untouched
    assert not torch.allclose(a[:, j + 1], b[:, j + 1])  # θ_{j+1} sees x_j


def test_receptive_field_is_respected_by_the_model():
    spec = DataSpec((30,), DataKind.DISCRETE, num_levels=4)
    model = small_arm(spec, kernel_size=2, num_layers=3, dilations=(1, 2, 3))
    r = model.receptive_field
    assert r == 7
    x = torch.randint(0, 4, (3, 30))
    x2 = x.clone()
    x2[:, 5] = (x[:, 5] + 1) % 4
    diff = (model.params(x) - model.params(x2)).abs().amax(dim=(0, 2))  # (30,)
    assert torch.equal(diff > 0, (torch.arange(30) > 5) & (torch.arange(30) <= 5 + r))


def reference_sample(model: ARM, n: int, generator: torch.Generator) -> torch.Tensor:
    """Listing 3.2's loop: a full pass over all D positions for every position."""
    dim = model.spec.dim
    x = torch.zeros(n, dim, dtype=torch.long)
    for d in range(dim):
        probs = torch.softmax(model._params_flat(x)[:, d], -1)
        x[:, d] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return x.reshape(n, *model.spec.event_shape)


def test_windowed_sampling_equals_full_pass_sampling():
    spec = DataSpec((1, 4, 6), DataKind.DISCRETE, num_levels=5)  # D = 24 > R = 7
    model = small_arm(spec, kernel_size=2, num_layers=3, dilations=(1, 2, 3), residual=True)
    fast = model.sample(20, generator=torch.Generator().manual_seed(3))
    slow = reference_sample(model, 20, torch.Generator().manual_seed(3))
    assert torch.equal(fast, slow)


@pytest.mark.parametrize("kind,levels", [(DataKind.DISCRETE, 17), (DataKind.BINARY, 2)])
def test_sample_shape_dtype_and_range(kind, levels):
    spec = DataSpec((1, 3, 4), kind, num_levels=levels)
    model = small_arm(spec)
    s = model.sample(64, generator=torch.Generator().manual_seed(0))
    assert s.shape == (64, 1, 3, 4) and s.dtype == torch.long
    assert int(s.min()) >= 0 and int(s.max()) <= levels - 1
    assert len(s.unique()) > 1
    model.log_prob(s)  # samples are valid input


def test_generator_makes_sampling_reproducible():
    spec = DataSpec((8,), DataKind.DISCRETE, num_levels=6)
    model = small_arm(spec)
    a = model.sample(32, generator=torch.Generator().manual_seed(7))
    b = model.sample(32, generator=torch.Generator().manual_seed(7))
    c = model.sample(32, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


class _SuccessorNet(nn.Module):
    """Deterministic conditionals: x_0 = 2, x_d = x_{d-1} + 1 mod L, as one-hot logits."""

    def __init__(self, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.dummy = nn.Parameter(torch.zeros(1, dtype=torch.float64))
        self.receptive_field = 1

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # h: (N, 1, T), values x / (L - 1)
        prev = torch.round(h[:, 0] * (self.levels - 1)).long()  # (N, T)
        target = torch.roll((prev + 1) % self.levels, 1, dims=1)
        target[:, 0] = 2  # padding side of the window only matters at the true position 0
        logits = torch.nn.functional.one_hot(target, self.levels).double() * 1e4
        return logits.transpose(1, 2)  # (N, L, T)


def test_deterministic_net_samples_the_argmax_sequence():
    levels = 5
    spec = DataSpec((9,), DataKind.DISCRETE, num_levels=levels)
    model = small_arm(spec)
    model.net = _SuccessorNet(levels)
    expected = torch.tensor([(2 + d) % levels for d in range(9)]).expand(6, 9)
    for temperature in (1.0, 0.5, 0.0):
        s = model.sample(6, generator=torch.Generator().manual_seed(0), temperature=temperature)
        assert torch.equal(s, expected)


def test_zero_temperature_is_greedy_decoding():
    spec = DataSpec((6,), DataKind.DISCRETE, num_levels=4)
    model = small_arm(spec)
    s = model.sample(3, temperature=0.0)
    assert torch.equal(s, s[:1].expand_as(s))  # no randomness at all
    # Each value is the argmax of its conditional given the sampled prefix.
    assert torch.equal(model.params(s).argmax(-1), s)


def test_declared_capabilities_and_registry():
    spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
    model = build_model("arm", spec, {"hidden": 16})
    assert isinstance(model, ARM)
    assert model.likelihood_on(DataKind.DISCRETE) is Likelihood.EXACT
    assert model.receptive_field == 25
    assert model.net.layers[-1].conv.out_channels == 17  # L read from the spec, not hard-coded
    tokens = DataSpec((5,), DataKind.TOKENS, num_levels=11)
    with pytest.raises(ConfigError, match="one_hot"):
        ARM(tokens, ARMConfig(**SMALL))
    tok_model = small_arm(tokens, input_encoding="one_hot")
    x = all_sequences(2, (5,)) * 5  # ids 0 and 5
    assert torch.isfinite(tok_model.log_prob(x)).all()
    with pytest.raises(ConfigError):
        ARM(DataSpec((2,), DataKind.CONTINUOUS), ARMConfig(**SMALL))


@pytest.mark.parametrize(
    "fields",
    [
        {"hidden": 0},
        {"kernel_size": 0},
        {"num_layers": 0},
        {"dilations": (1, 2)},
        {"dilations": (1, 0, 1, 1)},
        {"dropout": 1.0},
        {"input_encoding": "embedding"},
    ],
)
def test_bad_config_is_rejected_with_the_field_name(fields):
    name = next(iter(fields))
    with pytest.raises(ConfigError, match=name):
        ARMConfig(**fields)


def test_bad_input_raises_data_error():
    spec = DataSpec((1, 2, 2), DataKind.DISCRETE, num_levels=3)
    model = small_arm(spec)
    with pytest.raises(DataError, match="integer"):
        model.log_prob(torch.zeros(2, 1, 2, 2))
    with pytest.raises(DataError, match="shape"):
        model.loss(torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(DataError, match="0..2"):
        model.log_prob(torch.full((2, 1, 2, 2), 3))


@pytest.mark.slow
def test_training_lowers_the_nll():
    torch.manual_seed(0)
    spec = DataSpec((6,), DataKind.DISCRETE, num_levels=3)
    # Data from a deterministic-ish chain: x_d = x_{d-1} + 1 mod 3 with 10% noise.
    start = torch.randint(0, 3, (256, 1))
    x = (start + torch.arange(6)) % 3
    flip = torch.rand(x.shape) < 0.1
    x = torch.where(flip, torch.randint(0, 3, x.shape), x)
    model = ARM(spec, ARMConfig(hidden=16, kernel_size=2, num_layers=3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.loss(x).mean().item()
    for _ in range(100):
        opt.zero_grad()
        model.loss(x).mean().backward()
        opt.step()
    after = model.loss(x).mean().item()
    assert before > 6.0  # about 6 ln 3 = 6.6 at init
    assert after < 3.3  # learnable: the Bayes rate is about ln 3 + 5 H(0.93, 0.03, 0.03) ≈ 2.6
