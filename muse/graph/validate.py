"""Graph validation before the first frame: every error at once.

Order: file -> YAML syntax -> schema -> node types -> params -> ports ->
references -> required inputs -> port types -> cycles -> at least one output.
Each error names the file and line, the node, the port or field, what was
expected, and a hint. Errors are raised (GraphValidationError), never only logged.
"""

from __future__ import annotations

import difflib
import logging
import time
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
    GraphFileError,
    GraphSpec,
    InputLink,
    NodeSpec,
    Settings,
    SourceMap,
    load_yaml,
    parse_ref,
    read_graph_file,
)

log = logging.getLogger("muse.graph")

MAX_GRAPH_NODES = 2000  # after includes; the shipped graphs have about 20
MAX_INCLUDE_DEPTH = 8
LOSSLESS_QUEUE = 8  # frames queued from a file/picture source before it waits for its consumers


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
        text = f"{self.where()}: [{self.code}] {_printable(self.message)}"
        return _printable(text) + (f"\n    hint: {_printable(self.hint)}" if self.hint else "")

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
    *,
    allow_paths: bool = False,
) -> ValidatedGraph:
    """Read, parse and validate a graph file. Raises GraphValidationError, and nothing else:
    however odd the file, the answer is a list of errors naming it.

    `allow_paths`: let output paths point outside the graph's folder, the profiles and the user
    data folder (the `--allow-paths` flag)."""
    path = Path(path)
    file = str(path)
    try:
        text = read_graph_file(path)
    except GraphFileError as exc:
        raise GraphValidationError([GraphError("file", str(exc), file, exc.line, hint=exc.hint)]) from None
    return validate_text(text, file, registry, overrides, base_dir=path.parent, allow_paths=allow_paths)


def validate_text(
    text: str,
    file: str = "<graph>",
    registry: Registry | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base_dir: Path | None = None,
    *,
    allow_paths: bool = False,
) -> ValidatedGraph:
    """Validate graph text. `base_dir` (the graph's folder) anchors includes and relative output
    paths; when it is given, output paths must stay inside the allowed folders unless `allow_paths`.
    Raises GraphValidationError and nothing else: an unexpected failure is reported as an error
    naming the file rather than escaping as a traceback."""
    try:
        return _validate_text(text, file, registry, overrides, base_dir, allow_paths)
    except GraphValidationError:
        raise
    except RecursionError:
        raise GraphValidationError([GraphError("file", "the graph is nested too deeply to check", file,
                                               hint="a graph needs a handful of levels; this looks like a broken or hostile file")]) from None
    except Exception as exc:  # the last line of defence: a bad graph must never become a traceback (or kill a --watch stream)
        log.debug("unexpected error while validating %s", file, exc_info=True)
        raise GraphValidationError([GraphError("invalid", f"the graph could not be checked ({type(exc).__name__}: {_first_line(exc)})", file,
                                               hint="fix the file; if it looks right, please report this as a MUSE bug")]) from None


def _validate_text(
    text: str,
    file: str,
    registry: Registry | None,
    overrides: dict[str, dict[str, Any]] | None,
    base_dir: Path | None,
    allow_paths: bool,
) -> ValidatedGraph:
    registry = registry or load_registry()
    errors: list[GraphError] = []
    try:
        data, smap = load_yaml(text, file)
    except GraphFileError as exc:
        raise GraphValidationError([GraphError("file", str(exc), file, exc.line, hint=exc.hint)]) from None
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
        me = Path(file).resolve() if base_dir is not None and Path(file).is_file() else None
        _expand_includes(spec, base_dir or Path("."), smap, errors, (me,) if me else ())
    if len(spec.nodes) > MAX_GRAPH_NODES:
        raise GraphValidationError(errors + [GraphError("too_big", f"the graph has {len(spec.nodes)} nodes (includes expanded); "
                                                        f"at most {MAX_GRAPH_NODES} are allowed", file, smap.line("nodes"), field="nodes")])
    for target, values in (overrides or {}).items():
        if target not in spec.nodes:
            errors.append(GraphError("unknown_node", f"--set names node {target!r}, which is not in the graph", file,
                                     node=target, hint=_did_you_mean(target, spec.nodes)))
            continue
        _merge(spec.nodes[target].params, values)

    nodes: dict[str, ResolvedNode] = {}
    for name, ns in spec.nodes.items():
        resolved = _resolve_node(name, ns, registry, smap, errors)
        if resolved is not None:
            nodes[name] = resolved
    _resolve_inputs(spec, nodes, smap, errors)
    order = _check_cycles(spec, nodes, smap, errors)
    out_types = _check_types(nodes, order, smap, errors)
    warnings = _check_reachability(nodes, smap, errors, file)
    _check_output_paths(nodes, smap, errors, base_dir, allow_paths)
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


