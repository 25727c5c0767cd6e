"""Whole-graph checks after the nodes are resolved: cycles, port types along every edge,
an output reachable from a source, and output files that would overwrite each other."""

from __future__ import annotations

import time
from pathlib import Path

import networkx as nx

from muse.graph.messages import first_line
from muse.graph.payloads import Payload
from muse.graph.resolved import GraphError, ResolvedNode
from muse.graph.spec import GraphSpec, SourceMap


def check_cycles(spec: GraphSpec, nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError]) -> list[str]:
    g = nx.DiGraph()
    g.add_nodes_from(spec.nodes)
    for name, rn in nodes.items():
        for ri in rn.inputs.values():
            for s in ri.sources:
                g.add_edge(s.node, name)
    try:
        return list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        # One error per knot of nodes that feed each other (strongly connected component), showing
        # one loop through it: linear in the graph, where listing every loop is exponential.
        for comp in nx.strongly_connected_components(g):
            first = min(comp)
            if len(comp) == 1 and not g.has_edge(first, first):
                continue
            loop = [u for u, _ in nx.find_cycle(g.subgraph(comp), source=first)]
            path = " -> ".join([*loop, loop[0]])
            more = f" ({len(comp)} nodes feed each other here)" if len(comp) > len(loop) else ""
            errors.append(GraphError("cycle", f"the graph has a cycle: {path}{more}", smap.file, smap.line("nodes", first), node=first,
                                     hint="a frame cannot depend on itself; break the loop (feedback belongs inside a node's state)"))
        return []


def check_types(nodes: dict[str, ResolvedNode], order: list[str], smap: SourceMap, errors: list[GraphError]) -> dict[tuple[str, str], type[Payload]]:
    out_types: dict[tuple[str, str], type[Payload]] = {}
    for name in order or list(nodes):
        rn = nodes.get(name)
        if rn is None:
            continue
        bound: dict[str, type[Payload]] = {}
        for port, ri in rn.inputs.items():
            want = ri.port.type
            for s in ri.sources:
                have = out_types.get((s.node, s.port))
                if have is None:
                    continue  # source unresolved or generic-unbound: reported elsewhere
                line = smap.line("nodes", name, "inputs", port)
                if ri.port.generic:
                    first = bound.setdefault(port, have)
                    if have is not first:
                        errors.append(GraphError("type_mismatch", f"all sources of {port!r} must have one type: {s} gives {have.type_name}, "
                                                 f"an earlier source gives {first.type_name}", smap.file, line, node=name, port=port,
                                                 hint="connect candidates of the same payload type"))
                elif have is not want:
                    errors.append(GraphError("type_mismatch", f"{s} gives {have.type_name}, but input {name}.{port} takes {want.type_name}",
                                             smap.file, line, node=name, port=port,
                                             hint=f"connect an output of type {want.type_name}, or add a node that converts {have.type_name} to {want.type_name}"))
        for oport, ospec in rn.cls.outputs_spec.items():
            if ospec.same_as:
                if ospec.same_as in bound:
                    out_types[(name, oport)] = bound[ospec.same_as]
                elif not ospec.generic:
                    out_types[(name, oport)] = ospec.type
            elif not ospec.generic:
                out_types[(name, oport)] = ospec.type
    return out_types


def check_reachability(nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError], file: str) -> list[GraphError]:
    warnings: list[GraphError] = []
    if not nodes:
        return warnings
    consumed = {s.node for rn in nodes.values() for ri in rn.inputs.values() for s in ri.sources}
    sinks = [n for n, rn in nodes.items() if rn.cls.is_sink()]
    if not sinks and not errors:
        errors.append(GraphError("no_output", "the graph has no output node, so nothing would ever run", file, smap.line("nodes"),
                                 hint="add an output, e.g. output.preview, output.file or output.null"))
    for n, rn in nodes.items():
        if not rn.cls.is_sink() and n not in consumed:
            warnings.append(GraphError("unused_node", "no node consumes this node's outputs, so it never runs", file,
                                       smap.line("nodes", n), node=n, hint="connect one of its outputs or remove it"))
    return warnings


def check_output_paths(nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError], base_dir: Path | None,
                        allow_paths: bool) -> None:
    """Output paths (the fields a node lists in `output_paths`): inside the allowed folders
    (muse.graph.paths) unless `allow_paths`, and no file written by two nodes at once."""
    from muse.graph import paths

    base = base_dir.absolute() if base_dir is not None else paths.graph_dir(None)
    now = time.time()
    claimed: dict[Path, tuple[str, str]] = {}
    for name in sorted(nodes):
        rn = nodes[name]
        if rn.params is None:
            continue  # its params are already reported
        declared = getattr(rn.cls, "output_paths", None)  # {field: one writer only}, or a classmethod(params) giving it
        try:
            fields: dict[str, bool] = (declared(rn.params) if callable(declared) else declared) or {}
        except Exception:  # a plugin's declaration must not break validation
            fields = {}
        for fld, exclusive in fields.items():
            raw = getattr(rn.params, fld, None)
            if not isinstance(raw, str) or not raw:
                continue
            line = smap.line("nodes", name, "params", fld)
            try:
                target = paths.resolve_output_path(raw, base, when=now)
                template = paths.resolve_output_path(raw.replace("%", "%%"), base)  # the unexpanded name
            except (ValueError, OSError) as exc:
                errors.append(GraphError("bad_path", f"{raw!r} is not a usable path ({first_line(exc)})", smap.file, line, node=name, field=fld))
                continue
            if base_dir is not None and not allow_paths and paths.outside_allowed(target, base):
                errors.append(GraphError(
                    "path_outside", f"{raw!r} resolves to {target}, outside the folders a graph may write to", smap.file, line, node=name, field=fld,
                    hint=f"write inside the graph's folder ({base}), the Studio profiles or {paths.user_data_dir()}; "
                         f"if you trust this graph, run it with --allow-paths (or add the folder to ${paths.ALLOW_ENV})"))
            if not exclusive:
                continue
            for key in {paths.real_path(target), paths.real_path(template)}:
                if key in claimed and claimed[key][0] != name:
                    other, other_field = claimed[key]
                    errors.append(GraphError(
                        "duplicate_output", f"writes the same file as node '{other}' (field '{other_field}'): {target}", smap.file, line,
                        node=name, field=fld, hint="give each recording its own path (two writers of one file would stop the stream)"))
                    break
                claimed.setdefault(key, (name, fld))


def check_network_outputs(nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError], allow_network: bool) -> None:
    """Network outputs (the fields a node lists in `network_outputs`) stay on this machine unless allowed (muse.graph.network)."""
    from muse.graph import network

    if network.network_allowed(allow_network):
        return
    for name in sorted(nodes):
        rn = nodes[name]
        if rn.params is None:
            continue
        for fld in getattr(rn.cls, "network_outputs", ()) or ():
            url = getattr(rn.params, fld, None)
            if isinstance(url, str) and url and not network.is_loopback_url(url):
                errors.append(GraphError("network_output", network.refusal(url), smap.file, smap.line("nodes", name, "params", fld),
                                         node=name, field=fld, hint=network.HINT))
