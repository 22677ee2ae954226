"""The model families; importing this package registers every built-in model."""

from dgm.models import factorized, flows, vae  # noqa: F401
