"""Benchmark: compression with real bitstreams on the 8x8 digits (issue 18, Book ch. 10).

    python benchmarks/compression_digits.py [--parts lossless lossy] [--models ...]

(lossless)  The 447 test digits (17 levels) coded by every exact model of the library through
            ``dgm.coding`` (one file for the whole split, one thread): the real payload in bits
            per dimension beside the model's own cross-entropy (overhead), the header apart,
            encode and decode throughput, and the cost of one image coded alone (its own file,
            words and header included); the VAE by bits-back (its initial words counted).
            Beside them gzip -9, bz2 -9 and LZMA (one byte per pixel), PNG (all images tiled
            into one picture; one file per image) and ANCHORS.md §8's coders.
(mnist)     Binarized MNIST's 10,000 test images: a VAE trained for ``--mnist-epochs`` epochs
            coded by bits-back, beside gzip, bz2 and LZMA on the packed bits (ANCHORS.md §3:
            bz2 0.25, BB-ANS 0.19 bits/dim).
(image_lossy)  MNIST and Fashion-MNIST (``--images``), 10,000 test images each: JPEG and WebP
            (Pillow), one file per image, quality 5-90, bits per pixel with and without the
            file's header; a convolutional codec with a scale hyperprior
            (configs/codec_mnist.yaml) trained ``--image-epochs`` epochs per λ, its real rate
            (one file for the split; and one file per image, header and word padding in each);
            MSE and PSNR (MAX = 255); the curves and reconstructions at matched rates.
(lossy)     Rate-distortion curves on the test split from a λ sweep of every codec setting,
            rates of the real files (header apart), MSE per pixel on the 0..16 scale of the
            decoded images, PSNR with MAX = 16; PCA transform coding (uniform scalar steps, a
            categorical per component fitted on the training split, real range coding) as the
            classical baseline; our codec at the book's temperature τ = 10⁷ (its encoder gets
            no gradient) and the book's own construction (benchmarks/peers/book_compressor.py)
            beside them.

Models are trained through the real trainer (one thread, early stopping, best weights) into
benchmarks/results/tmp/compression_runs (git-ignored). Results:
benchmarks/results/compression.json (rows merged under a lock) and compression_*.png.
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import gzip
import io
import json
import lzma
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, locked_json, lower_envelope, machine, train_preset  # noqa: E402

from dgm.coding import compress, decompress  # noqa: E402
from dgm.data import load  # noqa: E402
from dgm.eval.likelihood import evaluate  # noqa: E402
from dgm.runs import open_run  # noqa: E402

RUNS = RESULTS / "tmp" / "compression_runs"
LN2 = float(np.log(2))

# name -> (preset, overrides, what)
EXACT = {
    "independent": ("categorical_mixture_digits", ("model.num_components=1",),
                    "independent categoricals (the per-pixel floor)"),
    "mixture": ("categorical_mixture_digits", (), "mixture of 40 categoricals, EM"),
    "hclt": ("circuit_digits", (), "HCLT circuit, K = 32 (coded through its marginals)"),
    "arm": ("arm_digits", (), "causal-convolution ARM (configs/arm_digits.yaml)"),
    "pixelcnn": ("pixelcnn_digits", (), "gated PixelCNN (configs/pixelcnn_digits.yaml)"),
    "transformer": ("transformer_digits", (), "transformer ARM, coded through its key/value "
                    "cache"),
    "idf": ("idf_digits", (), "integer discrete flow, factor-out prior (its latent coded)"),
    "vae": ("vae_digits", (), "VAE, bits-back ANS with 8-bit latent buckets"),
}
ANCHORS = {"uniform": 4.087, "gzip": 3.114, "bz2": 2.770, "lzma": 2.768, "png_mosaic": 3.76,
           "png_per_image": 14.15, "independent_ans": 2.4016, "mixture_ans": 2.2550,
           "arm_cross_entropy": 1.794}


def classical_rows(x: np.ndarray) -> list[dict[str, Any]]:
    """General-purpose coders on one byte per pixel, and PNG."""
    from PIL import Image

    raw = x.astype(np.uint8).tobytes()
    dims = x.size
    rows = []
    for name, fn in (("gzip -9", lambda b: gzip.compress(b, 9)),
                     ("bz2 -9", lambda b: bz2.compress(b, 9)),
                     ("lzma", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))):
        rows.append({"part": "lossless", "model": name, "kind": "classical",
                     "file_bpd": 8 * len(fn(raw)) / dims})
    n = x.shape[0]
    side = int(np.ceil(np.sqrt(n)))
    mosaic = np.zeros((side * 8, side * 8), dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, side)
        mosaic[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = x[i, 0]
    buf = io.BytesIO()
    Image.fromarray(mosaic).save(buf, format="PNG", optimize=True)
    rows.append({"part": "lossless", "model": "PNG, one mosaic", "kind": "classical",
                 "file_bpd": 8 * len(buf.getvalue()) / dims})
    sizes = []
    for i in range(n):
        b = io.BytesIO()
        Image.fromarray(x[i, 0].astype(np.uint8)).save(b, format="PNG", optimize=True)
        sizes.append(len(b.getvalue()))
    rows.append({"part": "lossless", "model": "PNG, one file per image", "kind": "classical",
                 "file_bpd": 8 * sum(sizes) / dims})
    return rows


def mnist_rows(epochs: int, seed: int, reuse: bool, name: str = "binary_mnist",
               limit: int | None = None) -> list[dict[str, Any]]:
    """MNIST's test images (binarized: the fixed binarization, or 8-bit), the first ``limit``
    of them: a VAE trained for ``epochs`` epochs (configs/vae_<name>.yaml) coded by bits-back,
    beside gzip / bz2 / LZMA on the same bytes (binarized: bits packed eight to a byte)."""
    data = load(name)
    test = data.split("test").x[:limit]
    raw = test.numpy().astype(np.uint8).reshape(-1)
    packed = (np.packbits(raw) if name == "binary_mnist" else raw).tobytes()
    dims = test.numel()
    rows: list[dict[str, Any]] = [
        {"part": "mnist_lossless", "model": f"{coder} ({name})", "kind": "classical",
         "data": name, "n": len(test), "file_bpd": 8 * len(fn(packed)) / dims}
        for coder, fn in (("gzip -9", lambda b: gzip.compress(b, 9)),
                         ("bz2 -9", lambda b: bz2.compress(b, 9)),
                         ("lzma", lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME)))]
    run_dir = RUNS / f"vae-{name}-{epochs}ep-{seed}"
    error = _trained(run_dir, f"vae_{name}", [f"train.seed={seed}", f"train.epochs={epochs}"],
                     reuse)
    row: dict[str, Any] = {"part": "mnist_lossless", "model": f"vae_{epochs}ep ({name})",
                           "data": name, "n": len(test), "seed": seed, "error": error,
                           "what": f"VAE (configs/vae_{name}.yaml) after {epochs} epochs, "
                                   "bits-back ANS with 8-bit latent buckets"}
    if error is None:
        run = open_run(run_dir)
        model = run.load_model("cpu")
        split = data.split("test")
        if limit is not None:
            split = dataclasses.replace(split, x=split.x[:limit],
                                        y=None if split.y is None else split.y[:limit])
        e = evaluate(model, split, split_name="test")
        data_bytes, report = compress(model, test)
        began = time.perf_counter()
        back = decompress(model, data_bytes)
        decode_s = time.perf_counter() - began
        row.update({"kind": "bits-back", "nll_nats": e.nll_nats, "nll_kind": e.kind,
                    "nll_bpd": e.bpd, "model_bpd": report.model_bits_per_dim,
                    "payload_bpd": report.bits_per_dim, "net_bpd": report.net_bits_per_dim,
                    "file_bpd": report.file_bits / dims, "initial_bits": report.initial_bits,
                    "overhead": report.overhead, "identical": bool(torch.equal(back, test)),
                    "encode_per_s": len(test) / report.seconds,
                    "decode_per_s": len(test) / decode_s, "cpu_s": run.info.get("cpu_s"),
                    "num_parameters": model.num_parameters()})
    print(json.dumps(row), flush=True)
    return [*rows, row]


def _payload_bytes(data: bytes, fmt: str) -> int:
    """The bytes of an image file that are not header: JPEG's entropy-coded segment (after the
    SOS segment, before EOI), WebP's VP8/VP8L chunk payload."""
    if fmt == "JPEG":
        sos = data.find(b"\xff\xda")
        return len(data) - (sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")) - 2
    return int.from_bytes(data[16:20], "little")


def classical_lossy_rows(name: str, limit: int | None = None) -> list[dict[str, Any]]:
    """JPEG and WebP (Pillow) on the test images of an 8-bit image set (the first ``limit``),
    one file per image: bits per pixel with the file's header and without it, MSE (0..255) and
    PSNR (MAX = 255) of the decoded images, over a quality sweep."""
    from PIL import Image

    x = load(name).split("test").x[:limit, 0].numpy().astype(np.uint8)
    rows = []
    for fmt in ("JPEG", "WEBP"):
        for quality in (5, 10, 20, 30, 50, 70, 90):
            file_bytes = payload = 0
            err = 0.0
            for image in x:
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format=fmt, quality=quality)
                data = buf.getvalue()
                file_bytes += len(data)
                payload += _payload_bytes(data, fmt)
                back = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.float64)
                err += float(((back - image) ** 2).sum())
            mse = err / x.size
            rows.append({"part": f"{name}_lossy", "model": f"{fmt.lower()}_q{quality}",
                         "setting": fmt.lower(), "kind": "classical", "quality": quality,
                         "n": len(x), "bpp_file": 8 * file_bytes / x.size,
                         "bpp": 8 * payload / x.size, "mse": mse,
                         "psnr": 10 * np.log10(255 ** 2 / mse)})
    return rows


