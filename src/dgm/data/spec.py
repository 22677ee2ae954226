"""The data spec lives in :mod:`dgm.core.spec` (the contract's layer); this name is kept for
code written against it."""

from dgm.core.spec import DataKind, DataSpec  # noqa: F401

__all__ = ["DataKind", "DataSpec"]
