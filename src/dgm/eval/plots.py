"""Pictures: sample grids, training curves and 2-D scatter/density plots (PNG bytes)."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from dgm.core.errors import DataError
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "image_grid",
    "save_png",
    "curves_png",
    "curves_figure",
    "scatter_png",
    "samples_png",
    "can_draw",
    "latent_png",
    "inpainting_png",
]


def image_grid(x: Tensor, spec: DataSpec, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """Images (N, C, H, W) in the data space -> one uint8 grid (rows, cols[, 3]) for viewing."""
    x = x.detach().to("cpu", torch.float32)
    if x.dim() == 2:  # flat vectors that are square images
        side = int(round(math.sqrt(x.shape[1])))
        x = x.reshape(-1, 1, side, side)
    levels = spec.num_levels or 256
    x = (x / (levels - 1)).clamp(0, 1)
    n, c, h, w = x.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    grid = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad) * 0.5
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + q * (w + pad) : pad + q * (w + pad) + w] = x[i]
    img = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return img[..., 0] if c == 1 else img


def save_png(img: np.ndarray, path: str | Path | io.BytesIO, scale: int = 1) -> None:
    from PIL import Image

    im = Image.fromarray(img)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path, format="PNG")


def _fig_png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def curves_png(metrics: list[dict[str, Any]], title: str = "",
               unit: str = "nats per example") -> bytes:
    """Training loss and validation score per epoch, as a PNG; ``unit`` of the loss."""
    return _fig_png(curves_figure(metrics, title, unit))


def curves_figure(metrics: list[dict[str, Any]], title: str = "",
                  unit: str = "nats per example") -> Any:
    """The matplotlib figure of :func:`curves_png`: every epoch a marker, so that a run of one
    epoch shows its point, and the y range always holds the last and the best values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # "val" is the monitor's score; runs written before the monitor existed call it "val_nll".
    rows = [{**m, "val": m.get("val", m.get("val_nll"))} for m in metrics
            if "epoch" in m and ("val" in m or "val_nll" in m)]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    if rows:
        ep = [m["epoch"] for m in rows]
        # Markers, so that a run of one epoch (one point per line) still shows.
        style = {"marker": "o", "markersize": 3 if len(rows) > 30 else 5}
        ax.plot(ep, [m["train_loss"] for m in rows], label=f"train loss ({unit})", **style)
        ax.plot(ep, [m["val"] for m in rows], label=f"validation ({rows[0]['val_method']})",
                **style)
        if len(rows) == 1:
            ax.set_xlim(ep[0] - 1, ep[0] + 1)
            ax.set_xticks([ep[0]])
        else:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        best = min(rows, key=lambda m: m["val"])
        ax.axvline(best["epoch"], color="gray", ls=":", label=f"best epoch {best['epoch']}")
        lo = min(min(m["train_loss"] for m in rows), min(m["val"] for m in rows))
        # Clip the first epochs' large losses, but never the last point or the best one.
        kept = [rows[-1]["train_loss"], rows[-1]["val"], best["val"]]
        hi = max(np.percentile([m["val"] for m in rows] + [m["train_loss"] for m in rows], 90),
                 *kept)
        if hi > lo:
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
    ax.set_xlabel("epoch")
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def scatter_png(
    data: Tensor,
    samples: Tensor,
    log_density: Callable[[Tensor], Tensor] | None = None,
    title: str = "",
) -> bytes:
    """2-D data beside model samples, over the model's density where it has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d = data.detach().cpu().numpy()
    s = samples.detach().cpu().float().numpy()
    lo = np.percentile(d, 0.5, axis=0) - 0.5
    hi = np.percentile(d, 99.5, axis=0) + 0.5
    ncols = 3 if log_density is not None else 2
    # panels of equal aspect: the figure's height follows the data's, so the title sits on them
    aspect = float(np.clip((hi[1] - lo[1]) / (hi[0] - lo[0]), 0.3, 1.5))
    fig, axes = plt.subplots(1, ncols, figsize=(4 * ncols, 4 * aspect + 0.8), layout="constrained")
    axes[0].scatter(d[:, 0], d[:, 1], s=2, alpha=0.4)
    axes[0].set_title("data")
    axes[1].scatter(s[:, 0], s[:, 1], s=2, alpha=0.4, color="C1")
    axes[1].set_title("samples")
    if log_density is not None:
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
        with torch.no_grad():
            dens = torch.exp(log_density(pts)).reshape(200, 200).numpy()
        axes[2].pcolormesh(gx, gy, dens, shading="auto")
        axes[2].set_title("model density")
    for ax in axes:
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
    fig.suptitle(title)
    return _fig_png(fig)


def _is_image(spec: DataSpec) -> bool:
    """Gray or RGB (C, H, W) images, or flat discrete vectors of 8x8 or 28x28 pixels."""
    if spec.is_image:
        return spec.event_shape[0] in (1, 3)
    return spec.kind is not DataKind.CONTINUOUS and spec.dim in (64, 784)


def can_draw(spec: DataSpec) -> bool:
    """Whether :func:`samples_png` can draw data of ``spec``: images or 2-D points (not tokens)."""
    return spec.kind is not DataKind.TOKENS and (_is_image(spec) or spec.dim == 2)


def samples_png(x: Tensor, spec: DataSpec, scale: int = 4) -> bytes:
    """Samples as a PNG: an image grid for images, a scatter plot for 2-D points."""
    if not can_draw(spec):
        raise DataError(
            f"cannot draw samples of shape {spec.event_shape} ({spec.kind.value}) as a picture; "
            "save them as .npy"
        )
    buf = io.BytesIO()
    if _is_image(spec):
        save_png(image_grid(x, spec), buf, scale=scale)
        return buf.getvalue()
    return scatter_png(x, x, None, "samples")


def inpainting_png(x: Tensor, observed: Tensor, fills: Tensor, spec: DataSpec,
                   scale: int = 4) -> bytes:
    """One row per example: the image, what the model saw (missing pixels in red), then the
    fills. x (N, C, H, W), observed bool of x's shape, fills (N, S, C, H, W)."""
    levels = (spec.num_levels or 256) - 1
    def rgb(t: Tensor) -> Tensor:
        t = t.detach().to("cpu", torch.float32) / levels
        return (t.mean(1, keepdim=True) if t.shape[1] != 3 else t).expand(-1, 3, -1, -1)

    seen = rgb(x).clone()
    red = torch.tensor([0.85, 0.15, 0.15]).reshape(1, 3, 1, 1).expand_as(seen)
    hidden = ~observed.to("cpu").bool().any(1, keepdim=True).expand_as(seen)
    seen[hidden] = red[hidden]
    n, s = fills.shape[:2]
    columns = [rgb(x).unsqueeze(1), seen.unsqueeze(1),
               rgb(fills.reshape(n * s, *fills.shape[2:])).reshape(n, s, 3, *x.shape[2:])]
    tiles = torch.cat(columns, 1).reshape(-1, 3, *x.shape[2:]) * levels
    rgb_spec = DataSpec((3, *x.shape[2:]), DataKind.DISCRETE, num_levels=levels + 1)
    buf = io.BytesIO()
    save_png(image_grid(tiles, rgb_spec, ncol=s + 2), buf, scale=scale)
    return buf.getvalue()


