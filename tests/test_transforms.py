"""Mathematical properties of the flow transforms (float64): invertibility, log-dets against
the autograd Jacobian, composition order and volume preservation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dgm.core.errors import ConfigError, DataError
from dgm.core.nn import mlp
from dgm.core.transforms import (
    ActNorm,
    AffineCoupling,
    Householder,
    InvertibleLinear,
    MaskedAutoregressiveAffine,
    Squeeze,
    Compose,
    ConvCoupling,
    ElementwiseAffine,
    MaskedAutoregressiveSpline,
    MultiScale,
    Planar,
    Radial,
    SplineCoupling,
    Sylvester,
    channel_mask,
    checkerboard_mask,
    Inverse,
    Logit,
    Permutation,
    Transform,
    alternating_mask,
    half_mask,
)

D = 5


def _randomize(module: nn.Module, scale: float = 0.5) -> nn.Module:
    """Replace every parameter with random values so no layer is the identity."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn_like(p))
    return module


def _coupling(mask: torch.Tensor, context: int = 0, affine: bool = True) -> AffineCoupling:
    d_a = int(mask.sum())
    net = mlp(d_a + context, 16, (2 if affine else 1) * (D - d_a), num_hidden=2)
    return _randomize(AffineCoupling(mask, net, scale_bound=1.5, affine=affine)).double()


def _initialized(t: ActNorm) -> ActNorm:
    t.initialized.fill_(True)  # keep the random parameters: no data-dependent init
    return t


def _elementwise() -> ElementwiseAffine:
    return _randomize(ElementwiseAffine((D,), learnable=True)).double()


def _all_transforms() -> dict[str, Transform]:
    transforms: dict[str, Transform] = {
        "coupling_half": _coupling(half_mask(D)),
        "coupling_half_last": _coupling(half_mask(D, first=False)),
        "coupling_alternating": _coupling(alternating_mask(D, even=False)),
        "additive_coupling": _coupling(half_mask(D), affine=False),
        "actnorm": _initialized(_randomize(ActNorm(D)).double()),
        "lu_linear": _randomize(InvertibleLinear(D), 0.3).double(),
        "maf": _randomize(MaskedAutoregressiveAffine(D, 16, 2), 0.3).double(),
        "householder": _randomize(Householder(D, 3), 1.0).double(),
        "flip": Permutation.reverse(D),
        "random_perm": Permutation.random(D, generator=torch.Generator().manual_seed(3)),
        "elementwise": _elementwise(),
        "logit": Logit(0.05),
        "spline_coupling": _randomize(
            SplineCoupling.with_mlp(half_mask(D), 16, 1, num_bins=4, zero_init=False), 0.3
        ).double(),
        "spline_autoregressive": _randomize(
            MaskedAutoregressiveSpline(D, 16, 1, num_bins=4), 0.3
        ).double(),
        "planar": _randomize(Planar(D), 0.8).double(),
        "radial": _randomize(Radial(D), 0.8).double(),
        "sylvester_orthogonal": _randomize(Sylvester(D, 3, "orthogonal"), 0.5).double(),
        "sylvester_householder": _randomize(Sylvester(D, variant="householder"), 0.5).double(),
        "sylvester_triangular": _randomize(Sylvester(D, variant="triangular"), 0.5).double(),
        "compose": Compose(
            [
                _elementwise(),
                _coupling(half_mask(D)),
                Permutation.reverse(D),
                _coupling(half_mask(D)),
            ]
        ),
    }
    transforms.update({f"inverse_{k}": Inverse(v) for k, v in list(transforms.items())})
    return transforms


TRANSFORMS = _all_transforms()


def _jacobian_logabsdet(f, x: torch.Tensor) -> torch.Tensor:
    """log |det ∂f(x_n)/∂x_n| per example, by brute-force autograd."""
    out = []
    for xn in x:
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0))[0][0], xn)
        out.append(torch.linalg.slogdet(jac).logabsdet)
    return torch.stack(out)


def _points(n: int, unit: bool) -> torch.Tensor:
    if unit:
        return torch.rand(n, D, dtype=torch.float64)
    return 2.0 * torch.randn(n, D, dtype=torch.float64)


def _inputs(transform: Transform, n: int) -> torch.Tensor:
    """Points of the domain of ``forward``: (0, 1) for the logit, R otherwise."""
    return _points(n, isinstance(transform, Logit))


