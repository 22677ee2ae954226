"""Autoregressive models (Book ch. 3 and §11.2): causal-convolution, finite-memory and recurrent
ARMs, MADE, NADE, PixelCNN, the transformer ARM and teenyGPT."""

from dgm.models.autoregressive.arm import (
    ARM,
    MADE,
    NADE,
    RNNARM,
    ARMConfig,
    AutoregressiveModel,
    FiniteMemoryARM,
    FiniteMemoryARMConfig,
    MADEConfig,
    NADEConfig,
    RNNARMConfig,
)
from dgm.models.autoregressive.pixelcnn import PixelCNN, PixelCNNConfig
from dgm.models.autoregressive.transformer import GPT, GPTConfig, TransformerARM, TransformerARMConfig

__all__ = [
    "AutoregressiveModel", "ARM", "ARMConfig", "FiniteMemoryARM", "FiniteMemoryARMConfig",
    "RNNARM", "RNNARMConfig", "MADE", "MADEConfig", "NADE", "NADEConfig", "PixelCNN",
    "PixelCNNConfig", "TransformerARM", "TransformerARMConfig", "GPT", "GPTConfig",
]
