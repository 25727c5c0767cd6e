"""Graph validation before the first frame: every error at once.

Order: file -> YAML syntax -> schema -> node types -> params -> ports ->
references -> required inputs -> port types -> cycles -> at least one output.
Each error names the file and line, the node, the port or field, what was
expected, and a hint. Errors are raised (GraphValidationError), never only logged.
Parts: `includes` (sub-graphs), `checks` (whole-graph checks), `messages`, and
`resolved` (the records produced; re-exported here).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from muse.graph.checks import check_cycles, check_network_outputs, check_output_paths, check_reachability, check_types
from muse.graph.includes import MAX_GRAPH_NODES, MAX_INCLUDE_DEPTH, expand_includes
from muse.graph.network import network_allowed
from muse.graph.policy import check_fault_policies
from muse.graph.messages import did_you_mean, first_line, pydantic_message, setting_hint
from muse.graph.registry import Registry, load_registry
from muse.graph.resolved import GraphError, GraphValidationError, ResolvedInput, ResolvedNode, Source, ValidatedGraph
from muse.graph.spec import (
    DuplicateKeyError,
    GraphFileError,
    GraphSpec,
    NodeSpec,
    Settings,
    SourceMap,
    load_yaml,
    parse_ref,
    read_graph_file,
)

__all__ = [
    "GraphError", "GraphValidationError", "MAX_GRAPH_NODES", "MAX_INCLUDE_DEPTH", "ResolvedInput", "ResolvedNode",
    "Source", "ValidatedGraph", "load_graph", "validate_text",
]

log = logging.getLogger("muse.graph")

LOSSLESS_QUEUE = 8  # frames queued from a file/picture source before it waits for its consumers


def load_graph(
    path: str | Path,
    registry: Registry | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    *,
    allow_paths: bool = False,
    allow_network: bool = False,
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
    return validate_text(text, file, registry, overrides, base_dir=path.parent, allow_paths=allow_paths, allow_network=allow_network)


def validate_text(
    text: str,
    file: str = "<graph>",
    registry: Registry | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    base_dir: Path | None = None,
    *,
    allow_paths: bool = False,
    allow_network: bool = False,
) -> ValidatedGraph:
    """Validate graph text. `base_dir` (the graph's folder) anchors includes and relative output
    paths; when it is given, output paths must stay inside the allowed folders unless `allow_paths`.
    Raises GraphValidationError and nothing else: an unexpected failure is reported as an error
    naming the file rather than escaping as a traceback."""
    try:
        return _validate_text(text, file, registry, overrides, base_dir, allow_paths, allow_network)
    except GraphValidationError:
        raise
    except RecursionError:
        raise GraphValidationError([GraphError("file", "the graph is nested too deeply to check", file,
                                               hint="a graph needs a handful of levels; this looks like a broken or hostile file")]) from None
    except Exception as exc:  # the last line of defence: a bad graph must never become a traceback (or kill a --watch stream)
        log.debug("unexpected error while validating %s", file, exc_info=True)
        raise GraphValidationError([GraphError("invalid", f"the graph could not be checked ({type(exc).__name__}: {first_line(exc)})", file,
                                               hint="fix the file; if it looks right, please report this as a MUSE bug")]) from None


def _validate_text(
    text: str,
    file: str,
    registry: Registry | None,
    overrides: dict[str, dict[str, Any]] | None,
    base_dir: Path | None,
    allow_paths: bool,
    allow_network: bool = False,
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
        expand_includes(spec, base_dir or Path("."), smap, errors, (me,) if me else ())
    if len(spec.nodes) > MAX_GRAPH_NODES:
        raise GraphValidationError(errors + [GraphError("too_big", f"the graph has {len(spec.nodes)} nodes (includes expanded); "
                                                        f"at most {MAX_GRAPH_NODES} are allowed", file, smap.line("nodes"), field="nodes")])
    for target, values in (overrides or {}).items():
        if target not in spec.nodes:
            errors.append(GraphError("unknown_node", f"--set names node {target!r}, which is not in the graph", file,
                                     node=target, hint=did_you_mean(target, spec.nodes)))
            continue
        _merge(spec.nodes[target].params, values)

    nodes: dict[str, ResolvedNode] = {}
    for name, ns in spec.nodes.items():
        resolved = _resolve_node(name, ns, registry, smap, errors)
        if resolved is not None:
            nodes[name] = resolved
    _resolve_inputs(spec, nodes, smap, errors)
    order = check_cycles(spec, nodes, smap, errors)
    out_types = check_types(nodes, order, smap, errors)
    check_fault_policies(spec, nodes, out_types, smap, errors)
    warnings = check_reachability(nodes, smap, errors, file)
    check_output_paths(nodes, smap, errors, base_dir, allow_paths)
    check_network_outputs(nodes, smap, errors, allow_network)
    if errors:
        raise GraphValidationError(errors)
    return ValidatedGraph(file, spec, spec.settings, nodes, order, out_types, warnings, allow_network=network_allowed(allow_network))


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
                                     hint=f"allowed: {', '.join(sorted(allowed))}" + did_you_mean(str(key), allowed, prefix="; ")))
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
                errors.append(GraphError("bad_setting", pydantic_message(e), file, smap.line("settings", *e["loc"][:1]), field=f"settings.{fld}",
                                         hint=setting_hint(e)))
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
                    msg = pydantic_message(e)
                    hint = ""
                    if e["type"] == "extra_forbidden":
                        msg = f"unknown key {key!r} in node"
                        hint = "a node has: type, params, inputs, description, on_error, budget_ms, fallback" + did_you_mean(str(key), NodeSpec.model_fields, prefix="; ")
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
            errors.append(GraphError("schema", pydantic_message(e), file, smap.line(*loc), field=".".join(loc)))
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
                hint = f"{cls.node_type} params are: {', '.join(schema_props) or '(none)'}" + did_you_mean(str(top), schema_props, prefix="; ")
            elif top in schema_props and schema_props[top].get("description"):
                hint = f"{top}: {schema_props[top]['description']}"
            errors.append(GraphError("bad_param", pydantic_message(e), file, smap.line("nodes", name, "params", *(e["loc"][:1] or ())),
                                     node=name, field=fld, hint=hint))
        params = None  # keep checking this node's ports; the error above already stops the graph
    return ResolvedNode(name, ns.type, cls, params, standby_for=ns.standby_for)


def _resolve_inputs(spec: GraphSpec, nodes: dict[str, ResolvedNode], smap: SourceMap, errors: list[GraphError]) -> None:
    file = smap.file
    for name, rn in nodes.items():
        primary = rn.standby_for
        if primary and (primary == name or primary not in spec.nodes):
            what = "itself" if primary == name else f"{primary!r}, which is not in the graph"
            errors.append(GraphError("bad_reference", f"standby_for names {what}", file, smap.line("nodes", name, "standby_for"),
                                     node=name, field="standby_for", hint=did_you_mean(primary, spec.nodes).lstrip() or
                                     "name the node this one stands in for (e.g. the virtual camera)"))
        links = spec.nodes[name].links()
        for port, link in links.items():
            line = smap.line("nodes", name, "inputs", port)
            pspec = rn.cls.inputs_spec.get(port)
            if pspec is None:
                avail = ", ".join(rn.cls.inputs_spec) or "(none: it is a source)"
                errors.append(GraphError("unknown_port", f"{rn.type} has no input {port!r}", file, line, node=name, port=port,
                                         hint=f"its inputs are: {avail}" + did_you_mean(port, rn.cls.inputs_spec, prefix="; ")))
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
                                             line, node=name, port=port, hint=did_you_mean(src_node, spec.nodes).lstrip() or "check the node name"))
                    continue
                src = nodes.get(src_node)
                if src is not None and src_port not in src.cls.outputs_spec:
                    avail = ", ".join(src.cls.outputs_spec) or "(none: it is an output node)"
                    errors.append(GraphError("unknown_port", f"input {port!r} comes from {src_node}.{src_port}, but {src.type} has no output {src_port!r}",
                                             file, line, node=name, port=port,
                                             hint=f"outputs of {src_node}: {avail}" + did_you_mean(src_port, src.cls.outputs_spec, prefix="; ")))
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
