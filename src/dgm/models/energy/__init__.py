"""Energy-based models and Boltzmann machines (Book ch. 7)."""

from dgm.models.energy import (  # noqa: F401
    boltzmann,
    dbm,
    dbn,
    ebm,
    gaussian_rbm,
    jem,
    rbm,
    subspace_rbm,
)
