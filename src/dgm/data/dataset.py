"""Datasets held in memory: three splits and a data spec, and the dataset registry."""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import torch
from torch import Tensor

from dgm.core.configuration import coerce
from dgm.core.errors import ConfigError
from dgm.core.spec import DataKind, DataSpec

if typing.TYPE_CHECKING:
    from dgm.data.tokenizers import Tokenizer

__all__ = ["Split", "Dataset", "register_dataset", "dataset_entry", "dataset_names", "load"]

SPLITS = ("train", "val", "test")


@dataclass
class Split:
    """One split of a dataset, held as tensors.

    ``x`` is stored compactly (uint8 for images); :meth:`batch` returns it in the data's own
    space and dtype. With ``dynamic_binarize``, ``x`` holds intensities in 0..255 and every
    call draws fresh binary pixels x ~ Bernoulli(intensity / 255) (dynamic binarization).
    ``characters`` (text only) is the number of characters each example decodes to, so that the
    evaluator can report bits per character whatever the tokenizer.
    """

    x: Tensor
    y: Tensor | None = None
    dynamic_binarize: bool = False
    characters: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batch(
        self, index: Tensor | slice, spec: DataSpec, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor | None]:
        x = self.x[index]
        y = None if self.y is None else self.y[index]
        if self.dynamic_binarize:
            probs = x.to(torch.float32) / 255.0
            x = torch.bernoulli(probs, generator=generator).long()
        else:
            x = x.to(spec.dtype)
        return x, y

    def all(self, spec: DataSpec) -> tuple[Tensor, Tensor | None]:
        """The whole split in the data space (fixed binarization is applied at load time)."""
        return self.batch(slice(None), spec)

    def to(self, device: torch.device | str) -> "Split":
        return replace(
            self,
            x=self.x.to(device),
            y=None if self.y is None else self.y.to(device),
            characters=None if self.characters is None else self.characters.to(device),
        )

    def subset(self, index: Tensor | slice) -> "Split":
        """The examples at ``index`` (labels and character counts follow)."""
        return replace(
            self,
            x=self.x[index],
            y=None if self.y is None else self.y[index],
            characters=None if self.characters is None else self.characters[index],
        )


@dataclass
class Dataset:
    """Three splits and the spec of one example."""

    name: str
    spec: DataSpec
    train: Split
    val: Split
    test: Split
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    # Text datasets: the tokenizer that maps strings to the token ids of ``spec`` and back.
    tokenizer: "Tokenizer | None" = None

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ConfigError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(
            self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device)
        )


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    loader: Callable[..., Dataset]
    kind: DataKind
    summary: str


_DATASETS: dict[str, DatasetEntry] = {}


def register_dataset(
    name: str, kind: DataKind, summary: str
) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    """Function decorator: register a loader ``(**options) -> Dataset`` under ``name``."""

    def decorate(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in _DATASETS:
            raise RuntimeError(f"dataset name {name!r} registered twice")
        _DATASETS[name] = DatasetEntry(name, fn, kind, summary)
        return fn

    return decorate


def _ensure_loaded() -> None:
    import dgm.data.builtin  # noqa: F401  (registers the built-in datasets)


def dataset_names() -> list[str]:
    _ensure_loaded()
    return sorted(_DATASETS)


def dataset_entry(name: str) -> DatasetEntry:
    _ensure_loaded()
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(sorted(_DATASETS))}")
    return _DATASETS[name]


def load(name: str, **options: Any) -> Dataset:
    """Load a registered dataset; ``options`` are checked against the loader's signature.

    One option works for every labelled dataset: ``labelled: n`` keeps the labels of n training
    examples (a fixed random choice, seed 0) and marks the others unlabelled (label -1), for
    semi-supervised training; validation and test keep all their labels.
    """
    labelled = options.pop("labelled", None)
    dataset = _load(name, options)
    if labelled is not None:
        dataset = _keep_labels(dataset, coerce(labelled, int, f"dataset {name}.labelled"))
        dataset.options = {**dataset.options, "labelled": int(labelled)}
    return dataset


def _keep_labels(dataset: Dataset, n: int) -> Dataset:
    y = dataset.train.y
    if y is None:
        raise ConfigError(f"dataset {dataset.name} has no labels, so labelled: {n} means nothing")
    if not 0 <= n <= len(y):
        raise ConfigError(f"labelled must be in 0..{len(y)}, got {n}")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:n]
    hidden = torch.full_like(y, -1)
    hidden[keep] = y[keep]
    return replace(dataset, train=replace(dataset.train, y=hidden))


def _load(name: str, options: dict[str, Any]) -> Dataset:
    entry = dataset_entry(name)
    params = inspect.signature(entry.loader).parameters
    hints = typing.get_type_hints(entry.loader)
    unknown = sorted(set(options) - set(params))
    if unknown:
        valid = ", ".join(params) or "none"
        raise ConfigError(
            f"dataset {name}: unknown option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}; valid options: {valid}"
        )
    checked = {k: coerce(v, hints.get(k, Any), f"dataset {name}.{k}") for k, v in options.items()}
    dataset = entry.loader(**checked)
    dataset.options = checked
    return dataset
