"""Normalizing flows (Book ch. 4): one :class:`FlowModel` machinery, builder functions for each
registered flow, and integer discrete flows."""

from dgm.models.flows.builders import (
    GlowConfig,
    MAFConfig,
    NICEConfig,
    NSFConfig,
    PlanarConfig,
    RealNVPConfig,
    ResidualFlowConfig,
    SylvesterConfig,
    densenet_flow,
    glow,
    iaf,
    maf,
    nice,
    nsf,
    nsf_autoregressive,
    planar,
    radial,
    realnvp,
    residual_flow,
    sylvester,
)
from dgm.models.flows.idf import IDF, IDFConfig
from dgm.models.flows.model import FlowConfig, FlowModel

__all__ = [
    "FlowConfig", "FlowModel", "RealNVPConfig", "realnvp", "NICEConfig", "nice", "MAFConfig",
    "maf", "iaf", "GlowConfig", "glow", "NSFConfig", "nsf", "nsf_autoregressive",
    "PlanarConfig", "planar", "radial", "SylvesterConfig", "sylvester", "ResidualFlowConfig",
    "residual_flow", "densenet_flow", "IDF", "IDFConfig",
]