def _expand_includes(spec: GraphSpec, base: Path, smap: SourceMap, errors: list[GraphError], chain: tuple[Path, ...]) -> None:
    """Merge `include:` sub-graphs (and theirs, recursively) into `spec` under their prefixes.

    Only regular files are read (read_graph_file), a file may not include itself or one that
    includes it (`chain` holds the files being expanded), and every problem of an included file
    is reported naming that file and its line."""
    for i, inc in enumerate(spec.include):
        line = smap.line("include")
        where = f"include[{i}]"
        sub_path = (base / Path(inc.file).expanduser()).resolve()
        if sub_path in chain:
            loop = " -> ".join(p.name for p in (*chain[chain.index(sub_path):], sub_path))
            what = "includes itself" if len(chain) and sub_path == chain[-1] else f"includes form a loop: {loop}"
            errors.append(GraphError("include", f"{inc.file}: {what}", smap.file, line, field=where,
                                     hint="include only sub-graphs that do not include this file"))
            continue
        if len(chain) >= MAX_INCLUDE_DEPTH:
            errors.append(GraphError("include", f"{inc.file}: includes nest deeper than {MAX_INCLUDE_DEPTH} files", smap.file, line, field=where))
            continue
        sub = _read_include(sub_path, inc.file, smap, line, where, errors)
        if sub is None:
            continue
        sub_spec, sub_smap = sub
        if sub_spec.include:
            _expand_includes(sub_spec, sub_path.parent, sub_smap, errors, (*chain, sub_path))
        rename = {n: f"{inc.prefix}/{n}" for n in sub_spec.nodes}
        for n, ns in sub_spec.nodes.items():
            new_inputs: dict[str, Any] = {}
            for port, link in ns.links().items():
                new_sources = []
                for src in link.sources:
                    ref = parse_ref(src)
                    new_sources.append(f"{rename[ref[0]]}.{ref[1]}" if ref and ref[0] in rename else src)
                explicit = {k: getattr(link, k) for k in ("policy", "queue") if k in link.model_fields_set}  # defaults stay defaults
                new_inputs[port] = InputLink.model_validate({"from": new_sources if isinstance(link.from_, list) else new_sources[0], **explicit})
            if rename[n] in spec.nodes:
                errors.append(GraphError("include", f"included node {rename[n]!r} clashes with a node of this graph", smap.file, line,
                                         node=rename[n], field=where))
                continue
            spec.nodes[rename[n]] = NodeSpec(type=ns.type, params=ns.params, inputs=new_inputs, description=ns.description)
        for target, src in inc.inputs.items():
            ref = parse_ref(target)
            if not ref or ref[0] not in rename or rename[ref[0]] not in spec.nodes:
                errors.append(GraphError("include", f"include input {target!r} names no node of {inc.file}", smap.file, line, field=f"{where}.inputs"))
                continue
            spec.nodes[rename[ref[0]]].inputs[ref[1]] = src
        if len(spec.nodes) > MAX_GRAPH_NODES:
            return  # reported by the caller; expanding more would only cost time
    spec.include = []


