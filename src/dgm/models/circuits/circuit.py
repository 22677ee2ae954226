r"""Probabilistic circuits (Book §2.4): smooth, decomposable sum-product networks whose
likelihood, marginals, conditionals and samples are exact, evaluated layer by layer over many
regions at once.

A region graph (:mod:`dgm.models.circuits.region_graph`) gives every region K units, all in
log space:

- a leaf region with scope S holds K products of input units, u_k = Σ_{d∈S} log f_dk(x_d);
- a partition of a region into children c_1..c_m holds, per output o,

  - ``layer: cp`` (a CP / Hadamard layer, any m): Π_j Σ_i W_j[o, i] u_{c_j, i}, each W_j[o, :]
    a normalized sum unit;
  - ``layer: tucker`` (EiNet's einsum layer, m = 2): Σ_{i,i'} W[o, i, i'] u_{c_1,i} u_{c_2,i'};

- a region mixes its partitions per output, Σ_p ω_r[p, o] (partition p's unit o);
- the root: P(x) = Σ_k π_k (root unit k).

Every sum's weights are normalized (a softmax of free logits), every input unit is a normalized
distribution, and the structure is smooth and decomposable, so P sums to 1. Setting an input
unit to 1 (log 0) integrates its variable out, which gives exact marginals log P(x_O) in the
same single pass (:meth:`Circuit.log_marginal`); conditionals are ratios of two marginals.

Sampling walks down from the root choosing at every sum a child in proportion to weight times
the child's value given the evidence: with no evidence the values are 1 and this is ancestral
sampling; with evidence it is exact conditional sampling of the unobserved variables
(inpainting). The same walk with max in place of sum (max-product, then argmax) gives the
most probable joint assignment of the unobserved variables *and* the circuit's latent choices:
a lower bound on max_x P(x), the exact MPE only for deterministic circuits (labelled
approximate; :meth:`Circuit.mpe`).

Learning: gradient ascent on log P (the trainer's optimizer; the parameters are logits, so the
weights stay normalized), or EM (Peharz et al. 2020): the expected count of each sum weight is
∂ Σ_n log P(x_n) / ∂ log w, and of each input unit the derivative with respect to its
log-probability, so one backward pass is the E-step; the M-step sets w ∝ counts + α.

References:
    Tomczak, Deep Generative Modeling, 2nd ed., §2.4.
    Peharz et al., Einsum Networks, ICML 2020; Random Sum-Product Networks, UAI 2019.
    Liu & Van den Broeck, Tractable Regularization of Probabilistic Circuits, NeurIPS 2021 (HCLT).
    Choi, Vergari & Van den Broeck, Probabilistic Circuits: A Unifying Framework, 2020.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dgm.core.base import GenerativeModel, Likelihood
from dgm.core.errors import ConfigError, DataError
from dgm.core.fitting import EMFit, GradientFit, em_statistics_begun
from dgm.core.registry import register_model
from dgm.core.sampling import draw_categorical
from dgm.core.spec import DataKind, DataSpec
from dgm.models.circuits.inputs import BinomialInputs, CategoricalInputs, GaussianInputs
from dgm.models.circuits.region_graph import (RegionGraph, chow_liu_tree, hclt, poon_domingos,
                                              quad_graph, quad_tree, random_binary_trees)

__all__ = ["CircuitConfig", "Circuit", "MPEResult"]

_STRUCTURES = ("rat_spn", "quad_tree", "quad_graph", "poon_domingos", "hclt")
_INPUTS = ("auto", "categorical", "bernoulli", "binomial", "gaussian")


@dataclass(frozen=True, kw_only=True)
class CircuitConfig:
    """Configuration of :class:`Circuit`.

    Args:
        structure: the region graph: ``rat_spn`` (random binary trees), ``quad_tree``,
            ``quad_graph``, ``poon_domingos`` (images) or ``hclt`` (the hidden Chow-Liu tree
            learned from the training data).
        units: K, the units of every region (sum units inside, input products at the leaves).
        layer: ``cp`` (Hadamard products of per-child sums; any arity) or ``tucker`` (EiNet's
            K x K x K einsum per binary partition).
        input: ``categorical`` over the data's levels, ``bernoulli`` (binary data),
            ``binomial`` (ordered levels, one parameter per unit), ``gaussian`` (continuous data),
            or ``auto`` (categorical on discrete and binary data, Gaussian on continuous).
        depth, repetitions: RAT-SPN's split depth and number of random trees.
        delta: Poon-Domingos' grid step in pixels.
        structure_seed: the seed of RAT-SPN's random splits.
        fit: ``gradient`` (the trainer's optimizer) or ``em``.
        pseudo_count: α added to every expected count in EM's M-step (a Dirichlet prior); with
            ``em_batches`` > 0 it is added at every M-step, so keep it small beside a batch's
            counts.
        em_batches: EM's M-step after every this many batches (mini-batch EM); 0: once per
            epoch over the whole training split.
        em_step_size: η of online EM: every distribution becomes (1 - η) old + η M-step
            estimate (1: the M-step estimate itself, plain EM).
        softening: ε of data softening in gradient training (Liu & Van den Broeck 2021): each
            observed discrete value counts as the value itself with probability 1 - ε and as
            a uniform draw over the levels with probability ε, so an input unit scores
            (1 - ε) f(x) + ε / L; a regularizer for small data. Evaluation is always exact.
        init_scale: standard deviation of the random initial logits; by default 0.5 for the
            gradient fit and 3 for EM, whose units must start far apart (from units that are
            nearly alike, the first M-step makes them alike and EM stays at that fixed point).
        hclt_pseudo_count: smoothing of the pairwise counts behind the Chow-Liu tree.
        trees: the HCLT's number of trees: more than one makes a mixture of HCLTs whose trees
            are the Chow-Liu trees of bootstrap resamples of the training data (the first of
            the data itself).
    """

    structure: Literal["rat_spn", "quad_tree", "quad_graph", "poon_domingos", "hclt"] = "hclt"
    units: int = 16
    layer: Literal["cp", "tucker"] = "cp"
    input: Literal["auto", "categorical", "bernoulli", "binomial", "gaussian"] = "auto"
    depth: int = 4
    repetitions: int = 8
    delta: int = 2
    structure_seed: int = 0
    fit: Literal["gradient", "em"] = "gradient"
    pseudo_count: float = 0.1
    em_batches: int = 0
    em_step_size: float = 1.0
    softening: float = 0.0
    init_scale: float | None = None
    hclt_pseudo_count: float = 0.1
    trees: int = 1

    def __post_init__(self) -> None:
        if self.structure not in _STRUCTURES:
            raise ConfigError(f"structure must be one of {', '.join(_STRUCTURES)}, "
                              f"got {self.structure!r}")
        if self.layer not in ("cp", "tucker"):
            raise ConfigError(f"layer must be cp or tucker, got {self.layer!r}")
        if self.input not in _INPUTS:
            raise ConfigError(f"input must be one of {', '.join(_INPUTS)}, got {self.input!r}")
        if self.fit not in ("gradient", "em"):
            raise ConfigError(f"fit must be gradient or em, got {self.fit!r}")
        if self.layer == "tucker" and self.structure == "hclt":
            raise ConfigError("an HCLT has partitions of any arity: use layer: cp")
        for name in ("units", "repetitions", "delta", "trees"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:
            raise ConfigError(f"depth must be >= 0, got {self.depth}")
        if not 0.0 <= self.softening < 1.0:
            raise ConfigError(f"softening must be in [0, 1), got {self.softening}")
        if self.em_batches < 0 or not 0.0 < self.em_step_size <= 1.0:
            raise ConfigError("em_batches must be >= 0 and em_step_size in (0, 1]")
        if self.init_scale is None:
            object.__setattr__(self, "init_scale", 0.5 if self.fit == "gradient" else 3.0)
        assert self.init_scale is not None
        if self.pseudo_count < 0 or self.hclt_pseudo_count <= 0 or self.init_scale < 0:
            raise ConfigError("pseudo_count and init_scale must be >= 0, hclt_pseudo_count > 0")


@dataclass(frozen=True)
class MPEResult:
    """The max-product assignment: ``x`` (N, *event) with the observed coordinates kept,
    ``log_value`` (N,) the max-product value log P(x, latent path) <= log P(x) <= max log P,
    and ``exact``: True only where max-product is the exact MPE (a deterministic circuit)."""

    x: Tensor
    log_value: Tensor
    exact: bool


@dataclass
class _Level:
    """The index tensors of one height of the region graph (all regions computed together).
    Children are listed per edge (partition, child), so partitions of any arity cost only
    their own edges (a Chow-Liu tree's hub pixel can have a hundred children)."""

    regions: Tensor  # (R,) region indices, in column order
    partitions: Tensor  # (P,) global partition index
    part_region: Tensor  # (P,) the position of each partition's region in this level
    edge_child: Tensor  # (E,) the column of each edge's child
    edge_param: Tensor  # (E,) its CP weight index
    edge_part: Tensor  # (E,) the position of its partition in this level
    children: Tensor  # (P, 2) the children's columns of binary partitions (Tucker)
    region_parts: Tensor  # (R, M) position in this level's partitions (padding: P)
    region_valid: Tensor  # (R, M)
    columns: Tensor  # (R,) the columns the level's regions write
    pair_order: Tensor  # (2P,) edges in partition order (Tucker: left, right per partition)
    start: int  # the first column
    sources: list[tuple[int, Tensor]]  # the edges' children: (earlier level, positions there)

    def to(self, device: torch.device) -> "_Level":
        tensors = [getattr(self, f).to(device) for f in self.__dataclass_fields__
                   if f not in ("start", "sources")]
        return _Level(*tensors, start=self.start,
                      sources=[(lvl, pos.to(device)) for lvl, pos in self.sources])


@dataclass
class _Weights:
    """Normalized log-weights of every sum (and the input layer's own parameters)."""

    edges: Tensor  # (E, K, K) CP, or (P, K, K*K) Tucker: normalized over the last axis
    mix: Tensor  # (P, K) normalized over the partitions of each region
    root: Tensor  # (K,)

    def leaves(self) -> "_Weights":
        return _Weights(*(t.detach().requires_grad_() for t in (self.edges, self.mix,
                                                                self.root)))


@dataclass
class _Pass:
    """One upward pass: the outputs of every level ((N, columns of the level, K), level 0 the
    constant column and the leaves), the root's log value (N,) and the partitions' values."""

    outputs: list[Tensor]
    log_root: Tensor
    parts: list[Tensor]  # per height, the partitions' values (N, P, K)

    @property
    def values(self) -> Tensor:
        """Every column's values (N, C, K), in column order (only the top-down walk needs
        them, so a likelihood pass never copies them into one tensor)."""
        return torch.cat(self.outputs, 1)


@register_model("circuit", CircuitConfig)
class Circuit(GenerativeModel):
    r"""A smooth, decomposable probabilistic circuit over a region graph: P(x) exact, with
    marginals, conditionals, exact (conditional) sampling and max-product MPE.

    Args:
        spec: discrete, binary or continuous data.
        config: a :class:`CircuitConfig`.

    Example:
        >>> from dgm.core.spec import DataKind, DataSpec
        >>> spec = DataSpec((1, 4, 4), DataKind.DISCRETE, num_levels=3)
        >>> pc = Circuit(spec, CircuitConfig(structure="quad_tree", units=4))
        >>> pc.log_prob(torch.zeros(2, 1, 4, 4, dtype=torch.long)).shape
        torch.Size([2])
    """

    likelihood = Likelihood.EXACT
    data_kinds = frozenset({DataKind.DISCRETE, DataKind.BINARY, DataKind.CONTINUOUS})

    def __init__(self, spec: DataSpec, config: CircuitConfig | None = None) -> None:
        super().__init__(spec)
        config = CircuitConfig() if config is None else config
        self.config = config
        self.fit = GradientFit() if config.fit == "gradient" else EMFit(config.em_batches)
        self.input_kind = self._input_kind(spec, config)
        d = spec.dim
        # until the data give the Chow-Liu tree: a balanced binary tree (parent of d: (d-1)//2)
        parent = (torch.arange(d) - 1).div(2, rounding_mode="floor")
        parent[0] = -1
        if config.trees > 1:
            parent = parent.expand(config.trees, d).clone()
        self.register_buffer("tree_parent", parent, persistent=True)
        graph = self._graph(spec, config)
        self._compile(graph)
        k = config.units
        slots = len(self._slot_var)
        levels = int(spec.num_levels or 2)
        scale = config.init_scale
        if self.input_kind == "categorical":
            self.inputs: nn.Module = CategoricalInputs(slots, k, levels, scale)
        elif self.input_kind in ("bernoulli", "binomial"):  # the Bernoulli: one trial
            self.inputs = BinomialInputs(slots, k, levels, scale)
        else:
            self.inputs = GaussianInputs(slots, k, max(scale, 1.0))
        width = k * k if config.layer == "tucker" else k
        count = len(graph.partitions) if config.layer == "tucker" else self._num_edges
        self.sum_logits = nn.Parameter(torch.randn(count, k, width) * scale)
        self.mix_logits = nn.Parameter(torch.zeros(len(graph.partitions), k))
        self.root_logits = nn.Parameter(torch.zeros(k))
        self._em_stats: list[Tensor] | None = None
        self.register_load_state_dict_post_hook(Circuit._after_load)

    # -- structure -------------------------------------------------------------------------------
    @staticmethod
    def _input_kind(spec: DataSpec, config: CircuitConfig) -> str:
        kind = config.input
        if kind == "auto":
            kind = "gaussian" if spec.kind is DataKind.CONTINUOUS else "categorical"
        continuous = spec.kind is DataKind.CONTINUOUS
        if continuous != (kind == "gaussian"):
            raise ConfigError(f"input {kind} does not fit {spec.kind.value} data (Gaussian "
                              "inputs for continuous data, the others for discrete data)")
        if kind == "bernoulli" and spec.kind is not DataKind.BINARY:
            raise ConfigError("bernoulli inputs need binary data; use categorical or binomial")
        if spec.kind is DataKind.TOKENS:
            raise ConfigError("circuits model fixed-size data, not token sequences")
        return kind

    def _graph(self, spec: DataSpec, config: CircuitConfig) -> RegionGraph:
        s = config.structure
        if s == "rat_spn":
            return random_binary_trees(spec.dim, config.depth, config.repetitions,
                                       config.structure_seed)
        if s == "hclt":
            return hclt(self.tree_parent.cpu())
        if not spec.is_image:
            raise ConfigError(f"structure {s} needs (C, H, W) images, got {spec.event_shape}; "
                              "use rat_spn or hclt")
        if s == "quad_tree":
            return quad_tree(spec.event_shape)
        if s == "quad_graph":
            return quad_graph(spec.event_shape)
        return poon_domingos(spec.event_shape, config.delta)

    def _compile(self, graph: RegionGraph) -> None:
        """Index tensors of the upward pass: columns 0 (the constant 1), then the leaves, then
        each height's regions; per height, its partitions' children and weights."""
        if self.config.layer == "tucker" and any(len(p.children) != 2 for p in graph.partitions):
            raise ConfigError("layer tucker needs binary partitions; this region graph has "
                              "others: use layer cp")
        self.graph = graph
        heights = graph.heights()
        parts_of = graph.partitions_of()
        leaves = graph.leaves()
        column = {r: 1 + i for i, r in enumerate(leaves)}
        # level 0 holds the constant column and the leaves; level h the regions of height h
        level_of = {r: 0 for r in leaves}
        position_of = {r: 1 + i for i, r in enumerate(leaves)}
        slot_var, slot_leaf = [], []
        for i, r in enumerate(leaves):
            for v in graph.regions[r]:
                slot_var.append(v)
                slot_leaf.append(i)
        edge_of: dict[tuple[int, int], int] = {}
        for p, part in enumerate(graph.partitions):
            for a in range(len(part.children)):
                edge_of[(p, a)] = len(edge_of)
        self._num_edges = len(edge_of)
        levels = []
        for h in range(1, max(heights) + 1):
            regions = [r for r in range(len(graph.regions)) if heights[r] == h]
            parts = [p for r in regions for p in parts_of[r]]
            local = {r: j for j, r in enumerate(regions)}
            # edges sorted by the level their child lives on, so that each level's outputs are
            # gathered once (a gather's backward is as large as its source, not the circuit)
            edges = sorted(((i, a, p, c) for i, p in enumerate(parts)
                            for a, c in enumerate(graph.partitions[p].children)),
                           key=lambda e: (level_of[e[3]], e[0], e[1]))
            sources = []
            for lvl in sorted({level_of[c] for *_, c in edges}):
                sources.append((lvl, torch.tensor([position_of[c] for *_, c in edges
                                                   if level_of[c] == lvl])))
            pair_order = torch.tensor([j for j, _ in sorted(enumerate(edges),
                                                            key=lambda e: (e[1][0], e[1][1]))])
            children = torch.tensor([[column[c] for c in graph.partitions[p].children]
                                     for p in parts] if self.config.layer == "tucker" else [],
                                    dtype=torch.long).reshape(-1, 2)
            width = max(len(parts_of[r]) for r in regions)
            position = {p: i for i, p in enumerate(parts)}
            region_parts = torch.full((len(regions), width), len(parts), dtype=torch.long)
            region_valid = torch.zeros(len(regions), width, dtype=torch.bool)
            for j, r in enumerate(regions):
                for m, p in enumerate(parts_of[r]):
                    region_parts[j, m], region_valid[j, m] = position[p], True
            start = 1 + len(leaves) + sum(len(lv.regions) for lv in levels)
            for j, r in enumerate(regions):
                column[r] = start + j
                level_of[r], position_of[r] = h, j
            levels.append(_Level(
                torch.tensor(regions), torch.tensor(parts, dtype=torch.long),
                torch.tensor([local[graph.partitions[p].parent] for p in parts]),
                torch.tensor([column[c] for _, _, _, c in edges]),
                torch.tensor([edge_of[(p, a)] for _, a, p, _ in edges]),
                torch.tensor([i for i, _, _, _ in edges]), children, region_parts,
                region_valid, torch.arange(start, start + len(regions)), pair_order,
                start=start, sources=sources))
        self._levels = levels
        self._slot_var = torch.tensor(slot_var, dtype=torch.long)
        self._slot_leaf = torch.tensor(slot_leaf, dtype=torch.long)
        self._root_column = column[graph.root]
        self._columns = 1 + len(graph.regions)
        # the region of every partition, for normalizing the mixing weights per region
        self._part_region = torch.tensor([p.parent for p in graph.partitions], dtype=torch.long)
        self._device_plan: tuple[torch.device, list[_Level], Tensor, Tensor, Tensor] | None = None

    def _plan(self) -> tuple[list[_Level], Tensor, Tensor, Tensor]:
        device = self.root_logits.device
        if self._device_plan is None or self._device_plan[0] != device:
            self._device_plan = (device, [lv.to(device) for lv in self._levels],
                                 self._slot_var.to(device), self._slot_leaf.to(device),
                                 self._part_region.to(device))
        return self._device_plan[1:]  # type: ignore[return-value]

    @staticmethod
    def _after_load(module: nn.Module, incompatible_keys: object) -> None:
        """A loaded HCLT brings its tree: rebuild the index tensors for it."""
        circuit = module
        assert isinstance(circuit, Circuit)
        if circuit.config.structure == "hclt":
            circuit._compile(hclt(circuit.tree_parent.cpu()))

    def circuit_size(self) -> dict[str, int]:
        """Regions, partitions, input slots, height and parameters of the compiled circuit."""
        return {"regions": len(self.graph.regions), "partitions": len(self.graph.partitions),
                "slots": len(self._slot_var), "height": len(self._levels),
                "parameters": self.num_parameters()}

    # -- the upward pass -------------------------------------------------------------------------
    def _region_normalized(self, mix: Tensor) -> Tensor:
        """log-weights of the partitions of each region, normalized per region and output:
        mix (P, K) - log Σ_{p' of the same region} exp(mix[p'])."""
        _, _, _, part_region = self._plan()
        lse = torch.full((len(self.graph.regions), mix.shape[1]), -float("inf"),
                         device=mix.device, dtype=mix.dtype)
        top = lse.scatter_reduce(0, part_region.unsqueeze(1).expand_as(mix), mix.detach(),
                                 "amax")
        shifted = torch.zeros_like(lse).index_add(0, part_region,
                                                  (mix - top[part_region]).exp())
        return mix - (top + shifted.log())[part_region]

    def _weights(self) -> _Weights:
        return _Weights(F.log_softmax(self.sum_logits, -1),
                        self._region_normalized(self.mix_logits),
                        F.log_softmax(self.root_logits, -1))

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def _input_values(self, x_flat: Tensor, slot_var: Tensor, soften: bool = False) -> Tensor:
        xs = x_flat[:, slot_var]
        if self.input_kind == "gaussian":
            return self.inputs.log_prob(xs)  # (N, S, K)
        values = self.inputs.log_prob(xs.long())
        eps = self.config.softening
        if eps > 0 and soften:
            uniform = torch.full_like(values, math.log(eps / int(self.spec.num_levels or 2)))
            values = torch.logaddexp(math.log1p(-eps) + values, uniform)
        return values

    def _upward(self, inputs: Tensor, observed: Tensor | None, w: _Weights,
                maximize: bool = False) -> _Pass:
        """inputs (N, S, K); observed (N, D) bool or None (all observed)."""
        levels, slot_var, slot_leaf, _ = self._plan()
        n, _, k = inputs.shape
        if observed is not None:
            seen = observed[:, slot_var].unsqueeze(-1)
            hidden = self.inputs.log_mode().unsqueeze(0) if maximize else 0.0
            inputs = torch.where(seen, inputs, hidden)
        leaves = len(self.graph.leaves())
        leaf = inputs.new_zeros(n, leaves, k).index_add(1, slot_leaf, inputs)
        outputs = [torch.cat([inputs.new_zeros(n, 1, k), leaf], 1)]
        tucker = self.config.layer == "tucker"
        all_parts = []
        for lv in levels:
            kids = torch.cat([outputs[lvl][:, pos] for lvl, pos in lv.sources], 1)  # (N, E, K)
            if tucker:
                pairs = kids[:, lv.pair_order].reshape(n, -1, 2, k)
                parts = self._tucker(pairs, w.edges[lv.partitions], maximize)
            else:  # per edge, then the product over each partition's edges (a sum of logs)
                proj = self._project(kids, w.edges[lv.edge_param], maximize)  # (N, E, K)
                parts = proj.new_zeros(n, len(lv.partitions), k).index_add(1, lv.edge_part,
                                                                           proj)
            all_parts.append(parts)
            if lv.region_parts.shape[1] == 1:  # one partition per region: nothing to mix
                outputs.append(parts[:, lv.region_parts[:, 0]])
                continue
            padded = torch.cat([parts, parts.new_full((n, 1, k), -float("inf"))], 1)
            mix = w.mix[lv.partitions][lv.region_parts.clamp_max(len(lv.partitions) - 1)]
            mix = mix.masked_fill(~lv.region_valid.unsqueeze(-1), -float("inf"))
            joint = padded[:, lv.region_parts] + mix  # (N, R, M, K)
            outputs.append(joint.amax(2) if maximize else torch.logsumexp(joint, 2))
        # the root is the one region of the top level (a leaf when there is no level)
        root = (outputs[-1][:, 0] if levels else outputs[0][:, self._root_column]) + w.root
        log_root = root.amax(-1) if maximize else torch.logsumexp(root, -1)
        return _Pass(outputs, log_root, all_parts)

    @staticmethod
    def _project(kids: Tensor, log_w: Tensor, maximize: bool) -> Tensor:
        """log Σ_i W[o, i] exp(u_i) (or max_i) per edge: kids (N, E, K), log_w (E, K, K)."""
        if maximize:
            return (kids.unsqueeze(-2) + log_w).amax(-1)
        top = kids.amax(-1, keepdim=True).clamp_min(-1e30)
        out = torch.einsum("nei,eoi->neo", (kids - top).exp(), log_w.exp())
        return out.clamp_min(1e-38).log() + top

    @staticmethod
    def _tucker(kids: Tensor, log_w: Tensor, maximize: bool) -> Tensor:
        """log Σ_{i,i'} W[o, i, i'] exp(u_i + v_i'): kids (N, P, 2, K), log_w (P, K, K*K)."""
        n, p, _, k = kids.shape
        outer = (kids[:, :, 0].unsqueeze(-1) + kids[:, :, 1].unsqueeze(-2)).reshape(n, p, k * k)
        if maximize:
            return (outer.unsqueeze(2) + log_w).amax(-1)
        top = outer.amax(-1, keepdim=True).clamp_min(-1e30)
        out = torch.einsum("npq,poq->npo", (outer - top).exp(), log_w.exp())
        return out.clamp_min(1e-38).log() + top

    # -- queries ---------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log P(x), (N,), exact, in nats; labels are ignored."""
        self.check_input(x)
        _, slot_var, _, _ = self._plan()
        return self._upward(self._input_values(self._flat(x), slot_var), None,
                            self._weights()).log_root

    def loss(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """-log P(x), (N,); in training with ``softening`` ε > 0, of the softened data."""
        if not (self.training and self.config.softening > 0):
            return -self.log_prob(x)
        self.check_input(x)
        _, slot_var, _, _ = self._plan()
        inputs = self._input_values(self._flat(x), slot_var, soften=True)
        return -self._upward(inputs, None, self._weights()).log_root

    def log_marginal(self, x: Tensor, observed: Tensor) -> Tensor:
        """log P(x_O) = log Σ_{x_U} P(x_O, x_U), exact, (N,). ``observed`` is a bool mask of the
        data's shape, or one per example (N, *event); unobserved values of x are ignored."""
        mask = self.spec.checked_mask(x, observed)
        flat = torch.where(mask, self._flat(x), torch.zeros_like(self._flat(x)))
        _, slot_var, _, _ = self._plan()
        return self._upward(self._input_values(flat, slot_var), mask, self._weights()).log_root

    def log_conditional(self, x: Tensor, query: Tensor, evidence: Tensor) -> Tensor:
        """log P(x_A | x_B) = log P(x_A, x_B) - log P(x_B) for disjoint masks A = ``query`` and
        B = ``evidence``, exact, (N,)."""
        q, e = query.to(torch.bool), evidence.to(torch.bool)
        if torch.any(q & e):
            raise DataError("the query and evidence masks overlap")
        return self.log_marginal(x, q | e) - self.log_marginal(x, e)

    @torch.no_grad()
    def sample(self, n: int, *, y: Tensor | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """n exact samples, (n, *event): the top-down walk from the root."""
        if y is not None:
            raise ConfigError("circuit is unconditional: sample() takes no labels")
        if n < 0:
            raise ConfigError(f"n must be >= 0, got {n}")
        dtype = self.root_logits.dtype if self.input_kind == "gaussian" else torch.long
        x = torch.zeros(n, *self.spec.event_shape, dtype=dtype, device=self.root_logits.device)
        observed = torch.zeros(self.spec.event_shape, dtype=torch.bool)
        return self._walk(x, observed, maximize=False, generator=generator)[0]

    @torch.no_grad()
    def sample_conditional(self, x: Tensor, observed: Tensor, *,
                           generator: torch.Generator | None = None) -> Tensor:
        """x_U ~ P(x_U | x_O) exactly; returns x with its unobserved coordinates filled."""
        self.spec.checked_mask(x, observed)
        return self._walk(x, observed, maximize=False, generator=generator)[0]

    @torch.no_grad()
    def mpe(self, x: Tensor | None = None, observed: Tensor | None = None) -> MPEResult:
        """The max-product assignment of the unobserved coordinates (all, without x): exact for
        a deterministic circuit; otherwise the best joint assignment of x_U and the circuit's
        latent choices, whose P(x) may fall short of max P (``exact`` False)."""
        if x is None:
            dtype = self.root_logits.dtype if self.input_kind == "gaussian" else torch.long
            x = torch.zeros(1, *self.spec.event_shape, dtype=dtype,
                            device=self.root_logits.device)
            observed = torch.zeros(self.spec.event_shape, dtype=torch.bool)
        if observed is None:
            raise ConfigError("mpe needs an observed mask with x")
        self.spec.checked_mask(x, observed)
        out, log_value = self._walk(x, observed, maximize=True, generator=None)
        return MPEResult(out, log_value, exact=self.config.units == 1)

    def _walk(self, x: Tensor, observed: Tensor, maximize: bool,
              generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """Upward pass given the evidence, then the top-down choice at every sum (a draw in
        proportion to weight x value, or the argmax)."""
        levels, slot_var, slot_leaf, _ = self._plan()
        flat = self._flat(x)
        mask = self.spec.flat_mask(observed.to(x.device), x.shape[0])
        flat_in = torch.where(mask, flat, torch.zeros_like(flat))
        w = self._weights()
        up = self._upward(self._input_values(flat_in, slot_var), mask, w, maximize)
        values, n, k = up.values, flat.shape[0], self.config.units

        def choose(logits: Tensor) -> Tensor:
            return logits.argmax(-1) if maximize else draw_categorical(logits, generator)

        # unit of every column (-1: not on the sampled tree); column C is a sink for padding
        unit = torch.full((n, self._columns + 1), -1, dtype=torch.long, device=flat.device)
        unit[:, self._root_column] = choose(values[:, self._root_column] + w.root)
        rows = torch.arange(n, device=flat.device)
        tucker = self.config.layer == "tucker"
        for depth in reversed(range(len(levels))):
            lv = levels[depth]
            chosen = unit[:, lv.columns]  # (N, R)
            active = chosen >= 0
            kk = chosen.clamp_min(0)
            parts = up.parts[depth]  # (N, P, K)
            p_count = len(lv.partitions)
            # which partition of each region: ω[p, k] * value of partition p's unit k
            rp = lv.region_parts.clamp_max(p_count - 1)  # (R, M)
            index = kk[:, :, None, None].expand(-1, -1, rp.shape[1], 1)
            part_val = parts[:, rp].gather(3, index)  # (N, R, M, 1)
            mix = w.mix[lv.partitions][rp].unsqueeze(0).expand(n, -1, -1, -1).gather(3, index)
            logits = (part_val + mix).squeeze(-1).masked_fill(~lv.region_valid, -float("inf"))
            m = choose(logits)  # (N, R)
            p_local = rp.unsqueeze(0).expand(n, -1, -1).gather(2, m.unsqueeze(-1)).squeeze(-1)
            if tucker:
                child_cols = lv.children[p_local]  # (N, R, 2)
                child_val = values[rows[:, None, None], child_cols]  # (N, R, 2, K)
                log_w = w.edges[lv.partitions[p_local], kk]  # (N, R, K*K)
                pair = (child_val[:, :, 0].unsqueeze(-1)
                        + child_val[:, :, 1].unsqueeze(-2)).flatten(-2)
                q = choose(log_w + pair)
                picks = torch.stack([q // k, q % k], -1)  # (N, R, 2)
                target = torch.where(active.unsqueeze(-1), child_cols, self._columns)
            else:  # every edge of a chosen partition picks its child's unit
                region = lv.part_region[lv.edge_part]  # (E,)
                on = active[:, region] & (p_local[:, region] == lv.edge_part)  # (N, E)
                log_w = w.edges[lv.edge_param.unsqueeze(0), kk[:, region]]  # (N, E, K)
                picks = choose(log_w + values[:, lv.edge_child])
                target = torch.where(on, lv.edge_child, self._columns)
            unit.scatter_(1, target.reshape(n, -1), picks.reshape(n, -1))
        # leaves: every slot of an active leaf draws (or takes the mode of) its unit
        slot_unit = unit[:, 1 + slot_leaf]  # (N, S)
        on = slot_unit >= 0
        slots = torch.arange(len(slot_var), device=flat.device).expand(n, -1)
        drawn = self.inputs.draw(slots, slot_unit.clamp_min(0), maximize, generator)
        drawn = torch.where(on, drawn.to(flat.dtype), torch.zeros_like(flat[:, :1]))
        filled = torch.zeros_like(flat).index_add(1, slot_var, drawn)
        out = torch.where(mask, flat, filled)
        return out.reshape(x.shape), up.log_root

    # -- fitting ---------------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """An HCLT learns its Chow-Liu tree from (at most 20,000 of) the training examples, the
        levels binned into max(2, 4096 // D) equal bins where there are more (MNIST's 256 levels
        into 5), then rebuilds itself on it."""
        if self.config.structure != "hclt":
            return
        self.check_input(x)
        if self.input_kind == "gaussian":
            raise ConfigError("the Chow-Liu tree is learned from discrete data; use rat_spn "
                              "for continuous data")
        # the pairwise statistics of 20,000 examples pin the tree down; more only cost time.
        # Many levels (8-bit pixels) are binned for them: the one-hot statistics are (D B)^2.
        levels = int(self.spec.num_levels or 2)
        bins = min(levels, max(2, 4096 // self.spec.dim))
        v = self._flat(x).long().cpu() * bins // levels
        trees = []
        for t in range(self.config.trees):
            if t == 0:
                rows = v[:20000]
            else:  # a bootstrap resample
                index = torch.randint(0, len(v), (min(len(v), 20000),),
                                      generator=torch.Generator().manual_seed(
                                          int(torch.randint(0, 2**31 - 1, (1,),
                                                            generator=generator))))
                rows = v[index]
            trees.append(chow_liu_tree(rows, bins, self.config.hclt_pseudo_count))
        parent = torch.stack(trees) if self.config.trees > 1 else trees[0]
        self.tree_parent.copy_(parent.to(self.tree_parent.device))
        self._compile(hclt(parent))

    def em_begin(self) -> None:
        """Zero the expected counts of every sum weight and the input units' statistics."""
        opts = {"dtype": torch.float64, "device": self.root_logits.device}
        self._em_stats = [torch.zeros(self.sum_logits.shape, **opts),
                          torch.zeros(self.mix_logits.shape, **opts),
                          torch.zeros(self.root_logits.shape, **opts),
                          *self.inputs.em_statistics()]

    @torch.no_grad()
    def em_accumulate(self, x: Tensor) -> Tensor:
        """E-step on a batch by one backward pass (the expected counts are derivatives of
        Σ_n log P(x_n) with respect to the log-weights); returns log P(x), (N,)."""
        stats = em_statistics_begun(self._em_stats, "em_accumulate")
        self.check_input(x)
        _, slot_var, _, _ = self._plan()
        flat = self._flat(x)
        xs = flat[:, slot_var]
        with torch.enable_grad():
            w = self._weights().leaves()
            inputs = self._input_values(flat, slot_var).detach().requires_grad_()
            log_p = self._upward(inputs, None, w).log_root
            grads = torch.autograd.grad(log_p.sum(), [w.edges, w.mix, w.root, inputs],
                                        allow_unused=True)  # one-partition regions never mix
        for stat, g in zip(stats[:3], grads[:3]):
            if g is not None:
                stat += g.to(stat.dtype)
        self.inputs.em_accumulate(stats[3:], xs if self.input_kind == "gaussian" else xs.long(),
                                  grads[3])
        return log_p.detach()

    def em_statistics(self) -> list[Tensor]:
        """The accumulators (summed across processes by the trainer)."""
        return em_statistics_begun(self._em_stats, "em_statistics")

    @torch.no_grad()
    def em_maximize(self) -> None:
        """M-step: every sum's weights ∝ expected counts + α, every input unit its smoothed
        weighted maximum-likelihood fit; with ``em_step_size`` η < 1, each distribution moves
        only that far: (1 - η) old + η new (online EM)."""
        stats = em_statistics_begun(self._em_stats, "em_maximize")
        a, eta = self.config.pseudo_count, self.config.em_step_size
        tiny = torch.finfo(torch.float64).tiny
        old = self._weights()
        counts = [torch.log((c + a).clamp_min(tiny)) for c in stats[:3]]
        new = [F.log_softmax(counts[0], -1), self._region_normalized(counts[1]),
               F.log_softmax(counts[2], -1)]
        for param, before, after in zip((self.sum_logits, self.mix_logits, self.root_logits),
                                        (old.edges, old.mix, old.root), new):
            if eta < 1.0:
                after = torch.logaddexp(math.log1p(-eta) + before.double(),
                                        math.log(eta) + after)
            param.copy_(after.to(param))
        self.inputs.em_maximize(stats[3:], a, eta)
