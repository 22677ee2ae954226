"""The denoising networks: shapes, zero start, conditioning on t and y, smoothness, the U-Net's
wiring and receptive field, and the classifier-free guidance helpers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dgm.core.denoisers import (
    GaussianFourierEmbedding,
    SinusoidalEmbedding,
    TimeMLP,
    UNet,
    classifier_free_guidance,
    drop_labels,
    input_fourier_features,
)
from dgm.core.errors import ConfigError, DataError


def _small_mlp(dim: int = 64, **kwargs) -> TimeMLP:
    return TimeMLP(dim, hidden=32, num_hidden=2, time_dim=16, **kwargs)


def _small_unet(size: int = 8, mults=(1, 2), **kwargs) -> UNet:
    return UNet(1, size, base=8, mults=mults, **kwargs)


def _randomize_last(net: nn.Module) -> nn.Module:
    """De-zero the output layer so that the output depends on everything before it."""
    last = net.output if isinstance(net, TimeMLP) else net.conv_out
    with torch.no_grad():
        last.weight.normal_(0, 0.5)
        last.bias.normal_(0, 0.5)
    return net


# ---- embeddings and features ---------------------------------------------------------------


@pytest.mark.parametrize("embedding", [SinusoidalEmbedding(32), GaussianFourierEmbedding(32)])
def test_time_embeddings_are_bounded_and_tell_times_apart(embedding: nn.Module) -> None:
    t = torch.linspace(0, 1, 11)
    e = embedding(t)
    assert e.shape == (11, 32)
    assert e.abs().max() <= 1.0
    # each pair sin² + cos² = 1: the halves line up frequency by frequency
    assert torch.allclose(e[:, :16] ** 2 + e[:, 16:] ** 2, torch.ones(11, 16), atol=1e-5)
    assert torch.cdist(e, e).add(torch.eye(11)).min() > 1e-2


def test_sinusoidal_embedding_values() -> None:
    e = SinusoidalEmbedding(4, max_period=100.0, scale=10.0)(torch.tensor([0.3]))
    freqs = [1.0, 100.0 ** (-1 / 2)]
    expected = [math.sin(3 * f) for f in freqs] + [math.cos(3 * f) for f in freqs]
    assert torch.allclose(e[0], torch.tensor(expected), atol=1e-6)


def test_fourier_embedding_is_reproducible_from_a_generator() -> None:
    t = torch.rand(5)
    a = GaussianFourierEmbedding(16, generator=torch.Generator().manual_seed(3))
    b = GaussianFourierEmbedding(16, generator=torch.Generator().manual_seed(3))
    c = GaussianFourierEmbedding(16, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a(t), b(t))
    assert not torch.allclose(a(t), c(t))
    assert "w" in a.state_dict()  # the frequencies travel with a checkpoint


@pytest.mark.parametrize("make", [SinusoidalEmbedding, GaussianFourierEmbedding])
def test_embedding_dim_must_be_even(make) -> None:
    with pytest.raises(ConfigError, match="even"):
        make(7)


def test_input_fourier_features_shapes_and_values() -> None:
    flat = torch.rand(3, 5) * 2 - 1
    assert input_fourier_features(flat).shape == (3, 25)
    assert input_fourier_features(flat, ()).shape == (3, 5)
    images = torch.rand(2, 3, 4, 4) * 2 - 1
    out = input_fourier_features(images, (128, 256))
    assert out.shape == (2, 15, 4, 4)
    # channel blocks: h, sin 2^7, sin 2^8, cos 2^7, cos 2^8 (3 channels each)
    h = images[1, 2, 3, 0].item()
    got = out[1, 2::3, 3, 0]
    expected = [
        h,
        math.sin(2**7 * math.pi * h),
        math.sin(2**8 * math.pi * h),
        math.cos(2**7 * math.pi * h),
        math.cos(2**8 * math.pi * h),
    ]
    assert torch.allclose(got, torch.tensor(expected), atol=1e-4)


@pytest.mark.parametrize("levels", [17, 256])
def test_fourier_frequency_L_reads_the_offset_from_the_nearest_level(levels: int) -> None:
    """At f = L, sin(fπy) for y = a bin centre (2k + 1)/L - 1 plus δ is the same ±sin(Lπδ) for
    every level k: the feature that lets a denoiser round to the lattice at small noise."""
    k = torch.arange(levels, dtype=torch.float64)
    delta = 0.3 / levels
    y = ((2 * k + 1) / levels - 1 + delta).reshape(-1, 1)
    sin_f = input_fourier_features(y, (float(levels),))[:, 1]
    assert torch.allclose(sin_f.abs(), torch.full_like(sin_f, math.sin(math.pi * 0.3)))
    assert torch.allclose(sin_f, sin_f[0].expand_as(sin_f))  # one sign for every level


# ---- shapes and the zero start ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(64,), (1, 8, 8)])
def test_time_mlp_shapes_and_zero_start(shape) -> None:
    net = _small_mlp(64, fourier_frequencies=(128,))
    z = torch.randn(3, *shape)
    out = net(z, torch.rand(3))
    assert out.shape == z.shape
    assert torch.equal(out, torch.zeros_like(z))
    assert _randomize_last(net)(z, torch.rand(3)).abs().min() > 0


@pytest.mark.parametrize(
    "size, mults, kwargs",
    [
        (8, (1,), {}),
        (8, (1, 2), {}),
        (8, (1, 2, 2), {"attention_at": (2,)}),
        (28, (1, 2), {"attention_at": (14,)}),
        (28, (1, 2, 2), {"num_res_blocks": 2, "fourier_frequencies": (128, 256)}),
    ],
)
def test_unet_shapes_and_zero_start(size, mults, kwargs) -> None:
    net = _small_unet(size, mults, **kwargs)
    z = torch.randn(2, 1, size, size)
    out = net(z, torch.rand(2))
    assert out.shape == z.shape
    assert torch.equal(out, torch.zeros_like(z))
    assert _randomize_last(net)(z, torch.rand(2)).abs().max() > 0


def test_a_single_time_is_broadcast() -> None:
    net = _randomize_last(_small_mlp(4))
    z = torch.randn(3, 4)
    expected = net(z, torch.full((3,), 0.25))
    assert torch.allclose(net(z, torch.tensor(0.25)), expected)
    assert torch.allclose(net(z, 0.25), expected)
    with pytest.raises(DataError, match="t must have shape"):
        net(z, torch.rand(2))


def test_unet_parameter_counts_stay_small() -> None:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(UNet(1, 8, base=32, mults=(1, 2))) < 1_000_000
    assert count(UNet(1, 28, base=32, mults=(1, 2, 2))) < 1_500_000


# ---- conditioning on t and y ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sinusoidal", "fourier"])
def test_mlp_depends_on_time_and_label(kind) -> None:
    net = _randomize_last(_small_mlp(6, num_classes=3, time_embedding=kind))
    z = torch.randn(1, 6).expand(4, 6)
    by_time = net(z, torch.tensor([0.0, 0.1, 0.5, 1.0]))
    assert torch.cdist(by_time, by_time).add(torch.eye(4)).min() > 1e-3
    by_label = net(z, torch.full((4,), 0.5), torch.tensor([0, 1, 2, 3]))
    assert torch.cdist(by_label, by_label).add(torch.eye(4)).min() > 1e-3
    # None means "no label": the null class 3
    assert torch.equal(net(z, torch.full((4,), 0.5)), by_label[3:].expand(4, 6))


def test_unet_depends_on_time_and_label() -> None:
    net = _randomize_last(_small_unet(8, num_classes=2))
    z = torch.randn(1, 1, 8, 8).expand(3, 1, 8, 8)
    by_time = net(z, torch.tensor([0.0, 0.5, 1.0])).flatten(1)
    assert torch.cdist(by_time, by_time).add(torch.eye(3)).min() > 1e-3
    by_label = net(z, torch.full((3,), 0.5), torch.tensor([0, 1, 2])).flatten(1)
    assert torch.cdist(by_label, by_label).add(torch.eye(3)).min() > 1e-3
    assert torch.equal(net(z, torch.full((3,), 0.5)).flatten(1), by_label[2:].expand(3, 64))


@pytest.mark.parametrize("make", [lambda: _small_mlp(4), lambda: _small_unet(8)])
def test_unconditional_nets_reject_labels(make) -> None:
    net = make()
    z = torch.randn(2, 4) if isinstance(net, TimeMLP) else torch.randn(2, 1, 8, 8)
    with pytest.raises(DataError, match="num_classes=0"):
        net(z, torch.rand(2), torch.tensor([0, 1]))


def test_labels_out_of_range_are_rejected() -> None:
    net = _small_mlp(4, num_classes=3)
    with pytest.raises(DataError, match="0..3"):
        net(torch.randn(2, 4), torch.rand(2), torch.tensor([0, 4]))


# ---- smoothness and wiring -----------------------------------------------------------------


def test_time_mlp_jacobian_matches_finite_differences() -> None:
    torch.manual_seed(1)
    net = _randomize_last(TimeMLP(3, hidden=8, num_hidden=2, time_dim=8, num_classes=2)).double()
    z = torch.randn(2, 3, dtype=torch.float64)
    t = torch.tensor([0.3, 0.7], dtype=torch.float64)
    y = torch.tensor([1, 2])
    f = lambda x: net(x, t, y)  # noqa: E731
    jac = torch.autograd.functional.jacobian(f, z)  # (2, 3, 2, 3)
    eps = 1e-6
    fd = torch.zeros_like(jac)
    for i in range(2):
        for j in range(3):
            dz = torch.zeros_like(z)
            dz[i, j] = eps
            fd[:, :, i, j] = (f(z + dz) - f(z - dz)) / (2 * eps)
    assert jac.abs().max() > 1e-3
    assert torch.allclose(jac, fd, atol=1e-7, rtol=1e-6)
    # examples never mix
    assert torch.equal(jac[0, :, 1], torch.zeros(3, 3))
    assert torch.equal(jac[1, :, 0], torch.zeros(3, 3))


def _corner_gradient(net: UNet, size: int) -> torch.Tensor:
    """d out[0, 0, 0, 0] / d z[0, 0, -1, -1] through the convolutions alone.

    GroupNorm's statistics pool over all pixels, so with it every output depends on every
    input whatever the wiring; it is replaced by the identity to see the conv path only.
    """
    for module in list(net.modules()):
        for name, child in module.named_children():
            if isinstance(child, nn.GroupNorm):
                setattr(module, name, nn.Identity())
    z = torch.randn(1, 1, size, size, requires_grad=True)
    net(z, torch.tensor([0.5]))[0, 0, 0, 0].backward()
    return z.grad[0, 0, -1, -1]


def test_unet_output_sees_the_far_corner() -> None:
    assert _corner_gradient(_randomize_last(_small_unet(8, (1, 2))), 8).abs() > 0
    # At 28x28 the full-resolution convs reach 12 pixels (conv in, 2 down, 4 middle, 4 up,
    # conv out for a single level): the corner 27 pixels away is seen only through the
    # down/up path, and a single-level net does not see it at all.
    assert _corner_gradient(_randomize_last(_small_unet(28, (1, 2, 2))), 28).abs() > 0
    assert _corner_gradient(_randomize_last(_small_unet(28, (1,))), 28) == 0


@pytest.mark.parametrize(
    "net",
    [
        _small_mlp(6, num_classes=3, fourier_frequencies=(2,)),
        _small_unet(8, (1, 2), num_classes=3, attention_at=(8, 4), fourier_frequencies=(2,)),
    ],
    ids=["mlp", "unet"],
)
def test_every_parameter_gets_a_gradient(net: nn.Module) -> None:
    _randomize_last(net)
    shape = (4, 6) if isinstance(net, TimeMLP) else (4, 1, 8, 8)
    out = net(torch.randn(shape), torch.rand(4), torch.tensor([0, 1, 2, 3]))
    (out - torch.randn(shape)).pow(2).mean().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


# ---- constructor checks --------------------------------------------------------------------


def test_unet_rejects_sizes_the_levels_cannot_halve() -> None:
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*\\(len\\(mults\\) - 1\\) = 8"):
        UNet(1, 28, base=8, mults=(1, 2, 2, 2))
    with pytest.raises(ConfigError, match="divisible"):
        UNet(1, 7, base=8, mults=(1, 2))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: UNet(1, 8, base=8, attention_at=(3,)), "attention_at"),
        (lambda: UNet(1, 8, base=8, mults=()), "mults"),
        (lambda: UNet(1, 8, dropout=1.0), "dropout"),
        (lambda: TimeMLP(0), "dim"),
        (lambda: TimeMLP(4, time_dim=9), "time_dim"),
        (lambda: TimeMLP(4, time_embedding="learned"), "time_embedding"),
        (lambda: TimeMLP(4, num_classes=-1), "num_classes"),
    ],
)
def test_bad_constructor_arguments_raise_config_errors(make, message) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_wrong_input_shapes_raise_data_errors() -> None:
    with pytest.raises(DataError, match="64 features"):
        _small_mlp(64)(torch.randn(2, 63), torch.rand(2))
    with pytest.raises(DataError, match="1, 8, 8"):
        _small_unet(8)(torch.randn(2, 1, 16, 16), torch.rand(2))


# ---- classifier-free guidance --------------------------------------------------------------


def test_classifier_free_guidance_formula() -> None:
    cond, uncond = torch.randn(5, 3), torch.randn(5, 3)
    assert torch.equal(classifier_free_guidance(cond, uncond, 0.0), uncond)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 1.0), cond)
    assert torch.allclose(classifier_free_guidance(cond, uncond, 3.0), 3 * cond - 2 * uncond)


def test_drop_labels() -> None:
    y = torch.randint(0, 10, (10_000,))
    assert drop_labels(y, 0.0, 10) is y
    assert drop_labels(None, 0.5, 10) is None
    assert torch.equal(drop_labels(y, 1.0, 10), torch.full_like(y, 10))
    half = drop_labels(y, 0.5, 10, generator=torch.Generator().manual_seed(0))
    dropped = half == 10
    assert abs(dropped.float().mean().item() - 0.5) < 0.02
    assert torch.equal(half[~dropped], y[~dropped])
    again = drop_labels(y, 0.5, 10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(half, again)
    with pytest.raises(ConfigError, match="probability"):
        drop_labels(y, 1.5, 10)


def test_several_outputs_split_along_axis_one() -> None:
    mlp = TimeMLP(6, hidden=8, num_hidden=1, time_dim=4, outputs=2)
    unet = UNet(1, 8, base=8, mults=(1, 2), outputs=2)
    for net, z in ((mlp, torch.randn(3, 6)), (mlp, torch.randn(3, 1, 2, 3)),
                   (unet, torch.randn(3, 1, 8, 8))):
        out = net(z, torch.rand(3))
        assert out.shape == (3, 2 * z.shape[1], *z.shape[2:])
        assert all(part.shape == z.shape for part in out.chunk(2, 1))
