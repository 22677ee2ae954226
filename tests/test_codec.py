"""Neural lossy codecs (Book ch. 10): quantizers, entropy models, the rate-distortion objective,
and real files that decode to the model's own reconstruction."""

from __future__ import annotations

import math

import pytest
import torch

from dgm.coding import compress, decompress
from dgm.coding.container import Container, Kind
from dgm.coding.sequential import example_bits
from dgm.core.errors import CodecError, ConfigError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec
from dgm.models.compression import CodebookQuantizer, RoundingQuantizer

SPEC = DataSpec((1, 8, 8), DataKind.DISCRETE, num_levels=17)
SMALL = {"hidden": 16, "code_dim": 6}
SETTINGS = [
    {"quantizer": "codebook", "entropy": "uniform"},
    {"quantizer": "codebook", "entropy": "categorical"},
    {"quantizer": "codebook", "entropy": "autoregressive"},
    {"quantizer": "noise", "entropy": "factorized"},
    {"quantizer": "round", "entropy": "factorized"},
    {"quantizer": "noise", "entropy": "hyperprior", "hyper_dim": 3},
    {"transform": "conv", "code_dim": 3, "quantizer": "noise", "entropy": "factorized"},
    {"transform": "conv", "code_dim": 3, "quantizer": "noise", "entropy": "hyperprior",
     "hyper_dim": 4},
    {"quantizer": "noise", "entropy": "autoregressive"},
]


def _digits(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 17, (n, 1, 8, 8), generator=g)


def _codec(options: dict, seed: int = 0):
    torch.manual_seed(seed)
    return build_model("codec", SPEC, {**SMALL, **options})


# -- quantizers -------------------------------------------------------------------------------

def test_the_codebook_snaps_to_the_nearest_codeword_and_passes_gradients_to_the_encoder():
    q = CodebookQuantizer(4, temperature=1.0)
    y = torch.tensor([[-3.0, -0.5, 0.1, 0.7, 9.0]], requires_grad=True)
    out = q(y)
    nearest = (y.detach().unsqueeze(-1) - q.codebook.detach()).abs().argmin(-1)
    assert torch.equal(out.symbols, nearest)
    assert torch.allclose(out.values, q.codebook.detach()[nearest])
    (out.values * torch.arange(5.0)).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0  # the book's τ = 1e7 gives exactly 0


def test_the_books_temperature_blocks_the_encoders_gradient():
    """Why the straight-through repair is there: at τ = 1e7 the softmax is saturated."""
    q = CodebookQuantizer(8, temperature=1e7)
    y = torch.randn(1, 50, requires_grad=True)
    q(y).values.sum().backward()
    assert y.grad.abs().max() == 0


def test_noise_in_training_rounding_at_test():
    q = RoundingQuantizer("noise")
    y = torch.linspace(-3, 3, 101).view(1, -1)
    q.train()
    noisy = q(y).values
    assert (noisy - y).abs().max() <= 0.5 and not torch.equal(noisy, torch.round(y))
    q.eval()
    assert torch.equal(q(y).values, torch.round(y))
    ste = RoundingQuantizer("ste").train()
    z = y.clone().requires_grad_(True)
    out = ste(z)
    out.values.sum().backward()
    assert torch.equal(out.values.detach(), torch.round(y)) and torch.all(z.grad == 1)


# -- entropy models ---------------------------------------------------------------------------

@pytest.mark.parametrize("options", SETTINGS[:5] + SETTINGS[6:7] + SETTINGS[8:], ids=str)
def test_the_coders_pmf_sums_to_one_and_matches_the_training_rate_at_test(options):
    """In eval mode the training rate (nats) is the -log of the pmf the coder uses (for the
    factorized and ARM models, where the two are the same table)."""
    codec = _codec(options).eval()
    x = _digits(5)
    with torch.no_grad():
        nats, _ = codec.entropy.rate(codec.analysis(x))
    own, _ = example_bits(codec, x)
    if options["quantizer"] == "codebook" or options["entropy"] != "hyperprior":
        # the file's window cuts the integer pmf's tails: the coder's bits can only be fewer
        assert torch.all(own <= nats.double() / math.log(2) + 1e-4)
        if options["quantizer"] == "codebook":
            assert torch.allclose(own, nats.double() / math.log(2), rtol=1e-4)


def test_the_gaussian_context_model_reads_only_earlier_positions():
    codec = _codec(SETTINGS[8]).eval()
    values = torch.randn(3, codec.code_size).round()
    mean, scale = codec.entropy.params(values)
    for s in (0, 2, codec.code_size - 1):
        changed = values.clone()
        changed[:, s] += 5
        mean2, scale2 = codec.entropy.params(changed)
        assert torch.equal(mean[:, :s + 1], mean2[:, :s + 1])
        assert torch.equal(scale[:, :s + 1], scale2[:, :s + 1])
        if s < codec.code_size - 1:
            assert not torch.equal(mean[:, s + 1:], mean2[:, s + 1:])


def test_the_hyperprior_rate_is_the_sum_of_its_two_codes():
    codec = _codec(SETTINGS[5]).eval()
    x = _digits(4)
    with torch.no_grad():
        y = codec.analysis(x)
        nats, _ = codec.entropy.rate(y)
        z_nats, _ = codec.entropy.hyper.rate(codec.entropy.analysis(y))
    own, _ = example_bits(codec, x)
    assert torch.all(nats > z_nats)
    assert torch.all(own <= nats.double() / math.log(2) + 1e-4)


