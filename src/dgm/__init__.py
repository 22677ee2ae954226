"""dgm: deep generative modeling in PyTorch, one contract for every family.

    >>> import dgm
    >>> data = dgm.datasets.load("digits")
    >>> model = dgm.build_model("independent", data.spec)
    >>> model.log_prob(data.test.all(data.spec)[0]).shape
    torch.Size([447])
"""

__version__ = "0.1.0"

from dgm import datasets, models  # noqa: F401  (importing the models registers them)
from dgm.core import (
    ConfigError,
    DataError,
    DgmError,
    GenerativeModel,
    Likelihood,
    build_model,
    model_names,
)
from dgm.eval.likelihood import Evaluation, evaluate
from dgm.train import load, open_run, train

__all__ = [
    "__version__",
    "datasets",
    "build_model",
    "model_names",
    "load",
    "open_run",
    "train",
    "evaluate",
    "Evaluation",
    "GenerativeModel",
    "Likelihood",
    "DgmError",
    "ConfigError",
    "DataError",
]
