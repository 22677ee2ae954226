"""Latent-variable models (Book ch. 5): probabilistic PCA, the VAE with its priors and
posteriors, hierarchical VAEs and the VQ-VAE; and the density network of §8.1."""

from dgm.models.latent.density_network import DensityNetwork, DensityNetworkConfig
from dgm.models.latent.hvae import HierarchicalVAE, HierarchicalVAEConfig
from dgm.models.latent.ppca import PPCA, PPCAConfig
from dgm.models.latent.vae import VAE, VAEConfig
from dgm.models.latent.vqvae import VQVAE, VQVAEConfig

__all__ = [
    "PPCA", "PPCAConfig", "VAE", "VAEConfig", "HierarchicalVAE", "HierarchicalVAEConfig",
    "VQVAE", "VQVAEConfig", "DensityNetwork", "DensityNetworkConfig",
]
