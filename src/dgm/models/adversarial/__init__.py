"""Implicit models trained without a likelihood (Book ch. 8): GANs (minimax, non-saturating,
WGAN with clipping or gradient penalty, hinge; spectral norm, class conditioning, the training
tricks of deck 004) and generative moment matching networks."""

from dgm.models.adversarial import gan, gmmn, losses, networks  # noqa: F401
