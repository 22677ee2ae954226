"""The user's own data: numpy arrays (``array``) and folders of images (``images``).

``load("array", path="x.npy")`` and ``load("images", path="pictures/")`` turn local files into
a :class:`~dgm.data.dataset.Dataset` with the right :class:`~dgm.data.spec.DataSpec`:

- integer arrays are DISCRETE with ``levels`` (default max + 1) levels, or BINARY when they only
  hold 0 and 1 (booleans too); floating arrays are CONTINUOUS; ``kind`` overrides the guess
  (``kind="continuous"`` reads integers as measurements);
- an inferred level count above :data:`MAX_INFERRED_LEVELS` (65,536) is refused before any model
  is built, with the memory one layer over its one-hot would take; an explicit ``levels`` is
  taken as meant;
- images are DISCRETE with 256 levels, (C, H, W), stored as uint8.

A file that holds one array is split at random into train/validation/test
(``val_fraction``, ``test_fraction``, ``seed``). Bad input (NaN, negative integers, object
arrays, wrong ranks, unreadable or mixed-size images) stops with a DataError that says what was
expected, before anything else is done.

:func:`resolve_data_argument` lets the CLI's ``--data`` take a dataset name or a path.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dgm.core.errors import DataError
from dgm.data.dataset import SPLITS, Dataset, Split, register_dataset
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "ARRAY_KINDS",
    "ARRAY_SUFFIXES",
    "MAX_INFERRED_LEVELS",
    "IMAGE_SUFFIXES",
    "TEXT_SUFFIXES",
    "load_array",
    "load_images",
    "random_split",
    "resolve_data_argument",
]

ARRAY_SUFFIXES = (".npy", ".npz")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
TEXT_SUFFIXES = (".txt", ".md")
_GRAY_MODES = ("1", "L", "LA")
ARRAY_KINDS = ("auto", "discrete", "binary", "continuous")
ArrayKind = Literal["auto", "discrete", "binary", "continuous"]
# Inferred level counts above this are refused (an explicit ``levels`` is taken as meant): a
# categorical model's one-hot layer grows with dim x levels, and at a million levels one layer
# of ONE_HOT_WIDTH units over 16 pixels already takes 16 GB.
MAX_INFERRED_LEVELS = 65_536
ONE_HOT_WIDTH = 256


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _existing_path(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} not found: {p} (resolved from {path!r}, cwd {Path.cwd()})")
    return p


def random_split(
    n: int, val_fraction: float, test_fraction: float, seed: int, where: str = "data"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of a random train/val/test split of ``n`` examples, reproducible from ``seed``.

    A non-zero fraction always gets at least one example; train must keep at least one.
    """
    for label, f in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise DataError(f"{where}: {label} must lie in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise DataError(
            f"{where}: val_fraction + test_fraction must be below 1 to leave training data, "
            f"got {val_fraction} + {test_fraction}"
        )
    n_val = max(1, round(val_fraction * n)) if val_fraction > 0 else 0
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    if n - n_val - n_test < 1:
        raise DataError(
            f"{where}: {n} example(s) are too few to split into train/val/test with "
            f"val_fraction={val_fraction}, test_fraction={test_fraction}"
        )
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test]


def _check_labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: labels must have shape ({n},), got {y.shape}")
    if y.dtype.kind not in "biu":
        raise DataError(f"{where}: labels must be integers 0..K-1, got dtype {y.dtype}")
    if len(y) and int(y.min()) < 0:
        raise DataError(f"{where}: labels must be integers 0..K-1, found {int(y.min())}")
    return y.astype(np.int64)


def _make_dataset(
    name: str,
    spec: DataSpec,
    xs: dict[str, torch.Tensor],
    ys: dict[str, torch.Tensor | None],
    description: str,
) -> Dataset:
    return Dataset(
        name=name,
        spec=spec,
        train=Split(xs["train"], ys["train"]),
        val=Split(xs["val"], ys["val"]),
        test=Split(xs["test"], ys["test"]),
        description=description,
    )


