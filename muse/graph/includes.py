"""`include:` sub-graphs merged into a graph under a prefix, recursively, with limits
(depth, total nodes) and errors that name the including file and line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from muse.graph.messages import pydantic_message
from muse.graph.resolved import GraphError
from muse.graph.spec import (
    DuplicateKeyError,
    GraphFileError,
    GraphSpec,
    InputLink,
    NodeSpec,
    SourceMap,
    load_yaml,
    parse_ref,
    read_graph_file,
)

MAX_GRAPH_NODES = 2000  # after includes; the shipped graphs have about 20
MAX_INCLUDE_DEPTH = 8


def expand_includes(spec: GraphSpec, base: Path, smap: SourceMap, errors: list[GraphError], chain: tuple[Path, ...]) -> None:
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
        sub = read_include(sub_path, inc.file, smap, line, where, errors)
        if sub is None:
            continue
        sub_spec, sub_smap = sub
        if sub_spec.include:
            expand_includes(sub_spec, sub_path.parent, sub_smap, errors, (*chain, sub_path))
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
            params = {**ns.params, **inc.params.get(n, {})}
            standby = rename.get(ns.standby_for, ns.standby_for)
            spec.nodes[rename[n]] = NodeSpec(type=ns.type, params=params, inputs=new_inputs, description=ns.description,
                                             standby_for=standby)
        for sub in inc.params:
            if sub not in rename:
                errors.append(GraphError("include", f"include params for {sub!r}, which is no node of {inc.file}", smap.file, line,
                                         field=f"{where}.params", hint=f"its nodes: {', '.join(rename)}"))
        for target, src in inc.inputs.items():
            ref = parse_ref(target)
            if not ref or ref[0] not in rename or rename[ref[0]] not in spec.nodes:
                errors.append(GraphError("include", f"include input {target!r} names no node of {inc.file}", smap.file, line, field=f"{where}.inputs"))
                continue
            spec.nodes[rename[ref[0]]].inputs[ref[1]] = src
        if len(spec.nodes) > MAX_GRAPH_NODES:
            return  # reported by the caller; expanding more would only cost time
    spec.include = []


def read_include(path: Path, name: str, smap: SourceMap, line: int | None, where: str,
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
            report(f"{'.'.join(loc)}: {pydantic_message(e)}", sub_smap.line(*loc))
        return None
