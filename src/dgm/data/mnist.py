"""MNIST and Fashion-MNIST, read from local raw IDX files (see :mod:`dgm.data.fetch`).

Registered datasets (all 28x28 grayscale, shape (1, 28, 28), 10 classes, labels in ``y``):

- ``mnist``, ``fashion_mnist``: 8-bit intensities, DISCRETE with 256 levels.
- ``binary_mnist``, ``binary_fashion_mnist``: BINARY. The training split is *dynamically*
  binarized: it holds the uint8 intensities and every batch draws fresh pixels
  x ~ Bernoulli(intensity / 255), which acts as a regularizer. Validation and test are
  binarized *once*, with a fixed seed (option ``binarize_seed``, default 0), so that every model
  is scored on the same binary images. This is the usual protocol for dynamically binarized
  MNIST. It is not the fixed binarization of Larochelle & Murray (2011) used by some papers
  ("static MNIST"), which is not available offline: compare NLLs with papers that use dynamic
  binarization, and report the seed.

Split, the same for all: the first 50,000 official training images are train, the last 10,000
are validation, and the official 10,000 test images are test.

Files are looked up in ``<root>/<name>/`` where ``root`` is an option (default: the data
directory, ``$DGM_DATA_DIR`` or ``./data``), and their checksums are verified on every load
(about 0.1 s; option ``verify=False`` skips it, for your own copies in the same format). If they
are missing, the error says where it looked and that ``dgm fetch mnist`` gets them.
"""

from __future__ import annotations

import numpy as np
import torch

from dgm.data.dataset import Dataset, Split, register_dataset
from dgm.data.fetch import read_raw_files
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "FASHION_CLASSES",
    "NUM_TRAIN",
    "NUM_VAL",
    "fixed_binarization",
    "load_mnist_family",
]

NUM_TRAIN = 50000  # the first NUM_TRAIN official training images are train...
NUM_VAL = 10000  # ...and the last NUM_VAL are validation

FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}


def fixed_binarization(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw of Bernoulli(x / 255) pixels from uint8 intensities, as uint8 0/1."""
    return torch.bernoulli(x.to(torch.float32) / 255.0, generator=generator).to(torch.uint8)


def _as_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.array(images, dtype=np.uint8)).unsqueeze(1)  # (N, 1, H, W)
    y = torch.from_numpy(labels.astype(np.int64))
    return x, y


def load_mnist_family(
    source: str,
    *,
    binary: bool = False,
    root: str | None = None,
    verify: bool = True,
    binarize_seed: int = 0,
) -> Dataset:
    """Load ``source`` ("mnist" or "fashion_mnist") from its raw IDX files into a Dataset.

    ``binary`` gives the binarized variant described in the module docstring.
    """
    arrays = read_raw_files(source, root, verify=verify)
    x_full, y_full = _as_tensors(arrays["train_images"], arrays["train_labels"])
    x_test, y_test = _as_tensors(arrays["test_images"], arrays["test_labels"])
    # Official files: 50000/10000. Smaller files of one's own (verify=False): the last sixth.
    n_val = NUM_VAL if len(x_full) >= NUM_TRAIN + NUM_VAL else len(x_full) // 6
    n_train = len(x_full) - n_val
    x_train, y_train = x_full[:n_train], y_full[:n_train]
    x_val, y_val = x_full[n_train:], y_full[n_train:]
    title = _TITLES.get(source, source)
    event_shape = tuple(x_full.shape[1:])
    num_classes = 10
    sizes = f"{n_train}/{n_val}/{len(x_test)} (train = first {n_train} official training images)"
    if source == "fashion_mnist":
        sizes += "; classes " + ", ".join(f"{i}={c}" for i, c in enumerate(FASHION_CLASSES))
    if binary:
        generator = torch.Generator().manual_seed(binarize_seed)
        val = Split(fixed_binarization(x_val, generator), y_val)  # drawn first...
        test = Split(fixed_binarization(x_test, generator), y_test)  # ...then test
        return Dataset(
            name=f"binary_{source}",
            spec=DataSpec(event_shape, DataKind.BINARY, num_levels=2, num_classes=num_classes),
            train=Split(x_train, y_train, dynamic_binarize=True),
            val=val,
            test=test,
            description=(
                f"{title}, binarized: train dynamically (fresh Bernoulli(x/255) draws every "
                f"batch), val/test once with binarize_seed={binarize_seed}; {sizes}"
            ),
        )
    return Dataset(
        name=source,
        spec=DataSpec(event_shape, DataKind.DISCRETE, num_levels=256, num_classes=num_classes),
        train=Split(x_train, y_train),
        val=Split(x_val, y_val),
        test=Split(x_test, y_test),
        description=f"{title}, 28x28 grayscale, 256 levels; {sizes}",
    )


@register_dataset("mnist", DataKind.DISCRETE, "MNIST 28x28, 256 levels, 50000/10000/10000")
def load_mnist(root: str | None = None, verify: bool = True) -> Dataset:
    """MNIST digits, 8-bit intensities (needs ``dgm fetch mnist`` once)."""
    return load_mnist_family("mnist", root=root, verify=verify)


@register_dataset(
    "binary_mnist",
    DataKind.BINARY,
    "MNIST 28x28, dynamically binarized train, fixed-seed binarized val/test",
)
def load_binary_mnist(
    root: str | None = None, verify: bool = True, binarize_seed: int = 0
) -> Dataset:
    """MNIST, binarized: dynamic for train, fixed (``binarize_seed``) for val and test."""
    return load_mnist_family(
        "mnist", binary=True, root=root, verify=verify, binarize_seed=binarize_seed
    )


@register_dataset(
    "fashion_mnist", DataKind.DISCRETE, "Fashion-MNIST 28x28, 256 levels, 50000/10000/10000"
)
def load_fashion_mnist(root: str | None = None, verify: bool = True) -> Dataset:
    """Zalando's Fashion-MNIST, 8-bit intensities (needs ``dgm fetch fashion_mnist`` once)."""
    return load_mnist_family("fashion_mnist", root=root, verify=verify)


@register_dataset(
    "binary_fashion_mnist",
    DataKind.BINARY,
    "Fashion-MNIST 28x28, dynamically binarized train, fixed-seed binarized val/test",
)
def load_binary_fashion_mnist(
    root: str | None = None, verify: bool = True, binarize_seed: int = 0
) -> Dataset:
    """Fashion-MNIST, binarized: dynamic for train, fixed (``binarize_seed``) for val and test."""
    return load_mnist_family(
        "fashion_mnist", binary=True, root=root, verify=verify, binarize_seed=binarize_seed
    )
