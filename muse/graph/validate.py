"""Graph validation before the first frame: every error at once.

Order: file -> YAML syntax -> schema -> node types -> params -> ports ->
references -> required inputs -> port types -> cycles -> at least one output.
Each error names the file and line, the node, the port or field, what was
expected, and a hint. Errors are raised (GraphValidationError), never only logged.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import yaml
from pydantic import ValidationError

from muse.graph.node import Node, NodeParams, PortSpec
from muse.graph.payloads import Payload
from muse.graph.registry import Registry, load_registry
from muse.graph.spec import (
    DuplicateKeyError,
    GraphSpec,
    InputLink,
    NodeSpec,
    Settings,
    SourceMap,
    load_yaml,
    parse_ref,
)


@dataclass
class GraphError:
    code: str
    message: str
    file: str = "<graph>"
    line: int | None = None
    node: str | None = None
    port: str | None = None
    field: str | None = None
    hint: str = ""

    def where(self) -> str:
        loc = self.file + (f":{self.line}" if self.line else "")
        parts = [loc]
        if self.node:
            parts.append(f"node '{self.node}'")
        if self.port:
            parts.append(f"port '{self.port}'")
        if self.field:
            parts.append(f"field '{self.field}'")
        return ": ".join([parts[0], " ".join(parts[1:])]) if len(parts) > 1 else parts[0]

    def __str__(self) -> str:
        text = f"{self.where()}: [{self.code}] {self.message}"
        return text + (f"\n    hint: {self.hint}" if self.hint else "")

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v not in (None, "")}


class GraphValidationError(Exception):
    """Raised with every error found in a graph file."""

    def __init__(self, errors: list[GraphError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


@dataclass
class Source:
    node: str
    port: str

    def __str__(self) -> str:
        return f"{self.node}.{self.port}"


@dataclass
class ResolvedInput:
    port: PortSpec
    sources: list[Source]
    policy: str = "latest"  # latest | queue
    queue: int = 1


@dataclass
class ResolvedNode:
    name: str
    type: str
    cls: type[Node]
    params: NodeParams
    inputs: dict[str, ResolvedInput] = field(default_factory=dict)


@dataclass
class ValidatedGraph:
    file: str
    spec: GraphSpec
    settings: Settings
    nodes: dict[str, ResolvedNode]
    order: list[str]  # topological
    out_types: dict[tuple[str, str], type[Payload]]
    warnings: list[GraphError] = field(default_factory=list)

    def consumers(self, name: str) -> list[tuple[str, str]]:
        """(consumer node, input port) for every edge leaving `name`."""
        return [
            (n.name, port)
            for n in self.nodes.values()
            for port, ri in n.inputs.items()
            if any(s.node == name for s in ri.sources)
        ]

    def topology_key(self) -> tuple:
        """Equal for two graphs that differ only in params (a live update can apply)."""
        return tuple(
            (n.name, n.type, tuple((p, tuple(str(s) for s in ri.sources), ri.policy, ri.queue) for p, ri in sorted(n.inputs.items())))
            for n in sorted(self.nodes.values(), key=lambda n: n.name)
        ) + (self.settings.model_dump_json(),)


def load_graph(
    path: str | Path,
    registry: Registry | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> ValidatedGraph:
    """Read, parse and validate a graph file. Raises GraphValidationError."""
    path = Path(path)
    file = str(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise GraphValidationError(
            [GraphError("file", f"cannot read graph file: {exc.strerror or exc}", file, hint="check the path (graphs live in graphs/)")]
        ) from None
    return validate_text(text, file, registry, overrides, base_dir=path.parent)


def validate_text(
    text: str,
    file: str = "<graph>",
    registry: Registry | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base_dir: Path | None = None,
) -> ValidatedGraph:
    registry = registry or load_registry()
    errors: list[GraphError] = []
    try:
        data, smap = load_yaml(text, file)
    except DuplicateKeyError as exc:
        raise GraphValidationError([GraphError("duplicate_key", str(exc), file, exc.line, hint="remove or rename one of them")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise GraphValidationError(
            [GraphError("yaml_syntax", f"YAML syntax error: {problem}", file, line, hint="check indentation and colons on that line")]
        ) from None
    if not isinstance(data, dict):
        raise GraphValidationError([GraphError("schema", "a graph file must be a mapping with 'version' and 'nodes'", file, 1)])

    spec = _parse_spec(data, smap, errors)
    if spec is None:
        raise GraphValidationError(errors)
    if spec.include:
        _expand_includes(spec, base_dir or Path("."), smap, errors, registry)
    for target, values in (overrides or {}).items():
        if target not in spec.nodes:
            errors.append(GraphError("unknown_node", f"--set names node {target!r}, which is not in the graph", file,
                                     node=target, hint=_did_you_mean(target, spec.nodes)))
            continue
        spec.nodes[target].params.update(values)

    nodes: dict[str, ResolvedNode] = {}
    for name, ns in spec.nodes.items():
        resolved = _resolve_node(name, ns, registry, smap, errors)
        if resolved is not None:
            nodes[name] = resolved
    _resolve_inputs(spec, nodes, smap, errors)
    order = _check_cycles(spec, nodes, smap, errors)
    out_types = _check_types(nodes, order, smap, errors)
    warnings = _check_reachability(nodes, smap, errors, file)
    if errors:
        raise GraphValidationError(errors)
    return ValidatedGraph(file, spec, spec.settings, nodes, order, out_types, warnings)


# -- steps -------------------------------------------------------------------


def _parse_spec(data: dict, smap: SourceMap, errors: list[GraphError]) -> GraphSpec | None:
    """Validate the file's structure piece by piece so errors in several nodes all surface.

    Broken parts are reported and left out, and checking goes on with the rest."""
    file = smap.file
    ok = True
    data = dict(data)
    allowed = set(GraphSpec.model_fields)
    for key in data:
        if key not in allowed:
            errors.append(GraphError("schema", f"unknown top-level key {key!r}", file, smap.line(key), field=str(key),
                                     hint=f"allowed: {', '.join(sorted(allowed))}" + _did_you_mean(str(key), allowed, prefix="; ")))
    if data.get("version") != 1:
        ok = False
        errors.append(GraphError("schema", f"'version' must be 1, got {data.get('version')!r}", file, smap.line("version"), field="version",
                                 hint="add 'version: 1' at the top of the file"))
    if not isinstance(data.get("settings", {}), dict):
        ok = False
        errors.append(GraphError("schema", "'settings' must be a mapping", file, smap.line("settings"), field="settings"))
    else:
        try:
            Settings.model_validate(data.get("settings", {}))
        except ValidationError as exc:
            data["settings"] = {}
            for e in exc.errors():
                fld = ".".join(str(x) for x in e["loc"])
                errors.append(GraphError("bad_setting", _pyd_msg(e), file, smap.line("settings", *e["loc"][:1]), field=f"settings.{fld}",
                                         hint=_setting_hint(e)))
    nodes = data.get("nodes")
    broken: set[str] = set()
    if not isinstance(nodes, dict) or not nodes:
        ok = False
        errors.append(GraphError("schema", "'nodes' must be a non-empty mapping of node name -> {type, params, inputs}", file,
                                 smap.line("nodes"), field="nodes"))
    else:
        for name, body in nodes.items():
            if not isinstance(body, dict):
                ok = False
                errors.append(GraphError("schema", "a node must be a mapping with 'type' (and 'params', 'inputs')", file,
                                         smap.line("nodes", name), node=str(name)))
                continue
            try:
                NodeSpec.model_validate(body)
            except ValidationError as exc:
                broken.add(name)
                for e in exc.errors():
                    loc = [str(x) for x in e["loc"] if not isinstance(x, int)]
                    key = loc[0] if loc else None
                    msg = _pyd_msg(e)
                    hint = ""
                    if e["type"] == "extra_forbidden":
                        msg = f"unknown key {key!r} in node"
                        hint = "a node has: type, params, inputs, description" + _did_you_mean(str(key), NodeSpec.model_fields, prefix="; ")
                    elif e["type"] == "missing":
                        hint = "add 'type: family.name' (list them with `muse nodes`)"
                    errors.append(GraphError("schema", msg, file, smap.line("nodes", name, *loc[:1]), node=str(name), field=key, hint=hint))
    if not ok:
        return None
    data = {k: v for k, v in data.items() if k in allowed}
    # A node whose own structure is broken stays as a placeholder so references to it don't cascade.
    data["nodes"] = {n: ({"type": "<broken>"} if n in broken else b) for n, b in nodes.items()}
    try:
        return GraphSpec.model_validate(data)
    except ValidationError as exc:  # anything the piecewise checks missed
        for e in exc.errors():
            loc = [str(x) for x in e["loc"]]
            errors.append(GraphError("schema", _pyd_msg(e), file, smap.line(*loc), field=".".join(loc)))
        return None


def _expand_includes(spec: GraphSpec, base: Path, smap: SourceMap, errors: list[GraphError], registry: Registry) -> None:
    for i, inc in enumerate(spec.include):
        sub_path = (base / inc.file).resolve()
        line = smap.line("include")
        try:
            sub_data, _ = load_yaml(sub_path.read_text(), str(sub_path))
            sub = GraphSpec.model_validate(sub_data)
        except Exception as exc:  # report and keep checking the rest
            errors.append(GraphError("include", f"cannot include {inc.file}: {exc}", smap.file, line, field=f"include[{i}]"))
            continue
        rename = {n: f"{inc.prefix}/{n}" for n in sub.nodes}
        for n, ns in sub.nodes.items():
            new_inputs: dict[str, Any] = {}
            for port, link in ns.links().items():
                new_sources = []
                for src in link.sources:
                    ref = parse_ref(src)
                    new_sources.append(f"{rename[ref[0]]}.{ref[1]}" if ref and ref[0] in rename else src)
                new_inputs[port] = InputLink.model_validate(
                    {"from": new_sources if isinstance(link.from_, list) else new_sources[0], "policy": link.policy, "queue": link.queue}
                )
            if rename[n] in spec.nodes:
                errors.append(GraphError("include", f"included node {rename[n]!r} clashes with a node of this graph", smap.file, line, node=rename[n]))
                continue
            spec.nodes[rename[n]] = NodeSpec(type=ns.type, params=ns.params, inputs=new_inputs, description=ns.description)
        for target, src in inc.inputs.items():
            ref = parse_ref(target)
            if not ref or ref[0] not in rename:
                errors.append(GraphError("include", f"include input {target!r} names no node of {inc.file}", smap.file, line, field=f"include[{i}].inputs"))
                continue
            spec.nodes[rename[ref[0]]].inputs[ref[1]] = src
    spec.include = []


def _resolve_node(name: str, ns: NodeSpec, registry: Registry, smap: SourceMap, errors: list[GraphError]) -> ResolvedNode | None:
    file = smap.file
    if ns.type == "<broken>":
        return None  # already reported by the schema check
    if ns.type not in registry:
        errors.append(GraphError("unknown_node_type", registry.unknown_message(ns.type), file, smap.line("nodes", name, "type"),
                                 node=name, field="type", hint="`muse nodes` lists every node type"))
        return None
    cls = registry.get(ns.type)
    try:
        params = cls.Params.model_validate(ns.params)
    except ValidationError as exc:
        schema_props = cls.Params.model_json_schema().get("properties", {})
        for e in exc.errors():
            fld = ".".join(str(x) for x in e["loc"]) or None
            top = str(e["loc"][0]) if e["loc"] else None
            hint = ""
            if e["type"] == "extra_forbidden":
                hint = f"{cls.node_type} params are: {', '.join(schema_props) or '(none)'}" + _did_you_mean(str(top), schema_props, prefix="; ")
            elif top in schema_props and schema_props[top].get("description"):
                hint = f"{top}: {schema_props[top]['description']}"
            errors.append(GraphError("bad_param", _pyd_msg(e), file, smap.line("nodes", name, "params", *(e["loc"][:1] or ())),
                                     node=name, field=fld, hint=hint))
        params = None  # keep checking this node's ports; the error above already stops the graph
    return ResolvedNode(name, ns.type, cls, params)  # type: ignore[arg-type]


def _resolve_inputs(spec: GraphSpec, nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError]) -> None:
    file = smap.file
    for name, rn in nodes.items():
        links = spec.nodes[name].links()
        for port, link in links.items():
            line = smap.line("nodes", name, "inputs", port)
            pspec = rn.cls.inputs_spec.get(port)
            if pspec is None:
                avail = ", ".join(rn.cls.inputs_spec) or "(none: it is a source)"
                errors.append(GraphError("unknown_port", f"{rn.type} has no input {port!r}", file, line, node=name, port=port,
                                         hint=f"its inputs are: {avail}" + _did_you_mean(port, rn.cls.inputs_spec, prefix="; ")))
                continue
            if isinstance(link.from_, list) and not pspec.multiple:
                errors.append(GraphError("bad_reference", f"input {port!r} takes one source, got a list of {len(link.from_)}", file, line,
                                         node=name, port=port, hint="connect a single 'node.port'"))
                continue
            sources: list[Source] = []
            for raw in link.sources:
                ref = parse_ref(raw)
                if ref is None:
                    errors.append(GraphError("bad_reference", f"{raw!r} is not of the form 'node.port'", file, line, node=name, port=port,
                                             hint="e.g. 'camera.frame'"))
                    continue
                src_node, src_port = ref
                if src_node not in spec.nodes:
                    errors.append(GraphError("unknown_node", f"input {port!r} comes from node {src_node!r}, which is not in the graph", file,
                                             line, node=name, port=port, hint=_did_you_mean(src_node, spec.nodes).lstrip() or "check the node name"))
                    continue
                src = nodes.get(src_node)
                if src is not None and src_port not in src.cls.outputs_spec:
                    avail = ", ".join(src.cls.outputs_spec) or "(none: it is an output node)"
                    errors.append(GraphError("unknown_port", f"input {port!r} comes from {src_node}.{src_port}, but {src.type} has no output {src_port!r}",
                                             file, line, node=name, port=port,
                                             hint=f"outputs of {src_node}: {avail}" + _did_you_mean(src_port, src.cls.outputs_spec, prefix="; ")))
                    continue
                sources.append(Source(src_node, src_port))
            rn.inputs[port] = ResolvedInput(pspec, sources, link.policy, link.queue or 1)
        for port, pspec in rn.cls.inputs_spec.items():
            if port not in links and not pspec.optional:
                errors.append(GraphError("missing_input", f"required input {port!r} ({pspec.type_name}) is not connected", file,
                                         smap.line("nodes", name), node=name, port=port,
                                         hint=f"add under {name}: inputs: {{{port}: <node>.<port>}}"))


def _check_cycles(spec: GraphSpec, nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError]) -> list[str]:
    g = nx.DiGraph()
    g.add_nodes_from(spec.nodes)
    for name, rn in nodes.items():
        for ri in rn.inputs.values():
            for s in ri.sources:
                g.add_edge(s.node, name)
    try:
        return list(nx.lexicographical_topological_sort(g))
    except nx.NetworkXUnfeasible:
        for cycle in nx.simple_cycles(g):
            path = " -> ".join([*cycle, cycle[0]])
            first = sorted(cycle)[0]
            errors.append(GraphError("cycle", f"the graph has a cycle: {path}", smap.file, smap.line("nodes", first), node=first,
                                     hint="a frame cannot depend on itself; break the loop (feedback belongs inside a node's state)"))
        return []


def _check_types(nodes: dict[str, ResolvedNode], order: list[str], smap: SourceMap, errors: list[GraphError]) -> dict[tuple[str, str], type[Payload]]:
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


def _check_reachability(nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError], file: str) -> list[GraphError]:
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


# -- message helpers ---------------------------------------------------------


def _pyd_msg(e: dict[str, Any]) -> str:
    msg = e.get("msg", "invalid value")
    if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
        msg += f" (got {e['input']!r})"
    return msg


def _setting_hint(e: dict[str, Any]) -> str:
    key = str(e["loc"][0]) if e["loc"] else ""
    f = Settings.model_fields.get(key)
    if e["type"] == "extra_forbidden":
        return f"settings are: {', '.join(Settings.model_fields)}" + _did_you_mean(key, Settings.model_fields, prefix="; ")
    return f"{key}: {f.description}" if f and f.description else ""


def _did_you_mean(word: str, options: Any, prefix: str = " ") -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=2, cutoff=0.6)
    return f"{prefix}did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
