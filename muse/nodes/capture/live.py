"""Live parameter changes for capture and output nodes: a change to a field the
node can apply on the fly is taken; any other change asks the runtime to
rebuild the node (a camera's size or a recording's codec cannot change mid-way)."""

from __future__ import annotations

from collections.abc import Iterable

from muse.graph.node import Node, NodeParams


def apply_live(node: Node, params: NodeParams, live_fields: Iterable[str]) -> bool:
    """Take `params` if only `live_fields` differ from the node's current ones; else return False."""
    old = node.params.model_dump()
    new = params.model_dump()
    changed = {k for k in new if new[k] != old.get(k)}
    if not changed <= set(live_fields):
        return False
    node.params = params
    return True
