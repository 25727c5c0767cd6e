"""Stand-ins: a node that starts only when another did not (`standby_for`).

Written in the graph (`preview: {..., standby_for: virtualcam}`), or made by the runtime from a
node's shorthand (`capture.camera` `fallback: demo`, `output.virtualcam` `fallback: preview`):
`Node.stand_in(params)` names the stand-in's class and params, and the runner's copy of the graph
gets it as a visible node `<name>/<kind>` (in `--stats`, the trace and the bench) instead of a
child hidden inside the node.

A stand-in that nothing is wired to takes its primary's place when it starts: the primary's
consumers read it (a camera's demo), and for an output it simply is the output (the preview).
"""

from __future__ import annotations

from dataclasses import replace as dc_replace
from typing import TYPE_CHECKING

from muse.graph.resolved import ResolvedInput, ResolvedNode

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.validate import ValidatedGraph

__all__ = ["add_stand_ins", "substitutes"]


def add_stand_ins(graph: "ValidatedGraph") -> "ValidatedGraph":
    """`graph` with a stand-in node for every node whose params ask for one (a copy when any is added)."""
    nodes: dict[str, ResolvedNode] = dict(graph.nodes)
    order = list(graph.order)
    for name in graph.order:
        rn = graph.nodes[name]
        made = rn.cls.stand_in(rn.params) if rn.params is not None else None
        if made is None:
            continue
        cls, params = made
        kind = cls.node_type.split(".")[-1]
        new = f"{name}/{kind}"
        while new in nodes:
            new += "_"
        inputs = {p: ResolvedInput(cls.inputs_spec[p], list(ri.sources), ri.policy, ri.queue)
                  for p, ri in rn.inputs.items() if p in cls.inputs_spec}
        nodes[new] = ResolvedNode(new, cls.node_type, cls, cls.Params(**params), inputs, standby_for=name)
        order.insert(order.index(name) + 1, new)  # its inputs come before its primary's place, its consumers after
    if len(nodes) == len(graph.nodes):
        return graph
    return dc_replace(graph, nodes=nodes, order=order)


def substitutes(graph: "ValidatedGraph", absent: set[str], started: set[str]) -> dict[str, str]:
    """primary -> the stand-in that takes its place: the primary did not start, the stand-in did, nothing
    is wired to the stand-in itself, and it has every output the primary's consumers read."""
    used: dict[str, set[str]] = {}
    wired: set[str] = set()
    for rn in graph.nodes.values():
        for ri in rn.inputs.values():
            for s in ri.sources:
                used.setdefault(s.node, set()).add(s.port)
                wired.add(s.node)
    out: dict[str, str] = {}
    for name, rn in graph.nodes.items():
        primary = rn.standby_for
        if primary in absent and name in started and name not in wired and used.get(primary, set()) <= set(rn.cls.outputs_spec):
            out.setdefault(primary, name)
    return out
