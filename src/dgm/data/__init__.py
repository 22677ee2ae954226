"""Datasets and their specs."""

from dgm.data.dataset import Dataset, Split, dataset_entry, dataset_names, load, register_dataset
from dgm.core.spec import DataKind, DataSpec

__all__ = [
    "DataKind",
    "DataSpec",
    "Dataset",
    "Split",
    "load",
    "dataset_names",
    "dataset_entry",
    "register_dataset",
]