def _latents(transform: Transform, n: int) -> torch.Tensor:
    """Points of the domain of ``inverse``: (0, 1) for the inverse logit, R otherwise."""
    return _points(n, isinstance(transform, Inverse) and isinstance(transform.transform, Logit))


@pytest.fixture(params=sorted(TRANSFORMS))
def transform(request: pytest.FixtureRequest) -> Transform:
    return TRANSFORMS[request.param]


def test_inverse_undoes_forward(transform: Transform) -> None:
    x = _inputs(transform, 7)
    z, _ = transform(x)
    x_back, _ = transform.inverse(z)
    assert not torch.allclose(z, x)  # a real map, not the identity
    torch.testing.assert_close(x_back, x, atol=1e-10, rtol=1e-10)


def test_forward_logabsdet_equals_autograd_slogdet(transform: Transform) -> None:
    x = _inputs(transform, 4)
    _, logabsdet = transform(x)
    assert logabsdet.shape == (4,)
    torch.testing.assert_close(logabsdet, _jacobian_logabsdet(transform, x))


def test_inverse_logabsdet_equals_autograd_slogdet(transform: Transform) -> None:
    z = _latents(transform, 4)
    _, logabsdet = transform.inverse(z)
    torch.testing.assert_close(logabsdet, _jacobian_logabsdet(transform.inverse, z))


def test_forward_and_inverse_logabsdets_sum_to_zero(transform: Transform) -> None:
    x = _inputs(transform, 6)
    z, ld_forward = transform(x)
    _, ld_inverse = transform.inverse(z)
    torch.testing.assert_close(ld_forward + ld_inverse, torch.zeros(6, dtype=torch.float64))


def test_volume_preserving_flag_holds(transform: Transform) -> None:
    x = _inputs(transform, 6)
    _, logabsdet = transform(x)
    is_zero = bool(torch.allclose(logabsdet, torch.zeros_like(logabsdet)))
    assert transform.volume_preserving == is_zero


def test_permutations_are_volume_preserving_and_invert() -> None:
    for perm in (Permutation.reverse(D), Permutation.random(D)):
        assert perm.volume_preserving
        x = torch.randn(3, D)
        z, ld = perm(x)
        assert torch.equal(ld, torch.zeros(3))
        assert torch.equal(perm.inverse(z)[0], x)
        assert torch.equal(torch.sort(z, dim=1).values, torch.sort(x, dim=1).values)
    flip = Permutation.reverse(D)
    x = torch.randn(3, D)
    assert torch.equal(flip(x)[0], x.flip(1))
    assert torch.equal(flip(flip(x)[0])[0], x)  # the flip is its own inverse


def test_compose_applies_in_list_order_and_sums_logdets() -> None:
    a, b = _coupling(half_mask(D)), _elementwise()
    x = torch.randn(5, D, dtype=torch.float64)
    z, ld = Compose([a, b])(x)
    h, ld_a = a(x)
    z_expected, ld_b = b(h)
    torch.testing.assert_close(z, z_expected)
    torch.testing.assert_close(ld, ld_a + ld_b)
    z_other_order, _ = Compose([b, a])(x)
    assert not torch.allclose(z, z_other_order)
    x_back, ld_inv = Compose([a, b]).inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_inv, -ld)


def test_compose_flags() -> None:
    perms = Compose([Permutation.reverse(D), Permutation.random(D)])
    assert perms.volume_preserving
    assert not Compose([Permutation.reverse(D), _elementwise()]).volume_preserving
    with pytest.raises(ConfigError):
        Compose([])


def test_coupling_keeps_conditioning_part_and_log_scales_bounded() -> None:
    mask = alternating_mask(D)
    layer = _coupling(mask)
    x = 100.0 * torch.randn(8, D, dtype=torch.float64)  # drive the tanh into saturation
    z, ld = layer(x)
    assert torch.equal(z[:, mask], x[:, mask])
    bound = layer.scale_bound.abs().sum()
    assert bool((ld.abs() <= bound + 1e-12).all())


def test_zero_conditioner_gives_identity() -> None:
    net = mlp(3, 8, 4, num_hidden=1)
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    layer = AffineCoupling(half_mask(D), net)
    x = torch.randn(4, D)
    z, ld = layer(x)
    assert torch.equal(z, x)
    assert torch.equal(ld, torch.zeros(4))


