"""The frame program: a graph's per-frame work recorded once per variant and replayed with one launch.

The runtime hands every frame to a `FrameProgram` when capture is on. The program
splits the nodes between the sources and the sinks into *segments*: runs of
capturable nodes, separated by the nodes that must run eagerly (each with the reason
`muse bench` prints). With every node capturable there is one segment, so one
launch a frame. A segment is run eagerly for a few warm-up frames of each new
*variant* (input shapes plus each node's `frame_variant()`, the host choices it
reads a frame late: detector or tracker, face found or lost), recorded once, then
replayed. Inputs from outside a segment are copied into static buffers first;
its outputs are static buffers the next replay overwrites, so sinks get copies.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace as dc_replace
from typing import TYPE_CHECKING, Any, Hashable

import torch

from muse.graph.capture import CudaFrameGraph, EmulatedFrameGraph, FrameGraph
from muse.graph.payloads import Payload

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.runtime import GraphRunner

log = logging.getLogger("muse.capture")

__all__ = ["FrameProgram", "capture_blocker"]

MAX_VARIANTS = 8  # per segment; each keeps its activations alive, so an unstable choice can't grow memory forever


def capture_blocker(runner: "GraphRunner", name: str) -> str | None:
    """Why this node runs eagerly, or None when it can be captured."""
    slot = runner.slots[name]
    cls = slot.rn.cls
    if not getattr(cls, "capturable", False):
        return f"{cls.node_type} does not declare itself capturable"
    if cls.lazy_inputs:
        return "pulls its inputs lazily (a host choice per frame)"
    why = slot.node.capture_blocker()
    return why


@dataclass
class _Variant:
    graph: FrameGraph
    static_in: dict[tuple[str, str], Any]
    static_out: dict[str, dict[str, Any]]
    replays: int = 0


@dataclass
class _Segment:
    nodes: list[str]
    captured: bool
    reason: str = ""  # eager segments: why
    warm: dict[Hashable, int] = field(default_factory=dict)
    variants: dict[Hashable, _Variant] = field(default_factory=dict)
    disabled: str = ""  # recordings failed again and again: the segment runs eagerly from then on
    failed: dict[Hashable, str] = field(default_factory=dict)  # variants whose recording failed: run eagerly
    externals: list[tuple[str, str]] = field(default_factory=list)


class FrameProgram:
    """Drives one graph's frames through recorded segments. Built by the runtime; rebuilt on topology changes."""

    def __init__(self, runner: "GraphRunner", *, emulate: bool = False, warmup: int = 3) -> None:
        self.runner = runner
        self.emulate = emulate
        self.warmup = warmup
        self.cuda = runner.device.type == "cuda" and not emulate
        self.stream = torch.cuda.Stream(runner.device) if self.cuda else None
        self.pool: Any = None
        self.blocked: dict[str, str] = {}  # eager node -> why (filled by _plan)
        self.segments = self._plan()
        self.captures = 0
        self.replays = 0
        self.eager_frames = 0
        for seg in self.segments:
            if not seg.captured:
                for n in seg.nodes:
                    log.info("node '%s' runs eagerly between captured segments: %s", n, self.blocked[n])

    # -- planning --------------------------------------------------------------------------------------
    def _plan(self) -> list[_Segment]:
        """Capturable nodes grouped by how many eager nodes lie upstream: the fewest segments that keep order."""
        r = self.runner
        g = r.graph
        needed: set[str] = set()
        stack = [n for n in g.order if r.slots[n].rn.cls.is_sink()]
        while stack:  # only what some sink consumes runs, as in eager pulling
            n = stack.pop()
            for ri in g.nodes[n].inputs.values():
                for s in ri.sources:
                    if s.node not in needed:
                        needed.add(s.node)
                        stack.append(s.node)
        work = [n for n in g.order if n in needed and not r.slots[n].rn.cls.is_source() and not r.slots[n].rn.cls.is_sink()]
        reasons = {n: capture_blocker(r, n) for n in work}
        depth: dict[str, int] = {}
        for n in work:  # graph.order is topological
            preds = [s.node for ri in g.nodes[n].inputs.values() for s in ri.sources if s.node in depth]
            base = max((depth[p] for p in preds), default=0)
            depth[n] = base + (1 if reasons[n] else 0)
        segments: list[_Segment] = []
        by_level: dict[int, list[str]] = {}
        for n in work:  # one pass (a scan of `work` per level was quadratic in a chain of eager nodes)
            by_level.setdefault(depth[n], []).append(n)
        for level in sorted(by_level):
            eager = [n for n in by_level[level] if reasons[n]]
            if eager:
                segments.append(_Segment(eager, captured=False, reason="; ".join(f"{n}: {reasons[n]}" for n in eager)))
                self.blocked.update({n: reasons[n] or "" for n in eager})
            captured = [n for n in by_level[level] if not reasons[n]]
            if captured:
                seg = _Segment(captured, captured=True)
                inside = set(captured)
                seg.externals = sorted(
                    {(s.node, s.port) for n in captured for ri in g.nodes[n].inputs.values() for s in ri.sources if s.node not in inside}
                )
                segments.append(seg)
        return segments

    def describe(self) -> dict[str, Any]:
        """What `muse bench` and `--stats` show: which nodes are captured, which are not and why."""
        return {
            "segments": [
                {"nodes": s.nodes, "captured": s.captured and not s.disabled, "why_not": s.disabled or (s.reason if not s.captured else ""),
                 "variants": len(s.variants), "failed_variants": list(s.failed.values())}
                for s in self.segments
            ],
            "captured_nodes": sorted(n for s in self.segments if s.captured and not s.disabled for n in s.nodes),
            "eager_nodes": {n: why for n, why in self.blocked.items()}
            | {n: s.disabled for s in self.segments if s.disabled for n in s.nodes},
            "captures": self.captures,
            "replays": self.replays,
            "eager_frames": self.eager_frames,
        }

    # -- per frame -------------------------------------------------------------------------------------
    def run(self, memo: dict) -> None:
        """Compute every segment of this frame into `memo` (name -> (outputs, events)), as eager evaluation would."""
        any_eager = False
        for seg in self.segments:
            if not seg.captured or seg.disabled:
                self._eager(seg, memo)
                any_eager = True
                continue
            any_eager |= not self._run_segment(seg, memo)
        if any_eager:
            self.eager_frames += 1

    def _run_segment(self, seg: _Segment, memo: dict) -> bool:
        """True when the segment was replayed (or recorded) this frame."""
        r = self.runner
        ext: dict[tuple[str, str], Any] = {}
        events: list[Any] = []
        for node, port in seg.externals:
            outs, evs = r._evaluate(node, memo)
            ext[(node, port)] = outs.get(port) if outs else None
            events.extend(evs)
        if any(v is None for v in ext.values()):
            # Something upstream had nothing this frame: the segment's nodes have nothing either.
            for n in seg.nodes:
                memo[n] = ({}, [])
            return False
        variants = []
        for n in seg.nodes:
            slot = r.slots[n]
            variants.append(slot.node.frame_variant())
            slot.variant_ready = True
        key = (_signature(ext), tuple(variants))
        var = seg.variants.get(key)
        if key in seg.failed:
            self._eager(seg, memo)
            return False
        if var is None:
            seg.warm[key] = seg.warm.get(key, 0) + 1
            if seg.warm[key] <= self.warmup:
                self._eager(seg, memo)
                return False
            if len(seg.variants) >= MAX_VARIANTS:
                seg.variants.pop(next(iter(seg.variants)))  # the oldest; a new one is recorded in its place
            try:
                var = self._record(seg, ext, events, memo, key)
            except Exception as exc:
                why = f"recording failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                seg.failed[key] = why
                if len(seg.failed) >= MAX_VARIANTS:
                    seg.disabled = why
                log.warning("segment %s: this variant cannot be captured (%s); it runs eagerly", "+".join(seg.nodes), why)
                self._reset_streams()
                self._eager(seg, memo)
                return False
            return True
        self._replay(seg, var, ext, events, memo)
        return True

    def _eager(self, seg: _Segment, memo: dict) -> None:
        for n in seg.nodes:
            self.runner._evaluate(n, memo)

    def _record(self, seg: _Segment, ext: dict, events: list[Any], memo: dict, key: Hashable) -> _Variant:
        r = self.runner
        stream = self.stream
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            if stream is not None:
                for ev in events:
                    stream.wait_event(ev)
            static_in = {k: _clone(v) for k, v in ext.items()}
        if stream is not None:
            stream.synchronize()  # once per variant: the recording must start from finished inputs
        streams = [r.slots[n].stream for n in seg.nodes if r.slots[n].stream is not None]
        graph: FrameGraph = EmulatedFrameGraph() if not self.cuda else CudaFrameGraph(stream, self.pool, join=streams)
        local: dict = {}

        def frame() -> dict[str, dict[str, Any]]:
            fork: list[Any] = []
            if stream is not None:
                ev = torch.cuda.Event(blocking=True)
                ev.record(stream)
                fork = [ev]
            for (node, _port), value in static_in.items():
                local.setdefault(node, ({}, fork))[0][_port] = value
            ends: list[Any] = []
            r._recording = True
            try:
                for n in seg.nodes:
                    outs, evs = r._evaluate(n, local)
                    ends.extend(evs)
            finally:
                r._recording = False
            if stream is not None:
                for ev in ends:
                    stream.wait_event(ev)  # every side stream joins back before the recording ends
            return {n: local[n][0] for n in seg.nodes}

        static_out = graph.record(frame)
        if self.cuda:
            self.pool = getattr(graph, "pool")  # CudaFrameGraph's memory pool, shared by the variants
        var = _Variant(graph, static_in, static_out)
        seg.variants[key] = var
        self.captures += 1
        log.info("captured %s (variant %d of the segment)", "+".join(seg.nodes), len(seg.variants))
        if graph.executes_while_recording:
            self._publish(seg, var, ext, memo)
        else:
            self._replay(seg, var, ext, events, memo, copy_inputs=False)
        return var

    def _replay(self, seg: _Segment, var: _Variant, ext: dict, events: list[Any], memo: dict, copy_inputs: bool = True) -> None:
        t0 = time.perf_counter()
        stream = self.stream
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            if stream is not None:
                for ev in events:
                    stream.wait_event(ev)
            for k, v in ext.items() if copy_inputs else ():  # just recorded: the static inputs are this frame's
                if isinstance(v, Payload):
                    for dst, src in zip(var.static_in[k].tensors(), v.tensors()):
                        if dst.data_ptr() != src.data_ptr():
                            dst.copy_(src, non_blocking=True)
                            if stream is not None and src.is_cuda:
                                src.record_stream(stream)  # its producer must not recycle it before this copy ran
            var.graph.replay()
        var.replays += 1
        self.replays += 1
        self._publish(seg, var, ext, memo, t0=t0)

    def _publish(self, seg: _Segment, var: _Variant, ext: dict, memo: dict, t0: float | None = None) -> None:
        r = self.runner
        stream = self.stream
        end: list[Any] = []
        ev = None
        if stream is not None:
            ev = torch.cuda.Event(blocking=True)
            ev.record(stream)
            end = [ev]
        for late in var.graph.late:
            late.stamp(ev)  # this frame's copies land when `ev` completes (at once on the CPU)
        like = _timing_source(ext)
        t1 = time.perf_counter()
        with torch.cuda.stream(stream) if stream is not None else nullcontext():
            for n in seg.nodes:
                outs = {p: _retime(v, like) for p, v in var.static_out.get(n, {}).items()}
                memo[n] = (outs, end)
                slot = r.slots[n]
                slot.variant_ready = False
                slot.stats.captured = True
                if t0 is not None:
                    r._note_time(slot, t0, t1)
                else:
                    slot.stats.frames += 1
                r._fire_taps(n, outs)

    def _reset_streams(self) -> None:
        if self.stream is not None:
            torch.cuda.synchronize(self.runner.device)


def _signature(ext: dict[tuple[str, str], Any]) -> tuple:
    sig = []
    for k in sorted(ext):
        v = ext[k]
        if isinstance(v, Payload):
            sig.append((k, type(v).__name__, tuple((tuple(t.shape), t.dtype, t.device) for t in v.tensors())))
        else:
            sig.append((k, repr(v)))
    return tuple(sig)


def _clone(p: Any) -> Any:
    return p.clone() if isinstance(p, Payload) else p


def _timing_source(ext: dict[tuple[str, str], Any]) -> Any:
    for v in ext.values():
        if isinstance(v, Payload) and hasattr(v, "timestamp"):
            return v
    return None


def _retime(p: Any, like: Any) -> Any:
    """A replayed output carries the current frame's timing, not the recorded one's."""
    if not isinstance(p, Payload) or like is None:
        return p
    changes = {k: getattr(like, k) for k in ("timestamp", "index") if hasattr(p, k) and hasattr(like, k)}
    return dc_replace(p, **changes) if changes else p
