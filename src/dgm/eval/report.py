"""A self-contained HTML report of a run: config, metrics, curves, samples, reconstructions."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

import torch
import yaml

from dgm.core.base import ImportanceWeighted, LatentVariable, Likelihood
from dgm.core.capabilities import Classifies, Marginalizable, MarkovChains
from dgm.core.capabilities import LossyCodec, Reconstructs
from dgm.data.dataset import Dataset
from dgm.core.spec import DataKind
from dgm.eval.latent import interpolate, summarize_latents
from dgm.eval.likelihood import Evaluation, evaluate
from dgm.eval.quality import QualityResult, quality_ready, sample_quality
from dgm.eval.plots import (
    can_draw,
    curves_png,
    image_grid,
    inpainting_png,
    latent_png,
    samples_png,
    save_png,
    scatter_png,
)
from dgm.runs import Run

__all__ = ["write_report", "report_evaluations", "report_quality", "QUALITY_SAMPLES"]

#: at most this many samples are scored for the report's sample quality
QUALITY_SAMPLES = 1000


def _img(png: bytes, alt: str) -> str:
    b64 = base64.b64encode(png).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def report_evaluations(model: Any, dataset: Dataset, k: int, seed: int = 0) -> list[Evaluation]:
    """The primary score on validation and test, plus IWAE(k) on test for bound models (none
    for a model without a normalized likelihood)."""
    kind = model.likelihood_on(model.spec.kind)
    if kind in (Likelihood.NONE, Likelihood.UNNORMALIZED):
        return []
    out = [
        evaluate(model, dataset.val, split_name="val", seed=seed),
        evaluate(model, dataset.test, split_name="test", seed=seed),
    ]
    if kind is Likelihood.LOWER_BOUND and isinstance(model, ImportanceWeighted) and k > 1:
        out.append(evaluate(model, dataset.test, split_name="test", method="iwae", k=k, seed=seed))
    return out


def report_quality(model: Any, dataset: Dataset, seed: int = 0) -> QualityResult | None:
    """Sample quality against the test split (at most :data:`QUALITY_SAMPLES` samples) where it
    can be scored without training a feature network first; else None."""
    if not quality_ready(dataset.name, dataset.spec):
        return None
    n = min(len(dataset.test), QUALITY_SAMPLES)
    return sample_quality(model, dataset, n=n, split="test", seed=seed)


def _quality_html(q: QualityResult | None, dataset: Dataset) -> str:
    if q is None:
        return (
            "<p class=note>Sample quality needs this dataset's feature network, which is not "
            "trained yet; <code>dgm eval RUN_DIR --metrics fd,kid,pr</code> trains it once "
            "(cached, checksummed) and scores the samples.</p>"
        )
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{html.escape(value)}</td></tr>"
        for name, value in _quality_rows(q)
    )
    return (
        f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"
        f"<p class=note>{q.n_fake} samples against the {q.n_real} test examples of "
        f"{html.escape(dataset.name)}"
        + (f", in the features of {html.escape(q.feature_net)}" if q.feature_net else "")
        + ". Compare with the real-vs-real floors (train vs test, validation vs test) in "
        "BENCHMARKS.md: the scale of a Fréchet distance depends on the feature network.</p>"
    )


def _quality_rows(q: QualityResult) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if q.fd is not None:
        rows.append(("Fréchet distance (lower is better)", f"{q.fd:.2f}"))
    if q.kid is not None:
        rows.append(("KID (unbiased MMD², cubic kernel) ± standard error",
                     f"{q.kid:.3f} ± {q.kid_stderr:.3f}"))
    if q.precision is not None:
        rows.append((f"precision / recall (k = {q.k_pr})", f"{q.precision:.3f} / {q.recall:.3f}"))
    if q.density is not None:
        rows.append((f"density / coverage (k = {q.k_dc})", f"{q.density:.3f} / {q.coverage:.3f}"))
    if q.accuracy is not None:
        rows.append(("classifier accuracy on class-conditional samples", f"{q.accuracy:.3f}"))
    if q.mmd is not None:
        rows.append(("MMD² (Gaussian kernel) ± standard error", f"{q.mmd:.5f} ± {q.mmd_stderr:.5f}"))
    if q.log_likelihood is not None:
        rows.append(("mean log-density of the samples under the true density",
                     f"{q.log_likelihood:.3f} (real data: {q.log_likelihood_real:.3f})"))
    return rows


def _table(evals: list[Evaluation]) -> str:
    tokens = any(e.perplexity is not None for e in evals)
    extra = "<th>perplexity</th><th>bits / char</th>" if tokens else ""
    rows = "".join(
        f"<tr><td>{e.split}</td><td>{e.nll_nats:.3f} ± {e.stderr_nats:.3f}</td>"
        f"<td>{'' if e.bpd is None else f'{e.bpd:.4f}'}</td>"
        + (
            f"<td>{e.perplexity:.3f}</td><td>"
            f"{'' if e.bits_per_char is None else f'{e.bits_per_char:.4f}'}</td>"
            if tokens and e.perplexity is not None
            else ""
        )
        + f"<td>{e.median_nats:.3f}</td><td>{html.escape(e.label)}</td><td>{e.n}</td></tr>"
        for e in evals
    )
    unit = "bits / token" if tokens else "bits / dim"
    return (
        f"<table><tr><th>split</th><th>nats / example</th><th>{unit}</th>{extra}<th>median</th>"
        f"<th>what it is</th><th>n</th></tr>{rows}</table>"
    )


def _texts(x: torch.Tensor, tokenizer: Any) -> str:
    """Token sequences decoded (up to each one's end token), one block each."""
    from dgm.data.tokenizers import decode_sequence

    texts = (html.escape(decode_sequence(tokenizer, row.tolist())) for row in x)
    return "".join(f"<pre>{t}</pre>" for t in texts)


def _latent_section(model: Any, dataset: Dataset) -> str:
    """Per-level KL and active units, the 2-D latent space over the prior, interpolations."""
    spec = dataset.spec
    x, y = dataset.test.all(spec)
    summary = summarize_latents(model, x)
    rows = "".join(
        f"<tr><td>{i}</td><td>{kl:.3f}</td><td>{act} / {units}</td></tr>"
        for i, (kl, act, units) in enumerate(
            zip(summary.kl_nats, summary.active_units, summary.units)
        )
    )
    parts = [
        "<h2>Latent space</h2>"
        "<table><tr><th>level (0 = next to the data)</th><th>KL, nats per example</th>"
        f"<th>active units</th></tr>{rows}</table>"
        "<p class=note>A unit is active when the variance over the test set of its posterior "
        "location exceeds 0.01 (Burda et al. 2016); a level whose KL is near 0 is unused "
        "(posterior collapse).</p>"
    ]
    top = model.latent_means(x)[-1]
    if top.shape[-1] == 2:
        png = latent_png(top, model.prior_log_prob, y)
        parts.append("<h3>Posterior locations over the prior</h3>" + _img(png, "latent space"))
    if spec.is_image or spec.dim in (64, 784):
        n = min(8, x.shape[0] // 2)
        rows_img = interpolate(model, x[:n], x[n : 2 * n], steps=10)
        buf = io.BytesIO()
        save_png(image_grid(rows_img, spec, ncol=10), buf, scale=4)
        parts.append(
            "<h3>Interpolations</h3><p>each row decodes the straight line between two test "
            "examples' top-level posterior locations</p>" + _img(buf.getvalue(), "interpolations")
        )
    return "".join(parts)


def _inpainting_section(model: Any, dataset: Dataset, seed: int) -> str:
    """Missing data: the exact NLL with the lower half (images) or a random half missing, and,
    for images, conditional samples of the missing half."""
    from dgm.eval.missing import evaluate_missing, observed_mask

    spec = dataset.spec
    mask = "lower_half" if _is_image_spec(spec) else "random"
    scored = evaluate_missing(model, dataset.test, mask, seed=seed)
    out = ("<h2>Missing data</h2><p>" + html.escape(scored.line()) + "</p><p class=note>"
           "Exact marginals: the observed pixels' NLL sums over every value of the missing "
           "ones; the conditional NLL is that of the missing pixels given the observed.</p>")
    if not _is_image_spec(spec):
        return out
    x, _ = dataset.test.batch(slice(0, 8), spec)
    observed = observed_mask(spec, mask, x.shape[0])
    gen = torch.Generator().manual_seed(seed)
    fills = torch.stack([model.sample_conditional(x, observed, generator=gen)
                         for _ in range(6)], 1)
    return out + ("<h3>Inpainting</h3><p>each row: a test image, what the model saw (missing "
                  "pixels in red), six draws from p(x_missing | x_observed)</p>"
                  + _img(inpainting_png(x, observed, fills, spec), "inpainting"))


def _is_image_spec(spec: Any) -> bool:
    return len(spec.event_shape) == 3 and spec.kind is not DataKind.TOKENS


def write_report(
    run: Run, dataset: Dataset, out: Path, *, k: int = 100, seed: int = 0, n_samples: int = 64
) -> tuple[Path, list[Evaluation], QualityResult | None]:
    """Write ``out`` (HTML, images inlined); return its path, the likelihood evaluations shown
    and the sample quality (None where it cannot be scored without training a feature net)."""
    model = run.load_model()
    spec = dataset.spec
    evals = report_evaluations(model, dataset, k=k, seed=seed)
    quality = report_quality(model, dataset, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    parts: list[str] = []
    info = run.info
    title = f"{run.config.model_name} on {run.config.data.name}"
    parts.append(f"<h1>{html.escape(title)}</h1>")
    parts.append(
        "<p>"
        f"parameters: {info.get('num_parameters', 0):,} &middot; epochs: {info.get('epochs_completed')}"
        f" (best {info.get('best_epoch')}) &middot; stopped early: "
        f"{'yes' if info.get('stopped_early') else 'no'}"
        f" &middot; recoveries from non-finite steps (rollbacks): {info.get('rollbacks', 0)}"
        f" &middot; wall {info.get('wall_s', 0):.1f} s, CPU {info.get('cpu_s', 0):.1f} s"
        f" &middot; likelihood: {html.escape(str(info.get('likelihood')))}"
        f" &middot; torch {html.escape(info.get('versions', {}).get('torch', '?'))}</p>"
    )
    if evals:
        parts.append("<h2>Likelihood</h2>" + _table(evals))
        parts.append(
            "<p class=note>Nats per example are summed over the data's dimensions; bits per "
            "dimension are in the data's own discrete space. A -ELBO or IWAE value is an upper "
            "bound on the negative log-likelihood, not the NLL itself.</p>"
        )
    else:
        kind = model.likelihood_on(spec.kind).value
        parts.append(
            f"<h2>Likelihood</h2><p class=note>{html.escape(type(model).__name__)} has no "
            f"normalized likelihood ({html.escape(kind)}): no number here is an NLL.</p>"
        )
    if isinstance(model, Classifies) and dataset.test.y is not None:
        from dgm.eval.classification import evaluate_classifier

        scored = evaluate_classifier(model, dataset.test, seed=seed)
        parts.append(
            "<h2>Classification</h2><p>" + html.escape(scored.line()) + "</p><p class=note>"
            "The error of argmax p(y | x); the expected calibration error of its confidence; "
            "how well log p(x) and the max softmax tell the test set from uniform noise and "
            "from the test images upside down (AUROC: 1 separates them, 0.5 is chance).</p>")
    if isinstance(model, LossyCodec):
        from dgm.eval.compression import evaluate_codec

        rd = evaluate_codec(model, dataset.test)
        parts.append(
            "<h2>Compression</h2><p>" + html.escape(rd.line()) + "</p><p class=note>The test "
            "split coded into one file by the entropy coder and decoded again: the rate is "
            "that file's bitstream, the distortion that of what it decodes to (the "
            "reconstructions below).</p>")
    parts.append("<h2>Sample quality</h2>" + _quality_html(quality, dataset))
    monitor = info.get("val_label") or info.get("val_method", "?")
    parts.append(
        "<h2>Training</h2>"
        f"<p>Early stopping and the best weights followed: {html.escape(str(monitor))}.</p>"
        + _img(curves_png(run.metrics(), title,
                          "MSE + λ · bits per pixel" if isinstance(model, LossyCodec)
                          else "nats per example"), "curves")
    )
    tokenizer = run.tokenizer()
    samples = model.sample(8 if tokenizer is not None else n_samples, generator=gen)
    parts.append("<h2>Samples</h2>")
    if tokenizer is not None:
        parts.append("<p>T = 1, from the start token</p>" + _texts(samples, tokenizer))
        real, _ = dataset.test.batch(slice(0, 4), spec)
        parts.append("<h3>Test examples</h3>" + _texts(real, tokenizer))
    elif spec.kind is DataKind.CONTINUOUS and spec.dim == 2:
        data, _ = dataset.test.all(spec)
        density = None
        if model.likelihood_on(spec.kind) is Likelihood.EXACT:
            density = lambda p: model.log_prob(p)  # noqa: E731
        many = model.sample(2000, generator=gen)
        parts.append(_img(scatter_png(data, many, density, title), "samples"))
    elif not can_draw(spec):
        parts.append(
            f"<p class=note>Examples of shape {spec.event_shape} ({spec.kind.value}) are not "
            "images or 2-D points, so they are not drawn; save samples as an array with "
            "<code>dgm sample RUN_DIR --out samples.npy</code>.</p>"
        )
    else:
        parts.append(_img(samples_png(samples, spec), "samples"))
        real, _ = dataset.test.batch(slice(0, n_samples), spec)
        parts.append("<h3>Test images</h3>" + _img(samples_png(real, spec), "data"))
        if isinstance(model, Reconstructs):
            x = real[:32]
            with torch.no_grad():
                rec = model.reconstruct(x, generator=gen)
            buf = io.BytesIO()
            save_png(image_grid(torch.cat([x, rec.to(x.dtype)]), spec, ncol=16), buf, scale=4)
            parts.append(
                "<h3>Reconstructions</h3><p>top two rows: data; bottom two: reconstructions</p>"
                + _img(buf.getvalue(), "reconstructions")
            )
    if isinstance(model, LatentVariable) and tokenizer is None:
        parts.append(_latent_section(model, dataset))
    if isinstance(model, Marginalizable) and tokenizer is None:
        parts.append(_inpainting_section(model, dataset, seed))
    if isinstance(model, MarkovChains):
        with torch.no_grad():
            diagnostics = model.mixing(500, generator=torch.Generator().manual_seed(seed))
        parts.append(
            "<h2>Mixing</h2><p>" + html.escape(diagnostics.line()) + "</p><p class=note>Of the "
            "free energy along 500 further Gibbs sweeps of copies of the persistent chains: "
            "the integrated autocorrelation time is how many sweeps one independent draw "
            "costs.</p>")
    cfg = yaml.safe_dump(run.config.to_dict(), sort_keys=False)
    parts.append(f"<h2>Config</h2><pre>{html.escape(cfg)}</pre>")
    style = (
        "body{font-family:sans-serif;max-width:960px;margin:2em auto;}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
        "img{max-width:100%}.note{color:#555;font-size:90%}pre{background:#f6f6f6;padding:1em}"
    )
    page = (
        f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>"
    )
    out.write_text(page)
    return out, evals, quality
