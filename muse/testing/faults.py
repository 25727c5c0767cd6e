"""Make any node of a running graph fail on purpose: raise, return NaN, stall past its budget,
run out of GPU memory, or die on frame N; to test a graph's `on_error` policies (and a plugin's).

    from muse.testing.faults import Fault
    runner = GraphRunner(graph, faults=[Fault("segment", "nan", at=30, every=10)])

or from the command line: `muse run graph.yaml --fault segment:nan@30/10 --stats s.json`.

Frames are counted per node from 0 (a processing node counts the frames it was asked to
run, replayed ones included), across the node's reopenings; use a fresh Fault per run.
`fault.counter["hits"]` says how often it struck. A fault hits frame `at`, then every `every` frames after it
when given; `die` hits every frame from `at` on. Kinds:

- `raise`: `process` raises a NodeError; `oom`: it raises torch.OutOfMemoryError (the graph
  asks the node to step down, as a real one would);
- `nan`: the node runs, then every floating tensor of its outputs is NaN (uint8 frames cannot
  hold NaN: a node with none has nothing to poison);
- `stall`: the node sleeps `ms` (default 1.5x its budget) before it runs;
- `die`: `raise` on every frame from `at` on.

Captured frames (`settings.capture`): a frame a fault hits runs eagerly (its `frame_variant()`
asks for it, `muse.graph.capture.EagerFrame`), so the fault happens on the host where the
runtime can see it, while the other frames keep replaying.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Literal

import torch

from muse.graph.capture import EagerFrame
from muse.graph.node import Node, NodeError
from muse.graph.payloads import Payload

Kind = Literal["raise", "nan", "stall", "die", "oom"]
KINDS = ("raise", "nan", "stall", "die", "oom")

_SPEC = re.compile(r"^(?P<node>[^:]+):(?P<kind>[a-z]+)(?:=(?P<ms>\d+(?:\.\d+)?))?(?:@(?P<at>\d+))?(?:/(?P<every>\d+))?$")


@dataclass(frozen=True)
class Fault:
    node: str
    kind: Kind
    at: int = 0
    every: int | None = None
    ms: float | None = None  # stall: how long (default 1.5x the node's budget)
    # The node's frame count, kept here so it goes on across the node's reopenings (a live edit, a step down).
    counter: dict = field(default_factory=lambda: {"frame": -1, "hits": 0}, compare=False, hash=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fault kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.at < 0 or (self.every is not None and self.every < 1):
            raise ValueError("a fault's frame must be >= 0 and its period >= 1")

    def hits(self, frame: int) -> bool:
        if frame < self.at:
            return False
        if self.kind == "die":
            return True
        if self.every is None:
            return frame == self.at
        return (frame - self.at) % self.every == 0

    def inject(self, node: Node, budget_ms: float = 1000.0) -> Node:
        """`node` with its `process` (and `frame_variant`) wrapped to fail as this fault says
        (`budget_ms`: the node's stall budget, which a `stall` without `ms` overruns by half)."""
        return _Injected(self, node, budget_ms).node

    @classmethod
    def parse(cls, text: str) -> "Fault":
        """`NODE:KIND[=MS][@FRAME][/EVERY]`, e.g. `segment:die@30`, `pose:nan@10/5`, `matte:stall=3000@20`."""
        m = _SPEC.match(text.strip())
        if m is None or m["kind"] not in KINDS:
            raise ValueError(f"--fault {text!r}: write NODE:KIND[=MS][@FRAME][/EVERY] with KIND one of {', '.join(KINDS)} "
                             "(e.g. segment:die@30, pose:nan@10/5, matte:stall=3000@20)")
        kind: Any = m["kind"]  # checked against KINDS above
        return cls(m["node"], kind, int(m["at"] or 0), int(m["every"]) if m["every"] else None, float(m["ms"]) if m["ms"] else None)


class _Injected:
    """Holds the per-node frame count; replaces the node's bound methods on the instance."""

    def __init__(self, fault: Fault, node: Node, budget_ms: float) -> None:
        self.fault = fault
        self.budget_ms = budget_ms
        self.node = node
        self._process = node.process
        self._variant = node.frame_variant
        edge = node.is_source() or node.is_sink()
        self.edge = edge
        # hits announced by `frame_variant` whose `process` has not run yet: with two frames in flight on the
        # CPU a switch's variant for the next frame is asked (when the frame starts) before its call for this
        # one, so the call a hit belongs to is the next one, in order, not the one the counter is at then
        self._due = 0
        self._announced = False
        # On the instance: the runtime calls `slot.node.process(...)`, so the class stays untouched.
        setattr(node, "process", self.process)
        if not edge:
            setattr(node, "frame_variant", self.frame_variant)

    @property
    def frame(self) -> int:
        return int(self.fault.counter["frame"])

    def frame_variant(self) -> Any:
        self.fault.counter["frame"] += 1
        self._announced = True
        inner = self._variant()
        if not self.fault.hits(self.frame):
            return inner
        self._due += 1
        return EagerFrame(f"fault {self.fault.kind}")

    def _hit(self) -> bool:
        if self.edge:
            self.fault.counter["frame"] += 1
        if self.edge or not self._announced:  # (a node called without frame_variant: by the counter)
            return self.fault.hits(self.frame)
        if self._due > 0:
            self._due -= 1
            return True
        return False

    def process(self, *args: Any, **inputs: Any) -> Any:
        if not self._hit():
            return self._process(*args, **inputs)
        self.fault.counter["hits"] += 1
        kind, name = self.fault.kind, self.node.name
        if kind in ("raise", "die"):
            raise NodeError(f"node {name!r}: injected fault ({kind}) on frame {self.frame}")
        if kind == "oom":
            raise torch.OutOfMemoryError(f"CUDA out of memory (injected fault on frame {self.frame} of node {name!r})")
        if kind == "stall":
            time.sleep((self.fault.ms if self.fault.ms is not None else 1.5 * self.budget_ms) / 1000.0)
            return self._process(*args, **inputs)
        outs = self._process(*args, **inputs)
        return _poisoned(outs) if isinstance(outs, dict) else outs


def _poisoned(outs: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for port, v in outs.items():
        if isinstance(v, Payload):
            bad = {k: torch.full_like(t, float("nan")) for k, t in vars(v).items() if isinstance(t, torch.Tensor) and t.is_floating_point()}
            v = dc_replace(v, **bad) if bad else v
        out[port] = v
    return out