def _trained(run_dir: Path, preset: str, overrides: list[str], reuse: bool) -> str | None:
    """Train the preset into run_dir (or keep a finished run there with ``--reuse``)."""
    if reuse and (run_dir / "run.json").is_file():
        return None
    return train_preset(run_dir, preset, overrides)


def model_row(name: str, seed: int, data, reuse: bool = False) -> dict[str, Any]:
    preset, extra, what = EXACT[name]
    run_dir = RUNS / f"{name}-{seed}"
    error = _trained(run_dir, preset, [f"train.seed={seed}", *extra], reuse)
    row: dict[str, Any] = {"part": "lossless", "model": name, "what": what, "seed": seed,
                           "preset": preset, "overrides": list(extra), "error": error}
    if error is not None:
        print(json.dumps(row), flush=True)
        return row
    run = open_run(run_dir)
    model = run.load_model("cpu")
    test = data.split("test").x
    dims = test[0].numel()
    e = evaluate(model, data.split("test"), split_name="test")
    data_bytes, report = compress(model, test)
    began = time.perf_counter()
    back = decompress(model, data_bytes)
    decode_s = time.perf_counter() - began
    alone = [compress(model, test[i:i + 1])[1] for i in range(20)]
    row.update({
        "kind": "bits-back" if report.initial_bits else "exact",
        "nll_nats": e.nll_nats, "nll_kind": e.kind, "nll_bpd": e.bpd,
        "model_bpd": report.model_bits_per_dim, "payload_bpd": report.bits_per_dim,
        "net_bpd": report.net_bits_per_dim, "file_bpd": report.file_bits / (dims * len(test)),
        "header_bytes": report.header_bits // 8, "initial_bits": report.initial_bits,
        "overhead": report.overhead, "identical": bool(torch.equal(back, test)),
        "encode_per_s": len(test) / report.seconds, "decode_per_s": len(test) / decode_s,
        "alone_file_bits": float(np.mean([r.file_bits for r in alone])),
        "alone_payload_bits": float(np.mean([r.payload_bits for r in alone])),
        "cpu_s": run.info.get("cpu_s"), "num_parameters": model.num_parameters(),
    })
    print(json.dumps(row), flush=True)
    return row