# -- files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", SETTINGS, ids=str)
def test_a_file_decodes_to_the_models_own_reconstruction_bit_for_bit(options):
    codec = _codec(options)
    x = _digits(21)
    codec.loss(x).mean().backward()  # a training step's worth of state (noise, gradients)
    codec.eval()
    data, report = compress(codec, x)
    box = Container.from_bytes(data)
    assert box.kind is Kind.LOSSY
    decoded = decompress(codec, data)
    assert torch.equal(decoded, codec.reconstruct(x))
    assert decoded.dtype == x.dtype and decoded.shape == x.shape
    assert report.mse == pytest.approx(float((decoded - x).double().pow(2).mean()))
    assert report.payload_bits <= report.model_bits * 1.01 + 64


@pytest.mark.parametrize("options", [SETTINGS[2], SETTINGS[5]], ids=str)
def test_the_decoded_symbols_are_the_quantizers(options):
    from dgm.coding.sequential import decode_symbols

    codec = _codec(options).eval()
    x = _digits(19)
    with torch.no_grad():
        y = codec.analysis(x)
        symbols = codec.entropy.quantizer(y).symbols
    decoded = decode_symbols(codec, compress(codec, x)[0])
    assert torch.equal(decoded[:, -symbols.shape[1]:], symbols)  # a hyperprior's ẑ comes first


def _fitted(options: dict, x: torch.Tensor, steps: int):
    """A codec after ``steps`` full-batch Adam steps on x, in eval mode."""
    codec = _codec(options)
    opt = torch.optim.Adam(codec.parameters(), lr=3e-3)
    for _ in range(steps):
        opt.zero_grad()
        codec.loss(x).mean().backward()
        opt.step()
    return codec.eval()


def test_larger_lambda_never_raises_the_rate_on_a_toy_run():
    x = _digits(64, seed=4)
    rates = [compress(_fitted({"quantizer": "noise", "entropy": "factorized",
                                "rate_weight": weight}, x, 150), x)[1].bits_per_dim
             for weight in (0.0, 1.0, 30.0)]
    assert rates[0] >= rates[1] >= rates[2] and rates[0] > rates[2] + 0.05


def test_training_lowers_distortion_below_predicting_the_mean():
    x = _digits(128, seed=5)
    codec = _fitted({"quantizer": "codebook", "entropy": "categorical", "rate_weight": 0.1},
                    x, 200)
    mse = float((codec.reconstruct(x) - x).double().pow(2).mean())
    assert mse < float((x.double() - x.double().mean(0)).pow(2).mean())


@pytest.mark.parametrize("options", SETTINGS, ids=str)
def test_samples_decode_codes_from_the_entropy_model(options):
    codec = _codec(options).eval()
    s = codec.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, 1, 8, 8) and s.dtype == torch.long and int(s.max()) <= 16
    again = codec.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again)


@pytest.mark.parametrize("options", [SETTINGS[1], SETTINGS[3], SETTINGS[8]], ids=str)
def test_sampled_codes_follow_the_entropy_models_pmf(options):
    """The first code position has no context: its draws' frequencies are its pmf."""
    codec = _codec(options).eval()
    alphabet = (torch.arange(8) if options["quantizer"] == "codebook"
                else torch.arange(-80, 81))  # an untrained learned CDF is wide
    with torch.no_grad():
        pmf = codec.entropy.coding_cursor(1, alphabet).log_pmf()[0, 0].exp()
        values = codec.entropy.sample(6000, torch.Generator().manual_seed(1))[:, 0]
    if options["quantizer"] == "codebook":
        values = codec.entropy.quantizer(values.view(-1, 1)).symbols[:, 0]
    freq = torch.stack([(values == a).double().mean() for a in alphabet])
    assert pmf.sum() > 0.99
    assert torch.allclose(freq, pmf.double(), atol=0.025)


def test_a_codec_file_is_refused_by_another_codec():
    a, b = _codec(SETTINGS[0], seed=0).eval(), _codec(SETTINGS[0], seed=1).eval()
    with pytest.raises(CodecError, match="another model"):
        decompress(b, compress(a, _digits(3))[0])


@pytest.mark.parametrize("bad, message", [
    ({"quantizer": "codebook", "entropy": "hyperprior"}, "entropy models"),
    ({"quantizer": "noise", "entropy": "categorical"}, "entropy models"),
    ({"transform": "conv", "code_dim": 3}, None),
    ({"latent_scale": 0.0}, "latent_scale"),
    ({"dropout": 1.0}, "dropout"),
])
def test_configs_that_do_not_fit_are_refused(bad, message):
    if message is None:  # 6x6 images cannot be halved twice
        with pytest.raises(ConfigError, match="multiple of 4"):
            build_model("codec", DataSpec((1, 6, 6), DataKind.DISCRETE, num_levels=3), bad)
        return
    with pytest.raises(ConfigError, match=message):
        build_model("codec", SPEC, bad)


def test_eval_and_report_show_the_rate_and_distortion_of_a_real_file(tmp_path, capsys):
    import json

    from dgm.cli import main

    run = tmp_path / "codec"
    assert main(["train", "codec", "--data", "digits", "--epochs", "2", "--out", str(run),
                 "--set", "train.progress=false", "--set", "model.hidden=32"]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    rd = json.loads(capsys.readouterr().out)
    assert rd["kind"] == "rate_distortion" and rd["n"] == 447
    assert rd["bits_per_pixel"] < rd["bits_per_pixel_with_header"] and rd["mse"] > 0
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((2, 1, 8, 8), dtype=np.int64))
    assert main(["compress", str(run), str(tmp_path / "x.npy"), "-o", str(tmp_path / "x.dgmc"),
                 "--lossless"]) == 2
    assert "lossy codec" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Compression</h2>" in page and "bits/pixel (real file" in page
