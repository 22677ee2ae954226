"""The pixel-domain codec: bins of Δ levels coded under an exact ARM, dequantized inside each
bin; real files that decode to its reconstruction, at the ARM's own code length."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.coding import compress, decompress
from dgm.coding.sequential import decode_symbols
from dgm.core.errors import ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec

SPEC = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
PIXELCNN = {"name": "pixelcnn", "hidden": 8, "num_layers": 2}


def _codec(step: int = 4, entropy_model: dict | None = None, seed: int = 0, spec=SPEC):
    torch.manual_seed(seed)
    return build_model("pixel_codec", spec, {"step": step, "hidden": 8,
                                             "entropy_model": entropy_model or PIXELCNN})


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("step, bins", [(1, 17), (2, 9), (4, 5), (5, 4), (8, 3), (9, 2)])
def test_the_bins_cut_the_levels_into_steps(step, bins):
    codec = _codec(step, {"name": "categorical_mixture", "num_components": 2})
    assert codec.num_bins == bins == codec.bins.spec.num_levels
    levels = torch.arange(17).view(1, 1, 1, 17).expand(1, 1, 8, 17)[..., :8]
    assert torch.equal(codec.quantize(levels), levels // step)
    assert int(codec.high[-1]) == 16 and int(codec.low[-1]) == step * (bins - 1)


def test_bins_of_unequal_widths():
    codec = build_model("pixel_codec", SPEC, {"edges": [1, 9], "entropy_model": {
        "name": "categorical_mixture", "num_components": 2}})
    assert codec.num_bins == 3
    levels = torch.arange(17).view(1, 1, 1, 17)
    assert codec.quantize(levels).flatten().tolist() == [0] + [1] * 8 + [2] * 8
    assert codec.low.tolist() == [0, 1, 9] and codec.high.tolist() == [0, 8, 16]
    x = _digits(20)
    assert torch.equal(codec.quantize(codec.reconstruct(x)), codec.quantize(x))
    assert torch.equal(codec.reconstruct(x)[x == 0], x[x == 0])  # a one-level bin is exact


@pytest.mark.parametrize("step", [2, 4, 6])
def test_every_decoded_pixel_stays_inside_its_bin(step):
    codec = _codec(step)
    for p in codec.dequantizer.parameters():  # a dequantizer far from its start
        torch.nn.init.normal_(p, std=3.0)
    x = _digits(30)
    back = codec.reconstruct(x)
    assert torch.equal(back // step, x // step)
    assert int((back - x).abs().max()) <= step - 1


def test_a_step_of_one_is_lossless_coding():
    codec = _codec(1).eval()
    x = _digits(17, seed=3)
    assert torch.equal(decompress(codec, compress(codec, x)[0]), x)


@pytest.mark.parametrize("entropy_model", [PIXELCNN, {"name": "arm", "hidden": 8},
                                           {"name": "categorical_mixture",
                                            "num_components": 3}], ids=lambda m: m["name"])
def test_a_file_holds_the_bins_and_decodes_to_the_reconstruction(entropy_model):
    codec = _codec(4, entropy_model)
    x = _digits(21, seed=1)
    codec.loss(x).mean().backward()
    codec.eval()
    data, report = compress(codec, x)
    assert torch.equal(decode_symbols(codec, data), (x // 4).reshape(21, -1))
    assert torch.equal(decompress(codec, data), codec.reconstruct(x))
    assert report.mse == pytest.approx(float((codec.reconstruct(x) - x).double().pow(2).mean()))


def test_the_real_rate_is_the_arms_code_length_of_the_bins():
    codec = _codec(4).eval()
    x = _digits(400, seed=2)
    with torch.no_grad():
        distortion, rate = codec.loss_terms(x)
        nll = -codec.bins.log_prob(x // 4).double().sum()
    _, report = compress(codec, x)
    assert rate.double().sum() * 64 == pytest.approx(float(nll / math.log(2)), rel=1e-5)
    assert report.model_bits == pytest.approx(float(nll / math.log(2)), rel=1e-4)
    assert report.model_bits <= report.payload_bits <= report.model_bits * 1.001 + 64


def test_training_the_dequantizer_beats_the_middle_of_the_bin():
    """Most digit pixels are 0: the dequantizer learns to put the lowest bin near 0."""
    from dgm.data import load

    x = load("digits").split("train").x[:256]
    codec = _codec(4, {"name": "categorical_mixture", "num_components": 2})
    middle = float(((x // 4) * 4 + 1.5).clamp_max(16).sub(x).pow(2).mean())
    opt = torch.optim.Adam(codec.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        codec.loss(x).mean().backward()
        opt.step()
    codec.eval()
    assert float((codec.reconstruct(x) - x).double().pow(2).mean()) < 0.8 * middle


def test_samples_are_dequantized_bins():
    codec = _codec(4).eval()
    s = codec.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and s.dtype == SPEC.dtype
    assert int(s.min()) >= 0 and int(s.max()) <= 16


@pytest.mark.parametrize("options, message", [
    ({"step": 17}, "one bin"),
    ({"step": 0}, "step"),
    ({"entropy_model": {"name": "vae"}}, "conditionals"),
    ({"entropy_model": {}}, "name"),
    ({"edges": [4, 4]}, "increasing"),
    ({"edges": [0, 4]}, "increasing"),
    ({"edges": [4, 17]}, "beyond"),
])
def test_configs_that_do_not_fit_are_refused(options, message):
    with pytest.raises(ConfigError, match=message):
        build_model("pixel_codec", SPEC, options)
