"""PixelCNN with masked 2-D convolutions (Book §3.2.6): masks, causality, no blind spot,
normalization, sampling."""

import itertools

import pytest
import torch

from dgm.core.base import Likelihood
from dgm.core.errors import ConfigError
from dgm.core.masked_conv import MaskedConv2d
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.autoregressive.pixelcnn import PixelCNN, PixelCNNConfig

SMALL = dict(hidden=6, num_layers=3, kernel_size_a=3, kernel_size_b=3)


def small_pixelcnn(spec: DataSpec, **overrides) -> PixelCNN:
    torch.manual_seed(0)
    return PixelCNN(spec, PixelCNNConfig(**{**SMALL, **overrides})).double().eval()


def all_images(levels: int, event_shape: tuple[int, ...]) -> torch.Tensor:
    dim = torch.Size(event_shape).numel()
    grid = torch.tensor(list(itertools.product(range(levels), repeat=dim)), dtype=torch.long)
    return grid.reshape(-1, *event_shape)


def input_jacobian(model: PixelCNN, event_shape) -> torch.Tensor:
    """|∂θ(c,i,j)/∂input(c',k,l)| summed over parameters, shape (C, H, W, C, H, W)."""
    c, h, w = event_shape
    x = torch.rand(1, c, h, w, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda t: model.output(model.body(t)), x)
    jac = jac.abs().reshape(c, -1, h, w, c, h, w).sum(1)  # sum over the P parameters
    return jac


def test_mask_pattern_3x3():
    a = MaskedConv2d(1, 1, 3, mask_type="A").mask[0, 0]
    b = MaskedConv2d(1, 1, 3, mask_type="B").mask[0, 0]
    assert torch.equal(a, torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(b, torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]]))


