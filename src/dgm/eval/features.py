r"""Feature networks for sample-quality metrics, trained by the library itself.

The Fréchet Inception Distance (Heusel et al., 2017) compares two sets of images in the feature
space of an Inception network trained on ImageNet. That network is a download, wants 299x299 RGB
input and has never seen an 8x8 digit. dgm instead trains, for each image dataset, a small
classifier on that dataset's own training split and labels, and takes its penultimate
activations as features:

    f(x) = h_L(... h_1(x / (L - 1))),    h_l(u) = ReLU(W_l u + b_l),    logits = W_out f(x) + b_out

where x holds the data's own integer levels 0..L-1 (so callers pass raw samples) and f(x) has
``num_features`` = the last hidden width. The network is an MLP (digits: 64 -> 256 -> 128 -> 10;
MNIST and Fashion-MNIST: 784 -> 512 -> 256 -> 10); a classifier's penultimate layer carries what
separates the classes, which is what a sample-quality score should weigh.

Training (:func:`train_feature_net`) is seeded and bit-reproducible on CPU: the initial weights
and the batch order come from one ``torch.Generator``, there is no dropout, and it runs on one
thread (float summation order depends on the thread count). Adam, the weights of the epoch with
the best validation accuracy; the test accuracy is recorded with the weights. One command
retrains them: ``python benchmarks/feature_nets.py --data digits``.

Where the weights live (:func:`feature_net`):

- ``digits``: shipped in the package (``dgm/eval/weights/digits.safetensors``, about 0.2 MB),
  its sha256 written below and verified on every load.
- ``mnist``, ``fashion_mnist``: trained on first use (the dataset's files must be there; nothing
  is downloaded) and cached as ``$DGM_DATA_DIR/features/<name>.safetensors`` (default
  ``./data/features``) beside a ``<name>.sha256`` file, verified on every load.
- ``binary_mnist``, ``binary_fashion_mnist``: the base dataset's network reading its {0, 1}
  inputs as x / (2 - 1), the same [0, 1] scale as the 8-bit images.

A file whose checksum does not match raises :class:`~dgm.core.errors.CheckpointError`.

References:
    Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
    Equilibrium, 2017, arXiv:1706.08500 (FID).
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.checkpoints import load_tensors, save_tensors
from dgm.core.errors import CheckpointError, ConfigError, DataError
from dgm.data import Dataset, load

__all__ = [
    "feature_net_ready",
    "FeatureNet",
    "FeatureNetConfig",
    "FEATURE_NET_CONFIGS",
    "SHIPPED_SHA256",
    "feature_net",
    "feature_net_names",
    "train_feature_net",
    "save_feature_net",
    "load_feature_net",
    "cache_feature_net",
    "file_sha256",
]

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# sha256 of the shipped weight files; `python benchmarks/feature_nets.py --data digits` prints
# the digest of a fresh training run for comparison.
SHIPPED_SHA256 = {
    "digits": "932fc7e957aa33d4bc094c0f8481722536d9ace48cc0aa805b934303ef679552",
}

# Datasets with a network of their own, and the binary variants that borrow their base's.
_BASE = {
    "digits": "digits",
    "mnist": "mnist",
    "fashion_mnist": "fashion_mnist",
    "binary_mnist": "mnist",
    "binary_fashion_mnist": "fashion_mnist",
}


@dataclass(frozen=True, kw_only=True)
class FeatureNetConfig:
    """How a feature network is built and trained.

    Attributes:
        hidden: widths of the hidden ReLU layers; the last one is the feature dimension.
        epochs: training epochs; the weights of the best validation epoch are kept.
        batch_size: examples per Adam step.
        lr: Adam's learning rate.
        weight_decay: L2 penalty (Adam's ``weight_decay``).
    """

    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 100
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or any(h < 1 for h in self.hidden):
            raise ConfigError(f"hidden must be one or more positive widths, got {self.hidden}")
        if self.epochs < 1:
            raise ConfigError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")


FEATURE_NET_CONFIGS: dict[str, FeatureNetConfig] = {
    "digits": FeatureNetConfig(hidden=(256, 128), epochs=100, batch_size=64),
    "mnist": FeatureNetConfig(hidden=(512, 256), epochs=10, batch_size=128),
    "fashion_mnist": FeatureNetConfig(hidden=(512, 256), epochs=10, batch_size=128),
}


class FeatureNet(nn.Module):
    """An MLP classifier whose penultimate activations are the features.

    ``forward(x)`` returns the features, shape (N, ``num_features``), so the module plugs into
    torchmetrics' ``FrechetInceptionDistance(feature=...)`` as it is. Inputs are examples in
    the data's own space, shape (N, *event_shape), integer levels 0..L-1 (floats on the same
    scale are accepted), divided by L - 1 inside the network.

    Args:
        event_shape: shape of one example, e.g. (1, 8, 8).
        num_levels: L, the number of levels of the inputs.
        num_classes: outputs of the classifier head.
        hidden: hidden widths; the last is ``num_features``.
        dataset: the name of the dataset the network was trained on.
        info: what training recorded (seed, accuracies, config), kept in the weight file.
    """

    def __init__(
        self,
        *,
        event_shape: tuple[int, ...],
        num_levels: int,
        num_classes: int,
        hidden: tuple[int, ...],
        dataset: str,
        info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if num_levels < 2:
            raise ConfigError(f"num_levels must be >= 2, got {num_levels}")
        self.event_shape = tuple(int(s) for s in event_shape)
        self.num_levels = int(num_levels)
        self.num_classes = int(num_classes)
        self.hidden = tuple(int(h) for h in hidden)
        self.dataset = dataset
        self.info = dict(info or {})
        self.sha256: str | None = None  # set when loaded from (or saved to) a file
        widths = (_prod(self.event_shape), *self.hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(self.hidden[-1], self.num_classes)
        self.num_features = self.hidden[-1]  # torchmetrics reads this attribute

    @property
    def test_accuracy(self) -> float | None:
        """The classifier's accuracy on its dataset's test split, as recorded at training."""
        return self.info.get("test_accuracy")

    @property
    def tag(self) -> str:
        """A short label that identifies these weights, e.g. ``digits-mlp:1a2b3c4d5e6f``."""
        digest = self.sha256[:12] if self.sha256 else "unsaved"
        return f"{self.dataset}-mlp:{digest}"

    def _scaled(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise DataError(
                f"the {self.dataset} feature network takes examples of shape "
                f"(N, {', '.join(map(str, self.event_shape))}), got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1).to(torch.float32) / (self.num_levels - 1)

    def forward(self, x: Tensor) -> Tensor:
        """Penultimate activations f(x), shape (N, num_features)."""
        return self.body(self._scaled(x))

    def logits(self, x: Tensor) -> Tensor:
        """Class logits, shape (N, num_classes)."""
        return self.head(self.forward(x))

    @torch.no_grad()
    def embed(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Features of a whole set in batches, in float64, shape (N, num_features)."""
        parts = [self.forward(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
        if not parts:
            return torch.zeros(0, self.num_features, dtype=torch.float64)
        return torch.cat(parts).to(torch.float64)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 4096) -> Tensor:
        """Predicted labels, shape (N,), long."""
        steps = range(0, x.shape[0], batch_size)
        parts = [self.logits(x[i : i + batch_size]).argmax(1) for i in steps]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def with_levels(self, num_levels: int, dataset: str) -> "FeatureNet":
        """The same weights reading inputs with ``num_levels`` levels (for binary variants)."""
        net = FeatureNet(
            event_shape=self.event_shape,
            num_levels=num_levels,
            num_classes=self.num_classes,
            hidden=self.hidden,
            dataset=dataset,
            info={**self.info, "base": self.dataset},
        )
        net.load_state_dict(self.state_dict())
        net.sha256 = self.sha256
        return net.eval()


def _prod(shape: tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= s
    return out


# ---------------------------------------------------------------------------------------------
# Training


@contextmanager
def _one_thread() -> Iterator[None]:
    # Float sums are ordered differently with more threads: one thread makes training
    # bit-reproducible. The caller's setting is restored afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _init_weights(net: FeatureNet, generator: torch.Generator) -> None:
    """W, b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) from ``generator`` (PyTorch's default range)."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Linear):
                bound = module.in_features**-0.5
                for p in (module.weight, module.bias):
                    p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * bound)


def _labelled(dataset: Dataset, split: str) -> tuple[Tensor, Tensor]:
    part = dataset.split(split)
    if part.y is None:
        raise DataError(f"dataset {dataset.name} has no labels: a feature network needs them")
    # A fixed generator: dynamically binarized splits draw the same pixels every time.
    x, y = part.batch(slice(None), dataset.spec, generator=torch.Generator().manual_seed(0))
    return x, y


@torch.no_grad()
def _accuracy(net: FeatureNet, x: Tensor, y: Tensor) -> float:
    return float((net.predict(x) == y).to(torch.float64).mean())


def train_feature_net(
    data: str | Dataset, seed: int = 0, *, config: FeatureNetConfig | None = None
) -> FeatureNet:
    """Train the feature network of an image dataset, bit-reproducibly on CPU.

    Minimizes the cross-entropy -log softmax(logits(x))_y over the training split with Adam,
    for ``config.epochs`` epochs of shuffled batches, and keeps the weights of the epoch with
    the best validation accuracy (the first such epoch on ties).

    Args:
        data: a dataset name (loaded with :func:`dgm.data.load`) or a loaded image Dataset
            with labels.
        seed: seeds the initial weights and the batch order.
        config: architecture and optimizer; default ``FEATURE_NET_CONFIGS[name]`` (the
            digits one for an unknown name).

    Returns:
        The trained network in eval mode, with ``info`` holding the seed, the config, the best
        epoch and the validation and test accuracies.
    """
    dataset = load(data) if isinstance(data, str) else data
    spec = dataset.spec
    if not spec.is_image or not spec.kind.is_discrete or spec.num_classes is None:
        raise DataError(
            f"a feature network needs labelled discrete images; dataset {dataset.name} has "
            f"{spec.kind.value} examples of shape {spec.event_shape}"
            + ("" if spec.num_classes else " and no classes")
        )
    config = config or FEATURE_NET_CONFIGS.get(dataset.name, FEATURE_NET_CONFIGS["digits"])
    with _one_thread():
        return _fit(dataset, seed, config)


def _fit(dataset: Dataset, seed: int, config: FeatureNetConfig) -> FeatureNet:
    spec = dataset.spec
    generator = torch.Generator().manual_seed(seed)
    net = FeatureNet(
        event_shape=spec.event_shape,
        num_levels=spec.num_levels,
        num_classes=spec.num_classes,
        hidden=config.hidden,
        dataset=dataset.name,
    )
    _init_weights(net, generator)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x, y = _labelled(dataset, "train")
    x_val, y_val = _labelled(dataset, "val")
    best_acc, best_epoch, best_state = -1.0, 0, net.state_dict()
    for epoch in range(1, config.epochs + 1):
        net.train()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = F.cross_entropy(net.logits(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        net.eval()
        acc = _accuracy(net, x_val, y_val)
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    x_test, y_test = _labelled(dataset, "test")
    net.info = {
        "seed": seed,
        "config": asdict(config),
        "best_epoch": best_epoch,
        "val_accuracy": best_acc,
        "test_accuracy": _accuracy(net, x_test, y_test),
        "num_train": len(x),
    }
    return net.eval()


# ---------------------------------------------------------------------------------------------
# Files: saving, loading, checksums, the cache


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_feature_net(net: FeatureNet, path: str | Path) -> str:
    """Write the weights and their description (safetensors metadata); return the sha256."""
    state = {
        "dataset": net.dataset,
        "event_shape": list(net.event_shape),
        "num_levels": net.num_levels,
        "num_classes": net.num_classes,
        "hidden": list(net.hidden),
        "info": net.info,
    }
    save_tensors(path, net.state_dict(), state)
    net.sha256 = file_sha256(path)
    return net.sha256


def load_feature_net(path: str | Path, sha256: str | None = None) -> FeatureNet:
    """Read a network written by :func:`save_feature_net`.

    Args:
        path: the safetensors file.
        sha256: the expected digest of the file; a mismatch raises CheckpointError.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"feature network weights not found: {path}")
    digest = file_sha256(path)
    if sha256 is not None and digest != sha256:
        raise CheckpointError(
            f"feature network {path} is corrupt: sha256 {digest[:16]}... does not match the "
            f"expected {sha256[:16]}..."
        )
    tensors, state = load_tensors(path)
    try:
        net = FeatureNet(
            event_shape=tuple(state["event_shape"]),
            num_levels=int(state["num_levels"]),
            num_classes=int(state["num_classes"]),
            hidden=tuple(state["hidden"]),
            dataset=str(state["dataset"]),
            info=dict(state.get("info", {})),
        )
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"feature network {path} does not describe a FeatureNet: {e}")
    net.sha256 = digest
    return net.eval()