# setting -> (overrides, what); each trained at every λ of LAMBDAS
ROUNDING = ("model.quantizer=noise", "model.latent_scale=8", "model.code_dim=32")
CODECS = {
    "book": (("model.temperature=1e7",),
             "our codec at the book's temperature τ = 10⁷: MLP, codebook K = 8, ARM entropy "
             "model; no gradient reaches the encoder"),
    "codebook_arm": ((), "MLP, codebook K = 8, straight-through (τ = 1), the book's ARM "
                     "entropy model (configs/codec_digits.yaml)"),
    "factorized": ((*ROUNDING, "model.entropy=factorized"),
                   "MLP to 32 latents, rounding (uniform noise in training), a learned CDF per "
                   "latent"),
    "hyperprior": ((*ROUNDING, "model.entropy=hyperprior"),
                   "MLP to 32 latents, rounding (noise in training), Gaussian conditional with "
                   "a scale hyperprior of 8"),
    "conv_factorized": (("model.transform=conv", "model.hidden=64", "model.code_dim=8",
                         "model.quantizer=noise", "model.latent_scale=8",
                         "model.entropy=factorized"),
                        "GDN convolutions to 8 x 2 x 2 latents, rounding, learned CDFs"),
}
LAMBDAS = (1.0, 3.0, 10.0, 30.0)
PIXEL_BINS = ("3", "4", "6", "8")  # the pixel codec's bin widths (its rate knob), or edges
BOOK_LAMBDA = 2.77  # the book's β = 1 on nats per code position, in our bits per pixel


