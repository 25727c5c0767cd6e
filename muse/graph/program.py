"""The frame program: a graph's per-frame work recorded once per variant and replayed with one launch.

The runtime hands every frame to a `FrameProgram` when capture is on. The program splits the nodes between the
sources and the sinks into *segments*: runs of capturable nodes, separated by the nodes that must run eagerly (each
with the reason `muse bench` prints). With every node capturable there is one segment, so one launch a frame (which
also writes the frame clock: muse.graph.frame_clock). A segment is run eagerly for a few warm-up frames of each new
*variant* (input shapes plus each node's `frame_variant()`, the host choices it reads a frame late: detector or
tracker, face found or lost), recorded once, then replayed. Inputs from outside a segment are copied into static
buffers at each launch; its outputs are static buffers the next replay overwrites, so sinks get copies. On a GPU the
recording makes both itself (muse.graph.frame_copies; MUSE_INPUT_COPIES / MUSE_OUTPUT_COPIES=eager: the runtime does).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Hashable

import torch

from muse.graph.capture import CudaFrameGraph, EagerFrame, EmulatedFrameGraph, FrameGraph
from muse.graph.compiled import GPU_CODE, code_generation
from muse.graph.driver import GraphEditError
from muse.graph.frame_clock import ClockNodes
from muse.graph.frame_copies import InputCopies, OutputCopies, copy_eagerly, wanted as copies_wanted
from muse.graph.linear import frame_order
from muse.graph.node import NodeError
from muse.graph.payloads import Payload
from muse.graph.replayed import clone_payload, input_signature, read_by_sinks, retime, seen_outside, timing_of, timing_source
from muse.graph.segments import (COMPILE_UNDER_WAY, EAGER_STEP, MAX_VARIANTS, RECORD_TRIES, RECORDING_STEP, TRANSITIONAL,
                                 WARM_UP_NEW_CODE, WARM_UP_NEW_VARIANT, Segment, Variant, capture_blocker, ends, generation,
                                 live_inputs, plan_segments)
from muse.graph.slots import FrameFailed
from muse.graph.streams import new_stream, on_stream, record_event

if TYPE_CHECKING:  # pragma: no cover
    from muse.graph.runtime import GraphRunner

log = logging.getLogger("muse.capture")

__all__ = ["FrameProgram", "TRANSITIONAL", "capture_blocker", "frame_order"]


class FrameProgram:
    """Drives one graph's frames through recorded segments. Built by the runtime; rebuilt on topology changes."""

    def __init__(self, runner: "GraphRunner", *, emulate: bool = False, warmup: int = 3, per_node: bool = False) -> None:
        self.runner = runner
        self.per_node = per_node
        self.emulate = emulate
        self.warmup = warmup
        self.cuda = runner.device.type == "cuda" and not emulate
        self.stream = new_stream(runner.device) if self.cuda else None
        self.order = frame_order()
        self.pool: Any = None
        self.blocked: dict[str, str] = {}  # eager node -> why (filled by plan_segments)
        self.segments = plan_segments(runner, self.blocked, per_node)
        one = len(self.segments) == 1 and self.segments[0].captured and not per_node and self.cuda  # writes the clock
        self.clock_nodes = ClockNodes(runner.clock) if one and ClockNodes.available(runner.clock) else None
        self.input_copies = self.cuda and not per_node and copies_wanted("input")  # (frame_copies says why)
        self.output_copies = self.cuda and not per_node and copies_wanted("output")
        self.frame_outputs: list[Any] = []  # this frame's BoundOutputs (take_sink_copy)
        self.captures = 0
        self.replays = 0
        self.eager_frames = 0
        # Why frames ran eagerly (a frame counts once per segment that did; `muse bench` prints these)
        self.eager_reasons: Counter[str] = Counter()
        self._final: dict[str, Any] | None = None  # set once released
        for seg in self.segments:
            if not seg.captured:
                for n in seg.nodes:
                    log.info("node '%s' runs eagerly between captured segments: %s", n, self.blocked[n])

    # -- what it did ----------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """What `muse bench` and `--stats` show: which nodes are captured, which are not and why."""
        if self._final is not None:
            return self._final
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
            "eager_reasons": dict(self.eager_reasons.most_common()),
            "order": self.order,
            "graph_shapes": [shape for s in self.segments for v in s.variants.values()
                             if (shape := getattr(v.graph, "shape", None))],
            "launches": sorted({v.graph.launched_by for s in self.segments for v in s.variants.values()}),
            # inputs the recordings copy in themselves, per variant (the rest are copied by a launch before them)
            "inputs_copied_inside": sorted({v.copies.count for s in self.segments for v in s.variants.values() if v.copies is not None}),
            "outputs_copied_inside": sorted({v.outputs.count for s in self.segments for v in s.variants.values() if v.outputs is not None}),
        }

    def take_sink_copy(self, value: Any) -> Any:
        """A sink's own copy of `value` made by this frame's replay (muse.graph.frame_copies), or None."""
        for outs in self.frame_outputs:
            got = outs.take(value)
            if got is not None:
                return got
        return None

    def release(self) -> None:
        """Let go of every recording (the runner stopped: nothing replays again); `describe` keeps its last word."""
        self._final = self.describe()
        for seg in self.segments:
            for var in seg.variants.values():
                var.graph.release()
            seg.variants.clear()
        self.pool = None

    # -- per frame -------------------------------------------------------------------------------------
    def run(self, memo: dict) -> None:
        """Compute every segment of this frame into `memo` (name -> (outputs, events)), as eager evaluation would."""
        any_eager = False
        self.frame_outputs = []
        for seg in self.segments:
            if not seg.captured or seg.disabled:
                self._eager(seg, memo)
                why = "segment not capturable" if not seg.captured else "segment disabled"
            else:
                why = self._run_segment(seg, memo)
            if why:
                self.eager_reasons[why] += 1
                any_eager = True
        if any_eager:
            self.eager_frames += 1

    def _run_segment(self, seg: Segment, memo: dict) -> str:
        """Why the segment did not replay (or record) this frame; "" when it did."""
        r = self.runner
        c_in = time.thread_time_ns()
        nodes, edges = live_inputs(r, seg)  # this frame's: a switch's idle branches sit out
        if not nodes:
            return ""
        ext: dict[tuple[str, str], Any] = {}
        events: list[Any] = []
        for node, port in edges:
            outs, evs = r._evaluate(node, memo)
            ext[(node, port)] = outs.get(port) if outs else None
            events.extend(evs)
        split = r.stats.executor_ns
        c0 = time.thread_time_ns()
        split["frame program: segment inputs"] += c0 - c_in
        if any(v is None for v in ext.values()):
            # Something upstream had nothing this frame: the segment's nodes have nothing either.
            for n in nodes:
                memo[n] = ({}, [])
            return "an input was missing"
        variants = []
        eager_now = ""
        for n in nodes:
            slot = r.slots[n]
            r._judge(slot)  # last frame's NaN/Inf check (a replayed node runs no host code of its own)
            if slot.hung:  # a call of it never returned: no host code of it now, and no replay of its kernels
                eager_now = f"{n}: a call never returned"
                continue
            variant = r._variant(slot)
            # A node that asks for an eager frame, or whose outputs the host replaces (a quarantined node
            # under skip/fallback: muse.graph.guard), runs its segment eagerly; the recordings stay for later.
            if isinstance(variant, EagerFrame):
                eager_now = f"{n}: asked for an eager frame"
            elif slot.guard is not None and slot.guard.quarantined and slot.rn.policy.on_error in ("skip", "fallback"):
                eager_now = f"{n}: quarantined"
            variants.append((n, variant))
        if eager_now:
            self._eager(seg, memo)
            return eager_now
        key = (input_signature(ext), tuple(variants), code_generation())  # new code (a compile done): record again
        var = seg.variants.get(key)
        split["frame program: variant choice"] += time.thread_time_ns() - c0
        if key in seg.failed:
            self._eager(seg, memo)
            return "variant could not be recorded"
        if var is None:
            seg.warm[key] = seg.warm.get(key, 0) + 1
            new_code = bool(seg.variants) and key[2] != generation(seg)
            if seg.warm[key] <= self._warmup_for(seg, new_code):
                self._eager(seg, memo)
                return WARM_UP_NEW_CODE if new_code else WARM_UP_NEW_VARIANT
            if not GPU_CODE.acquire(blocking=False):
                self._eager(seg, memo)  # a compile runs in the background: record once it is done
                return COMPILE_UNDER_WAY
            if len(seg.variants) >= MAX_VARIANTS:
                seg.variants.pop(next(iter(seg.variants)))  # the oldest; a new one is recorded in its place
            try:
                var = self._record(seg, nodes, ext, events, memo, key)
            except Exception as exc:
                inner = exc.exc if isinstance(exc, FrameFailed) else exc
                self._reset_streams()
                if isinstance(inner, (NodeError, torch.OutOfMemoryError)):
                    tries = seg.record_failures[key] = seg.record_failures.get(key, 0) + 1
                    slot = self.runner.slots.get(getattr(exc, "node", ""))
                    if slot is not None:
                        self.runner._node_failed(slot, inner, expected=True)  # counted like any failure (the stats show it)
                    if tries < RECORD_TRIES:
                        # A node failed while the frame was recorded: a fault, not the capture contract. This
                        # frame runs eagerly (its on_error covers the node there); the variant warms up and records again.
                        seg.warm[key] = 0
                        log.warning("segment %s: node %s failed while its frame was recorded (%s); recorded again later",
                                    "+".join(seg.nodes), getattr(exc, "node", "?"), inner)
                        self._eager(seg, memo)
                        return "a node failed while recording"
                why = f"recording failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                seg.failed[key] = why
                if len(seg.failed) >= MAX_VARIANTS:
                    seg.disabled = why
                log.warning("segment %s: this variant cannot be captured (%s); it runs eagerly", "+".join(seg.nodes), why)
                self._reset_streams()
                self._eager(seg, memo)
                return "variant could not be recorded"
            finally:
                GPU_CODE.release()
            return ""
        self._replay(seg, var, ext, events, memo)
        return ""

    def _warmup_for(self, seg: Segment, new_code: bool) -> int:
        """Eager frames before a recording: `warmup` for a segment's first and for new compiled code (first calls
        allocate, autotune, load), one for a further variant of warm code (three held one 2 s into a stream, H200)."""
        if not seg.variants or new_code:
            return self.warmup
        return min(self.warmup, 1)

    def _eager(self, seg: Segment, memo: dict) -> None:
        c0 = time.thread_time_ns()
        self.runner._clock_for_eager(memo)  # written by no recording this frame
        try:
            for n in ends(self.runner, [n for n in seg.nodes if n in self.runner.live]):
                self.runner._evaluate(n, memo)  # pulls the rest, so a switch sees its branch fail (and falls back)
        finally:
            self.runner.stats.executor_ns[EAGER_STEP] += time.thread_time_ns() - c0

    def _record(self, seg: Segment, nodes: list[str], ext: dict, events: list[Any], memo: dict, key: Hashable) -> Variant:
        c0 = time.thread_time_ns()
        try:
            return self._record_variant(seg, nodes, ext, events, memo, key)
        finally:
            self.runner.stats.executor_ns[RECORDING_STEP] += time.thread_time_ns() - c0

    def _record_variant(self, seg: Segment, nodes: list[str], ext: dict, events: list[Any], memo: dict, key: Hashable) -> Variant:
        r = self.runner
        stream = self.stream
        with on_stream(stream):
            if stream is not None:
                for ev in events:
                    stream.wait_event(ev)
            static_in = {k: clone_payload(v) for k, v in ext.items()}
        if stream is not None:
            stream.synchronize()  # once per variant: the recording must start from finished inputs
        streams = [r.slots[n].stream for n in nodes if r.slots[n].stream is not None]
        graph: FrameGraph = EmulatedFrameGraph() if not self.cuda else CudaFrameGraph(stream, self.pool, join=streams, order=self.order)
        local: dict = {}
        copies = InputCopies() if self.input_copies and isinstance(graph, CudaFrameGraph) else None
        outputs = OutputCopies() if self.output_copies and isinstance(graph, CudaFrameGraph) else None
        to_sinks = read_by_sinks(r, nodes) if outputs is not None else []

        def frame() -> dict[str, dict[str, Any]]:
            fork: list[Any] = []
            if self.clock_nodes is not None:  # its first nodes, before the frame forks: every node reads after them
                self.clock_nodes.record(stream)
            if copies is not None:  # then the inputs' copies (muse.graph.frame_copies)
                copies.record(stream, static_in, ext)
            if stream is not None:
                ev = torch.cuda.Event(blocking=True)
                ev.record(stream)
                fork = [ev]
            for (node, _port), value in static_in.items():
                local.setdefault(node, ({}, fork))[0][_port] = value
            ends: list[Any] = []
            r._recording = True
            try:
                for n in nodes:
                    outs, evs = r._evaluate(n, local)
                    ends.extend(evs)
            finally:
                r._recording = False
            if stream is not None:
                for ev in ends:
                    stream.wait_event(ev)  # every side stream joins back before the recording ends
            if outputs is not None:  # then the sinks' copies (muse.graph.frame_copies)
                outputs.record(stream, [local[n][0].get(port) for n, port in to_sinks if n in local])
            return {n: local[n][0] for n in nodes}

        static_out = graph.record(frame)
        if self.cuda:
            self.pool = getattr(graph, "pool")  # CudaFrameGraph's memory pool, shared by the variants
        var = Variant(nodes, graph, static_in, static_out)
        if isinstance(graph, CudaFrameGraph):
            raw = (graph.graph.raw_cuda_graph(), graph.graph.raw_cuda_graph_exec())
            var.clock = self.clock_nodes.bind(*raw) if self.clock_nodes is not None else None
            try:
                var.copies = copies.bind(*raw, static_in) if copies is not None else None
                var.outputs = outputs.bind(*raw) if outputs is not None else None
            except GraphEditError as exc:  # recorded again without them: its memcpy nodes would use stale buffers
                log.warning("copies cannot be made inside the recording (%s); the runtime makes them", exc)
                self.input_copies = self.output_copies = False
                graph.release()
                return self._record_variant(seg, nodes, ext, events, memo, key)
        seg.variants[key] = var
        self.captures += 1
        log.info("captured %s (variant %d of the segment)", "+".join(nodes), len(seg.variants))
        if graph.executes_while_recording:
            self._publish(seg, var, ext, memo)
        else:
            self._replay(seg, var, ext, events, memo, copy_inputs=False)
        return var

    def _replay(self, seg: Segment, var: Variant, ext: dict, events: list[Any], memo: dict, copy_inputs: bool = True) -> None:
        t0 = time.perf_counter()
        split = self.runner.stats.executor_ns
        c0 = time.thread_time_ns()
        stream = self.stream
        with on_stream(stream):
            if stream is not None:
                for ev in events:
                    stream.wait_event(ev)
            if var.clock is not None:
                self.runner._clock_in_replay(stream, var.clock)
            ca = time.thread_time_ns()  # the steps below split where the frame's first CUDA calls cost the host
            if var.copies is not None:  # the launch copies them in (so does the first, just recorded)
                var.copies.before_launch(ext, stream)
            elif copy_inputs:  # just recorded: the static inputs are this frame's
                for k, v in ext.items():
                    if isinstance(v, Payload):
                        for dst, src in zip(var.static_in[k].tensors(), v.tensors()):
                            copy_eagerly(dst, src, stream)
            cb = time.thread_time_ns()
            timed = self.per_node and stream is not None and len(seg.nodes) == 1
            if timed:
                start = torch.cuda.Event(enable_timing=True, blocking=True)
                start.record(stream)
            if var.outputs is not None:  # the sinks' copies: into new buffers (take_sink_copy hands them out)
                var.outputs.before_launch()
                self.frame_outputs.append(var.outputs)
            c1 = time.thread_time_ns()
            var.graph.replay()
            c2 = time.thread_time_ns()
            split["frame program: inputs into the recording"] += c1 - c0
            split["  of which source waits and the clock"] += ca - c0
            split["  of which the inputs' copies"] += cb - ca
            split["frame program: graph launch"] += c2 - c1
            if timed:
                end = torch.cuda.Event(enable_timing=True, blocking=True)
                end.record(stream)
                self.runner.slots[seg.nodes[0]].pending_gpu.append((start, end))
        var.replays += 1
        self.replays += 1
        c3 = time.thread_time_ns()
        self._publish(seg, var, ext, memo, t0=t0)
        split["frame program: outputs published"] += time.thread_time_ns() - c3

    def _publish(self, seg: Segment, var: Variant, ext: dict, memo: dict, t0: float | None = None) -> None:
        r = self.runner
        stream = self.stream
        end: list[Any] = []
        ev = None
        if stream is not None:
            # timed: it ends the frame when the sinks read only what this replay made (streams._time_frame)
            ev = r._frame_end = record_event(stream, timing=True)
            end = [ev]
        for late in var.graph.late:
            late.stamp(ev)  # this frame's copies land when `ev` completes (at once on the CPU)
        like = timing_source(ext)
        timing = timing_of(like)
        t1 = time.perf_counter()
        if var.outside is None:
            var.outside = seen_outside(r, var.nodes)
        everywhere = bool(r._taps)  # a tap (the editor's preview) may read any node's outputs
        with on_stream(stream):
            for n in var.nodes:
                static = var.static_out.get(n, {})
                # Only what leaves the recording (to a sink, an eager node, a later segment) carries this frame's
                # timing; what its own nodes alone read keeps the recorded one (~20 new payloads a frame: ~0.05 ms).
                timed = everywhere or n in var.outside
                outs = {p: retime(v, like, timing) for p, v in static.items()} if timed else static
                memo[n] = (outs, end)
                slot = r.slots[n]
                slot.variant_ready = False
                slot.stats.captured = True
                if slot.guard is not None:
                    slot.guard.last = outs  # what hold_last stands in with if the next (eager) frame fails
                    slot.guard.last_timing = None if timed else (like, timing)  # given to them then
                    slot.guard.adopt(outs, ev, source=var)
                if t0 is not None:
                    r._note_time(slot, t0, t1)
                else:
                    slot.stats.frames += 1
                r._fire_taps(n, outs)

    def _reset_streams(self) -> None:
        if self.stream is not None:
            torch.cuda.synchronize(self.runner.device)