def test_coupling_with_context_is_invertible_and_depends_on_it() -> None:
    layer = _coupling(half_mask(D), context=2)
    x = torch.randn(4, D, dtype=torch.float64)
    c1, c2 = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    z1, ld1 = layer(x, c1)
    z2, _ = layer(x, c2)
    assert not torch.allclose(z1, z2)
    x_back, ld_inv = layer.inverse(z1, c1)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld1 + ld_inv, torch.zeros(4, dtype=torch.float64))


def test_elementwise_fit_standardizes_and_counts_logdet() -> None:
    x = 3.0 + 2.0 * torch.randn(5000, D, dtype=torch.float64)
    t = ElementwiseAffine((D,)).double()
    assert list(t.parameters()) == []  # fixed: buffers, not parameters
    t.fit(x)
    z, ld = t(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(D, dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(D, dtype=torch.float64))
    torch.testing.assert_close(ld, -torch.log(x.std(0)).sum().expand(5000))


def test_elementwise_works_on_image_events() -> None:
    t = _randomize(ElementwiseAffine((1, 2, 3), learnable=True)).double()
    assert t.event_dim == 3
    x = torch.randn(4, 1, 2, 3, dtype=torch.float64)
    z, ld = t(x)
    assert ld.shape == (4,)
    jac = _jacobian_logabsdet(lambda v: (t(v.reshape(1, 1, 2, 3))[0].reshape(1, 6), None),
                              x.reshape(4, 6))
    torch.testing.assert_close(ld, jac)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ConfigError):
        AffineCoupling(torch.ones(D, dtype=torch.bool), nn.Identity())
    with pytest.raises(ConfigError):
        Permutation(torch.tensor([0, 0, 1]))
    with pytest.raises(DataError):
        _coupling(half_mask(D))(torch.randn(3, D + 1, dtype=torch.float64))


def _image_transform(kind: str, c: int, h: int, w: int) -> Transform:
    if kind == "actnorm":
        return _initialized(_randomize(ActNorm(c, event_dim=3)).double())
    if kind == "lu":
        return _randomize(InvertibleLinear(c, event_dim=3), 0.3).double()
    if kind == "checkerboard":
        return _randomize(ConvCoupling(checkerboard_mask(c, h, w), 8, context=2), 0.3).double()
    if kind == "channel":
        return _randomize(ConvCoupling(channel_mask(c, h, w), 8, context=2), 0.3).double()
    if kind == "additive":
        return _randomize(ConvCoupling(channel_mask(c, h, w), 8, affine=False), 0.3).double()
    assert kind in ("glow", "realnvp")
    t = MultiScale((c, h, w), levels=2, steps=2, hidden=8, kind=kind, context=2)
    for m in t.modules():
        if isinstance(m, ActNorm):
            _initialized(m)
    return _randomize(t, 0.2).double()


@pytest.mark.parametrize(
    "kind", ["actnorm", "lu", "checkerboard", "channel", "additive", "glow", "realnvp"]
)
def test_image_event_transforms_invert_and_count_every_pixel(kind: str) -> None:
    torch.manual_seed(0)
    c, h, w = 3, 4, 4
    t = _image_transform(kind, c, h, w)
    x = torch.randn(4, c, h, w, dtype=torch.float64)
    ctx = torch.randn(4, 2, dtype=torch.float64)
    z, ld = t(x, ctx)
    back, ld_inv = t.inverse(z, ctx)
    assert torch.allclose(back, x, atol=1e-10)
    assert torch.allclose(ld + ld_inv, torch.zeros(4, dtype=torch.float64))
    assert z.numel() == x.numel() and not torch.allclose(z.reshape(x.shape), x)
    if kind == "additive":
        assert torch.allclose(ld, torch.zeros(4, dtype=torch.float64))
    for xn, ldn, cn in zip(x, ld, ctx):
        jac = torch.autograd.functional.jacobian(
            lambda v: t(v.unsqueeze(0), cn.unsqueeze(0))[0][0], xn
        )
        expected = torch.linalg.slogdet(jac.reshape(c * h * w, c * h * w)).logabsdet
        assert torch.allclose(ldn, expected, atol=1e-9)


