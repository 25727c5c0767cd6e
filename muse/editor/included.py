"""The nodes a graph's `include:` entries bring in (hybrid segmentation, hybrid pose), for the
editor to draw next to the file's own nodes: read-only (they are edited in their own file, or
through the include's `params`), laid out with the rest, linked to what they feed."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from muse.graph.includes import expand_includes
from muse.graph.resolved import GraphError
from muse.graph.spec import GraphSpec, load_yaml

if TYPE_CHECKING:  # pragma: no cover
    from muse.editor.model import EditorModel, EditorNode

__all__ = ["included_nodes"]


def included_nodes(model: "EditorModel") -> tuple[dict[str, "EditorNode"], dict[str, str]]:
    """(name -> node, name -> the include file it comes from) for every node the includes add.
    A broken include adds nothing here: the validator reports it on the graph."""
    from muse.editor.model import EditorNode, InputRef

    if not model.include or not model.nodes:
        return {}, {}
    file = str(model.path) if model.path else "<editor>"
    base = model.path.parent if model.path else Path.cwd()
    try:
        data, smap = load_yaml(model.to_yaml(), file)
        spec = GraphSpec.model_validate(data)
    except Exception:  # the file's own problems show through validation
        return {}, {}
    before = dict(spec.nodes)
    errors: list[GraphError] = []
    where: dict[str, str] = {}
    for inc in spec.include:  # which file each prefix comes from (for the node's label)
        where[inc.prefix] = inc.file
    expand_includes(spec, base, smap, errors, ())
    nodes: dict[str, EditorNode] = {}
    files: dict[str, str] = {}
    for name, ns in spec.nodes.items():
        if name in before:
            continue
        nodes[name] = EditorNode(name, ns.type, dict(ns.params), {p: InputRef.from_spec(v) for p, v in ns.inputs.items()},
                                 ns.description, None, ns.standby_for)
        files[name] = where.get(name.split("/", 1)[0], "an included file")
    return nodes, files
