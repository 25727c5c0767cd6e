"""The editor's graph model, independent of DearPyGui: nodes, links, params and
positions, type-checked edits with undo/redo, YAML load/save through the graph
spec, validation through the graph validator, and automatic layout."""

from __future__ import annotations

import copy
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import networkx as nx
import yaml
from pydantic import ValidationError

from muse.editor.catalog import GENERIC, UNKNOWN, Catalog, NodeTypeInfo
from muse.editor.included import included_specs
from muse.editor.layout import layered_positions
from muse.files import write_bytes, write_text
from muse.graph.spec import EditorSection, GraphFileError, GraphSpec, InputLink, NodeSpec, Settings, dump_yaml, load_yaml, parse_ref, read_graph_file
from muse.graph.validate import GraphError, GraphValidationError, ValidatedGraph, validate_text

_NODE_NAME = re.compile(r"^[A-Za-z_][\w-]*$")
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "none"}
NODE_WIDTH = 230.0  # the view draws nodes this wide; layout uses it too


class EditError(ValueError):
    """An edit the model refused; the message says why and what to do (shown in the status bar)."""


@dataclass
class InputRef:
    """One input of a node as the file has it: sources 'node.port' plus the real-time policy."""

    sources: list[str]
    many: bool = False  # written as a list (multi-input ports)
    policy: str = "latest"
    queue: int | None = None

    @classmethod
    def from_spec(cls, value: Any) -> "InputRef":
        if isinstance(value, InputLink):
            explicit = value.policy != "latest" or value.queue is not None
            return cls(value.sources, isinstance(value.from_, list), value.policy if explicit else "latest",
                       value.queue if explicit else None)
        if isinstance(value, list):
            return cls([str(v) for v in value], True)
        return cls([str(value)])

    def to_spec(self) -> Any:
        src: Any = list(self.sources) if self.many else self.sources[0]
        if self.policy == "queue":
            return {"from": src, "queue": self.queue or 4}
        return src


@dataclass
class EditorNode:
    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, InputRef] = field(default_factory=dict)
    description: str = ""
    pos: tuple[float, float] | None = None
    standby_for: str = ""  # starts only when that node does not (a stand-in)
    policy: dict[str, Any] = field(default_factory=dict)  # on_error / budget_ms / fallback as written (kept on save)


@dataclass(frozen=True)
class Link:
    src: str
    src_port: str
    dst: str
    dst_port: str

    def __str__(self) -> str:
        return f"{self.src}.{self.src_port} -> {self.dst}.{self.dst_port}"


@dataclass
class Check:
    """The validator's verdict on the current graph."""

    errors: list[GraphError]
    warnings: list[GraphError]
    graph: ValidatedGraph | None

    @property
    def ok(self) -> bool:
        return self.graph is not None

    def for_node(self, name: str) -> list[GraphError]:
        return [e for e in self.errors + self.warnings if e.node == name]

    def graph_level(self) -> list[GraphError]:
        return [e for e in self.errors + self.warnings if not e.node]