def pca_rows(data) -> list[dict[str, Any]]:
    """PCA transform coding: project on the training split's principal axes, round each
    coefficient to a multiple of Δ, code each component's integer with a categorical fitted on
    the training split (add-½ smoothing over the test's window), real range coding; the
    reconstruction rounded to the levels like the codecs'."""
    from dgm.coding.entropy import RangeWriter, quantize_pmf

    train = data.split("train").x.reshape(-1, 64).double().numpy()
    test = data.split("test").x.reshape(-1, 64).double().numpy()
    mean = train.mean(0)
    _, _, vt = np.linalg.svd(train - mean, full_matrices=False)
    rows = []
    for step in (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0, 20.0, 28.0):
        for keep in (8, 16, 32, 64):
            basis = vt[:keep]
            q_train = np.round((train - mean) @ basis.T / step).astype(int)
            q_test = np.round((test - mean) @ basis.T / step).astype(int)
            writer = RangeWriter()
            for j in range(keep):
                lo = min(q_train[:, j].min(), q_test[:, j].min())
                hi = max(q_train[:, j].max(), q_test[:, j].max(), lo + 1)
                counts = np.bincount(q_train[:, j] - lo, minlength=hi - lo + 1) + 0.5
                table = quantize_pmf(torch.log(torch.from_numpy(counts)).expand(len(test), -1))
                writer.write(q_test[:, j] - lo, table)
            bits = 32 * writer.words().size
            recon = np.clip(np.round(mean + (q_test * step) @ basis), 0, 16)
            mse = float(((recon - test) ** 2).mean())
            rows.append({"part": "lossy", "model": f"pca_{keep}_{step:g}", "setting": "pca",
                         "kind": "classical", "bpp": bits / test.size, "mse": mse,
                         "psnr": 10 * np.log10(256 / mse), "keep": keep, "step": step})
    return rows


def _codec_fields(run, model, rd) -> dict[str, Any]:
    """A codec row's figures: the real file's rates, the decoded distortion, throughput and
    the run's training cost."""
    return {"kind": "codec", "bpp": rd.bits_per_pixel,
            "bpp_with_header": rd.bits_per_pixel_with_header,
            "model_bpp": rd.model_bits_per_pixel, "mse": rd.mse, "psnr": rd.psnr,
            "encode_per_s": rd.encode_per_s, "decode_per_s": rd.decode_per_s,
            "cpu_s": run.info.get("cpu_s"), "epochs": run.info.get("epochs_completed"),
            "num_parameters": model.num_parameters()}


def codec_row(setting: str, weight: float, seed: int, data,
              reuse: bool = False) -> dict[str, Any]:
    from dgm.eval.compression import evaluate_codec

    extra, what = CODECS[setting]
    name = f"{setting}_{weight:g}"
    run_dir = RUNS / f"codec-{name}-{seed}"
    overrides = [f"train.seed={seed}", f"model.rate_weight={weight}", *extra]
    error = _trained(run_dir, "codec_digits", overrides, reuse)
    row: dict[str, Any] = {"part": "lossy", "model": name, "setting": setting, "what": what,
                           "rate_weight": weight, "seed": seed, "overrides": overrides,
                           "error": error}
    if error is None:
        run = open_run(run_dir)
        model = run.load_model("cpu")
        rd = evaluate_codec(model, data.split("test"))
        val = evaluate_codec(model, data.split("val"), split_name="val")
        row.update(_codec_fields(run, model, rd), val_bpp=val.bits_per_pixel,
                   val_mse=val.mse)
    print(json.dumps(row), flush=True)
    return row


