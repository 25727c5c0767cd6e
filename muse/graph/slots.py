"""What the runtime keeps for each running node, and what travels between its threads.

Shared by the runner's parts (`muse.graph.runtime`, `.executor`, `.threads`, `.streams`, `.live`)
and the frame program (`muse.graph.program`) and the CPU pipeline (`muse.graph.cpu_pipeline`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from muse.graph.channels import Channel
from muse.graph.guard import NodeGuard
from muse.graph.node import Node, NodeContext
from muse.graph.stats import NodeStats
from muse.graph.validate import ResolvedNode, ValidatedGraph


class GraphRunError(RuntimeError):
    """The graph could not start or had to stop; the message names the node."""


class NodeStopped(BaseException):
    """A node whose `on_error` is `stop` failed: the graph stops, naming it. A BaseException so that no
    `except Exception` on the way (a switch trying its next branch, a recording that failed) swallows it;
    `GraphRunner.run` raises it as a GraphRunError."""


class LeftBehind(BaseException):
    """Raised in a thread the runtime replaced while a node call hung, once that call returns: the thread
    ends quietly (a BaseException, so no `except Exception` on the way counts it as a node failure)."""


class FrameFailed(Exception):
    """A node failed this frame; the executor counts it and drops the frame."""

    def __init__(self, node: str, exc: BaseException) -> None:
        super().__init__(f"node {node!r} failed: {exc}")
        self.node, self.exc = node, exc


FAULTS = "\x00faults"  # memo key: (node, exception) for every node that failed this frame (never a node name)

@dataclass
class Item:
    """What travels from a source to the executor, or from the executor to a sink."""

    values: dict[str, Any]
    events: list[Any] = field(default_factory=list)  # CUDA events to wait on
    t_capture: float = 0.0


@dataclass
class Slot:
    """One running node and what the runtime keeps for it."""

    rn: ResolvedNode
    node: Node
    ctx: NodeContext
    stats: NodeStats
    stream: Any = None
    channel: Channel | None = None  # sources: out of the node; sinks: into the node
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    last: Item | None = None  # a secondary source's newest item
    pending_gpu: list = field(default_factory=list)
    consecutive_errors: int = 0
    variant_ready: bool = False  # frame_variant() already asked this frame (`variant` holds its answer)
    variant: Any = None
    absent: str = ""  # never opened and never run: "absent: why", "failed: why" or "standby: for X" (liveness)
    guard: NodeGuard | None = None  # its NaN check, last good outputs and quarantine (muse.graph.guard)
    call_started: float | None = None  # perf_counter() when its current call began (the stall watchdog reads it)
    stall_warned: bool = False  # the watchdog already warned about the current call
    call_thread: threading.Thread | None = None  # the thread making the current call
    hung: bool = False  # a call never returned: the stream goes on without the node until it does (muse.graph.watchdog)

    def __post_init__(self) -> None:
        if self.guard is None:
            self.guard = NodeGuard(self.rn.name)
        self.stats.on_error = self.rn.policy.on_error

    @property
    def name(self) -> str:
        return self.rn.name


def channel_wiring(graph: ValidatedGraph, name: str) -> tuple[str, int]:
    """The channel policy of a source (set by its consumers) or a sink (set by its inputs)."""
    rn = graph.nodes[name]
    links = [graph.nodes[c].inputs[p] for c, p in graph.consumers(name)] if rn.cls.is_source() else list(rn.inputs.values())
    queued = [ri.queue for ri in links if ri.policy == "queue"]
    return ("queue", max(queued)) if queued else ("latest", 1)
