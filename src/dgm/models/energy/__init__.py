"""Energy-based models and Boltzmann machines (Book ch. 7)."""

from dgm.models.energy import rbm  # noqa: F401
