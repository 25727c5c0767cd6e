"""What validation produces and the runtime runs: the resolved graph (nodes with their
classes, params and inputs, in topological order) and the errors found on the way."""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from muse.graph.messages import printable
from muse.graph.node import Node, NodeParams, PortSpec
from muse.graph.payloads import Payload
from muse.graph.policy import FaultPolicy
from muse.graph.spec import GraphSpec, Settings


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
        text = f"{self.where()}: [{self.code}] {printable(self.message)}"
        return printable(text) + (f"\n    hint: {printable(self.hint)}" if self.hint else "")

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
    cls: builtins.type[Node]  # `type` alone would name the field above
    params: NodeParams | None  # None: its params were invalid (reported; the graph does not run)
    inputs: dict[str, ResolvedInput] = field(default_factory=dict)
    standby_for: str = ""  # started only when that node is absent or failed to start
    policy: FaultPolicy = field(default_factory=FaultPolicy)  # on_error, budget, fallbacks (muse.graph.policy)


@dataclass
class ValidatedGraph:
    file: str
    spec: GraphSpec
    settings: Settings
    nodes: dict[str, ResolvedNode]
    order: list[str]  # topological
    out_types: dict[tuple[str, str], type[Payload]]
    warnings: list[GraphError] = field(default_factory=list)
    allow_network: bool = False  # network outputs may leave this machine (--allow-network; muse.graph.network)
    # Built on first use, one pass over every edge: asking each node for its consumers by scanning
    # the whole graph made the runtime's start-up quadratic in the graph's size. A validated graph
    # is not changed afterwards (live changes build a new one; `dataclasses.replace` starts empty).
    _consumers: dict[str, list[tuple[str, str]]] | None = field(default=None, init=False, repr=False, compare=False)
    _stand_ins: dict[str, tuple[str, ...]] | None = field(default=None, init=False, repr=False, compare=False)

    def consumer_index(self) -> dict[str, list[tuple[str, str]]]:
        """node -> [(consumer node, input port)] for every edge, in graph order; built once."""
        if self._consumers is None:
            index: dict[str, list[tuple[str, str]]] = {}
            for n in self.nodes.values():
                for port, ri in n.inputs.items():
                    for src in {s.node: None for s in ri.sources}:  # one entry per (consumer, port), as before
                        index.setdefault(src, []).append((n.name, port))
            self._consumers = index
        return self._consumers

    def stand_ins(self, name: str) -> tuple[str, ...]:
        """The nodes with `standby_for: name`; the index is built once (one pass over the nodes)."""
        if self._stand_ins is None:
            index: dict[str, tuple[str, ...]] = {}
            for n in self.nodes.values():
                if n.standby_for:
                    index[n.standby_for] = index.get(n.standby_for, ()) + (n.name,)
            self._stand_ins = index
        return self._stand_ins.get(name, ())

    def wired_outputs(self) -> dict[str, set[str]]:
        """node -> its output ports that feed at least one input (a stand-in's include those of the node
        it stands in for: it serves that node's consumers)."""
        wired: dict[str, set[str]] = {}
        for n in self.nodes.values():
            for ri in n.inputs.values():
                for src in ri.sources:
                    wired.setdefault(src.node, set()).add(src.port)
        for n in self.nodes.values():
            if n.standby_for and n.standby_for in wired:
                wired.setdefault(n.name, set()).update(wired[n.standby_for])
        return wired

    def consumers(self, name: str) -> list[tuple[str, str]]:
        """(consumer node, input port) for every edge leaving `name`."""
        return list(self.consumer_index().get(name, ()))

    def topology_key(self) -> tuple:
        """Equal for two graphs that differ only in params (a live update can apply)."""
        return tuple(
            (n.name, n.type, tuple((p, tuple(str(s) for s in ri.sources), ri.policy, ri.queue) for p, ri in sorted(n.inputs.items())))
            for n in sorted(self.nodes.values(), key=lambda n: n.name)
        ) + (self.settings.model_dump_json(),)
