"""The model families, one folder each; importing this package registers every built-in model.

- :mod:`~dgm.models.mixtures`: the independent per-pixel floor and mixtures (Book ch. 2).
- :mod:`~dgm.models.circuits`: probabilistic circuits over region graphs (§2.4).
- :mod:`~dgm.models.autoregressive`: ARMs, MADE, NADE, PixelCNN, transformers, GPT (ch. 3, 11).
- :mod:`~dgm.models.flows`: every normalizing flow and integer discrete flows (ch. 4).
- :mod:`~dgm.models.latent`: pPCA, VAEs with their priors and posteriors, hierarchical VAEs,
  VQ-VAE (ch. 5).
- :mod:`~dgm.models.hybrid`: hybrid models, p(y | x) and p(x) from one model (ch. 6).
- :mod:`~dgm.models.diffusion`: diffusion models, score models, continuous normalizing flows
  and flow matching (§5.5.3, ch. 9).
- :mod:`~dgm.models.compression`: neural lossy codecs (ch. 10).
"""

from dgm.models import (  # noqa: F401
    adversarial,
    autoregressive,
    circuits,
    compression,
    diffusion,
    energy,
    flows,
    hybrid,
    latent,
    mixtures,
)

__all__ = ["adversarial", "autoregressive", "circuits", "compression", "diffusion", "energy",
           "flows", "hybrid", "latent", "mixtures"]
