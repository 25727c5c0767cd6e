"""Automatic layered layout for graphs without saved positions: columns by
longest path from the sources (networkx), rows ordered to keep links short."""

from __future__ import annotations

from statistics import mean

import networkx as nx

DEFAULT_SIZE = (230.0, 120.0)


def layers_of(nodes: list[str], edges: list[tuple[str, str]]) -> list[list[str]]:
    """Columns of node names: a node sits one column right of its deepest producer."""
    g = nx.DiGraph()
    g.add_nodes_from(nodes)
    g.add_edges_from((a, b) for a, b in edges if a in g and b in g)
    if not nx.is_directed_acyclic_graph(g):
        # A cycle is an error the validator reports; lay out its condensation so the editor still opens.
        cond = nx.condensation(g)
        member = cond.graph["mapping"]
        depth_c = _depths(cond)
        depth = {n: depth_c[member[n]] for n in nodes}
    else:
        depth = _depths(g)
    cols: list[list[str]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for n in nodes:  # keep file order inside a column as the first guess
        cols[depth[n]].append(n)
    return cols


def _depths(g: nx.DiGraph) -> dict:
    depth: dict = {}
    for n in nx.topological_sort(g):
        depth[n] = max((depth[p] + 1 for p in g.predecessors(n)), default=0)
    return depth


def layered_positions(
    nodes: list[str],
    edges: list[tuple[str, str]],
    sizes: dict[str, tuple[float, float]] | None = None,
    *,
    gap_x: float = 50.0,
    gap_y: float = 28.0,
    origin: tuple[float, float] = (30.0, 30.0),
) -> dict[str, tuple[float, float]]:
    """Top-left position of every node; `sizes` are (width, height) in pixels."""
    sizes = sizes or {}
    size = lambda n: sizes.get(n, DEFAULT_SIZE)  # noqa: E731
    cols = layers_of(nodes, edges)
    preds: dict[str, list[str]] = {n: [] for n in nodes}
    succs: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        if a in preds and b in preds:
            preds[b].append(a)
            succs[a].append(b)

    # Barycenter sweeps (down then up) reduce crossings; a few passes are enough for graphs of tens of nodes.
    rank = {n: i for col in cols for i, n in enumerate(col)}
    for _ in range(4):
        for i in range(1, len(cols)):
            cols[i].sort(key=lambda n: mean([rank[p] for p in preds[n]]) if preds[n] else rank[n])
            rank.update({n: j for j, n in enumerate(cols[i])})
        for i in range(len(cols) - 2, -1, -1):
            cols[i].sort(key=lambda n: mean([rank[s] for s in succs[n]]) if succs[n] else rank[n])
            rank.update({n: j for j, n in enumerate(cols[i])})

    pos: dict[str, tuple[float, float]] = {}
    x = origin[0]
    for col in cols:
        y_prev_bottom = origin[1] - gap_y
        for n in col:
            w, h = size(n)
            placed = [pos[p] for p in preds[n] if p in pos]
            # Line a node up with its producers (straight chains read best), without overlapping the one above.
            want = mean([py + size(p)[1] / 2 for p, (_, py) in zip([p for p in preds[n] if p in pos], placed)]) - h / 2 if placed else origin[1]
            y = max(want, y_prev_bottom + gap_y)
            pos[n] = (x, y)
            y_prev_bottom = y + h
        x += max((size(n)[0] for n in col), default=DEFAULT_SIZE[0]) + gap_x
    return pos
