r"""Region graphs: the structure of a probabilistic circuit (Book §2.4; Peharz et al. 2020).

A region graph over variables {0..D-1} has *regions* (sets of variables, the scopes) and
*partitions*: a partition splits its parent region into child regions with disjoint scopes whose
union is the parent's scope. A circuit is read off it by giving every region K units: a leaf
region holds K products of input units over its variables, an inner region holds K sum units,
one per output, mixing its partitions; a partition multiplies one unit chosen from each child.
The circuit is then

- *smooth*: every sum unit mixes partitions of one region, and each partition covers exactly
  the region's scope;
- *decomposable*: the children of every partition have pairwise disjoint scopes;

which is what makes every marginal, conditional and sample exact in one pass (Choi, Vergari &
Van den Broeck 2020). :func:`validate` checks both and names the offending region or partition;
every builder here produces valid graphs by construction.

Builders:

- :func:`random_binary_trees` (RAT-SPN, Peharz et al. 2019): ``repetitions`` random binary
  splits of the variables down to ``depth``;
- :func:`quad_tree` / :func:`quad_graph` for images: a rectangle is halved along its longer side
  (a tree), or along both sides as two partitions with the halves shared (a DAG);
- :func:`poon_domingos` (Poon & Domingos 2011): every split of a rectangle at multiples of
  ``delta`` along both axes, rectangles shared;
- :func:`hclt` (Liu & Van den Broeck 2021): the Chow-Liu tree of the data
  (:func:`chow_liu_tree`) with a hidden categorical behind every variable; a node's region is its
  subtree, partitioned into the node's own variable and its children's subtrees.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dgm.core.errors import ConfigError, DataError

__all__ = [
    "Partition", "RegionGraph", "CircuitStructureError", "validate", "random_binary_trees",
    "quad_tree", "quad_graph", "poon_domingos", "chow_liu_tree", "hclt",
]


class CircuitStructureError(ConfigError):
    """A region graph whose circuit would not be smooth or decomposable (or not a DAG)."""


@dataclass(frozen=True)
class Partition:
    """``parent`` (a region index) split into ``children`` (region indices)."""

    parent: int
    children: tuple[int, ...]


@dataclass(frozen=True)
class RegionGraph:
    """Regions (scopes, as sorted tuples of variables) and partitions; region ``root`` covers
    all ``num_variables`` variables. Leaves are the regions without partitions."""

    num_variables: int
    regions: tuple[tuple[int, ...], ...]
    partitions: tuple[Partition, ...]
    root: int

    def partitions_of(self) -> list[list[int]]:
        """For every region, the indices of its partitions."""
        out: list[list[int]] = [[] for _ in self.regions]
        for i, p in enumerate(self.partitions):
            out[p.parent].append(i)
        return out

    def leaves(self) -> list[int]:
        """The regions without partitions, in index order."""
        parts = self.partitions_of()
        return [r for r in range(len(self.regions)) if not parts[r]]

    def heights(self) -> list[int]:
        """0 for a leaf; otherwise 1 + the largest height of a child of any of its partitions.
        Raises :class:`CircuitStructureError` on a cycle. Iterative (deep trees are common:
        a Chow-Liu tree over 784 pixels can be hundreds of levels high)."""
        parts = self.partitions_of()
        n = len(self.regions)
        children = [[c for p in parts[r] for c in self.partitions[p].children] for r in range(n)]
        height: list[int] = [-1] * n
        state = [0] * n  # 0 new, 1 on the stack, 2 done
        for start in range(n):
            if state[start]:
                continue
            stack = [(start, 0)]
            state[start] = 1
            while stack:
                r, i = stack[-1]
                if i < len(children[r]):
                    stack[-1] = (r, i + 1)
                    c = children[r][i]
                    if state[c] == 1:
                        raise CircuitStructureError(
                            f"region {c} {_show(self.regions[c])} is its own descendant: the "
                            "region graph has a cycle")
                    if state[c] == 0:
                        state[c] = 1
                        stack.append((c, 0))
                    continue
                stack.pop()
                state[r] = 2
                height[r] = 1 + max((height[c] for c in children[r]), default=-1)
        return height


def _show(scope: tuple[int, ...] | set[int]) -> str:
    items = sorted(scope)
    text = ", ".join(str(v) for v in items[:8]) + (", ..." if len(items) > 8 else "")
    return "{" + text + "}"


def validate(graph: RegionGraph) -> None:
    """Check that the circuit of ``graph`` is smooth and decomposable and that the graph is a
    DAG rooted at a region over all variables; raise :class:`CircuitStructureError` naming the
    first offending region or partition otherwise."""
    n = len(graph.regions)
    if not 0 <= graph.root < n:
        raise CircuitStructureError(f"root {graph.root} is not a region (there are {n})")
    everything = set(range(graph.num_variables))
    if set(graph.regions[graph.root]) != everything:
        missing = everything - set(graph.regions[graph.root])
        raise CircuitStructureError(f"the root region {graph.root} misses variables "
                                    f"{_show(missing)}")
    for r, scope in enumerate(graph.regions):
        if not scope:
            raise CircuitStructureError(f"region {r} has an empty scope")
        if len(set(scope)) != len(scope) or not set(scope) <= everything:
            raise CircuitStructureError(f"region {r} {_show(scope)} repeats a variable or "
                                        f"names one outside 0..{graph.num_variables - 1}")
    for i, p in enumerate(graph.partitions):
        if not 0 <= p.parent < n or not all(0 <= c < n for c in p.children):
            raise CircuitStructureError(f"partition {i} names a region that does not exist")
        if not p.children:
            raise CircuitStructureError(f"partition {i} of region {p.parent} has no children")
        seen: dict[int, int] = {}
        for c in p.children:
            for v in graph.regions[c]:
                if v in seen:
                    raise CircuitStructureError(
                        f"partition {i} of region {p.parent} is not decomposable: its children "
                        f"{seen[v]} {_show(graph.regions[seen[v]])} and {c} "
                        f"{_show(graph.regions[c])} share variable {v}")
                seen[v] = c
        parent_scope = set(graph.regions[p.parent])
        if set(seen) != parent_scope:
            extra, short = set(seen) - parent_scope, parent_scope - set(seen)
            what = (f"covers {_show(extra)} outside the region" if extra
                    else f"leaves out {_show(short)}")
            raise CircuitStructureError(
                f"partition {i} of region {p.parent} {_show(parent_scope)} is not smooth: its "
                f"children {what}, so the region's sum units would mix different scopes")
    graph.heights()  # raises on a cycle
    reachable = {graph.root}
    stack = [graph.root]
    parts = graph.partitions_of()
    while stack:
        for p in parts[stack.pop()]:
            for c in graph.partitions[p].children:
                if c not in reachable:
                    reachable.add(c)
                    stack.append(c)
    if len(reachable) != n:
        r = min(set(range(n)) - reachable)
        raise CircuitStructureError(f"region {r} {_show(graph.regions[r])} is not reachable "
                                    "from the root")


class _Builder:
    """Collects regions (optionally shared by scope) and partitions."""

    def __init__(self, num_variables: int) -> None:
        self.num_variables = num_variables
        self.regions: list[tuple[int, ...]] = []
        self.partitions: list[Partition] = []
        self.index: dict[object, int] = {}

    def region(self, scope: tuple[int, ...], key: object | None = None) -> tuple[int, bool]:
        """The index of the region (new, or the one with the same ``key``) and whether new."""
        if key is not None and key in self.index:
            return self.index[key], False
        self.regions.append(tuple(sorted(scope)))
        if key is not None:
            self.index[key] = len(self.regions) - 1
        return len(self.regions) - 1, True

    def split(self, parent: int, children: list[int]) -> None:
        self.partitions.append(Partition(parent, tuple(children)))

    def graph(self, root: int) -> RegionGraph:
        g = RegionGraph(self.num_variables, tuple(self.regions), tuple(self.partitions), root)
        validate(g)
        return g


def random_binary_trees(num_variables: int, depth: int, repetitions: int,
                        seed: int = 0) -> RegionGraph:
    """RAT-SPN's region graph: ``repetitions`` trees, each splitting the variables into two
    random halves recursively ``depth`` times (fewer where a region has one variable left); the
    root mixes the trees' top partitions."""
    if num_variables < 1 or depth < 0 or repetitions < 1:
        raise ConfigError("random_binary_trees needs num_variables >= 1, depth >= 0 and "
                          "repetitions >= 1")
    gen = torch.Generator().manual_seed(seed)
    b = _Builder(num_variables)
    root, _ = b.region(tuple(range(num_variables)))

    def grow(region: int, scope: list[int], level: int) -> None:
        if level == depth or len(scope) < 2:
            return
        order = torch.randperm(len(scope), generator=gen).tolist()
        half = len(scope) // 2
        halves = [sorted(scope[i] for i in order[:half]), sorted(scope[i] for i in order[half:])]
        kids = [b.region(tuple(h))[0] for h in halves]
        b.split(region, kids)
        for kid, h in zip(kids, halves):
            grow(kid, h, level + 1)

    if depth == 0 or num_variables < 2:
        return b.graph(root)
    for _ in range(repetitions):
        order = torch.randperm(num_variables, generator=gen).tolist()
        half = num_variables // 2
        halves = [sorted(order[:half]), sorted(order[half:])]
        kids = [b.region(tuple(h))[0] for h in halves]
        b.split(root, kids)
        for kid, h in zip(kids, halves):
            grow(kid, h, 1)
    return b.graph(root)