def test_actnorm_initializes_from_the_first_training_batch() -> None:
    x = 3.0 + 2.0 * torch.randn(500, 2, 4, 4, dtype=torch.float64)
    t = ActNorm(2, event_dim=3).double()
    z, _ = t(x)
    per_channel = z.transpose(0, 1).reshape(2, -1)
    assert torch.allclose(per_channel.mean(1), torch.zeros(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(per_channel.std(1), torch.ones(2, dtype=torch.float64), atol=1e-10)
    loc = t.loc.clone()
    t(x + 5.0)  # initialized once only
    assert torch.equal(t.loc, loc)


def test_lu_weight_determinant_matches_its_diagonal() -> None:
    t = _randomize(InvertibleLinear(6, generator=torch.Generator().manual_seed(1)), 0.3).double()
    assert torch.allclose(torch.linalg.slogdet(t.weight()).logabsdet, t.log_s.sum())
    fresh = InvertibleLinear(6, generator=torch.Generator().manual_seed(1)).double()
    w = fresh.weight()  # starts as a rotation
    assert torch.allclose(w @ w.T, torch.eye(6, dtype=torch.float64), atol=1e-6)


def test_maf_jacobian_is_lower_triangular() -> None:
    t = _randomize(MaskedAutoregressiveAffine(D, 16, 2), 0.3).double()
    x = torch.randn(D, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0))[0][0], x)
    assert torch.count_nonzero(torch.triu(jac, diagonal=1)) == 0
    assert torch.count_nonzero(torch.tril(jac, diagonal=-1)) > 0  # and not diagonal


def test_householder_matrix_is_orthogonal() -> None:
    t = _randomize(Householder(D, 4), 1.0).double()
    w = t(torch.eye(D, dtype=torch.float64))[0]  # rows: images of the basis vectors
    assert torch.allclose(w @ w.T, torch.eye(D, dtype=torch.float64), atol=1e-12)


def test_squeeze_moves_each_patch_into_channels_and_inverts() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).reshape(2, 1, 4, 4)
    z, ld = Squeeze()(x)
    assert z.shape == (2, 4, 2, 2) and torch.equal(ld, torch.zeros(2, dtype=torch.float64))
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left 2x2 patch
    assert torch.equal(Squeeze().inverse(z)[0], x)
    with pytest.raises(DataError):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_masks_have_the_checkerboard_and_channel_patterns() -> None:
    board = checkerboard_mask(2, 3, 3)
    assert board.shape == (2, 3, 3) and bool(board[0, 0, 0]) and not bool(board[0, 0, 1])
    assert torch.equal(board[0], board[1])
    assert torch.equal(checkerboard_mask(2, 3, 3, parity=1), ~board)
    ch = channel_mask(4, 2, 2)
    assert ch[:2].all() and not ch[2:].any()


def test_conv_coupling_leaves_masked_pixels_and_depends_on_context() -> None:
    t = _image_transform("checkerboard", 1, 4, 4)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    c1, c2 = torch.zeros(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    z1, _ = t(x, c1)
    z2, _ = t(x, c2)
    keep = checkerboard_mask(1, 4, 4).expand(3, 1, 4, 4)
    assert torch.equal(z1[keep], x[keep])
    assert not torch.allclose(z1[~keep], z2[~keep])
    with pytest.raises(DataError):
        t(x)


def test_multiscale_factors_out_half_the_channels_per_level() -> None:
    t = MultiScale((1, 8, 8), levels=3, steps=1, hidden=4, split_prior=False)
    assert t.out_shapes == [(2, 4, 4), (4, 2, 2)] and t.kept_shapes[-1] == (16, 1, 1)
    with torch.no_grad():
        z, _ = t(torch.randn(2, 1, 8, 8))
    assert z.shape == (2, 64)
    with pytest.raises(ConfigError):
        MultiScale((1, 6, 6), levels=2)


def test_maf_with_context_stays_autoregressive_and_every_output_reads_the_context() -> None:
    torch.manual_seed(0)
    t = _randomize(MaskedAutoregressiveAffine(D, 32, 2, context=3), 0.3).double()
    x = torch.randn(1, D, dtype=torch.float64)
    c = torch.randn(1, 3, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: t(v.unsqueeze(0), c)[0][0], x[0])
    assert torch.allclose(jac.triu(1), torch.zeros_like(jac))
    xs, cs = torch.randn(50, D, dtype=torch.float64), torch.randn(50, 3, dtype=torch.float64)
    z1, _ = t(xs, cs)
    z2, _ = t(xs, cs + 1.0)
    assert bool(((z1 - z2).abs() > 1e-6).any(0).all())  # the first coordinate included
    back, _ = t.inverse(z1, cs)
    assert torch.allclose(back, xs, atol=1e-10)