def test_channel_mask_at_centre_follows_rgb_order():
    a = MaskedConv2d(3, 6, 3, mask_type="A", data_channels=3).mask[:, :, 1, 1]
    b = MaskedConv2d(6, 6, 3, mask_type="B", data_channels=3).mask[:, :, 1, 1]
    groups_out = torch.arange(6) // 2
    assert torch.equal(a, (torch.arange(3)[None] < groups_out[:, None]).float())
    assert torch.equal(b, ((torch.arange(6) // 2)[None] <= groups_out[:, None]).float())
    # Off-centre positions before the centre are fully open, after it fully closed.
    m = MaskedConv2d(3, 6, 3, mask_type="A", data_channels=3).mask
    assert m[:, :, 0].eq(1).all() and m[:, :, 1, 0].eq(1).all() and m[:, :, 2].eq(0).all()


def test_masked_conv_preserves_size_and_masks_stay_after_training_step():
    conv = MaskedConv2d(2, 4, 5, mask_type="A")
    x = torch.randn(3, 2, 6, 7)
    out = conv(x)
    assert out.shape == (3, 4, 6, 7)
    out.sum().backward()
    assert (conv.conv.weight.grad * (1 - conv.mask)).abs().max() == 0


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("channels", [1, 2])
def test_causality_by_autograd(gated, channels):
    shape = (channels, 5, 5)
    spec = DataSpec(shape, DataKind.DISCRETE, num_levels=4)
    model = small_pixelcnn(spec, gated=gated)
    jac = input_jacobian(model, shape)
    c, h, w = shape
    for cc, i, j in itertools.product(range(c), range(h), range(w)):
        for c2, k, l in itertools.product(range(c), range(h), range(w)):
            after = (k, l) > (i, j) or ((k, l) == (i, j) and c2 >= cc)
            if after:
                assert jac[cc, i, j, c2, k, l] == 0, (cc, i, j, c2, k, l)
    # ... and the dependence on the strict past is really there (left neighbour, pixel above).
    assert jac[0, 2, 2, 0, 2, 1] > 0 and jac[0, 2, 2, 0, 1, 2] > 0
    if channels == 2:
        assert jac[1, 2, 2, 0, 2, 2] > 0  # G sees R of the same pixel


def test_gated_model_has_no_blind_spot():
    shape = (1, 6, 6)
    spec = DataSpec(shape, DataKind.DISCRETE, num_levels=4)
    gated = input_jacobian(small_pixelcnn(spec, gated=True), shape)[0, :, :, 0]
    plain = input_jacobian(small_pixelcnn(spec, gated=False), shape)[0, :, :, 0]
    i, j = 3, 1
    assert gated[i, j, i - 1, j + 1] > 0  # up and to the right
    assert gated[i, j, i - 2, j + 2] > 0
    assert gated[i, j, i - 1, j + 2] > 0  # the raster-masked stack's blind spot
    assert gated[i, j, i - 1, j + 3] > 0
    assert plain[i, j, i - 1, j + 2] == 0  # the plain PixelCNN misses it ...
    assert plain[i, j, i - 1, j + 1] > 0  # ... but not the diagonal


CASES = [
    ((1, 2, 2), DataKind.DISCRETE, 3, "categorical", 1),
    ((1, 2, 2), DataKind.DISCRETE, 3, "discretized_logistic", 1),
    ((1, 2, 2), DataKind.DISCRETE, 3, "discretized_logistic", 2),
    ((2, 1, 2), DataKind.DISCRETE, 3, "categorical", 1),
    ((1, 2, 2), DataKind.BINARY, 2, "bernoulli", 1),
    ((1, 2, 2), DataKind.BINARY, 2, "auto", 1),
]


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("shape,kind,levels,likelihood,k", CASES)
def test_pmf_sums_to_one_over_all_images(shape, kind, levels, likelihood, k, gated):
    spec = DataSpec(shape, kind, num_levels=levels if kind is DataKind.DISCRETE else None)
    model = small_pixelcnn(spec, likelihood=likelihood, num_components=k, gated=gated,
                           hidden=6)
    x = all_images(levels, shape)
    log_p = model.log_prob(x)
    assert log_p.shape == (levels ** 4,) and log_p.dtype == torch.float64
    assert torch.logsumexp(log_p, 0).exp().item() == pytest.approx(1.0, abs=1e-10)
    assert log_p.std() > 1e-3  # not trivially uniform
    assert torch.allclose(model.loss(x), -log_p)


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic"])
def test_samples_shape_dtype_range_and_reproducibility(likelihood):
    spec = DataSpec((2, 3, 4), DataKind.DISCRETE, num_levels=5)
    model = small_pixelcnn(spec, likelihood=likelihood, num_components=2).train()
    s = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert model.training  # the mode is restored
    assert s.shape == (7, 2, 3, 4) and s.dtype == torch.long
    assert s.min() >= 0 and s.max() <= 4
    s2 = model.sample(7, generator=torch.Generator().manual_seed(1))
    assert torch.equal(s, s2)
    assert model.sample(0).shape == (0, 2, 3, 4)


def test_binary_samples():
    spec = DataSpec((1, 4, 4), DataKind.BINARY)
    model = small_pixelcnn(spec)
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.dtype == torch.long and set(s.unique().tolist()) <= {0, 1}


@pytest.mark.parametrize("likelihood", ["categorical", "discretized_logistic", "bernoulli"])
def test_temperature_zero_is_greedy_argmax(likelihood):
    kind = DataKind.BINARY if likelihood == "bernoulli" else DataKind.DISCRETE
    spec = DataSpec((2, 3, 3), kind, num_levels=None if kind is DataKind.BINARY else 6)
    model = small_pixelcnn(spec, likelihood=likelihood)
    x = model.sample(4, temperature=0.0, generator=torch.Generator().manual_seed(0))
    y = model.sample(4, temperature=0.0, generator=torch.Generator().manual_seed(9))
    assert torch.equal(x, y)
    # Greedy decoding is the fixed point: every coordinate is the mode given those before it.
    assert torch.equal(model.head.mode(model.params(x)), x.reshape(4, -1))


def test_low_temperature_approaches_argmax_and_validation():
    spec = DataSpec((1, 3, 3), DataKind.DISCRETE, num_levels=4)
    model = small_pixelcnn(spec)
    cold = model.sample(3, temperature=1e-4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(cold, model.sample(3, temperature=0.0))
    with pytest.raises(ConfigError):
        model.sample(2, temperature=-1.0)
    with pytest.raises(ConfigError):
        PixelCNN(DataSpec((16,), DataKind.DISCRETE, num_levels=4))
    with pytest.raises(ConfigError):
        PixelCNN(DataSpec((3, 4, 4), DataKind.DISCRETE, num_levels=4),
                 PixelCNNConfig(hidden=8))
    with pytest.raises(ConfigError):
        PixelCNNConfig(kernel_size_b=4)


def test_registry_and_defaults():
    spec = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
    model = build_model("pixelcnn", spec, {"hidden": 16})
    assert isinstance(model, PixelCNN)
    assert model.likelihood_on(DataKind.DISCRETE) is Likelihood.EXACT
    assert model.output[-1].conv.out_channels == 17
    x = torch.randint(0, 17, (3, 1, 8, 8))
    loss = model.loss(x)
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.mean().backward()