def _image_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(shape) == 3:
        return shape  # type: ignore[return-value]
    if len(shape) == 2:
        return (1, *shape)  # type: ignore[return-value]
    raise ConfigError(f"image region graphs need (C, H, W) or (H, W) data, got {shape}")


def _rectangles(shape: tuple[int, ...], cuts: list[list[int]] | None, both: bool,
                share: bool) -> RegionGraph:
    """Rectangles of an image split recursively: at ``cuts`` (every allowed cut per axis) or, if
    None, at the middle; along the longer side only, or ``both`` sides. A pixel's channels stay
    together in one leaf."""
    c, h, w = _image_shape(shape)
    b = _Builder(c * h * w)

    def scope(r0: int, r1: int, c0: int, c1: int) -> tuple[int, ...]:
        return tuple(ch * h * w + i * w + j for ch in range(c) for i in range(r0, r1)
                     for j in range(c0, c1))

    def splits(lo: int, hi: int, axis: int) -> list[int]:
        if cuts is None:
            return [(lo + hi) // 2] if hi - lo > 1 else []
        return [t for t in cuts[axis] if lo < t < hi]

    def grow(r0: int, r1: int, c0: int, c1: int) -> int:
        key = (r0, r1, c0, c1) if share else None
        region, new = b.region(scope(r0, r1, c0, c1), key)
        if not new:
            return region
        rows, cols = splits(r0, r1, 0), splits(c0, c1, 1)
        axes = []
        if both:
            axes = [0, 1]
        elif rows or cols:  # the longer side, rows on a tie
            axes = [0] if (r1 - r0 >= c1 - c0 and rows) or not cols else [1]
        for axis in axes:
            for t in (rows if axis == 0 else cols):
                if axis == 0:
                    kids = [grow(r0, t, c0, c1), grow(t, r1, c0, c1)]
                else:
                    kids = [grow(r0, r1, c0, t), grow(r0, r1, t, c1)]
                b.split(region, kids)
        return region

    return b.graph(grow(0, h, 0, w))


def quad_tree(shape: tuple[int, ...]) -> RegionGraph:
    """A tree of rectangles: each is halved along its longer side (two halvings make the four
    quadrants) down to single pixels."""
    return _rectangles(shape, None, both=False, share=False)


def quad_graph(shape: tuple[int, ...]) -> RegionGraph:
    """A DAG of rectangles: each is halved along both sides, as two partitions, with equal
    rectangles shared (the quad-graph of cirkit's image templates)."""
    return _rectangles(shape, None, both=True, share=True)


def poon_domingos(shape: tuple[int, ...], delta: int) -> RegionGraph:
    """Poon & Domingos' region graph: every rectangle with corners on a grid of step ``delta``
    (plus the image's border) is split at every grid line crossing it, along both axes;
    rectangles are shared; a rectangle no grid line crosses is a leaf over its pixels."""
    if delta < 1:
        raise ConfigError(f"delta must be >= 1, got {delta}")
    _, h, w = _image_shape(shape)
    cuts = [list(range(delta, h, delta)), list(range(delta, w, delta))]
    return _rectangles(shape, cuts, both=True, share=True)


def chow_liu_tree(x: Tensor, levels: int, pseudo_count: float = 0.1) -> Tensor:
    """The Chow-Liu tree of discrete data x (N, D) with values 0..levels-1: the maximum spanning
    tree of the pairwise mutual informations (smoothed by ``pseudo_count`` per cell), rooted at
    the variable of largest total information. Returns ``parent`` (D,) long, -1 at the root."""
    if x.dim() != 2:
        raise DataError(f"chow_liu_tree needs (N, D) data, got {tuple(x.shape)}")
    n, d = x.shape
    one_hot = torch.nn.functional.one_hot(x.long(), levels).to(torch.float64)  # (N, D, L)
    joint = torch.einsum("nal,nbm->ablm", one_hot, one_hot) + pseudo_count
    joint = joint / joint.sum((2, 3), keepdim=True)
    pa, pb = joint.sum(3, keepdim=True), joint.sum(2, keepdim=True)
    mi = (joint * (joint.log() - pa.log() - pb.log())).sum((2, 3))  # (D, D)
    mi.fill_diagonal_(-1.0)
    root = int(mi.clamp_min(0).sum(1).argmax())
    parent = torch.full((d,), -1, dtype=torch.long)
    in_tree = torch.zeros(d, dtype=torch.bool)
    in_tree[root] = True
    best, best_from = mi[root].clone(), torch.full((d,), root, dtype=torch.long)
    for _ in range(d - 1):  # Prim's algorithm on the dense graph
        candidate = best.masked_fill(in_tree, -float("inf"))
        v = int(candidate.argmax())
        parent[v] = best_from[v]
        in_tree[v] = True
        better = mi[v] > best
        best = torch.where(better, mi[v], best)
        best_from = torch.where(better, torch.full_like(best_from, v), best_from)
    return parent


def hclt(parent: Tensor) -> RegionGraph:
    """The region graph of a hidden Chow-Liu tree with the tree ``parent`` (D,), -1 at the root:
    a leaf region {d} per variable and a region per subtree, split into {d} and the subtrees of
    d's children. With T trees ``parent`` (T, D), a mixture of HCLTs (a mixture of trees, Meila
    & Jordan 2000): the leaves are shared, each tree has its own subtree regions, and the root
    mixes the T trees' top regions. Every count depends only on T and D, so any trees give
    circuits with the same parameter shapes."""
    parents = parent.reshape(-1, parent.shape[-1])
    d = parents.shape[1]
    scopes: list[tuple[int, ...]] = [(v,) for v in range(d)]
    partitions: list[Partition] = []
    tops = []
    for t, row in enumerate(parents.tolist()):
        offset = d * (1 + t)  # this tree's subtree of v is region offset + v
        roots = [v for v in range(d) if row[v] < 0]
        if len(roots) != 1:
            raise CircuitStructureError(f"an HCLT needs a tree with one root, got roots {roots}"
                                        f" in tree {t}")
        children: list[list[int]] = [[] for _ in range(d)]
        for v in range(d):
            if row[v] >= 0:
                children[row[v]].append(v)
        order, stack = [], [roots[0]]
        while stack:
            v = stack.pop()
            order.append(v)
            stack.extend(children[v])
        if len(order) != d:
            raise CircuitStructureError(f"tree {t} is not a tree (a cycle or a stray node)")
        subtree: list[tuple[int, ...]] = [()] * d
        for v in reversed(order):
            subtree[v] = tuple(sorted([v, *(u for c in children[v] for u in subtree[c])]))
        scopes.extend(subtree)
        partitions.extend(Partition(offset + v, (v, *(offset + c for c in children[v])))
                          for v in range(d))
        tops.append(offset + roots[0])
    root = tops[0]
    if len(tops) > 1:
        root = len(scopes)
        scopes.append(tuple(range(d)))
        partitions.extend(Partition(root, (top,)) for top in tops)
    graph = RegionGraph(d, tuple(scopes), tuple(partitions), root)
    validate(graph)
    return graph