# ---------------------------------------------------------------------------------------------
# Arrays (.npy / .npz)


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays in a .npy (key "x") or .npz file, never unpickling anything."""
    try:
        if path.suffix == ".npy":
            with open(path, "rb") as f:
                if f.read(6) != b"\x93NUMPY":
                    raise DataError(
                        f"{path}: not a .npy file (no NUMPY header); save with np.save"
                    )
            return {"x": np.load(path, allow_pickle=False)}
        with np.load(path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as e:
        if "Object arrays" in str(e):
            raise DataError(
                f"{path}: holds Python objects (object dtype); expected a numeric array "
                "(integers or floats)"
            ) from None
        raise DataError(f"{path}: not a readable numpy file: {e}") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable numpy file: {e}") from None


def _check_array(x: np.ndarray, where: str) -> np.ndarray:
    """Check dtype, finiteness and rank; return (N, D) or (N, C, H, W) (adding a channel axis)."""
    if x.dtype.kind not in "biuf":
        raise DataError(
            f"{where}: dtype {x.dtype} is not supported; expected integers (discrete data), "
            "booleans (binary) or floats (continuous)"
        )
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim not in (2, 4):
        raise DataError(
            f"{where}: expected shape (N, D), (N, H, W) or (N, C, H, W), got {x.shape} "
            f"(rank {x.ndim}); reshape 1-D data to (N, 1)"
        )
    if x.shape[0] == 0 or 0 in x.shape[1:]:
        raise DataError(f"{where}: empty array of shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(f"{where}: contains NaN or infinite values; expected finite numbers")
    if x.dtype.kind in "iu" and int(x.min()) < 0:
        raise DataError(
            f"{where}: integer data must be non-negative levels 0..K-1, found {int(x.min())}; "
            "shift it to start at 0 (or store it as floats for continuous data)"
        )
    return x


def _compact_ints(x: np.ndarray, levels: int) -> torch.Tensor:
    """Integer data in the smallest dtype that holds 0..levels-1 (uint8 for images)."""
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        if levels - 1 <= np.iinfo(dtype).max:
            break
    return torch.from_numpy(np.ascontiguousarray(x, dtype=dtype))


def _one_hot_layer_gb(dim: int, levels: int, width: int = ONE_HOT_WIDTH) -> float:
    """GB of float32 weights in one ``width``-unit layer over a one-hot of dim x levels."""
    return dim * levels * width * 4 / 1e9


def _too_many_levels(p: Path, top: int, levels: int, dtype: np.dtype, dim: int) -> DataError:
    """The error for integer data whose inferred level count no categorical model can hold."""
    return DataError(
        f"{p}: integer data (dtype {dtype}) with values up to {top:,} was read as discrete data "
        f"with {levels:,} levels (max + 1); above {MAX_INFERRED_LEVELS:,} levels this is "
        f"refused, since one {ONE_HOT_WIDTH}-unit layer over the one-hot of {dim} x {levels:,} "
        f"values alone would take {_one_hot_layer_gb(dim, levels):,.1f} GB. "
        "If the values are measurements, read them as continuous: kind=continuous "
        "(dgm: --set data.options.kind=continuous); if they really are categories, "
        "give their number: levels=N (dgm: --set data.options.levels=N)"
    )


def _check_array_options(p: Path, kind: str, levels: int | None) -> None:
    if kind not in ARRAY_KINDS:
        raise DataError(f"{p}: kind={kind!r} is not one of {', '.join(ARRAY_KINDS)}")
    if levels is not None and kind == "continuous":
        raise DataError(f"{p}: levels={levels} applies to discrete data, not kind=continuous")
    if levels is not None and levels < 2:
        raise DataError(f"{p}: levels must be at least 2, got {levels}")


def _level_count(
    p: Path, xs: dict[str, np.ndarray], kind: str, levels: int | None, dim: int
) -> int:
    """The number of levels of integer splits: given (and checked) or inferred (and capped)."""
    top = max(int(xs[s].max()) for s in SPLITS if xs[s].size)
    if kind == "binary" and top > 1:
        raise DataError(f"{p}: kind=binary needs values 0 and 1, but the data holds up to {top}")
    if levels is not None:
        if top >= levels:
            raise DataError(
                f"{p}: levels={levels} but the data holds values up to {top}; levels must be "
                f"at least {top + 1}"
            )
        return levels
    inferred = max(top + 1, 2)
    if inferred > MAX_INFERRED_LEVELS:
        raise _too_many_levels(p, top, inferred, xs["train"].dtype, dim)
    return inferred


def _typed_splits(
    p: Path,
    xs: dict[str, np.ndarray],
    kind: str,
    levels: int | None,
    event_shape: tuple[int, ...],
    num_classes: int | None,
) -> tuple[DataSpec, dict[str, torch.Tensor], str]:
    """The spec, the split tensors and a description, for the ``kind`` asked for."""
    is_float = xs["train"].dtype.kind == "f"
    if kind == "continuous" or (kind == "auto" and is_float):
        if levels is not None:
            raise DataError(f"{p}: levels={levels} applies to integer data, but this is floating")
        spec = DataSpec(event_shape, DataKind.CONTINUOUS, num_classes=num_classes)
        x_t = {s: torch.from_numpy(np.ascontiguousarray(xs[s], dtype=np.float32)) for s in SPLITS}
        return spec, x_t, "continuous" + ("" if is_float else " (integers read as floats)")
    if is_float:
        raise DataError(
            f"{p}: kind={kind} needs integer levels 0..K-1, but the data is floating "
            f"({xs['train'].dtype}); store it as integers, or use kind=continuous"
        )
    levels = _level_count(p, xs, kind, levels, int(np.prod(event_shape)))
    binary = kind == "binary" or (kind == "auto" and levels == 2)
    data_kind = DataKind.BINARY if binary else DataKind.DISCRETE
    spec = DataSpec(event_shape, data_kind, num_levels=levels, num_classes=num_classes)
    x_t = {s: _compact_ints(xs[s], levels) for s in SPLITS}
    return spec, x_t, "binary" if binary else f"discrete, {levels} levels"


@register_dataset(
    "array", DataKind.DISCRETE, "your own .npy/.npz array (kind inferred from dtype)"
)
def load_array(
    path: str,
    levels: int | None = None,
    key: str | None = None,
    kind: ArrayKind = "auto",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Load a numpy array file as a dataset.

    Args:
        path: a ``.npy`` file, or a ``.npz`` file with keys ``train``/``val``/``test`` (and
            optionally ``y_train``/``y_val``/``y_test`` labels), or with one array (key ``x``, or
            ``key``, or the only key; optional labels ``y``) that is split at random.
            With ``train`` present, a missing ``val``/``test`` is carved from it at random.
        levels: number of levels of integer data (default: max + 1 over all splits, refused
            above :data:`MAX_INFERRED_LEVELS`; give it explicitly to go beyond).
        key: which array of a multi-array .npz to use, when there is no ``train`` key.
        kind: ``auto`` (integers are discrete, 0/1 binary, floats continuous), ``discrete``
            (integers, even when they only hold 0 and 1), ``binary`` (integers 0 and 1) or
            ``continuous`` (the values as float32, integers included).
        val_fraction, test_fraction, seed: the random split.
    """
    p = _existing_path(path, "array file")
    if p.suffix not in ARRAY_SUFFIXES:
        raise DataError(f"{p}: expected a .npy or .npz file")
    _check_array_options(p, kind, levels)
    arrays = _read_arrays(p)
    xs: dict[str, np.ndarray] = {}
    ys: dict[str, np.ndarray | None] = {}

    if "train" in arrays and key is None:
        for s in SPLITS:
            if s in arrays:
                xs[s] = _check_array(arrays[s], f"{p}[{s!r}]")
                y = arrays.get(f"y_{s}")
                ys[s] = None if y is None else _check_labels(y, len(xs[s]), f"{p}['y_{s}']")
        # Carve the missing splits out of train.
        want_val = 0.0 if "val" in xs else val_fraction
        want_test = 0.0 if "test" in xs else test_fraction
        if want_val or want_test:
            tr, va, te = random_split(len(xs["train"]), want_val, want_test, seed, str(p))
            x, y = xs["train"], ys["train"]
            for s, idx in (("train", tr), ("val", va), ("test", te)):
                if s == "train" or s not in xs:
                    xs[s] = x[idx]
                    ys[s] = None if y is None else y[idx]
        for s in SPLITS:
            if s not in xs:  # a zero fraction leaves it empty
                xs[s], ys[s] = xs["train"][:0], None if ys["train"] is None else ys["train"][:0]
    else:
        if key is not None:
            if key not in arrays:
                raise DataError(f"{p}: no array named {key!r}; it holds {', '.join(arrays)}")
            chosen = key
        elif "x" in arrays:
            chosen = "x"
        elif len(arrays) == 1:
            chosen = next(iter(arrays))
        else:
            raise DataError(
                f"{p}: holds several arrays ({', '.join(arrays)}); expected keys train/val/test, "
                "a key 'x' (labels 'y'), a single array, or the option key=NAME"
            )
        x = _check_array(arrays[chosen], f"{p}[{chosen!r}]")
        y = arrays.get("y") if chosen == "x" else None
        y = None if y is None else _check_labels(y, len(x), f"{p}['y']")
        for s, idx in zip(SPLITS, random_split(len(x), val_fraction, test_fraction, seed, str(p))):
            xs[s], ys[s] = x[idx], None if y is None else y[idx]

    shapes = {s: xs[s].shape[1:] for s in SPLITS}
    if len(set(shapes.values())) > 1:
        raise DataError(f"{p}: the splits must have the same example shape, got {shapes}")
    floats = {xs[s].dtype.kind == "f" for s in SPLITS}
    if len(floats) > 1:
        raise DataError(f"{p}: the splits mix integer and floating dtypes; use one for all")
    event_shape = tuple(int(d) for d in shapes["train"])
    labelled = [y for s in SPLITS if (y := ys[s]) is not None]
    if len(labelled) not in (0, len(SPLITS)):
        # Unlabelled splits next to labelled ones would break conditional models quietly.
        raise DataError(f"{p}: labels must be given for all splits or for none")
    num_classes = max((int(y.max()) + 1 for y in labelled if len(y)), default=None)
    y_t = {s: None if (y := ys[s]) is None else torch.from_numpy(y) for s in SPLITS}

    spec, x_t, what = _typed_splits(p, xs, kind, levels, event_shape, num_classes)
    sizes = "/".join(str(len(x_t[s])) for s in SPLITS)
    return _make_dataset(
        "array", spec, x_t, y_t, f"array file {p}: {what}, shape {event_shape}, {sizes}"
    )


