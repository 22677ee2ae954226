"""Benchmark: compression with real bitstreams on the 8x8 digits (issue 18, Book ch. 10).

    python benchmarks/compression_digits.py [--parts lossless lossy] [--models ...]

(lossless)  The 447 test digits (17 levels) coded by every exact model of the library through
            ``dgm.coding`` (one file for the whole split, one thread): the real payload in bits
            per dimension beside the model's own cross-entropy (overhead), the header apart,
            encode and decode throughput, and the cost of one image coded alone (its own file,
            words and header included); the VAE by bits-back (its initial words counted).
            Beside them gzip -9, bz2 -9 and LZMA (one byte per pixel), PNG (all images tiled
            into one picture; one file per image) and ANCHORS.md §8's coders.
(lossy)     Rate-distortion curves on the test split from a λ sweep of every codec setting,
            rates of the real files (header apart), MSE per pixel on the 0..16 scale of the
            decoded images, PSNR with MAX = 16; PCA transform coding (uniform scalar steps, a
            categorical per component fitted on the training split, real range coding) as the
            classical baseline; the book's compressor (soft quantizer at τ = 10⁷, whose encoder
            gets no gradient) beside them.

Models are trained through the real trainer (one thread, early stopping, best weights) into
benchmarks/results/tmp/compression_runs (git-ignored). Results:
benchmarks/results/compression.json (rows merged under a lock) and compression_*.png.
"""

from __future__ import annotations

import argparse
import bz2
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
from common import RESULTS, locked_json, machine, train_preset  # noqa: E402

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


def model_row(name: str, seed: int, data) -> dict[str, Any]:
    preset, extra, what = EXACT[name]
    run_dir = RUNS / f"{name}-{seed}"
    error = train_preset(run_dir, preset, [f"train.seed={seed}", *extra])
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
CODECS = {
    "book": (("model.temperature=1e7",),
             "the book's compressor: codebook K = 8, soft quantizer at τ = 10⁷ (no gradient to "
             "the encoder), ARM entropy model"),
    "codebook_arm": ((), "codebook K = 8, straight-through (τ = 1), the book's ARM entropy "
                     "model (configs/codec_digits.yaml)"),
    "codebook_16": (("model.codebook_size=16",), "codebook K = 16, straight-through, ARM "
                    "entropy model"),
    "factorized": (("model.quantizer=noise", "model.entropy=factorized"),
                   "rounding (uniform noise in training), a learned CDF per code coordinate"),
    "hyperprior": (("model.quantizer=noise", "model.entropy=hyperprior"),
                   "rounding (noise in training), Gaussian conditional with a scale hyperprior"),
    "conv_hyperprior": (("model.transform=conv", "model.hidden=64", "model.code_dim=8",
                         "model.quantizer=noise", "model.entropy=hyperprior",
                         "model.hyper_dim=8"),
                        "GDN convolutions to 8 x 2 x 2, rounding, scale hyperprior"),
}
LAMBDAS = (0.3, 1.0, 3.0, 10.0)
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


def codec_row(setting: str, weight: float, seed: int, data) -> dict[str, Any]:
    from dgm.eval.compression import evaluate_codec

    extra, what = CODECS[setting]
    name = f"{setting}_{weight:g}"
    run_dir = RUNS / f"codec-{name}-{seed}"
    overrides = [f"train.seed={seed}", f"model.rate_weight={weight}", *extra]
    error = train_preset(run_dir, "codec_digits", overrides)
    row: dict[str, Any] = {"part": "lossy", "model": name, "setting": setting, "what": what,
                           "rate_weight": weight, "seed": seed, "overrides": overrides,
                           "error": error}
    if error is None:
        run = open_run(run_dir)
        model = run.load_model("cpu")
        rd = evaluate_codec(model, data.split("test"))
        val = evaluate_codec(model, data.split("val"), split_name="val")
        row.update({"kind": "codec", "bpp": rd.bits_per_pixel,
                    "bpp_with_header": rd.bits_per_pixel_with_header,
                    "model_bpp": rd.model_bits_per_pixel, "mse": rd.mse, "psnr": rd.psnr,
                    "val_bpp": val.bits_per_pixel, "val_mse": val.mse,
                    "encode_per_s": rd.encode_per_s, "decode_per_s": rd.decode_per_s,
                    "cpu_s": run.info.get("cpu_s"), "epochs": run.info.get("epochs_completed"),
                    "num_parameters": model.num_parameters()})
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", nargs="+", default=["lossless"], choices=["lossless", "lossy"])
    ap.add_argument("--models", nargs="+", help="only these rows (classical and pca name the "
                    "classical coders)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lambdas", type=float, nargs="+", help="λ of the lossy rows")
    args = ap.parse_args()
    torch.set_num_threads(1)
    started = machine()
    data = load("digits")
    rows: list[dict[str, Any]] = []
    if "lossless" in args.parts:
        if not args.models or "classical" in args.models:
            rows.extend(classical_rows(data.split("test").x.numpy()))
        for name in EXACT:
            if args.models and name not in args.models:
                continue
            rows.append(model_row(name, args.seed, data))
    if "lossy" in args.parts:
        if not args.models or "pca" in args.models:
            rows.extend(pca_rows(data))
        for setting in CODECS:
            if args.models and setting not in args.models:
                continue
            weights = (BOOK_LAMBDA,) if setting == "book" else LAMBDAS
            for weight in args.lambdas or weights:
                rows.append(codec_row(setting, weight, args.seed, data))
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
    print(f"wrote {RESULTS / 'compression.json'}")


if __name__ == "__main__":
    main()
