"""The per-frame executor: pulls every sink's inputs backwards through the graph.

A node runs only if something consumes its outputs this frame (a switch's idle branches don't
run); lazy inputs are thunks the node calls. A node that fails (raises, runs out of memory,
gives NaN/Inf, hangs) is covered by its `on_error` policy (muse.graph.policy, muse.graph.guard):
counted per node, the first traceback logged and later ones rate-limited; a call over its
budget is a stall (muse.graph.watchdog watches the calls still running).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import Any, Callable

import torch

from muse.graph.failures import FailureHandling
from muse.graph.liveness import gather, gather_selected, live_nodes
from muse.graph.markers import mark
from muse.graph.node import NodeError
from muse.graph.slots import FAULTS, FrameFailed, GraphRunError, Item, LeftBehind, Slot

log = logging.getLogger("muse.runtime")



class FrameExecutor(FailureHandling):
    """Mixin of `GraphRunner`: the executor thread and per-node bookkeeping."""

    _roles_cache: tuple | None = None

    def _execute(self) -> None:
        me = threading.current_thread()
        try:
            while not self._stop.is_set():
                if me in self._abandoned:
                    return
                c0 = time.thread_time_ns()
                self._run_pending()
                if self.max_frames is not None and self._frame_index >= self.max_frames:
                    break
                split = self.stats.executor_ns
                c1 = time.thread_time_ns()
                items = self._gather_sources()
                c2 = time.thread_time_ns()
                split["pending changes"] += c1 - c0
                split["waiting for sources"] += c2 - c1
                if items is None:
                    break
                try:
                    pipelined = self._cpu_pipeline is not None
                    self._run_frame(items)
                    self.stats.frames_out += 1
                    if not pipelined:  # with two frames in flight the tail thread judges the frame (cpu_pipeline)
                        self._failed_frames = 0
                except FrameFailed as exc:
                    self._failed_frames += 1
                    if self._failed_frames >= self.graph.settings.max_consecutive_errors:
                        raise GraphRunError(
                            f"{self._failed_frames} frames in a row failed; last: {exc}. "
                            "See the node's error above; the graph stopped so the stream doesn't show garbage."
                        ) from exc.exc
                self._frame_index += 1
                c0 = time.thread_time_ns()
                self._poll_gpu_times()
                split["GPU timings read"] += time.thread_time_ns() - c0
        except LeftBehind:
            return  # a node call hung and a new executor took over; this one just ends
        except BaseException as exc:  # the executor must never die silently
            if me not in self._abandoned:
                self._fail(exc)
        finally:
            if me not in self._abandoned:
                self._end_executor()

    def _end_executor(self) -> None:
        if self._cpu_pipeline is not None:  # its last frame reaches the sinks first
            self._cpu_pipeline.close()
        # Let sinks drain what they have, then stop.
        for slot in list(self.slots.values()):
            if slot.rn.cls.is_sink() and slot.channel is not None:
                slot.channel.close()
        self._done.set()

    def _run_frame(self, source_items: dict[str, Item]) -> None:
        split = self.stats.executor_ns
        c0 = time.thread_time_ns()
        memo: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        t_capture = min((it.t_capture for it in source_items.values()), default=time.perf_counter())
        clock_events = self._tick_clock(source_items)
        c_clock = time.thread_time_ns()
        split["  of which the clock"] += c_clock - c0
        for name, item in source_items.items():
            memo[name] = (item.values, item.events + clock_events)
            if self._taps:  # (a stream switch costs the host ~10 us: only when someone listens)
                with self._in_stream(self.slots[name].stream):  # ordered after the source's own upload
                    self._fire_taps(name, item.values)
        every, source_names, sink_names = self._roles()
        for slot in every:
            slot.variant_ready = False
        for name in source_names:  # a secondary source with no frame yet: its branch sits this frame out
            if name not in memo and not self.slots[name].absent:  # absent: its stand-in's, if any
                memo[name] = ({}, [])
        c_live = time.thread_time_ns()
        self.live = live_nodes(self)  # switches choose here; only what the live branches need runs
        split["  of which the live branches"] += time.thread_time_ns() - c_live
        if self._cpu_pipeline is not None:
            self._cpu_pipeline.run_frame(memo, t_capture)
            return
        program = self.program
        c1 = time.thread_time_ns()
        split["sources in, clock, live branches"] += c1 - c0
        if program is not None:
            program.run(memo)
        c2 = time.thread_time_ns()
        split["frame program" if program is not None else "nodes"] += c2 - c1
        sinks = [self.slots[n] for n in sink_names if n in self.live]
        frame_events: list[Any] = []
        delivered = 0
        for sink in sinks:
            values, events = self._gather_inputs(sink, memo)
            if values is None:
                frame_events.extend(events)
                continue  # an upstream branch had nothing this frame (e.g. no face)
            if program is not None:
                # Replayed outputs are overwritten by the next replay: the sink gets its own copy.
                values, events = self._detach_for_sink(values, events)
            frame_events.extend(events)
            self._deliver(sink, Item(values, events, t_capture))
            delivered += 1
        self._last_frame_events = frame_events
        c3 = time.thread_time_ns()
        self._time_frame(frame_events)
        c4 = time.thread_time_ns()
        w4 = time.perf_counter_ns()
        self._limit_in_flight(frame_events)
        c5 = time.thread_time_ns()
        split["outputs to sinks"] += c3 - c2
        split["frame timing events"] += c4 - c3
        split["in-flight bound"] += c5 - c4
        split["in-flight bound wall"] += time.perf_counter_ns() - w4
        check_delivery(memo, delivered)

    def _roles(self) -> tuple[list[Slot], list[str], list[str]]:
        """Every node's slot in graph order, and the sources' and the outputs' names, in that order: asked of the
        nodes once per graph (a live change builds a new one), not in a pass over every node a frame."""
        roles = self._roles_cache
        if roles is None or roles[0] is not self.graph or roles[1] != len(self.slots):
            order = [n for n in self.graph.order if n in self.slots]
            roles = self._roles_cache = (self.graph, len(self.slots), [self.slots[n] for n in order],
                                         [n for n in order if self.slots[n].rn.cls.is_source()],
                                         [n for n in order if self.slots[n].rn.cls.is_sink()])
        return roles[2], roles[3], roles[4]

    def _deliver(self, sink: Slot, item: Item) -> None:
        """Into the output's channel; an output stalled past its budget gets no say in the stream's pace
        (a full queue drops the frame, counted, instead of holding every other output)."""
        if sink.stall_warned:
            sink.channel.offer(item)
        else:
            sink.channel.put(item, self._stop, give_up=lambda: sink.stall_warned)

    def _gather_inputs(self, slot: Slot, memo: dict) -> tuple[dict[str, Any] | None, list[Any]]:
        """Values for a node's inputs (computing upstream nodes on demand) and the events to wait on."""
        values: dict[str, Any] = {}
        events: list[Any] = []
        if slot.rn.cls.lazy_inputs:
            for port, ri in slot.rn.inputs.items():
                values[port] = self._lazy(ri, memo, events)
            return values, events
        if slot.rn.cls.selects_inputs:
            return gather_selected(self, slot, memo)
        return gather(self, slot, memo)

    def _variant(self, slot: Slot) -> Any:
        """The node's host choice for this frame (`frame_variant()`), asked once per frame."""
        if not slot.variant_ready:
            slot.variant = slot.node.frame_variant()
            slot.variant_ready = True
        return slot.variant

    def _lazy(self, ri: Any, memo: dict, events: list[Any]) -> Any:
        def thunk_for(src: Any) -> Callable[[], Any]:
            def thunk() -> Any:
                try:
                    outs, evs = self._evaluate(src.node, memo)
                except FrameFailed as exc:
                    raise NodeError(str(exc)) from exc.exc
                events.extend(evs)
                # A lazy consumer (a switch) is told that the branch failed, whatever stands in for it.
                for node, exc in memo.get(FAULTS, []):
                    if node == src.node:
                        raise NodeError(f"node {node!r} failed: {exc}") from exc
                guard = self.slots[src.node].guard
                if guard is not None and (guard.sync_bad or guard.nan_seen):
                    raise NodeError(f"node {src.node!r} produced NaN/Inf")
                # The lazy node waits here, on its own stream, for what it just pulled.
                cur = torch.cuda.current_stream(self.device) if self.device.type == "cuda" else None
                value = outs.get(src.port) if outs else None
                self._wait_events(cur, evs, {"v": value})
                return value

            return thunk

        thunks = [thunk_for(s) for s in ri.sources]
        return thunks if ri.port.multiple else (thunks[0] if thunks else (lambda: None))

    def _evaluate(self, name: str, memo: dict) -> tuple[dict[str, Any], list[Any]]:
        if name in memo:
            done = memo[name]
            if isinstance(done, FrameFailed):  # failed earlier this frame: not run twice
                raise done
            return done
        slot = self.slots[name]
        if slot.absent:  # never started: its stand-in's outputs, or nothing (a switch skips it)
            given = self.provider(name)
            memo[name] = self._evaluate(given, memo) if given is not None else ({}, [])
            return memo[name]
        values, events = self._gather_inputs(slot, memo)
        if values is None:
            memo[name] = ({}, [])
            return memo[name]
        try:
            outs, ev = self._run_node(slot, values, events)
        except FrameFailed as exc:
            memo[name] = exc
            raise
        memo[name] = (outs, ev)
        failed = slot.guard.failed_now if slot.guard is not None else None
        if failed is not None:
            slot.guard.failed_now = None
            memo.setdefault(FAULTS, []).append((name, failed))
        return memo[name]

    def _run_node(self, slot: Slot, values: dict[str, Any], events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        recording = self._recording
        nvtx = self.device.type == "cuda" and not recording
        guard = slot.guard
        assert guard is not None
        if not recording:
            self._judge(slot)
        if slot.hung:  # its last call never returned (muse.graph.watchdog): its on_error stands in
            return self._failed(slot, NodeError("a call is still running (hung); skipped until it returns"), values, events)
        try:
            with self._in_stream(slot.stream):
                self._wait_events(slot.stream, events, values)
                mark(slot.name, "begin", slot.stream)  # a profiled run's timeline: when its inputs were ready
                self._variant(slot)  # host choices for this frame (read a frame late)
                slot.variant_ready = False
                if nvtx:
                    torch.cuda.nvtx.range_push(slot.name)
                start_ev = None if recording else self._gpu_start(slot)
                if not recording:
                    slot.call_started, slot.call_thread = t0, threading.current_thread()
                try:
                    outs = slot.node.process(**values) or {}
                finally:
                    if not recording:
                        slot.call_started = slot.call_thread = None
                    if nvtx:
                        torch.cuda.nvtx.range_pop()
                    self._check_left_behind(slot, t0)
                # NaN/Inf: replaced on the device by the last finite output, counted a frame late (muse.graph.guard).
                if self.graph.settings.check_finite:
                    outs = guard.check(outs, in_place=recording, sync=self.device.type == "cpu" and self.program is None)
                if guard.quarantined and slot.rn.policy.on_error in ("skip", "fallback") and not recording:
                    stand_in, how = guard.stand_in(slot.rn.policy, slot.node, values, slot.rn.cls.outputs_spec)
                    slot.stats.count_handled(how)
                    outs = stand_in or {}
                mark(slot.name, "end", slot.stream)
                out_events = self._record(slot, start_ev)  # after any stand-in: a fallback's own work is on this stream too
                # Taps run on the producer's stream, so a GPU preview copy is ordered after the work.
                if not recording:
                    self._fire_taps(slot.name, outs)
        except Exception as exc:
            if recording:  # the frame program marks this recording failed and runs the segment eagerly
                raise FrameFailed(slot.name, exc) from exc
            self._end_call(slot, t0)
            return self._failed(slot, exc, values, events)
        t1 = time.perf_counter()
        slot.consecutive_errors = 0
        guard.last, guard.last_timing = outs, None
        if not recording:
            ms = (time.thread_time() - c0) * 1000.0
            slot.stats.cpu_ms.append(ms)
            slot.stats.cpu_total_ms += ms
            slot.stats.cpu_calls += 1
            self._end_call(slot, t0, t1)
            self._note_time(slot, t0, t1)
        return outs, out_events

    def _note_time(self, slot: Slot, t0: float, t1: float) -> None:
        slot.stats.frames += 1
        slot.stats.host_ms.append((t1 - t0) * 1000.0)
        if self.trace is not None:
            args = {"frame": self._frame_index}
            if slot.rn.cls.selects_inputs:  # a switch: which branch was live this frame
                args["live"] = slot.stats.info.get("live")
            self.trace.span(slot.name, t0, t1, category=slot.rn.type, args=args)

    def _node_failed(self, slot: Slot, exc: BaseException, expected: bool = False) -> None:
        slot.stats.errors += 1
        slot.consecutive_errors += 1
        slot.stats.last_error = f"{type(exc).__name__}: {exc}"
        # First failure with its traceback, then rate-limited so a 6-hour stream's log stays readable.
        if slot.stats.errors == 1 or slot.stats.errors % 100 == 0:
            detail = str(exc) if expected else traceback.format_exc()
            log.error("node '%s' (%s) failed on frame %d (%d errors so far): %s",
                      slot.name, slot.rn.type, self._frame_index, slot.stats.errors, detail)

    def _fire_taps(self, name: str, outs: dict[str, Any]) -> None:
        if not self._taps:  # the usual case (the editor's previews tap): no copy of the dict a node a frame
            return
        for (node, port), callbacks in list(self._taps.items()):
            if node == name and port in outs and outs[port] is not None:
                for cb in list(callbacks):
                    try:
                        cb(outs[port])
                    except Exception:
                        log.error("tap on %s.%s failed:\n%s", node, port, traceback.format_exc())


def check_delivery(memo: dict, delivered: int) -> None:
    """A frame no output got because nodes failed is a failed frame (the executor stops the graph after
    `max_consecutive_errors` of them in a row, naming the node)."""
    faults = memo.get(FAULTS)
    if faults and not delivered:
        node, exc = faults[0]
        raise FrameFailed(node, exc)
