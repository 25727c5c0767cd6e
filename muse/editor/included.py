"""The nodes a graph's `include:` entries bring in (hybrid segmentation, hybrid pose), for the
editor to draw next to the file's own nodes: read-only (they are edited in their own file, or
through the include's `params`), laid out with the rest, linked to what they feed."""

from __future__ import annotations

from pathlib import Path

from muse.graph.includes import expand_includes
from muse.graph.resolved import GraphError
from muse.graph.spec import GraphSpec, NodeSpec, load_yaml

__all__ = ["included_specs"]


def included_specs(text: str, path: Path | None) -> tuple[dict[str, NodeSpec], dict[str, str]]:
    """(name -> node, name -> the include file it comes from) for every node the includes of the
    graph `text` (saved at `path`) add. A broken include adds nothing here: the validator reports it."""
    file = str(path) if path else "<editor>"
    base = path.parent if path else Path.cwd()
    try:
        data, smap = load_yaml(text, file)
        spec = GraphSpec.model_validate(data)
    except Exception:  # the file's own problems show through validation
        return {}, {}
    before = dict(spec.nodes)
    errors: list[GraphError] = []
    where: dict[str, str] = {}
    for inc in spec.include:  # which file each prefix comes from (for the node's label)
        where[inc.prefix] = inc.file
    expand_includes(spec, base, smap, errors, ())
    nodes = {name: ns for name, ns in spec.nodes.items() if name not in before}
    files = {name: where.get(name.split("/", 1)[0], "an included file") for name in nodes}
    return nodes, files
