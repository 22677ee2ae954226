"""Importing this module registers every built-in dataset."""

from dgm.data import digits, files, mnist, molecules, text, toys  # noqa: F401
