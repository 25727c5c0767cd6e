"""The graph file format: a pydantic model of the YAML, and a loader that keeps
line numbers so every error can point at the line a streamer has to fix.

    version: 1
    settings: {device: auto, resolution: [1920, 1080], fps: 30, precision: auto}
    nodes:
      camera: {type: capture.camera, params: {fallback: demo}}
      seg:
        type: segment.selfie
        inputs: {frame: camera.frame}            # or {from: camera.frame, queue: 4}
    editor: {positions: {camera: [40, 80]}}
"""

from __future__ import annotations

import codecs
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from muse.graph.affinity import checked_cores

GRAPH_VERSION = 1
_REF = re.compile(r"^(?P<node>[A-Za-z_][\w-]*)\.(?P<port>[A-Za-z_]\w*)$")
_NODE_NAME = re.compile(r"^[A-Za-z_][\w-]*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputLink(_Strict):
    """One input connection: `from: node.port`, with the real-time policy."""

    from_: Union[str, list[str]] = Field(alias="from", description="Source 'node.port' (a list for multi-inputs)")
    policy: Literal["latest", "queue"] = Field(
        "latest", description="latest: drop stale items (live video); queue: keep every item in order"
    )
    queue: int | None = Field(None, ge=1, le=1024, description="Queue length; implies policy: queue")

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _queue_implies_policy(self) -> "InputLink":
        if self.queue is not None:
            self.policy = "queue"
        elif self.policy == "queue":
            self.queue = 4
        return self

    @property
    def sources(self) -> list[str]:
        return list(self.from_) if isinstance(self.from_, list) else [self.from_]


InputValue = Union[str, list[str], InputLink]

OnError = Literal["skip", "hold_last", "fallback", "stop"]


class NodeSpec(_Strict):
    type: str = Field(description="Node type id, e.g. segment.modnet (see `muse nodes`)")
    params: dict[str, Any] = Field(default_factory=dict, description="Node parameters (see the node's schema)")
    inputs: dict[str, InputValue] = Field(default_factory=dict, description="port: node.port, or {from: node.port, queue: N}")
    description: str = Field("", description="Free text shown in the editor")
    standby_for: str = Field(
        "", description="Start this node only if the named node is absent or fails to start (a fallback output or source)"
    )
    on_error: Optional[OnError] = Field(None, description="When it fails (raises, NaN/Inf output, out of memory): skip, hold_last, "
                                        "fallback or stop (see docs/graphs.md); default settings.on_error, skip for sources/outputs")
    budget_ms: Optional[float] = Field(None, gt=0, le=3_600_000, description="A call longer than this is a stall (default: settings.budget_ms)")
    fallback: dict[str, str] = Field(default_factory=dict, description="on_error: fallback: output port -> the input passed through in "
                                     "its place (same type); others: the node's own fallback, else an input of the same type")

    def links(self) -> dict[str, InputLink]:
        out: dict[str, InputLink] = {}
        for port, value in self.inputs.items():
            out[port] = value if isinstance(value, InputLink) else InputLink.model_validate({"from": value})
        return out


class Settings(_Strict):
    device: Literal["auto", "cuda", "cpu"] = Field("auto", description="auto: CUDA when present, else CPU")
    resolution: tuple[int, int] = Field((1920, 1080), description="Output width, height in pixels")
    fps: float = Field(30.0, gt=0, le=240, description="Target frames per second")
    precision: Literal["auto", "fp16", "fp32"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    capture: Literal["auto", "on", "off", "emulate", "per_node"] = Field(
        "auto",
        description="Record each frame's GPU work once and replay it with one launch (auto/on: on CUDA; off: eager; "
        "emulate: the CPU stand-in, for tests; per_node: each node recorded on its own, a diagnostic that times "
        "every node's replay and costs the overlap between branches)",
    )
    cuda_graphs: bool = Field(False, description="Old name of capture: on (kept for older graphs)")
    cpu_resolution: Optional[tuple[int, int]] = Field(
        (1280, 720),
        description="On the CPU path, sources larger than this capture at this size so the stream stays live; null = never",
    )
    max_frames_in_flight: int = Field(2, ge=1, le=8, description="CUDA: frames queued on the GPU before the executor waits (bounds latency)")
    max_consecutive_errors: int = Field(
        120, ge=1, description="Stop the graph after this many failed frames in a row (a frame that fails is skipped)"
    )
    on_error: Literal["skip", "hold_last", "stop"] = Field("hold_last", description="What a failing processing node does (its own `on_error` wins)")
    budget_ms: float = Field(1000.0, gt=0, le=3_600_000, description="A node call longer than this is a stall (a node's `budget_ms` wins)")
    hang_after_s: float = Field(10.0, ge=1, le=3600, description="A node call running this long (and 5 budgets) is left behind: the stream "
                                "goes on without it, as its on_error says, until it returns")
    check_finite: bool = Field(True, description="Catch NaN/Inf in every node's floating outputs on the device (a few small ops per node)")
    runtime_cores: Annotated[str, AfterValidator(checked_cores)] = Field("", description="CPU cores the executor, source and sink "
        "threads stay on ('2', '2-3', '0,2'; empty: where the OS puts them); see docs/graphs.md#runtime-cores")

    @field_validator("capture", mode="before")
    @classmethod
    def _yaml_switch(cls, v: object) -> object:
        # YAML reads a bare on/off as true/false.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("resolution")
    @classmethod
    def _positive(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 16 or v[1] < 16 or v[0] > 16384 or v[1] > 16384:
            raise ValueError("resolution must be two sizes between 16 and 16384, e.g. [3840, 2160]")
        return v


class Include(_Strict):
    """A sub-graph file whose nodes join this graph under `prefix/`."""

    file: str = Field(description="Path of the sub-graph YAML, relative to this file")
    prefix: str = Field(description="Names of the included nodes become prefix/name")
    inputs: dict[str, str] = Field(
        default_factory=dict, description="Wire the sub-graph's open inputs: 'subnode.port': 'node.port' of this graph"
    )
    params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Set params of included nodes: 'subnode': {param: value}, over the sub-graph's own"
    )


class EditorSection(BaseModel):
    """Kept for the node editor (positions); the runtime ignores it."""

    model_config = ConfigDict(extra="allow")
    positions: dict[str, tuple[float, float]] = Field(default_factory=dict)


class GraphSpec(_Strict):
    version: Literal[1] = Field(description="Graph file format version (1)")
    settings: Settings = Field(default_factory=Settings)
    include: list[Include] = Field(default_factory=list)
    nodes: dict[str, NodeSpec] = Field(description="Node name -> node")
    editor: EditorSection | None = None

    @field_validator("nodes")
    @classmethod
    def _names(cls, v: dict[str, NodeSpec]) -> dict[str, NodeSpec]:
        for name in v:
            if not _NODE_NAME.match(name) and "/" not in name:
                raise ValueError(f"node name {name!r} must start with a letter and use letters, digits, _ or -")
        return v


def parse_ref(ref: str) -> tuple[str, str] | None:
    """'seg.mask' -> ('seg', 'mask'); None if it is not of that form."""
    m = _REF.match(ref.strip()) if isinstance(ref, str) else None
    if m:
        return m["node"], m["port"]
    if isinstance(ref, str) and "/" in ref:  # included nodes: prefix/name.port
        node, _, port = ref.rpartition(".")
        if node and port.isidentifier():
            return node, port
    return None


def json_schema() -> dict[str, Any]:
    schema = GraphSpec.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "MUSE graph"
    return schema


def write_json_schema(path: str | Path) -> None:
    Path(path).write_text(json.dumps(json_schema(), indent=2) + "\n")


# -- YAML with line numbers -------------------------------------------------


@dataclass
class SourceMap:
    """Line numbers (1-based) of the places errors point at."""

    file: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, *path: Any) -> int | None:
        """The deepest known line along `path` (node -> 'params' -> field)."""
        for n in range(len(path), -1, -1):
            hit = self.lines.get(tuple(path[:n]))
            if hit is not None:
                return hit
        return None


class DuplicateKeyError(ValueError):
    def __init__(self, key: str, line: int, first: int) -> None:
        super().__init__(f"key {key!r} appears twice (lines {first} and {line}); the second would silently replace the first")
        self.key, self.line, self.first = key, line, first


# libyaml (C) parses about 10x faster than the pure-Python parser; both are safe loaders.
_SafeBase: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _LineLoader(_SafeBase):
    pass


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *base`: merged keys may be overridden, so they are no duplicates
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"a key must be a name or a number, not a {'mapping' if isinstance(key, dict) else 'list'}",
                key_node.start_mark) from None
        if key in seen:
            raise DuplicateKeyError(str(key), line, seen[key])
        seen[key] = line
    mapping = loader.construct_mapping(node, deep=True)  # also resolves merge keys
    out = _LinedDict(mapping)
    out.key_lines = {k: seen.get(k, node.start_mark.line + 1) for k in mapping}
    return out


class _LinedDict(dict):
    key_lines: dict[Any, int]


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _collect_lines(obj: Any, path: tuple, out: dict[tuple, int]) -> None:
    if isinstance(obj, _LinedDict):
        for k, v in obj.items():
            out[path + (k,)] = obj.key_lines.get(k, 0)
            _collect_lines(v, path + (k,), out)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    return obj


# -- limits: checked on the event stream before anything is built -----------------

MAX_GRAPH_BYTES = 2 * 1024 * 1024  # shipped graphs are a few KB; a 2 MB graph is a mistake or an attack
MAX_DEPTH = 64  # nesting of mappings and lists (graphs need about 6)
MAX_NODES_EXPANDED = 200_000  # YAML values after every alias is expanded ("billion laughs" stops here)


class GraphFileError(ValueError):
    """A graph file that cannot be read as text, or breaks a size/depth/alias limit; `line` where known."""

    def __init__(self, message: str, line: int | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.line, self.hint = line, hint


def decode_graph_bytes(raw: bytes) -> str:
    """Text of a graph file: UTF-8 (with or without BOM) or UTF-16/32 with a BOM, as editors on
    Windows save them; anything else is a GraphFileError naming the line of the first bad byte."""
    if len(raw) > MAX_GRAPH_BYTES:
        raise GraphFileError(f"the file is {len(raw) / 1e6:.1f} MB; a graph file may be at most {MAX_GRAPH_BYTES // (1024 * 1024)} MB",
                             hint="is this really a graph? graphs are small YAML files")
    for bom, codec in ((codecs.BOM_UTF32_LE, "utf-32-le"), (codecs.BOM_UTF32_BE, "utf-32-be"), (codecs.BOM_UTF8, "utf-8"),
                       (codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be")):
        if raw.startswith(bom):
            try:
                return raw[len(bom):].decode(codec)
            except UnicodeDecodeError as exc:
                raise _decode_error(raw, exc, codec) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _decode_error(raw, exc, "utf-8") from None


def _decode_error(raw: bytes, exc: UnicodeDecodeError, codec: str) -> GraphFileError:
    line = raw[: exc.start].count(b"\n") + 1 if codec == "utf-8" else None
    return GraphFileError(f"the file is not valid {codec.upper()} text (byte 0x{raw[exc.start]:02x} at offset {exc.start})", line,
                          hint="save the graph as UTF-8 (most editors: 'Save with encoding')")


def read_graph_file(path: str | Path) -> str:
    """A graph file's text. Only regular files (not a FIFO, device or folder: reading those could
    block forever), at most MAX_GRAPH_BYTES, decoded as decode_graph_bytes does. Raises GraphFileError."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GraphFileError(f"cannot read the file: {exc.strerror or exc}", hint="check the path (graphs live in graphs/)") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a pipe, socket or device)"
        raise GraphFileError(f"the path is {kind}", hint="name a .yaml graph file")
    if st.st_size > MAX_GRAPH_BYTES:
        raise GraphFileError(f"the file is {st.st_size / 1e6:.1f} MB; a graph file may be at most {MAX_GRAPH_BYTES // (1024 * 1024)} MB",
                             hint="is this really a graph? graphs are small YAML files")
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, opening still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                raise GraphFileError("the path is not a regular file (a pipe, socket or device)", hint="name a .yaml graph file")
            raw = fh.read(MAX_GRAPH_BYTES + 1)
    except OSError as exc:
        raise GraphFileError(f"cannot read the file: {exc.strerror or exc}", hint="check the path and its permissions") from None
    return decode_graph_bytes(raw)


def check_yaml_limits(text: str) -> None:
    """Walk the YAML event stream (no recursion, nothing built) and refuse text that nests deeper
    than MAX_DEPTH or expands, through aliases, to more than MAX_NODES_EXPANDED values."""
    if len(text) > MAX_GRAPH_BYTES:
        raise GraphFileError(f"the text is {len(text) / 1e6:.1f} MB; a graph may be at most {MAX_GRAPH_BYTES // (1024 * 1024)} MB")
    sizes: dict[str, int] = {}  # anchor -> expanded size of what it names
    stack: list[list[Any]] = [[0, None]]  # [expanded size so far, anchor] per open collection
    for event in yaml.parse(text, Loader=_SafeBase):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            stack.append([1, event.anchor])
            if len(stack) - 1 > MAX_DEPTH:
                raise GraphFileError(f"the YAML nests deeper than {MAX_DEPTH} levels", event.start_mark.line + 1,
                                     hint="a graph needs a handful of levels; this looks like a broken or hostile file")
            continue
        if isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor, 1), None
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        stack[-1][0] += size
        if stack[0][0] + sum(f[0] for f in stack[1:]) > MAX_NODES_EXPANDED:
            raise GraphFileError(f"the YAML expands to more than {MAX_NODES_EXPANDED} values (aliases of aliases)", event.start_mark.line + 1,
                                 hint="a graph is small; remove the nested '*alias' references")


def load_yaml(text: str, file: str = "<string>") -> tuple[Any, SourceMap]:
    """Parse YAML text within the limits above; returns plain data and the source map.
    Raises GraphFileError / yaml.YAMLError / DuplicateKeyError."""
    check_yaml_limits(text)
    data = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    smap = SourceMap(file)
    _collect_lines(data, (), smap.lines)
    return _plain(data), smap


def dump_yaml(spec: GraphSpec) -> str:
    """A graph as YAML text, in the order people write it (settings, nodes, editor)."""
    data = spec.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    out: dict[str, Any] = {"version": data["version"], "settings": data["settings"]}
    if spec.include:
        out["include"] = data["include"]
    nodes: dict[str, Any] = {}
    for name, node in spec.nodes.items():
        entry: dict[str, Any] = {"type": node.type}
        if node.description:
            entry["description"] = node.description
        if node.standby_for:
            entry["standby_for"] = node.standby_for
        if node.params:
            entry["params"] = dict(node.params)
        if node.inputs:
            entry["inputs"] = {
                port: (v.model_dump(by_alias=True, exclude_none=True, exclude_unset=True) | {"from": v.from_})
                if isinstance(v, InputLink) else v
                for port, v in node.inputs.items()
            }
        entry.update({k: v for k, v in (("on_error", node.on_error), ("budget_ms", node.budget_ms), ("fallback", dict(node.fallback))) if v})
        nodes[name] = entry
    out["nodes"] = nodes
    if spec.editor is not None:
        out["editor"] = spec.editor.model_dump(mode="json")
    return yaml.safe_dump(out, sort_keys=False, default_flow_style=None, width=100)
