"""The model families; importing this package registers every built-in model."""
from dgm.models import factorized  # noqa: F401
from dgm.models import flows, vae  # noqa: F401
from dgm.models import autoregressive, mixtures  # noqa: F401
from dgm.models import pixelcnn  # noqa: F401
from dgm.models import transformer  # noqa: F401
from dgm.models import idf  # noqa: F401
from dgm.models import ppca, hvae, vqvae  # noqa: F401
