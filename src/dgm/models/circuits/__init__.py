"""Probabilistic circuits (Book §2.4): region graphs, input units, and the vectorized circuit."""

from dgm.models.circuits.circuit import Circuit, CircuitConfig, MPEResult
from dgm.models.circuits.region_graph import (CircuitStructureError, Partition, RegionGraph,
                                              chow_liu_tree, hclt, poon_domingos, quad_graph,
                                              quad_tree, random_binary_trees, validate)

__all__ = ["Circuit", "CircuitConfig", "MPEResult", "CircuitStructureError", "Partition",
           "RegionGraph", "chow_liu_tree", "hclt", "poon_domingos", "quad_graph", "quad_tree",
           "random_binary_trees", "validate"]
