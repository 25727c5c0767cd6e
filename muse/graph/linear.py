"""A recorded frame's CUDA graph turned into one straight line of nodes, and its shape counted.

Why it was tried: the driver launches a graph whose nodes form one chain in constant time (CUDA 12.6 and later),
and the profiled bench had put a 4K frame's `cudaGraphLaunch` at ~2 ms of host CPU. That figure was the
profiler's own (CUPTI's kernel tracing costs ~1 us a node); unprofiled, the branched frame launches in ~0.2 ms,
and the chain bought no host time while costing 1.8 ms of GPU a frame, its branches no longer overlapping (H200,
driver 580, 2026-12-03, bench/RESULTS.md). So `MUSE_FRAME_ORDER=linear` is off by default. `linearize` keeps
every dependency (the chain follows a topological order); `graph_shape` is what `muse bench` prints of each
recorded frame.

The graph is edited through the driver API (`libcuda`, `muse.graph.driver`), whose handles are the runtime's: torch hands out the
`cudaGraph_t` of a graph captured with `keep_graph=True` before it is instantiated. `chain_order` (the order)
is plain Python and tested on the CPU.
"""

from __future__ import annotations

import ctypes
from collections import Counter
from typing import Hashable, Iterable, Sequence, TypeVar

from muse.graph.driver import GraphEditError, call, graph_nodes

__all__ = ["FRAME_ORDERS", "GraphEditError", "chain_order", "frame_order", "graph_shape", "linearize", "NODE_TYPES"]

# How a recorded frame's nodes are launched: "branches" as recorded (independent branches overlap on the GPU),
# "linear" rewired into one chain by `linearize`
FRAME_ORDERS = ("branches", "linear")

N = TypeVar("N", bound=Hashable)

# CUgraphNodeType, cuda.h
NODE_TYPES = {0: "kernel", 1: "memcpy", 2: "memset", 3: "host", 4: "child graph", 5: "empty", 6: "event wait",
              7: "event record", 8: "semaphore signal", 9: "semaphore wait", 10: "mem alloc", 11: "mem free",
              12: "batch mem op", 13: "conditional"}


def chain_order(nodes: Sequence[N], edges: Iterable[tuple[N, N]]) -> list[N]:
    """A topological order of `nodes` under `edges` (from, to) that keeps the given order wherever the
    dependencies allow it (Kahn's algorithm, always taking the earliest ready node): the nodes of a captured
    graph come in the order they were issued, so the chain replays them as the eager frame ran them."""
    index = {n: i for i, n in enumerate(nodes)}
    if len(index) != len(nodes):
        raise ValueError("chain_order: a node is listed twice")
    after: dict[N, list[N]] = {n: [] for n in nodes}
    waiting = dict.fromkeys(nodes, 0)
    for a, b in edges:
        if a not in index or b not in index:
            raise ValueError(f"chain_order: edge {a!r} -> {b!r} names a node not in the graph")
        after[a].append(b)
        waiting[b] += 1
    import heapq

    ready = [index[n] for n in nodes if waiting[n] == 0]
    heapq.heapify(ready)
    out: list[N] = []
    while ready:
        n = nodes[heapq.heappop(ready)]
        out.append(n)
        for m in after[n]:
            waiting[m] -= 1
            if waiting[m] == 0:
                heapq.heappush(ready, index[m])
    if len(out) != len(nodes):
        raise ValueError("chain_order: the edges form a cycle")
    return out


class _EdgeData(ctypes.Structure):
    """CUgraphEdgeData: a programmatic edge (cuBLAS's GEMMs on Hopper launch with programmatic dependent launch)
    lets its consumer start before the producer ends; the default one (all zero) waits for completion."""

    _fields_ = [("from_port", ctypes.c_ubyte), ("to_port", ctypes.c_ubyte), ("type", ctypes.c_ubyte),
                ("reserved", ctypes.c_ubyte * 5)]


Edge = tuple[int, int, tuple[int, int, int]]  # from, to, (from_port, to_port, type)
_PLAIN = (0, 0, 0)


def _edges(graph: int) -> list[Edge]:
    """Every edge with its data (the `_v2` query, CUDA 12.3 and later: the first form refuses a graph that has
    programmatic edges, CUresult 402)."""
    count = ctypes.c_size_t(0)
    call("cuGraphGetEdges_v2", ctypes.c_void_p(graph), None, None, None, ctypes.byref(count))
    n = count.value
    a, b, d = (ctypes.c_void_p * n)(), (ctypes.c_void_p * n)(), (_EdgeData * n)()
    call("cuGraphGetEdges_v2", ctypes.c_void_p(graph), a, b, d, ctypes.byref(count))
    return [(int(a[i] or 0), int(b[i] or 0), (d[i].from_port, d[i].to_port, d[i].type)) for i in range(count.value)]


def _set_edges(name: str, graph: int, edges: Sequence[Edge]) -> None:
    if not edges:
        return
    n = len(edges)
    a = (ctypes.c_void_p * n)(*[e[0] for e in edges])
    b = (ctypes.c_void_p * n)(*[e[1] for e in edges])
    d = (_EdgeData * n)()
    for i, e in enumerate(edges):
        d[i].from_port, d[i].to_port, d[i].type = e[2]
    call(name + "_v2", ctypes.c_void_p(graph), a, b, d, ctypes.c_size_t(n))


def graph_shape(graph: int) -> dict[str, object]:
    """Nodes by type, edges (and how many are programmatic), the widest fan-out and the number of roots of a (not
    yet instantiated) CUDA graph given as its `cudaGraph_t` int."""
    nodes = graph_nodes(graph)
    kinds: Counter[str] = Counter()
    for n in nodes:
        t = ctypes.c_int(-1)
        call("cuGraphNodeGetType", ctypes.c_void_p(n), ctypes.byref(t))
        kinds[NODE_TYPES.get(t.value, f"type {t.value}")] += 1
    edges = _edges(graph)
    fan = Counter(a for a, _, _ in edges)
    fed = {b for _, b, _ in edges}
    return {"nodes": len(nodes), "edges": len(edges), "programmatic_edges": sum(1 for e in edges if e[2] != _PLAIN),
            "by_type": dict(kinds), "max_fan_out": max(fan.values(), default=0),
            "roots": sum(1 for n in nodes if n not in fed)}


def linearize(graph: int) -> int:
    """Rewire `graph` (a `cudaGraph_t` as int, not instantiated yet) into one chain through all its nodes in a
    topological order; returns how many edges it had. Every original dependency still holds (each node now
    waits for all the nodes before it); a link of the chain that was an edge before keeps that edge's data (a
    programmatic launch stays one), every other link is a plain dependency."""
    nodes = graph_nodes(graph)
    edges = _edges(graph)
    order = chain_order(nodes, [(a, b) for a, b, _ in edges])
    data = {(a, b): d for a, b, d in edges}
    _set_edges("cuGraphRemoveDependencies", graph, edges)
    _set_edges("cuGraphAddDependencies", graph, [(a, b, data.get((a, b), _PLAIN)) for a, b in zip(order, order[1:])])
    return len(edges)


def frame_order() -> str:
    """`MUSE_FRAME_ORDER`: how each recorded frame is launched ("branches", the default, or "linear")."""
    import os

    value = os.environ.get("MUSE_FRAME_ORDER", "branches").strip().lower() or "branches"
    if value not in FRAME_ORDERS:
        raise ValueError(f"MUSE_FRAME_ORDER={value!r}: one of {', '.join(FRAME_ORDERS)}")
    return value