class EditorModel:
    """A graph being edited. Every edit goes through a method here, which checks
    it, records an undo step and tells listeners (the view) what changed."""

    def __init__(self, catalog: Catalog | None = None, registry: Any = None) -> None:
        if registry is None:
            from muse.graph.registry import load_registry

            registry = load_registry()
        self.registry = registry
        self.catalog = catalog or Catalog.from_registry(registry)
        self.listeners: list[Callable[[str], None]] = []
        self._reset_state()

    # -- state -----------------------------------------------------------
    def _reset_state(self) -> None:
        self.path: Path | None = None
        self.nodes: dict[str, EditorNode] = {}
        self.settings: dict[str, Any] = Settings().model_dump(mode="json")
        self.include: list[dict[str, Any]] = []
        self.included: dict[str, EditorNode] = {}  # drawn read-only: what the includes add (muse.editor.included)
        self.included_from: dict[str, str] = {}
        self.editor_extra: dict[str, Any] = {}
        self._undo: list[tuple[str, Any, Any]] = []  # (label, coalesce key, snapshot)
        self._redo: list[tuple[str, Any, Any]] = []
        self._last_edit_at = 0.0
        self._loaded_mtime: float | None = None
        self._original_text: str | None = None
        self.auto_placed: set[str] = set()  # nodes the file gave no position (the view re-lays them with real sizes)
        self.dirty = False
        self.revision = 0

    def _snapshot(self) -> Any:
        return copy.deepcopy((self.nodes, self.settings, self.include, self.editor_extra))

    def _restore(self, snap: Any) -> None:
        self.nodes, self.settings, self.include, self.editor_extra = copy.deepcopy(snap)

    def _record(self, label: str, coalesce: Any = None) -> None:
        """Push an undo step before an edit; repeated edits of one thing in a row (a slider drag) make one step."""
        now = time.monotonic()
        if coalesce is not None and self._undo and self._undo[-1][1] == coalesce and now - self._last_edit_at < 1.5:
            self._last_edit_at = now
            return
        self._undo.append((label, coalesce, self._snapshot()))
        del self._undo[:-200]  # bounded history
        self._redo.clear()
        self._last_edit_at = now

    def _changed(self, kind: str) -> None:
        """kind: structure | params | settings | positions | load."""
        if kind in ("structure", "load", "params"):
            self.refresh_included()
        self.dirty = True
        self.revision += 1
        for cb in list(self.listeners):
            cb(kind)

    def undo(self) -> str | None:
        """Undo the last edit; returns its label (None if there was nothing to undo)."""
        if not self._undo:
            return None
        label, key, snap = self._undo.pop()
        self._redo.append((label, key, self._snapshot()))
        self._restore(snap)
        self._last_edit_at = 0.0
        self._changed("load")
        return label

    def redo(self) -> str | None:
        if not self._redo:
            return None
        label, key, snap = self._redo.pop()
        self._undo.append((label, key, self._snapshot()))
        self._restore(snap)
        self._last_edit_at = 0.0
        self._changed("load")
        return label

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    # -- included sub-graphs (read-only) ---------------------------------
    def refresh_included(self) -> None:
        """Expand the includes again (after a load or an edit), keeping where their nodes were drawn."""
        specs, files = included_specs(self.to_yaml(), self.path) if self.include and self.nodes else ({}, {})
        nodes = {name: EditorNode(name, ns.type, dict(ns.params), {p: InputRef.from_spec(v) for p, v in ns.inputs.items()},
                                  ns.description, None, ns.standby_for) for name, ns in specs.items()}
        saved = self.editor_extra.get("included_positions") or {}
        for name, node in nodes.items():
            old = self.included.get(name)
            pos = old.pos if old is not None and old.pos else saved.get(name)
            node.pos = (float(pos[0]), float(pos[1])) if pos else None
        self.included, self.included_from = nodes, files

    def all_nodes(self) -> dict[str, EditorNode]:
        """The file's nodes and, read-only, those its includes add: everything the editor draws."""
        return {**self.nodes, **self.included}

    def _any_node(self, name: str) -> EditorNode:
        node = self.nodes.get(name) or self.included.get(name)
        if node is None:
            raise EditError(f"there is no node {name!r} in the graph")
        return node

    def all_links(self) -> list[Link]:
        """Every link to draw, included nodes' too (only `links()` can be edited)."""
        everything = self.all_nodes()
        return [Link(src[0], src[1], n.name, port) for n in everything.values() for port, ref in n.inputs.items()
                for s in ref.sources if (src := parse_ref(s)) and src[0] in everything]

    def branches(self, name: str) -> list[tuple[str, str]]:
        """A switch's branches in priority order: (label, where it comes from); empty for other nodes."""
        if not self.node_info(name).selects_inputs:
            return []
        node = self._any_node(name)
        labels = list(node.params.get("labels") or [])
        out = []
        for port, spec in self.node_info(name).inputs.items():
            if spec.multiple and port in node.inputs:
                for i, src in enumerate(node.inputs[port].sources):
                    out.append((labels[i] if i < len(labels) else f"branch {i}", src))
        return out

    # -- node types and port types ---------------------------------------
    def node_info(self, name: str) -> NodeTypeInfo:
        node = self._any_node(name)
        info = self.catalog.get(node.type)
        if info is not None:
            return info
        outs = sorted({ref[1] for n in self.all_nodes().values() for r in n.inputs.values() for s in r.sources
                       if (ref := parse_ref(s)) and ref[0] == name})
        return NodeTypeInfo.unknown(node.type, list(node.inputs), outs)

    def output_type(self, name: str, port: str, _seen: frozenset = frozenset()) -> str:
        """The payload type an output gives; generic outputs take the type bound at their `same_as` input."""
        info = self.node_info(name)
        p = info.outputs.get(port)
        if p is None:
            return UNKNOWN
        if p.same_as and (name, port) not in _seen:
            bound = self._bound_input_type(name, p.same_as, _seen | {(name, port)})
            if bound not in (GENERIC, UNKNOWN):
                return bound
        return p.type

    def _bound_input_type(self, name: str, port: str, _seen: frozenset = frozenset()) -> str:
        ref = self._any_node(name).inputs.get(port)
        everything = self.all_nodes()
        for s in ref.sources if ref else []:
            src = parse_ref(s)
            if src and src[0] in everything:
                t = self.output_type(src[0], src[1], _seen)
                if t not in (GENERIC, UNKNOWN):
                    return t
        return GENERIC

    def input_type(self, name: str, port: str) -> str:
        """The type an input takes: its declared type, or for a generic input the type it is bound to."""
        p = self.node_info(name).inputs.get(port)
        if p is None:
            return UNKNOWN
        if p.type == GENERIC:
            return self._bound_input_type(name, port)
        return p.type

    def links(self) -> list[Link]:
        out = []
        for n in self.nodes.values():
            for port, ref in n.inputs.items():
                for s in ref.sources:
                    src = parse_ref(s)
                    if src and src[0] in self.nodes:
                        out.append(Link(src[0], src[1], n.name, port))
        return out

    def external_inputs(self, name: str) -> dict[str, list[str]]:
        """Sources that name no node of this file or its includes (typos): kept as written."""
        everything = self.all_nodes()
        return {
            port: bad
            for port, ref in self._any_node(name).inputs.items()
            if (bad := [s for s in ref.sources if not ((r := parse_ref(s)) and r[0] in everything)])
        }

    def open_required_inputs(self, name: str) -> list[str]:
        info = self.node_info(name)
        node = self._any_node(name)
        return [p for p, spec in info.inputs.items() if not spec.optional and not (p in node.inputs and node.inputs[p].sources)]

    # -- links -----------------------------------------------------------
    def check_link(self, src: str, src_port: str, dst: str, dst_port: str) -> str | None:
        """None if the link is allowed, else a message naming both ends and both types."""
        for n in (src, dst):
            if n not in self.nodes:
                return f"there is no node {n!r} in the graph"
        if src_port not in self.node_info(src).outputs:
            return f"{src} has no output {src_port!r} (outputs: {', '.join(self.node_info(src).outputs) or 'none'})"
        dport = self.node_info(dst).inputs.get(dst_port)
        if dport is None:
            return f"{dst} has no input {dst_port!r} (inputs: {', '.join(self.node_info(dst).inputs) or 'none'})"
        if src == dst:
            return f"cannot connect {src} to itself: a frame cannot depend on itself"
        have = self.output_type(src, src_port)
        want = dport.type
        if want == GENERIC:
            others = [s for s in (self.nodes[dst].inputs.get(dst_port).sources if dst_port in self.nodes[dst].inputs else [])
                      if s != f"{src}.{src_port}"]
            if dport.multiple and others:
                want = self._bound_input_type(dst, dst_port)
        if UNKNOWN not in (have, want) and GENERIC not in (have, want) and have != want:
            return (f"cannot connect {src}.{src_port} to {dst}.{dst_port}: {src}.{src_port} gives {have}, "
                    f"but {dst}.{dst_port} takes {want}")
        g = self._digraph()
        if dst in g and src in g and nx.has_path(g, dst, src):
            return f"cannot connect {src}.{src_port} to {dst}.{dst_port}: {src} already depends on {dst}, so this would make a cycle"
        return None

    def link(self, src: str, src_port: str, dst: str, dst_port: str) -> Link:
        """Connect an output to an input. A single input that is already connected is re-wired."""
        msg = self.check_link(src, src_port, dst, dst_port)
        if msg:
            raise EditError(msg)
        ref_text = f"{src}.{src_port}"
        node = self.nodes[dst]
        multiple = self.node_info(dst).inputs[dst_port].multiple
        existing = node.inputs.get(dst_port)
        if existing and ref_text in existing.sources:
            return Link(src, src_port, dst, dst_port)
        self._record(f"connect {ref_text} to {dst}.{dst_port}")
        if existing and multiple:
            existing.sources.append(ref_text)
            existing.many = True
        elif existing:
            existing.sources = [ref_text]  # keep the input's policy: only the source changes
        else:
            node.inputs[dst_port] = InputRef([ref_text], many=multiple)
        self._changed("structure")
        return Link(src, src_port, dst, dst_port)

    def unlink(self, dst: str, dst_port: str, src: str | None = None, src_port: str | None = None) -> None:
        node = self._node(dst)
        ref = node.inputs.get(dst_port)
        if ref is None:
            raise EditError(f"{dst}.{dst_port} is not connected")
        self._record(f"disconnect {dst}.{dst_port}")
        if src is not None and ref.many:
            ref.sources = [s for s in ref.sources if s != f"{src}.{src_port}"]
            if not ref.sources:
                del node.inputs[dst_port]
        else:
            del node.inputs[dst_port]
        self._changed("structure")

    def set_input_policy(self, name: str, port: str, policy: str, queue: int | None = None) -> None:
        ref = self._node(name).inputs.get(port)
        if ref is None:
            raise EditError(f"{name}.{port} is not connected; connect it before choosing its policy")
        if policy not in ("latest", "queue"):
            raise EditError(f"policy must be 'latest' or 'queue', got {policy!r}")
        if policy == "queue" and not (queue is None or 1 <= int(queue) <= 1024):
            raise EditError(f"{name}.{port}: queue length must be between 1 and 1024, got {queue}")
        self._record(f"policy of {name}.{port}", coalesce=("policy", name, port))
        ref.policy = policy
        ref.queue = (int(queue) if queue else 4) if policy == "queue" else None
        self._changed("structure")

    # -- nodes -----------------------------------------------------------
    def _node(self, name: str) -> EditorNode:
        try:
            return self.nodes[name]
        except KeyError:
            raise EditError(f"there is no node {name!r} in the graph") from None

    def unique_name(self, base: str) -> str:
        base = re.sub(r"[^\w-]", "_", base) or "node"
        if not _NODE_NAME.match(base):
            base = "n_" + base
        if base.lower() in _YAML_WORDS:  # `null:` or `on:` as a key reads back as None / True
            base += "_node"
        if base not in self.nodes:
            return base
        i = 2
        while f"{base}_{i}" in self.nodes:
            i += 1
        return f"{base}_{i}"

    def add_node(self, type_id: str, name: str | None = None, pos: tuple[float, float] | None = None,
                 params: dict[str, Any] | None = None) -> str:
        """Add a node of a registered type; returns its (unique) name."""
        info = self.catalog.get(type_id)
        if info is None:
            close = [t for t in self.catalog.types if type_id.split(".")[-1] in t]
            raise EditError(f"unknown node type {type_id!r}" + (f"; did you mean {', '.join(close[:3])}?" if close else ""))
        if name is not None:
            if not _NODE_NAME.match(name):
                raise EditError(f"node name {name!r} must start with a letter and use letters, digits, _ or -")
            if name in self.nodes:
                raise EditError(f"a node named {name!r} already exists; pick another name")
        else:
            name = self.unique_name(type_id.split(".")[-1])
        clean = self._validated_params(type_id, name, dict(params or {}))
        self._record(f"add {name}")
        self.nodes[name] = EditorNode(name, type_id, clean, {}, "", tuple(pos) if pos else self._free_spot())
        self._changed("structure")
        return name

    def _free_spot(self) -> tuple[float, float]:
        """Right of the rightmost node on the top row, so a new node never lands on another."""
        placed = [n.pos for n in self.nodes.values() if n.pos]
        if not placed:
            return (40.0, 40.0)
        return (max(p[0] for p in placed) + NODE_WIDTH + 60, min(p[1] for p in placed))

    def remove_nodes(self, names: list[str]) -> None:
        names = [n for n in names if n in self.nodes]
        if not names:
            return
        self._record(f"delete {', '.join(names)}")
        for name in names:
            del self.nodes[name]
        for n in self.nodes.values():  # links into the removed nodes go with them
            for port in list(n.inputs):
                ref = n.inputs[port]
                ref.sources = [s for s in ref.sources if not ((r := parse_ref(s)) and r[0] in names)]
                if not ref.sources:
                    del n.inputs[port]
        self._changed("structure")

    def duplicate_nodes(self, names: list[str]) -> list[str]:
        """Copies with the same params, offset; links between the copied nodes are copied too."""
        names = [n for n in names if n in self.nodes]
        if not names:
            return []
        self._record(f"duplicate {', '.join(names)}")
        mapping: dict[str, str] = {}
        for name in names:
            src = self.nodes[name]
            new = self.unique_name(name.rstrip("0123456789").rstrip("_") or name)
            mapping[name] = new
            pos = (src.pos[0] + 40, src.pos[1] + 60) if src.pos else self._free_spot()
            self.nodes[new] = EditorNode(new, src.type, copy.deepcopy(src.params), {}, src.description, pos, copy.deepcopy(src.policy))
        for old, new in mapping.items():
            for port, ref in self.nodes[old].inputs.items():
                srcs = []
                for s in ref.sources:
                    r = parse_ref(s)
                    srcs.append(f"{mapping[r[0]]}.{r[1]}" if r and r[0] in mapping else None)
                srcs = [s for s in srcs if s]
                if srcs:
                    self.nodes[new].inputs[port] = InputRef(srcs, ref.many, ref.policy, ref.queue)
        self._changed("structure")
        return list(mapping.values())

    def rename_node(self, old: str, new: str) -> None:
        self._node(old)
        if new == old:
            return
        if not _NODE_NAME.match(new):
            raise EditError(f"node name {new!r} must start with a letter and use letters, digits, _ or -")
        if new in self.nodes:
            raise EditError(f"a node named {new!r} already exists")
        self._record(f"rename {old} to {new}")
        self.nodes = {(new if k == old else k): v for k, v in self.nodes.items()}
        self.nodes[new].name = new
        for n in self.nodes.values():
            for ref in n.inputs.values():
                ref.sources = [f"{new}.{r[1]}" if (r := parse_ref(s)) and r[0] == old else s for s in ref.sources]
            if n.standby_for == old:
                n.standby_for = new
        self._changed("structure")

    def set_description(self, name: str, text: str) -> None:
        self._record(f"describe {name}", coalesce=("description", name))
        self._node(name).description = text
        self._changed("params")

    # -- params ----------------------------------------------------------
    def _params_class(self, type_id: str) -> Any:
        try:
            return self.registry.get(type_id).Params if type_id in self.registry else None
        except Exception:  # a registry without the class: edit without checking
            return None

    def _validated_params(self, type_id: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
        """Check params against the node's pydantic model; returns them as plain YAML values."""
        cls = self._params_class(type_id)
        if cls is None:
            return params
        try:
            model = cls.model_validate(params)
        except ValidationError as exc:
            e = exc.errors()[0]
            fld = ".".join(str(x) for x in e["loc"]) or "params"
            msg = e.get("msg", "invalid value")
            if e["type"] == "extra_forbidden":
                msg = f"{type_id} has no parameter {fld!r} (it has: {', '.join(cls.model_fields) or 'none'})"
            raise EditError(f"node '{name}': field '{fld}': {msg}") from None
        dumped = model.model_dump(mode="json")
        return {k: dumped[k] for k in params}

    def set_param(self, name: str, key: str, value: Any) -> Any:
        """Set one parameter (checked against the node's schema); returns the stored value."""
        node = self._node(name)
        new = self._validated_params(node.type, name, {**node.params, key: value})
        if key in node.params and node.params[key] == new[key]:
            return new[key]
        self._record(f"{name}.{key} = {new[key]!r}", coalesce=("param", name, key))
        node.params = new
        self._changed("params")
        return new[key]

    def reset_param(self, name: str, key: str) -> None:
        """Back to the node's default (the key leaves the file)."""
        node = self._node(name)
        if key in node.params:
            self._record(f"reset {name}.{key}")
            del node.params[key]
            self._changed("params")

    def param_value(self, name: str, key: str) -> Any:
        """The value in effect: the file's, else the schema default."""
        node = self._node(name)
        if key in node.params:
            return node.params[key]
        return self.node_info(name).param_fields.get(key, {}).get("default")

    def full_params(self, name: str) -> dict[str, Any]:
        """Every parameter with defaults filled in (what a live update sends)."""
        node = self._node(name)
        cls = self._params_class(node.type)
        if cls is None:
            return dict(node.params)
        return cls.model_validate(node.params).model_dump(mode="json")

    def set_setting(self, key: str, value: Any) -> Any:
        trial = {**self.settings, key: value}
        try:
            checked = Settings.model_validate(trial).model_dump(mode="json")
        except ValidationError as exc:
            e = exc.errors()[0]
            raise EditError(f"graph setting '{key}': {e.get('msg', 'invalid value')}") from None
        self._record(f"settings.{key}", coalesce=("setting", key))
        self.settings = checked
        self._changed("settings")
        return checked[key]

    # -- positions and layout ----------------------------------------------
    def move_node(self, name: str, pos: tuple[float, float], record: bool = False) -> None:
        node = self._any_node(name)  # included nodes move too (their places are kept in the file's editor section)
        pos = (float(pos[0]), float(pos[1]))
        if node.pos is not None and abs(node.pos[0] - pos[0]) < 1 and abs(node.pos[1] - pos[1]) < 1:
            return  # the screen rounds to pixels: that is not an edit
        if record:
            self._record(f"move {name}", coalesce=("move", name))
        node.pos = pos
        self.dirty = True  # positions are part of the file, but moving needs no redraw

    def auto_layout(self, sizes: dict[str, tuple[float, float]] | None = None, only_missing: bool = False,
                    record: bool = True) -> None:
        """Place nodes in layered columns (all of them, or only those without a position)."""
        nodes = self.all_nodes()  # included nodes are drawn too, so they are laid out with the rest
        if only_missing and all(n.pos for n in nodes.values()):
            return
        if not only_missing and record:
            self._record("auto layout")
        sizes = {**{n: self.estimated_size(n) for n in nodes}, **(sizes or {})}
        edges = [(l.src, l.dst) for l in self.all_links()]
        pos = layered_positions(list(nodes), edges, sizes)
        if only_missing:
            have = [n.pos for n in nodes.values() if n.pos]
            dy = max((p[1] for p in have), default=0.0) + 200 if have else 0.0
            for n in nodes.values():
                if not n.pos:
                    n.pos = (pos[n.name][0], pos[n.name][1] + dy)
        else:
            for n in nodes.values():
                n.pos = pos[n.name]
        self._changed("load")

    def estimated_size(self, name: str) -> tuple[float, float]:
        """About what the view draws: one text row per port plus the type line, 7 px per character."""
        info = self.node_info(name)
        lines = [self._any_node(name).type, name] + [f"{p}: {t.type}  (required)" for p, t in info.inputs.items()]
        lines += [f"view {p}: {t.type}" for p, t in info.outputs.items()]
        width = min(NODE_WIDTH, 24.0 + 7.0 * max(len(line) for line in lines))
        rows = len(info.inputs) + len(info.outputs) + 3  # + type line + timings and mode while running
        return (width, 40.0 + 18.0 * rows)

    # -- files -----------------------------------------------------------
    def new(self) -> None:
        self._reset_state()
        self._changed("load")
        self.dirty = False

    def load(self, path: str | os.PathLike) -> None:
        path = Path(path)
        try:
            text = read_graph_file(path)  # regular files only, size-limited, UTF-8/16/32 (the validator's reader)
        except GraphFileError as exc:
            raise EditError(f"cannot open graph file {path}: {exc}" + (f"; {exc.hint}" if exc.hint else "")) from None
        self.load_text(text, str(path), path)
        self.path = path
        self._loaded_mtime = path.stat().st_mtime
        self._original_text = text

    def load_text(self, text: str, file: str = "<editor>", path: Path | None = None) -> None:
        """Read a graph; a file the validator rejects still opens when its structure parses (errors show on nodes)."""
        try:
            data, _ = load_yaml(text, file)
            spec = GraphSpec.model_validate(data)
        except (yaml.YAMLError, ValueError) as exc:
            try:
                validate_text(text, file, self.registry)
            except GraphValidationError as gve:
                raise EditError(f"{file} cannot be opened in the editor; fix these first:\n{gve}") from None
            raise EditError(f"{file} cannot be opened in the editor: {exc}") from None
        self._reset_state()
        self.path = path  # includes are relative to the file
        positions = spec.editor.positions if spec.editor else {}
        for name, ns in spec.nodes.items():
            pos = positions.get(name)
            self.nodes[name] = EditorNode(
                name, ns.type, dict(ns.params), {p: InputRef.from_spec(v) for p, v in ns.inputs.items()},
                ns.description, (float(pos[0]), float(pos[1])) if pos else None, ns.standby_for,
                {k: v for k, v in (("on_error", ns.on_error), ("budget_ms", ns.budget_ms), ("fallback", dict(ns.fallback))) if v},
            )
        self.settings = spec.settings.model_dump(mode="json")
        self.include = [inc.model_dump(mode="json") for inc in spec.include]
        if spec.editor:
            self.editor_extra = {k: v for k, v in spec.editor.model_dump(mode="json").items() if k != "positions"}
        self.refresh_included()
        self.auto_placed = {n.name for n in self.all_nodes().values() if n.pos is None}
        if self.auto_placed:
            self.auto_layout(only_missing=True)
            self._undo.clear()
        self._changed("load")
        self.dirty = False

    def to_spec(self) -> GraphSpec:
        nodes = {
            n.name: NodeSpec(type=n.type, params=dict(n.params), description=n.description,
                             inputs={p: r.to_spec() for p, r in n.inputs.items()}, standby_for=n.standby_for, **copy.deepcopy(n.policy))
            for n in self.nodes.values()
        }
        positions = {n.name: (round(n.pos[0]), round(n.pos[1])) for n in self.nodes.values() if n.pos}
        extra = dict(self.editor_extra)
        inc_pos = {n.name: [round(n.pos[0]), round(n.pos[1])] for n in self.included.values() if n.pos}
        if inc_pos:
            extra["included_positions"] = inc_pos  # where the included sub-graphs' nodes were drawn
        editor = EditorSection.model_validate({**extra, "positions": positions})
        return GraphSpec.model_validate({
            "version": 1, "settings": self.settings, "include": self.include, "nodes": nodes, "editor": editor,
        })

    def to_yaml(self) -> str:
        return dump_yaml(self.to_spec())

    def save(self, path: str | os.PathLike | None = None, *, overwrite: bool = False) -> Path:
        """Write the graph atomically. Refuses to replace another existing file, or this
        graph's file when it changed on disk since it was opened, unless `overwrite`."""
        target = Path(path) if path is not None else self.path
        if target is None:
            raise EditError("this graph has no file yet; use Save as and pick a path (e.g. graphs/my_graph.yaml)")
        if not self.nodes:
            raise EditError("the graph is empty; add a node before saving")
        same = self.path is not None and target.resolve() == self.path.resolve()
        if target.exists() and not overwrite:
            if not same:
                raise EditError(f"{target} already exists; refusing to overwrite it (choose another name, or confirm overwrite)")
            if self._loaded_mtime is not None and target.stat().st_mtime != self._loaded_mtime:
                raise EditError(f"{target} changed on disk since it was opened; refusing to overwrite those changes "
                                "(reload it, or save under another name)")
        text = self.to_yaml()
        if target.exists() and same and self._original_text and _has_comments(self._original_text):
            _backup(target)  # our YAML writer drops comments: keep the hand-written original once
            self._original_text = None
        write_text(target, text)
        self.path = target
        self._loaded_mtime = target.stat().st_mtime
        self.dirty = False
        return target

    # -- validation ------------------------------------------------------
    def validate(self) -> Check:
        file = str(self.path) if self.path else "<editor>"
        if not self.nodes:
            return Check([GraphError("schema", "the graph is empty: add nodes from the palette", file)], [], None)
        try:
            graph = validate_text(self.to_yaml(), file, self.registry, base_dir=self.path.parent if self.path else Path.cwd())
        except GraphValidationError as exc:
            return Check(list(exc.errors), [], None)
        except ValidationError as exc:  # the model itself cannot form a spec (should not happen through edits)
            return Check([GraphError("schema", str(exc), file)], [], None)
        return Check([], list(graph.warnings), graph)

    def _digraph(self) -> nx.DiGraph:
        g = nx.DiGraph()
        g.add_nodes_from(self.nodes)
        g.add_edges_from((l.src, l.dst) for l in self.links())
        return g


def _has_comments(text: str) -> bool:
    return any(line.lstrip().startswith("#") or " #" in line for line in text.splitlines())


def _backup(path: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.{stamp}.bak")
    if not backup.exists():
        write_bytes(backup, path.read_bytes())  # byte for byte: the original may be UTF-16 or hold odd bytes
    return backup