def latent_png(
    points: Tensor,
    prior_log_prob: Callable[[Tensor], Tensor] | None,
    labels: Tensor | None = None,
    title: str = "",
) -> bytes:
    """2-D latent locations of examples over the prior's density (Book Figs 5.8-5.13): where
    the encodings leave prior mass unused are the prior's "holes"."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = points.detach().cpu().double().numpy()
    lo = np.minimum(np.percentile(p, 0.5, axis=0), -3.0) - 0.5
    hi = np.maximum(np.percentile(p, 99.5, axis=0), 3.0) + 0.5
    fig, ax = plt.subplots(figsize=(5, 5))
    if prior_log_prob is not None:
        gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        pts = torch.tensor(np.stack([gx.ravel(), gy.ravel()], 1), dtype=torch.float32)
        with torch.no_grad():
            dens = torch.exp(prior_log_prob(pts)).reshape(200, 200).double().numpy()
        if dens.max() - dens.min() > 1e-12:
            ax.contourf(gx, gy, dens, levels=20, cmap="Blues")
    color = None if labels is None else labels.cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=4, c=color, cmap="tab10" if labels is not None else None,
               color="k" if labels is None else None, alpha=0.7)
    ax.set_xlim(lo[0], hi[0])
    ax.set_ylim(lo[1], hi[1])
    ax.set_aspect("equal")
    ax.set_title(title or "posterior locations of test examples over the prior")
    return _fig_png(fig)
