"""Importing this module registers every built-in dataset."""

from dgm.data import digits, toys  # noqa: F401
