"""Lossless coding with real bitstreams (Book ch. 10): the coders, the file format, and the one
path from every exact model's conditionals to a range coder."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dgm.cli import main
from dgm.coding import compress, decompress
from dgm.coding.container import Container, Kind, fingerprint
from dgm.coding.entropy import PRECISION, AnsStack, RangeReader, RangeWriter, quantize_pmf
from dgm.coding.sequential import compress_lossless, decompress_lossless, example_bits
from dgm.core.errors import CodecError
from dgm.core.registry import build_model
from dgm.core.spec import DataKind, DataSpec

SPEC = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5)
LN2 = math.log(2)


def _data(n: int = 40, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # correlated rows, so that models with memory have something to predict
    base = torch.randint(0, 5, (n, 1, 1, 4), generator=g)
    noise = torch.randint(0, 2, (n, 1, 4, 4), generator=g)
    return ((base + noise) % 5).long()


# -- the entropy coders ---------------------------------------------------------------------------

def test_quantized_tables_sum_to_one_exactly_and_keep_every_symbol():
    log_p = torch.tensor([[0.0, float("-inf"), -40.0, -1.0], [-3.0, -3.0, -3.0, -3.0]])
    q = quantize_pmf(log_p)
    freq = q * (1 << PRECISION)
    assert np.array_equal(freq, np.round(freq))
    assert (freq.sum(1) == 1 << PRECISION).all() and (freq >= 1).all()
    assert np.allclose(q[1], 0.25) and abs(q[0, 0] - 1 / (1 + math.exp(-1))) < 1e-6


def test_a_row_without_finite_probabilities_codes_as_uniform():
    log_p = torch.tensor([[float("-inf")] * 4, [float("nan"), 0.0, 0.0, 0.0], [0.0, -1.0, -2.0,
                                                                                -3.0]])
    q = quantize_pmf(log_p)
    assert np.allclose(q[0], 0.25) and np.allclose(q[1], 0.25) and q[2, 0] > 0.6
    writer = RangeWriter()
    writer.write(np.array([3, 1, 2]), q)
    assert np.array_equal(RangeReader(writer.words()).read(q), [3, 1, 2])


def test_range_code_round_trips_within_a_tenth_of_a_percent_of_the_cross_entropy():
    rng = np.random.default_rng(0)
    m, a = 5000, 17
    probs = quantize_pmf(torch.from_numpy(rng.normal(size=(m, a)) * 2))
    symbols = np.array([rng.choice(a, p=p) for p in probs])
    writer = RangeWriter()
    writer.write(symbols, probs)
    words = writer.words()
    ideal = -np.log2(probs[np.arange(m), symbols]).sum()
    assert abs(writer.ideal_bits - ideal) < 1e-6
    assert 32 * words.size <= ideal * 1.001 + 64
    assert np.array_equal(RangeReader(words).read(probs), symbols)


def test_a_symbol_of_zero_model_probability_still_codes():
    log_p = torch.tensor([[0.0, float("-inf"), float("-inf")]]).repeat(3, 1)
    probs = quantize_pmf(log_p)
    symbols = np.array([1, 2, 0])
    writer = RangeWriter()
    writer.write(symbols, probs)
    assert np.array_equal(RangeReader(writer.words()).read(probs), symbols)
    assert writer.ideal_bits <= 2 * PRECISION + 1


def test_ans_stack_pops_what_was_pushed():
    rng = np.random.default_rng(1)
    probs = quantize_pmf(torch.from_numpy(rng.normal(size=(300, 6))))
    symbols = rng.integers(0, 6, 300)
    stack = AnsStack()
    stack.push(symbols, probs)
    again = AnsStack(stack.words())
    assert np.array_equal(again.pop(probs), symbols) and again.is_empty()


def test_out_of_range_symbols_are_refused():
    with pytest.raises(CodecError, match="symbols must lie"):
        RangeWriter().write(np.array([3]), quantize_pmf(torch.zeros(1, 3)))


# -- the file ---------------------------------------------------------------------------------

def _box() -> Container:
    return Container(Kind.LOSSLESS, bytes(range(16)), (2, 1, 4, 4), (-3, 7), b"\x01\x02\x03\x04",
                     "uint8")


def test_container_round_trips_and_counts_its_header():
    data = _box().to_bytes()
    back = Container.from_bytes(data)
    assert back == _box() and len(data) == back.header_bytes + 4


@pytest.mark.parametrize("damage, message", [
    (lambda d: d[:-1], "truncated"),
    (lambda d: d[:20], "truncated"),
    (lambda d: d + b"\x00", "trailing"),
    (lambda d: d[:-2] + bytes([d[-2] ^ 1]) + d[-1:], "corrupt"),
    (lambda d: d[:30] + bytes([d[30] ^ 4]) + d[31:], "corrupt"),
    (lambda d: b"PK" + d[2:], "not a dgm compressed file"),
    (lambda d: d[:4] + b"\x09" + d[5:], "version 9"),
])
def test_every_damaged_file_is_one_clear_error(damage, message):
    with pytest.raises(CodecError, match=message):
        Container.from_bytes(damage(_box().to_bytes()))


def test_the_fingerprint_changes_with_any_weight():
    model = build_model("independent", SPEC)
    before = fingerprint(model)
    with torch.no_grad():
        model.logits[0, 0] += 1e-6
    assert fingerprint(model) != before and len(before) == 16


# -- lossless coding from every exact model -------------------------------------------------------

EXACT = [
    ("independent", {}), ("categorical_mixture", {"num_components": 3}),
    ("arm", {}), ("arm_mlp", {}), ("arm_rnn", {}), ("made", {}), ("nade", {}),
    ("pixelcnn", {}), ("transformer", {"hidden": 32, "num_layers": 2, "num_heads": 2}),
    ("circuit", {"structure": "quad_tree", "units": 3}),
    ("circuit", {"structure": "rat_spn", "units": 3, "depth": 2, "repetitions": 2}),
    ("idf", {}), ("idf", {"prior_parts": 2, "base": "mixture", "num_components": 2}),
]


@pytest.mark.parametrize("name, options", EXACT, ids=lambda v: v if isinstance(v, str) else "")
def test_every_exact_model_round_trips_at_its_own_likelihood(name, options):
    model = build_model(name, SPEC, options).eval()
    x = _data(37)  # not a multiple of the coder's block
    data, report = compress_lossless(model, x)
    assert torch.equal(decompress_lossless(model, data), x)
    with torch.no_grad():
        nll_bits = -model.log_prob(x).double().sum().item() / LN2
    if name == "idf":  # coded in the file's window of latents: never longer than its NLL
        assert report.model_bits <= nll_bits + 1e-3
    else:
        assert report.model_bits == pytest.approx(nll_bits, rel=1e-5)
    assert report.payload_bits <= report.model_bits * 1.001 + 96
    assert report.header_bits == 8 * (len(data) - report.payload_bits // 8)


def test_the_transformers_cache_gives_the_full_passes_conditionals():
    model = build_model("transformer", SPEC, {"hidden": 32, "num_layers": 2,
                                              "num_heads": 2}).double().eval()
    x = _data(16)
    cursor = model.coding_cursor(16, torch.arange(5))
    steps = []
    with torch.no_grad():
        for positions in cursor.steps:
            steps.append(cursor.log_pmf())
            cursor.advance(x.reshape(16, -1)[:, positions])
        full = model.head.log_pmf(model.params(x))
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-12)


@pytest.mark.parametrize("name", ["arm", "categorical_mixture", "circuit"])
def test_probabilities_do_not_depend_on_the_batch_or_the_threads(name):
    """Encoding 64 images at once and each image alone give bit-identical tables."""
    model = build_model(name, SPEC).eval()
    x = _data(64, seed=3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _, together = example_bits(model, x)
        torch.set_num_threads(1)
        alone = torch.cat([example_bits(model, x[i:i + 1])[1] for i in range(64)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(together, alone)
    data, _ = compress_lossless(model, x)
    singles = [decompress_lossless(model, compress_lossless(model, x[i:i + 1])[0])
               for i in range(0, 64, 9)]
    assert torch.equal(decompress_lossless(model, data), x)
    assert torch.equal(torch.cat(singles), x[::9])


def test_thousands_of_symbols_cost_their_cross_entropy_within_a_tenth_of_a_percent():
    model = build_model("categorical_mixture", SPEC, {"num_components": 4}).eval()
    x = _data(600, seed=5)  # 9600 symbols
    data, report = compress_lossless(model, x)
    assert report.payload_bits <= report.model_bits * 1.001
    assert len(data) * 8 == report.payload_bits + report.header_bits


def test_the_dtype_of_the_input_comes_back():
    model = build_model("independent", SPEC)
    x = _data(5).to(torch.uint8)
    back = decompress(model, compress(model, x)[0])
    assert back.dtype == torch.uint8 and torch.equal(back, x)


def test_decoding_with_another_model_is_a_clear_error():
    a, b = build_model("independent", SPEC), build_model("categorical_mixture", SPEC)
    data, _ = compress(a, _data(4))
    with pytest.raises(CodecError, match="another model"):
        decompress(b, data)


def test_models_without_a_discrete_likelihood_are_refused():
    flow = build_model("realnvp", DataSpec((4,), DataKind.CONTINUOUS))
    with pytest.raises(CodecError, match="cannot compress"):
        compress(flow, torch.randn(3, 4))
    rbm = build_model("rbm", DataSpec((1, 4, 4), DataKind.BINARY))
    with pytest.raises(CodecError, match="cannot compress"):
        compress(rbm, (_data(2) > 2).long())


def test_a_class_conditional_idf_is_refused_for_coding():
    spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5, num_classes=3)
    with pytest.raises(CodecError, match="labels"):
        compress_lossless(build_model("idf", spec, {"conditional": True}), _data(2))


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mixture_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("codec") / "run"
    assert main(["train", "categorical_mixture", "--data", "digits", "--epochs", "3", "--out",
                 str(run), "--set", "train.progress=false"]) == 0
    return run


def test_compress_and_decompress_on_the_command_line(mixture_run, tmp_path, capsys):
    from dgm.data.dataset import load

    x = load("digits").split("test").x[:50].numpy()
    np.save(tmp_path / "x.npy", x)
    assert main(["compress", str(mixture_run), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "x.dgmc")]) == 0
    out = capsys.readouterr().out
    assert "bits/dim" in out and "header" in out
    assert main(["decompress", str(mixture_run), str(tmp_path / "x.dgmc"), "-o",
                 str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == x.dtype and np.array_equal(x, y)


def test_an_image_file_round_trips(mixture_run, tmp_path):
    from PIL import Image

    from dgm.data.dataset import load

    x = load("digits").split("test").x[7, 0].numpy().astype(np.uint8)
    Image.fromarray(x).save(tmp_path / "digit.png")
    assert main(["compress", str(mixture_run), str(tmp_path / "digit.png"), "-o",
                 str(tmp_path / "d.dgmc")]) == 0
    assert main(["decompress", str(mixture_run), str(tmp_path / "d.dgmc"), "-o",
                 str(tmp_path / "back.png")]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "back.png")), x)


def test_a_truncated_file_on_the_command_line_is_one_line(mixture_run, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((3, 1, 8, 8), dtype=np.int64))
    assert main(["compress", str(mixture_run), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "x.dgmc")]) == 0
    data = (tmp_path / "x.dgmc").read_bytes()
    (tmp_path / "cut.dgmc").write_bytes(data[:-3])
    capsys.readouterr()
    assert main(["decompress", str(mixture_run), str(tmp_path / "cut.dgmc"), "-o",
                 str(tmp_path / "y.npy")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "truncated" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "y.npy").exists()


def test_data_outside_the_models_levels_are_refused(mixture_run, tmp_path, capsys):
    np.save(tmp_path / "big.npy", np.full((1, 8, 8), 40))
    assert main(["compress", str(mixture_run), str(tmp_path / "big.npy"), "-o",
                 str(tmp_path / "b.dgmc")]) == 2
    assert "error:" in capsys.readouterr().err


# -- bits-back coding (BB-ANS) for VAEs --------------------------------------------------------

DIGIT_SPEC = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=5)


@pytest.mark.parametrize("prior", [{}, {"prior": {"kind": "mog", "num_components": 3}},
                                   {"prior": {"kind": "vamp", "num_components": 3}}],
                         ids=["standard", "mog", "vamp"])
def test_bits_back_round_trips_at_about_the_negative_elbo(prior):
    from dgm.coding.bits_back import compress_bits_back, decompress_bits_back

    torch.manual_seed(0)
    model = build_model("vae", DIGIT_SPEC, {"latent_dim": 3, "hidden": 16, **prior}).eval()
    x = _data(30)
    data, report = compress_bits_back(model, x, latent_bits=8)
    assert torch.equal(decompress_bits_back(model, Container.from_bytes(data)), x)
    # the net cost is a one-sample -ELBO of the discretized latent; over 30 examples its mean
    # sits near the model's own -ELBO (estimated with 200 draws each)
    with torch.no_grad():
        neg_elbo = -model.log_weights(x, 200).mean(0).sum().item() / LN2
    assert report.model_bits == pytest.approx(neg_elbo, rel=0.05)
    assert report.payload_bits - report.initial_bits <= report.model_bits * 1.002 + 64


def test_bits_back_gets_its_bits_back():
    """Per example, a long file costs much less than coding each example alone, whose file
    carries the initial words and gets nothing back."""
    from dgm.coding.bits_back import compress_bits_back

    torch.manual_seed(1)
    model = build_model("vae", DIGIT_SPEC, {"latent_dim": 4, "hidden": 16}).eval()
    x = _data(40)
    _, together = compress_bits_back(model, x)
    alone = [compress_bits_back(model, x[i:i + 1])[1] for i in range(5)]
    per_example_alone = np.mean([r.payload_bits for r in alone])
    assert together.payload_bits / 40 < per_example_alone - 8
    assert together.initial_bits == alone[0].initial_bits > 0


def test_a_vae_without_a_gaussian_posterior_or_prior_is_refused():
    from dgm.coding.bits_back import compress_bits_back

    flow_prior = build_model("vae", DIGIT_SPEC, {"latent_dim": 2, "prior": {"kind": "flow"}})
    with pytest.raises(CodecError, match="prior"):
        compress_bits_back(flow_prior, _data(2))
    iaf = build_model("vae", DIGIT_SPEC, {"latent_dim": 2, "posterior": {"kind": "iaf"}})
    with pytest.raises(CodecError, match="posterior"):
        compress_bits_back(iaf, _data(2))


def test_a_damaged_bits_back_stack_is_detected():
    torch.manual_seed(2)
    model = build_model("vae", DIGIT_SPEC, {"latent_dim": 2, "hidden": 8}).eval()
    data, _ = compress(model, _data(6))
    box = Container.from_bytes(data)
    bad = bytearray(box.payload)
    bad[0] ^= 0x10
    damaged = Container(box.kind, box.model_id, box.shape, box.extra, bytes(bad), box.dtype)
    with pytest.raises(CodecError):
        decompress(model, damaged.to_bytes())


def test_a_vae_compresses_by_bits_back_on_the_command_line(tmp_path, capsys):
    from dgm.data.dataset import load

    run = tmp_path / "vae"
    assert main(["train", "vae", "--data", "digits", "--epochs", "2", "--out", str(run),
                 "--set", "train.progress=false", "--set", "model.latent_dim=4"]) == 0
    x = load("digits").split("test").x[:12].numpy()
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["compress", str(run), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "x.dgmc")]) == 0
    out = capsys.readouterr().out
    assert "bits-back" in out and "initial words" in out and "-ELBO" in out
    assert main(["decompress", str(run), str(tmp_path / "x.dgmc"), "-o",
                 str(tmp_path / "y.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), x)