# ---------------------------------------------------------------------------------------------
# Image folders


def _image_files(folder: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files under ``folder`` (sorted), their labels from subfolders, and class names."""
    files = sorted(
        f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise DataError(
            f"{folder}: no image files found (looked recursively for {', '.join(IMAGE_SUFFIXES)})"
        )
    top = [f for f in files if f.parent == folder]
    if len(top) == len(files):
        return files, None, []
    if top:
        raise DataError(
            f"{folder}: has images both directly inside ({top[0].name}, ...) and in subfolders; "
            "put every image in a class subfolder (folder name = label), or none"
        )
    classes = sorted({f.relative_to(folder).parts[0] for f in files})
    index = {c: i for i, c in enumerate(classes)}
    return files, [index[f.relative_to(folder).parts[0]] for f in files], classes


@register_dataset("images", DataKind.DISCRETE, "your own folder of PNG/JPEG/BMP/GIF images")
def load_images(
    path: str,
    size: int | None = None,
    grayscale: bool = False,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Load every image under a folder as a dataset of uint8 (C, H, W) images, 256 levels.

    Images are read with Pillow. They are grayscale (C=1) if all are grayscale or if
    ``grayscale``, else RGB (C=3; alpha is dropped, palettes are expanded). All must have the
    same size unless ``size`` is given, which resizes each to ``size`` x ``size``. If the images
    sit in subfolders, the subfolder names (sorted) become the labels 0..K-1.
    """
    try:
        from PIL import Image
    except ImportError:
        raise DataError("the images dataset needs Pillow: pip install pillow") from None

    folder = _existing_path(path, "image folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a folder of images")
    if size is not None and size < 1:
        raise DataError(f"images: size must be a positive number of pixels, got {size}")
    files, labels, classes = _image_files(folder)

    # Pass 1: headers only (Pillow opens lazily) to settle mode and size before decoding.
    modes, sizes = [], []
    for f in files:
        try:
            with Image.open(f) as header:
                modes.append(header.mode)
                sizes.append((header.height, header.width))
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{f}: not a readable image: {e}") from None
    if size is None and len(set(sizes)) > 1:
        first = files[0]
        other = next(f for f, s in zip(files, sizes) if s != sizes[0])
        h, w = sizes[files.index(other)]
        raise DataError(
            f"{folder}: images have different sizes ({first.name} is {sizes[0][0]}x{sizes[0][1]}, "
            f"{other.name} is {h}x{w}); pass size=N to resize all to NxN"
        )
    gray = grayscale or all(m in _GRAY_MODES for m in modes)
    mode = "L" if gray else "RGB"
    height, width = (size, size) if size is not None else sizes[0]

    # Pass 2: decode, convert, resize.
    out = np.empty((len(files), height, width, 1 if gray else 3), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as source:
                im = source.convert(mode)
                if (im.height, im.width) != (height, width):
                    im = im.resize((width, height), Image.Resampling.LANCZOS)
                out[i] = np.asarray(im, dtype=np.uint8).reshape(height, width, -1)
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{f}: not a readable image: {e}") from None
    x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    y = None if labels is None else torch.tensor(labels, dtype=torch.long)

    idx = random_split(len(files), val_fraction, test_fraction, seed, str(folder))
    xs = {s: x[torch.from_numpy(i)] for s, i in zip(SPLITS, idx)}
    ys = {s: None if y is None else y[torch.from_numpy(i)] for s, i in zip(SPLITS, idx)}
    spec = DataSpec(
        tuple(x.shape[1:]), DataKind.DISCRETE, num_levels=256,
        num_classes=len(classes) if classes else None,
    )  # fmt: skip
    sizes_text = "/".join(str(len(xs[s])) for s in SPLITS)
    labels_text = (
        "; labels " + ", ".join(f"{i}={c}" for i, c in enumerate(classes)) if classes else ""
    )
    return _make_dataset(
        "images",
        spec,
        xs,
        ys,
        f"images in {folder}: {'grayscale' if gray else 'RGB'} {height}x{width}, "
        f"{sizes_text}{labels_text}",
    )


# ---------------------------------------------------------------------------------------------
# The CLI's --data argument


def resolve_data_argument(text: str) -> tuple[str, dict[str, Any]]:
    """Turn the CLI's ``--data`` value into ``(dataset name, options)``.

    A registered dataset name wins when ``text`` has no path separator. Otherwise a ``.npy`` or
    ``.npz`` path gives ``("array", {"path": text})``, a ``.txt``/``.md`` file or a folder of
    them ``("text", {"path": text})`` and any other folder ``("images", {"path": text})``;
    a missing path or a file of another type is a DataError; anything else is returned as a name
    (the registry reports unknown names).
    """
    from dgm.data.dataset import dataset_names

    looks_like_path = os.sep in text or "/" in text or text.startswith(("~", "."))
    if not looks_like_path and text in dataset_names():
        return text, {}
    p = Path(text).expanduser()
    if p.suffix.lower() in ARRAY_SUFFIXES:
        return "array", {"path": text}
    if p.suffix.lower() in TEXT_SUFFIXES and p.is_file():
        return "text", {"path": text}
    if p.is_dir():
        files = [f.suffix.lower() for f in p.rglob("*") if f.is_file()]
        if not any(s in IMAGE_SUFFIXES for s in files) and any(s in TEXT_SUFFIXES for s in files):
            return "text", {"path": text}
        return "images", {"path": text}
    if p.is_file():
        raise DataError(
            f"{text}: unsupported data file; expected a .npy/.npz array, a .txt/.md text, "
            "or a folder of images or texts"
        )
    if looks_like_path:
        raise DataError(f"{text}: no such file or folder (cwd {Path.cwd()})")
    return text, {}