IMAGE_LAMBDAS = (100.0, 300.0, 1000.0, 3000.0)


def image_codec_row(name: str, weight: float, seed: int, epochs: int,
                    reuse: bool = False) -> dict[str, Any]:
    """configs/codec_mnist.yaml trained on ``name`` at λ = ``weight`` for ``epochs`` epochs;
    its 10,000 test images coded into one file (rate header apart and with it), and the first
    200 coded one file per image as JPEG and WebP are (our 49-byte header and the coder's
    32-bit word rounding in every file)."""
    from dgm.eval.compression import evaluate_codec

    run_dir = RUNS / f"codec-{name}-{weight:g}-{seed}"
    overrides = [f"data.name={name}", f"train.seed={seed}", f"model.rate_weight={weight}",
                 f"train.epochs={epochs}"]
    error = _trained(run_dir, "codec_mnist", overrides, reuse)
    row: dict[str, Any] = {"part": f"{name}_lossy", "model": f"hyperprior_{weight:g}",
                           "setting": "hyperprior", "rate_weight": weight, "seed": seed,
                           "overrides": overrides, "error": error,
                           "what": "GDN convolutions to 16 x 7 x 7 latents, rounding (noise in "
                                   "training), scale hyperprior (configs/codec_mnist.yaml)"}
    if error is None:
        run = open_run(run_dir)
        model = run.load_model("cpu")
        test = load(name).split("test")
        rd = evaluate_codec(model, test)
        alone = [compress(model, test.x[i:i + 1])[1].file_bits for i in range(200)]
        row.update(_codec_fields(run, model, rd), n=rd.n,
                   bpp_file=float(np.mean(alone)) / test.x[0].numel())
    print(json.dumps(row), flush=True)
    return row


def pixel_codec_row(bins: str, seed: int, data, reuse: bool = False) -> dict[str, Any]:
    """configs/pixel_codec_digits.yaml with bins ``bins``: a step Δ ("4") or the lowest levels
    of the bins after the first ("1,9"); its real rate and distortion on the test split."""
    from dgm.eval.compression import evaluate_codec

    edges = "," in bins
    tag = bins.replace(",", "-")
    run_dir = RUNS / f"pixel_codec-{tag}-{seed}"
    overrides = [f"train.seed={seed}",
                 f"model.edges=[{bins}]" if edges else f"model.step={bins}"]
    error = _trained(run_dir, "pixel_codec_digits", overrides, reuse)
    row: dict[str, Any] = {"part": "lossy", "model": f"pixel_codec_{tag}",
                           "setting": "pixel_codec", "seed": seed, "overrides": overrides,
                           "bins": f"edges {bins}" if edges else f"Δ = {bins}", "error": error,
                           "what": "bins of levels per pixel coded under a gated PixelCNN, a "
                                   "convolutional dequantizer (configs/pixel_codec_digits.yaml)"}
    if error is None:
        run = open_run(run_dir)
        model = run.load_model("cpu")
        rd = evaluate_codec(model, data.split("test"))
        row.update(_codec_fields(run, model, rd))
    print(json.dumps(row), flush=True)
    return row