def feature_net_names() -> list[str]:
    """The datasets that have a feature network."""
    return sorted(_BASE)


def _cache_dir(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("DGM_DATA_DIR")
    return (Path(env).expanduser() if env else Path("data")) / "features"


def _training_data(name: str) -> Dataset:
    return load(name)


def cache_feature_net(net: FeatureNet, root: str | Path | None = None) -> Path:
    """Write ``net`` to the cache as ``<root>/<dataset>.safetensors`` with its checksum file.

    Args:
        net: a trained network; its ``dataset`` names the files.
        root: the cache folder (default ``$DGM_DATA_DIR/features``, else ``./data/features``).

    Returns:
        The path of the weights.
    """
    weights, checksum = _cache_paths(net.dataset, root)
    tmp = weights.with_name(f"{net.dataset}.new.safetensors")
    digest = save_feature_net(net, tmp)
    # The checksum is written before the weights appear: an interrupted write leaves no
    # weights, so the next call trains again instead of finding weights it cannot verify.
    checksum.write_text(digest + "\n")
    os.replace(tmp, weights)
    return weights


def _cache_paths(name: str, root: str | Path | None) -> tuple[Path, Path]:
    """The cached weights of ``name``'s network and their checksum file."""
    folder = _cache_dir(root)
    return folder / f"{name}.safetensors", folder / f"{name}.sha256"


def _cached(name: str, root: str | Path | None) -> FeatureNet:
    """Load ``<cache>/<name>.safetensors``, training and caching it first if absent."""
    weights, checksum = _cache_paths(name, root)
    if not weights.is_file():
        net = train_feature_net(_training_data(name))
        cache_feature_net(net, root)
        return net
    if not checksum.is_file():
        raise CheckpointError(
            f"feature network {weights} has no checksum file {checksum.name}; delete it to retrain"
        )
    expected = checksum.read_text().strip()
    try:
        return load_feature_net(weights, expected)
    except CheckpointError as e:
        raise CheckpointError(f"{e}; delete {weights} to retrain") from None


def feature_net_ready(name: str, *, root: str | Path | None = None) -> bool:
    """Whether :func:`feature_net` can return ``name``'s network without training it first
    (shipped, or trained before and cached)."""
    base = _BASE.get(name)
    if base is None:
        return False
    return base in SHIPPED_SHA256 or _cache_paths(base, root)[0].is_file()


def feature_net(name: str, *, root: str | Path | None = None) -> FeatureNet:
    """The feature network of the image dataset ``name``, verified against its checksum.

    Args:
        name: digits, mnist, fashion_mnist, binary_mnist or binary_fashion_mnist.
        root: the cache folder of the trained networks (default ``$DGM_DATA_DIR/features``,
            else ``./data/features``); the shipped digits network ignores it.

    Raises:
        ConfigError: no feature network exists for ``name``.
        CheckpointError: the weights do not match their checksum.
        DataError: the network must be trained and the dataset's files are missing.

    Example:
        >>> net = feature_net("digits")
        >>> net(torch.zeros(2, 1, 8, 8, dtype=torch.long)).shape
        torch.Size([2, 128])
        >>> net.tag
        'digits-mlp:932fc7e957aa'
    """
    if name not in _BASE:
        raise ConfigError(
            f"no feature network for dataset {name!r}; available: {', '.join(feature_net_names())}"
        )
    base = _BASE[name]
    if base in SHIPPED_SHA256:
        net = load_feature_net(WEIGHTS_DIR / f"{base}.safetensors", SHIPPED_SHA256[base])
    else:
        net = _cached(base, root)
    return net if base == name else net.with_levels(2, name)