def _read_include(path: Path, name: str, smap: SourceMap, line: int | None, where: str,
                  errors: list[GraphError]) -> tuple[GraphSpec, SourceMap] | None:
    """An included file parsed and schema-checked; its errors name it (and its line) and the include entry."""
    sub_file = str(path)

    def report(message: str, sub_line: int | None = None, hint: str = "") -> None:
        at = f"{sub_file}:{sub_line}" if sub_line else sub_file
        errors.append(GraphError("include", f"cannot include {name} ({at}): {message}", smap.file, line, field=where, hint=hint))

    try:
        data, sub_smap = load_yaml(read_graph_file(path), sub_file)
    except GraphFileError as exc:
        report(str(exc), exc.line, exc.hint)
        return None
    except DuplicateKeyError as exc:
        report(str(exc), exc.line)
        return None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        report(f"YAML syntax error: {getattr(exc, 'problem', None) or exc}", mark.line + 1 if mark else None)
        return None
    if not isinstance(data, dict):
        report("a graph file must be a mapping with 'version' and 'nodes'", 1)
        return None
    try:
        return GraphSpec.model_validate(data), sub_smap
    except ValidationError as exc:
        for e in exc.errors()[:20]:
            loc = [str(x) for x in e["loc"]]
            report(f"{'.'.join(loc)}: {_pyd_msg(e)}", sub_smap.line(*loc))
        return None


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
            policy, size = link.policy, link.queue or 1
            if "policy" not in link.model_fields_set and sources and all(_lossless(nodes.get(s.node)) for s in sources):
                # Files and picture folders are not live: by default every frame is delivered (a bounded
                # queue that makes the source wait), never dropped. `policy: latest` asks for real time.
                policy, size = "queue", LOSSLESS_QUEUE
            rn.inputs[port] = ResolvedInput(pspec, sources, policy, size)
        for port, pspec in rn.cls.inputs_spec.items():
            if port not in links and not pspec.optional:
                errors.append(GraphError("missing_input", f"required input {port!r} ({pspec.type_name}) is not connected", file,
                                         smap.line("nodes", name), node=name, port=port,
                                         hint=f"add under {name}: inputs: {{{port}: <node>.<port>}}"))


def _merge(params: dict[str, Any], values: dict[str, Any]) -> None:
    """--set values into a node's params; `node.group.field=x` changes that field and keeps the group's others."""
    for key, value in values.items():
        if isinstance(value, dict) and isinstance(params.get(key), dict):
            params[key] = dict(params[key])
            _merge(params[key], value)
        else:
            params[key] = value


def _lossless(src: ResolvedNode | None) -> bool:
    """Does this source deliver every frame by default (a file or picture folder, not a live feed)?"""
    if src is None or src.params is None:
        return False
    check = getattr(src.cls, "lossless_by_default", None)
    try:
        return bool(check(src.params)) if callable(check) else False
    except Exception:  # a plugin's check must not break validation
        return False


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


def _check_output_paths(nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError], base_dir: Path | None,
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
                errors.append(GraphError("bad_path", f"{raw!r} is not a usable path ({_first_line(exc)})", smap.file, line, node=name, field=fld))
                continue
            if base_dir is not None and not allow_paths and paths.outside_allowed(target, base):
                errors.append(GraphError(
                    "path_outside", f"{raw!r} resolves to {target}, outside the folders a graph may write to", smap.file, line, node=name, field=fld,
                    hint=f"write inside the graph's folder ({base}), the Studio profiles or {paths.user_data_dir()}; "
                         f"if you trust this graph, run it with --allow-paths (or add the folder to ${paths.ALLOW_ENV})"))
            if not exclusive:
                continue
            for key in {paths._real(target), paths._real(template)}:
                if key in claimed and claimed[key][0] != name:
                    other, other_field = claimed[key]
                    errors.append(GraphError(
                        "duplicate_output", f"writes the same file as node '{other}' (field '{other_field}'): {target}", smap.file, line,
                        node=name, field=fld, hint="give each recording its own path (two writers of one file would stop the stream)"))
                    break
                claimed.setdefault(key, (name, fld))


# -- message helpers ---------------------------------------------------------


def _pyd_msg(e: dict[str, Any]) -> str:
    msg = e.get("msg", "invalid value")
    if "input" in e and e["type"] != "missing" and not isinstance(e["input"], dict):
        got = repr(e["input"])
        msg += f" (got {got if len(got) <= 120 else got[:100] + '...'})"  # a 5000-character value is not repeated
    return msg


_CONTROL = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x09), *range(0x0b, 0x20), 0x7f, *range(0x80, 0xa0))}


def _printable(text: str) -> str:
    """Control characters from a graph (a YAML "\\e" is an ESC) shown escaped: an error message must
    not carry terminal escape sequences into the user's terminal."""
    return text.translate(_CONTROL)


def _setting_hint(e: dict[str, Any]) -> str:
    key = str(e["loc"][0]) if e["loc"] else ""
    f = Settings.model_fields.get(key)
    if e["type"] == "extra_forbidden":
        return f"settings are: {', '.join(Settings.model_fields)}" + _did_you_mean(key, Settings.model_fields, prefix="; ")
    return f"{key}: {f.description}" if f and f.description else ""


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _did_you_mean(word: str, options: Any, prefix: str = " ") -> str:
    if len(options) > 300:
        return ""  # fuzzy matching against thousands of names per error would make checking quadratic
    close = difflib.get_close_matches(word, [str(o) for o in options], n=2, cutoff=0.6)
    return f"{prefix}did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