def plot_rd() -> Path:
    """PSNR against bits per pixel: every codec setting's λ curve, PCA's lower envelope and its
    points, the book's compressor, from compression.json."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in json.loads((RESULTS / "compression.json").read_text())["rows"]
            if r["part"] == "lossy" and r.get("error") is None]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    pca = [r for r in rows if r.get("setting") == "pca"]
    envelope = lower_envelope(pca)
    ax.scatter([r["bpp"] for r in pca], [r["psnr"] for r in pca], s=6, color="0.75",
               label="PCA transform coding (components, step)")
    ax.plot([r["bpp"] for r in envelope], [r["psnr"] for r in envelope], color="black", lw=1.5,
            label="PCA, lower envelope")
    for setting in (*CODECS, "pixel_codec", "book_listing"):
        mine = sorted((r for r in rows if r.get("setting") == setting), key=lambda r: r["bpp"])
        if not mine:
            continue
        style = {"marker": "*", "markersize": 12, "ls": "none"} if setting.startswith(
            "book") else {"marker": "o"}
        if setting == "pixel_codec":  # bins of several shapes: its envelope, every point
            line = ax.plot([r["bpp"] for r in lower_envelope(mine)],
                           [r["psnr"] for r in lower_envelope(mine)],
                           label="pixel_codec (Δ = 9 ... 3; edges 1,9)", marker="o")[0]
            ax.plot([r["bpp"] for r in mine], [r["psnr"] for r in mine], ls="none", marker="o",
                    mfc="none", color=line.get_color())
            continue
        ax.plot([r["bpp"] for r in mine], [r["psnr"] for r in mine], label=setting, **style)
    ax.set_xlim(0, 2.0)
    ax.set_xlabel("bits per pixel (real file, header apart)")
    ax.set_ylabel("PSNR of the decoded test digits, dB (MAX = 16)")
    ax.set_title("Rate-distortion on the 447 test digits (λ and Δ sweeps)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    out = RESULTS / "compression_rd.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def _image_rows(name: str) -> list[dict[str, Any]]:
    return [r for r in json.loads((RESULTS / "compression.json").read_text())["rows"]
            if r["part"] == f"{name}_lossy" and r.get("error") is None]


def plot_image_rd(name: str) -> Path:
    """PSNR against bits per pixel on an 8-bit image set: JPEG, WebP and our codec, each with
    the file's header (dashed; one file per image) and without it (solid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _image_rows(name)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for setting, color in (("jpeg", "tab:red"), ("webp", "tab:green"),
                           ("hyperprior", "tab:blue")):
        mine = sorted((r for r in rows if r.get("setting") == setting), key=lambda r: r["bpp"])
        if not mine:
            continue
        label = "our codec (hyperprior)" if setting == "hyperprior" else setting.upper()
        ax.plot([r["bpp"] for r in mine], [r["psnr"] for r in mine], "o-", color=color,
                label=f"{label}, header apart")
        ax.plot([r["bpp_file"] for r in mine], [r["psnr"] for r in mine], "o--", color=color,
                alpha=0.6, mfc="none", label=f"{label}, one file per image, header in")
    ax.set_xlim(0, 7)
    ax.set_xlabel("bits per pixel")
    ax.set_ylabel("PSNR of the decoded test images, dB (MAX = 255)")
    ax.set_title(f"Rate-distortion on the {name} test images")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    out = RESULTS / f"compression_rd_{name}.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_image_reconstructions(name: str, seed: int = 0, count: int = 8) -> Path:
    """The first ``count`` test images decoded by our codec at every λ, and by JPEG and WebP at
    the quality whose mean rate (header apart) is nearest to the codec's; each row labelled
    with its rate and PSNR over the whole test split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    rows = _image_rows(name)
    codecs = sorted((r for r in rows if r.get("setting") == "hyperprior"),
                    key=lambda r: r["bpp"])
    x = load(name).split("test").x[:count]
    lines: list[tuple[str, np.ndarray]] = [("original", x[:, 0].numpy())]
    for row in codecs:
        model = open_run(RUNS / f"codec-{name}-{row['rate_weight']:g}-{seed}").load_model("cpu")
        lines.append((f"ours λ={row['rate_weight']:g}\n{row['bpp']:.2f} bpp, "
                      f"{row['psnr']:.1f} dB", model.reconstruct(x)[:, 0].numpy()))
        for fmt in ("jpeg", "webp"):
            peer = min((r for r in rows if r.get("setting") == fmt),
                       key=lambda r: abs(r["bpp"] - row["bpp"]))
            decoded = []
            for image in x[:, 0].numpy().astype(np.uint8):
                buf = io.BytesIO()
                Image.fromarray(image).save(buf, format=fmt.upper(), quality=peer["quality"])
                decoded.append(np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L")))
            lines.append((f"{fmt.upper()} q{peer['quality']}\n{peer['bpp']:.2f} bpp, "
                          f"{peer['psnr']:.1f} dB", np.stack(decoded)))
    fig, axes = plt.subplots(len(lines), count, figsize=(count * 0.8 + 1.6, len(lines) * 0.82))
    for i, (label, images) in enumerate(lines):
        for j in range(count):
            ax = axes[i, j]
            ax.imshow(images[j], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    height = len(lines) * 0.82  # inches: room at the top for the title
    fig.subplots_adjust(top=1 - 0.5 / height, wspace=0.05, hspace=0.08)
    fig.suptitle(f"{name}: decoded test images at matched rates (rate and PSNR over the whole "
                 "test split, header apart)", fontsize=9, y=1 - 0.1 / height, va="top")
    out = RESULTS / f"compression_recon_{name}.png"
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def save(rows: list[dict[str, Any]], started: dict[str, Any]) -> None:
    """Merge rows into compression.json (under a lock; a row replaces its namesake)."""
    key = ("part", "model")
    with locked_json("compression") as result:
        new = {tuple(r.get(k) for k in key) for r in rows}
        result["rows"] = [r for r in result.get("rows", [])
                          if tuple(r.get(k) for k in key) not in new] + rows
        result["anchors"] = ANCHORS
        machines = result.setdefault("machines", {})
        commands = result.setdefault("commands", {})
        for part in {r["part"] for r in rows}:
            machines[part] = started
            if started["command"] not in commands.setdefault(part, []):
                commands[part].append(started["command"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["lossless"],
                    choices=["lossless", "lossy", "mnist", "mnist8", "image_lossy"])
    ap.add_argument("--images", nargs="+", default=["mnist", "fashion_mnist"],
                    help="the data sets of --parts image_lossy")
    ap.add_argument("--image-epochs", type=int, default=5)
    ap.add_argument("--mnist-epochs", type=int, default=20)
    ap.add_argument("--mnist8-limit", type=int, default=0,
                    help="code only the first N 8-bit MNIST test images (0: all 10,000)")
    ap.add_argument("--models", nargs="+", help="only these rows (classical and pca name the "
                    "classical coders)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lambdas", type=float, nargs="+", help="λ of the lossy rows")
    ap.add_argument("--bins", nargs="+", help="the pixel codec's rows: a step Δ (4) or bin "
                    "edges (1,9)")
    ap.add_argument("--reuse", action="store_true", help="keep runs already trained")
    ap.add_argument("--plot-only", action="store_true", help="redraw compression_rd.png")
    args = ap.parse_args()
    if args.plot_only:
        print(f"wrote {plot_rd()}")
        if "image_lossy" in args.parts:
            for name in args.images:
                print(f"wrote {plot_image_rd(name)}, {plot_image_reconstructions(name)}")
        return
    torch.set_num_threads(1)
    started = machine()
    data = load("digits")
    chosen = set(args.models or [])
    if "lossless" in args.parts:
        if not chosen or "classical" in chosen:
            save(classical_rows(data.split("test").x.numpy()), started)
        for name in EXACT:
            if not chosen or name in chosen:
                save([model_row(name, args.seed, data, args.reuse)], started)
    if "lossy" in args.parts:
        if not chosen or "pca" in chosen:
            save(pca_rows(data), started)
        for setting in CODECS:
            if chosen and setting not in chosen:
                continue
            weights = (BOOK_LAMBDA,) if setting == "book" else LAMBDAS
            for weight in args.lambdas or weights:
                save([codec_row(setting, weight, args.seed, data, args.reuse)], started)
        if not chosen or "pixel_codec" in chosen:
            for bins in args.bins or PIXEL_BINS:
                save([pixel_codec_row(bins, args.seed, data, args.reuse)], started)
    if "mnist" in args.parts:
        save(mnist_rows(args.mnist_epochs, args.seed, args.reuse), started)
    if "mnist8" in args.parts:
        save(mnist_rows(args.mnist_epochs, args.seed, args.reuse, "mnist",
                        limit=args.mnist8_limit or None), started)
    if "image_lossy" in args.parts:
        for name in args.images:
            if not chosen or "classical" in chosen:
                save(classical_lossy_rows(name), started)
            for weight in args.lambdas or IMAGE_LAMBDAS:
                save([image_codec_row(name, weight, args.seed, args.image_epochs, args.reuse)],
                     started)
            print(f"wrote {plot_image_rd(name)}, {plot_image_reconstructions(name)}")
    if "lossy" in args.parts:
        print(f"wrote {plot_rd()}")
    print(f"wrote {RESULTS / 'compression.json'}")


if __name__ == "__main__":
    main()
