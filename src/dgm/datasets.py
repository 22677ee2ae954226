"""``dgm.datasets.load(name)``: the public face of :mod:`dgm.data`."""

from dgm.data import DataKind, DataSpec, Dataset, Split, dataset_names, load

names = dataset_names

__all__ = ["load", "names", "Dataset", "Split", "DataSpec", "DataKind"]
