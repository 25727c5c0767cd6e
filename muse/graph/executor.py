"""The per-frame executor: pulls every sink's inputs backwards through the graph.

A node runs only if something consumes its outputs this frame (a switch's idle branches don't
run); lazy inputs are thunks the node calls. Failures are counted per node and per frame, with
the first traceback logged and later ones rate-limited.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Callable

import torch

from muse.graph.node import NodeError
from muse.graph.slots import FrameFailed, GraphRunError, Item, Slot

log = logging.getLogger("muse.runtime")


class FrameExecutor:
    """Mixin of `GraphRunner`: the executor thread and per-node bookkeeping."""

    def _execute(self) -> None:
        try:
            while not self._stop.is_set():
                self._run_pending()
                if self.max_frames is not None and self._frame_index >= self.max_frames:
                    break
                items = self._gather_sources()
                if items is None:
                    break
                try:
                    self._run_frame(items)
                    self.stats.frames_out += 1
                    self._failed_frames = 0
                except FrameFailed as exc:
                    self._failed_frames += 1
                    if self._failed_frames >= self.graph.settings.max_consecutive_errors:
                        raise GraphRunError(
                            f"{self._failed_frames} frames in a row failed; last: {exc}. "
                            "See the node's error above; the graph stopped so the stream doesn't show garbage."
                        ) from exc.exc
                self._frame_index += 1
                self._poll_gpu_times()
        except BaseException as exc:  # the executor must never die silently
            self._fail(exc)
        finally:
            if self._cpu_pipeline is not None:  # its last frame reaches the sinks first
                self._cpu_pipeline.close()
            # Let sinks drain what they have, then stop.
            for slot in list(self.slots.values()):
                if slot.rn.cls.is_sink() and slot.channel is not None:
                    slot.channel.close()
            self._done.set()

    def _run_frame(self, source_items: dict[str, Item]) -> None:
        memo: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        t_capture = min((it.t_capture for it in source_items.values()), default=time.perf_counter())
        clock_events = self._tick_clock(source_items)
        for name, item in source_items.items():
            memo[name] = (item.values, item.events + clock_events)
            with self._in_stream(self.slots[name].stream):  # ordered after the source's own upload
                self._fire_taps(name, item.values)
        for name in self.graph.order:  # a secondary source with no frame yet: its branch sits this frame out
            if name not in memo and self.slots[name].rn.cls.is_source():
                memo[name] = ({}, [])
        if self._cpu_pipeline is not None:
            self._cpu_pipeline.run_frame(memo, t_capture)
            return
        program = self.program
        if program is not None:
            program.run(memo)
        sinks = [self.slots[n] for n in self.graph.order if self.slots[n].rn.cls.is_sink()]
        frame_events: list[Any] = []
        for sink in sinks:
            values, events = self._gather_inputs(sink, memo)
            if values is None:
                frame_events.extend(events)
                continue  # an upstream branch had nothing this frame (e.g. no face)
            if program is not None:
                # Replayed outputs are overwritten by the next replay: the sink gets its own copy.
                values, events = self._detach_for_sink(values, events)
            frame_events.extend(events)
            sink.channel.put(Item(values, events, t_capture), self._stop)
        self._last_frame_events = frame_events
        self._time_frame(frame_events)
        self._limit_in_flight(frame_events)

    def _gather_inputs(self, slot: Slot, memo: dict) -> tuple[dict[str, Any] | None, list[Any]]:
        """Values for a node's inputs (computing upstream nodes on demand) and the events to wait on."""
        values: dict[str, Any] = {}
        events: list[Any] = []
        needed = slot.node.needed_inputs()
        needed = set(needed) if needed is not None else None
        for port, ri in slot.rn.inputs.items():
            if slot.rn.cls.lazy_inputs:
                values[port] = self._lazy(ri, memo, events)
                continue
            if needed is not None and port not in needed:
                continue
            got = []
            for src in ri.sources:
                outs, evs = self._evaluate(src.node, memo)
                got.append(outs.get(src.port) if outs else None)
                events.extend(evs)
            if ri.port.multiple:
                values[port] = got
            else:
                value = got[0] if got else None
                if value is None and not ri.port.optional:
                    return None, events
                values[port] = value
        return values, events

    def _lazy(self, ri: Any, memo: dict, events: list[Any]) -> Any:
        def thunk_for(src: Any) -> Callable[[], Any]:
            def thunk() -> Any:
                try:
                    outs, evs = self._evaluate(src.node, memo)
                except FrameFailed as exc:
                    raise NodeError(str(exc)) from exc.exc
                events.extend(evs)
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
            return memo[name]
        slot = self.slots[name]
        values, events = self._gather_inputs(slot, memo)
        if values is None:
            memo[name] = ({}, [])
            return memo[name]
        outs, ev = self._run_node(slot, values, events)
        memo[name] = (outs, ev)
        return memo[name]

    def _run_node(self, slot: Slot, values: dict[str, Any], events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        c0 = time.thread_time()
        recording = self._recording
        nvtx = self.device.type == "cuda" and not recording
        try:
            with self._in_stream(slot.stream):
                self._wait_events(slot.stream, events, values)
                if not slot.variant_ready:
                    slot.node.frame_variant()  # host choices for this frame (read a frame late)
                slot.variant_ready = False
                if nvtx:
                    torch.cuda.nvtx.range_push(slot.name)
                start_ev = None if recording else self._gpu_start(slot)
                try:
                    outs = slot.node.process(**values) or {}
                finally:
                    if nvtx:
                        torch.cuda.nvtx.range_pop()
                out_events = self._record(slot, start_ev)
                # Taps run on the producer's stream, so a GPU preview copy is ordered after the work.
                if not recording:
                    self._fire_taps(slot.name, outs)
        except NodeError as exc:
            self._node_failed(slot, exc, expected=True)
            raise FrameFailed(slot.name, exc) from exc
        except Exception as exc:
            self._node_failed(slot, exc)
            raise FrameFailed(slot.name, exc) from exc
        t1 = time.perf_counter()
        slot.consecutive_errors = 0
        if not recording:
            slot.stats.cpu_ms.append((time.thread_time() - c0) * 1000.0)
            self._note_time(slot, t0, t1)
        return outs, out_events

    def _note_time(self, slot: Slot, t0: float, t1: float) -> None:
        slot.stats.frames += 1
        slot.stats.host_ms.append((t1 - t0) * 1000.0)
        if self.trace is not None:
            self.trace.span(slot.name, t0, t1, category=slot.rn.type, args={"frame": self._frame_index})

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
        for (node, port), callbacks in list(self._taps.items()):
            if node == name and port in outs and outs[port] is not None:
                for cb in list(callbacks):
                    try:
                        cb(outs[port])
                    except Exception:
                        log.error("tap on %s.%s failed:\n%s", node, port, traceback.format_exc())
