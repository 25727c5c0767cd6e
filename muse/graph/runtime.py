"""Runs a validated graph, frame after frame (`GraphRunner`).

The runner is put together from parts with one job each:
- `muse.graph.resolve`: the device, dtype and the CPU downscale, as resolved settings
  (the runner works on its own copy of the graph; the caller's graph is never changed);
- `muse.graph.threads`: sources and sinks in their own threads behind channels;
- `muse.graph.executor`: per frame, every sink's inputs pulled backwards through the graph;
- `muse.graph.streams`: per-node CUDA streams, events, the device clock, GPU timing;
- `muse.graph.program`: frame capture (each frame recorded once per variant, then replayed);
- `muse.graph.live`: `update_params` and `replace` at a frame boundary;
- `muse.graph.starting`: which nodes start (a switch's absent branches, stand-ins).
This module opens and closes the nodes and holds the public API.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections import deque
from typing import Any, Callable

import torch

from muse.graph.affinity import chosen_cores, pinned
from muse.graph.executor import FrameExecutor
from muse.graph.live import LiveChanges
from muse.graph.node import NodeContext, NodeError
from muse.graph.program import FrameProgram
from muse.graph.resolve import resolve_device, resolved_graph, run_dtype
from muse.graph.slots import FrameFailed, GraphRunError, Item, NodeStopped, Slot
from muse.graph.starting import Starting
from muse.graph.stats import GraphStats, Trace
from muse.graph.streams import CudaPlumbing, new_stream
from muse.graph.threads import SourceSinkThreads
from muse.graph.validate import ResolvedNode, ValidatedGraph
from muse.graph.watchdog import StallWatchdog

__all__ = ["FrameFailed", "GraphRunError", "GraphRunner", "Item", "resolve_device"]

log = logging.getLogger("muse.runtime")


class GraphRunner(FrameExecutor, SourceSinkThreads, CudaPlumbing, LiveChanges, Starting):
    """Run a ValidatedGraph. `start()` returns at once; `run()` blocks until done."""

    def __init__(
        self,
        graph: ValidatedGraph,
        device: str | None = None,
        *,
        frames: int | None = None,
        trace: Trace | None = None,
        stats: GraphStats | None = None,
        unpaced: bool = False,
        faults: Any = None,
    ) -> None:
        self.device, self.device_note = resolve_device(graph.settings.device, device)
        self.max_frames = frames
        self.unpaced = unpaced  # benchmarks: synthetic sources (the demo a missing camera falls back to) run flat out
        self.trace = trace
        self.stats = stats or GraphStats()
        self.stats.info["device"] = str(self.device)
        self.stats.info["device_note"] = self.device_note
        self.graph: ValidatedGraph = self._own(graph)
        self.slots: dict[str, Slot] = {}
        self._taps: dict[tuple[str, str], list[Callable[[Any], None]]] = {}
        self._pending: list[Callable[[], None]] = []
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._executor: threading.Thread | None = None
        self._error: BaseException | None = None
        self._frame_index = 0
        self.program: FrameProgram | None = None
        self.live: set[str] = set()  # the nodes that run this frame (muse.graph.liveness)
        self.live_cache: Any = None  # live sets per combination of the switches' choices (liveness.live_nodes)
        self.substitute: dict[str, str] = {}  # a node that did not start -> the stand-in in its place
        self._recording = False  # inside a frame program's recording: no timing events, taps or stats
        # The frame clock: the primary source's timestamp on the device (float64: hours of stream keep
        # sub-millisecond steps), so captured frames see the time advance without host values baked in.
        self.clock = torch.zeros((), dtype=torch.float64, device=self.device)
        self._frame_stream = new_stream(self.device) if self.device.type == "cuda" else None
        self._frame_start: Any = None
        self._clock_t, self._clock_due = 0.0, False  # this frame's time, not written yet (streams._tick_clock)
        self._frame_end: Any = None  # the timed event after the frame's last work: a sink's copy, or the replay
        self._last_frame_events: list[Any] = []
        self._frame_times: list[tuple[Any, Any]] = []
        self._in_flight: deque[list[Any]] = deque()
        self._failed_frames = 0
        self._cpu_pipeline: Any = None  # muse.graph.cpu_pipeline: two frames in flight on the CPU path
        self._watchdog: StallWatchdog | None = None
        self._abandoned: set[threading.Thread] = set()  # threads left in a hung node call (muse.graph.watchdog)
        self.faults = list(faults or [])  # muse.testing.faults: injected into the nodes they name when slots are made

    def _own(self, graph: ValidatedGraph) -> ValidatedGraph:
        """The runner's copy of `graph`, with the device's resolved settings (the CPU downscale)."""
        own, self.resolution, notes = resolved_graph(graph, self.device)
        if notes:
            self.stats.info["cpu_downscale"] = notes
        else:
            self.stats.info.pop("cpu_downscale", None)
        return own

    @property
    def dtype(self) -> torch.dtype:
        return run_dtype(self.graph.settings.precision, self.device)

    @property
    def _runtime_cores(self) -> set[int]:
        """The cores the executor, source and sink threads move onto when they start (muse.graph.affinity)."""
        return chosen_cores(self.graph.settings.runtime_cores)

    def start(self) -> "GraphRunner":
        self._open_all(self.graph)
        self._watchdog = StallWatchdog(self).start()
        self._executor = threading.Thread(target=pinned(self._execute, self._runtime_cores), name="muse-executor", daemon=True)
        self._executor.start()
        return self

    def run(self) -> GraphStats:
        """Start, wait until the sources end, `frames` were done, or Ctrl-C; then stop cleanly."""
        self.start()
        try:
            while not self._done.wait(0.1):
                pass
        except KeyboardInterrupt:
            log.warning("Ctrl-C: stopping, sinks flush and close their files")
        finally:
            self.stop()
        if self._error is not None:
            raise GraphRunError(str(self._error)) from self._error
        return self.stats

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def warming(self) -> dict[str, str]:
        """Nodes still preparing something in the background (a compile), and what: they run slower until then."""
        out = {}
        for name, slot in list(self.slots.items()):
            if slot.absent:
                continue
            try:
                why = slot.node.warming()
            except Exception:  # a plugin's broken warming() must not stop a benchmark
                why = None
            if why:
                out[name] = why
        from muse.graph.compiled import background_pending

        for what in background_pending():  # models compiling (they are not nodes)
            out.setdefault(what, "compiling in the background")
        return out

    def stop(self) -> None:
        """Stop sources, let sinks drain, close every node (files end playable). Idempotent."""
        self._stop.set()
        if self._executor is not None and self._executor is not threading.current_thread():
            self._executor.join(timeout=10)
        if self._watchdog is not None:
            self._watchdog.stop()
        if self.program is not None:  # what was captured, as it ended (the build-time entry has no recordings yet)
            self.stats.info["capture"] = self.program.describe()
            if self._executor is None or not self._executor.is_alive():  # a hung frame may still replay: keep them
                self.program.release()
        self._close_all()
        self._done.set()

    def tap(self, node: str, port: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(payload)` with every new value of node.port; returns an untap function."""
        key = (node, port)
        self._taps.setdefault(key, []).append(callback)
        self._refresh_wanted_outputs()

        def untap() -> None:
            if callback in self._taps.get(key, []):
                self._taps[key].remove(callback)
                self._refresh_wanted_outputs()

        return untap

    def _wanted_outputs(self, name: str) -> frozenset[str]:
        """Output ports of node `name` that something reads: wired in the graph being opened, or tapped."""
        wired = getattr(self, "_wiring", {})
        return frozenset(wired.get(name, ())) | frozenset(p for (n, p), cbs in self._taps.items() if n == name and cbs)

    def _refresh_wanted_outputs(self) -> None:
        for name, slot in list(self.slots.items()):
            slot.ctx.wanted_outputs = self._wanted_outputs(name)  # a new frozenset: nodes read it unlocked

    def _make_slot(self, rn: ResolvedNode) -> Slot:
        stats = self.stats.node(rn.name, rn.type)
        stream = new_stream(self.device) if self.device.type == "cuda" else None
        s = self.graph.settings
        ctx = NodeContext(
            name=rn.name,
            device=self.device,
            dtype=self.dtype,
            fps=s.fps,
            resolution=self.resolution,
            stream=stream,
            graph_file=self.graph.file,
            settings={**s.model_dump(), "unpaced": self.unpaced, "allow_network": self.graph.allow_network},
            logger=logging.getLogger(f"muse.node.{rn.name}"),
            stats=stats,
            clock=self.clock,
            connected=frozenset(p for p, ri in rn.inputs.items() if ri.sources),
            wanted_outputs=self._wanted_outputs(rn.name),
            fan_in={p: len(ri.sources) for p, ri in rn.inputs.items()},
            stand_ins=self.graph.stand_ins(rn.name),
        )
        node = rn.cls(rn.name, rn.params)
        for fault in self.faults:
            if fault.node == rn.name:
                node = fault.inject(node, rn.policy.budget_ms)
        return Slot(rn=rn, node=node, ctx=ctx, stats=stats, stream=stream)

    def _open_slot(self, slot: Slot) -> None:
        try:
            with self._in_stream(slot.stream):
                slot.node.open(slot.ctx)
        except NodeError as exc:
            raise GraphRunError(f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) could not start: {exc}") from exc
        except Exception as exc:
            raise GraphRunError(
                f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) could not start: {type(exc).__name__}: {exc}"
            ) from exc

    def _open_all(self, graph: ValidatedGraph, keep: dict[str, Slot] | None = None) -> None:
        keep = keep or {}
        previous_wiring = getattr(self, "_wiring", {})
        self._wiring = graph.wired_outputs()  # before the nodes open: they may skip unread outputs' work
        opened: list[Slot] = []
        try:
            self._open_nodes(graph, keep, opened)
        except BaseException:
            for slot in reversed(opened):
                self._close_slot(slot)
            for name, slot in list(self.slots.items()):
                if slot not in opened and name not in keep:
                    slot.absent = slot.absent or "failed: the graph did not start"  # never opened: nothing to close
            self._wiring = previous_wiring
            raise
        self.graph = graph
        self._refresh_wanted_outputs()  # kept nodes see the new wiring too
        self._build_program()
        if self._cpu_pipeline is not None:
            self._cpu_pipeline.close()
        from muse.graph import cpu_pipeline

        self._cpu_pipeline = cpu_pipeline.plan(self)
        for name in graph.order:
            slot = self.slots[name]
            if slot.absent:
                continue
            if slot.rn.cls.is_source() and slot.thread is None:
                self._start_source(slot)
            elif slot.rn.cls.is_sink() and slot.thread is None:
                self._start_sink(slot)

    def _close_slot(self, slot: Slot) -> None:
        if slot.absent:
            return  # never opened
        slot.stop.set()
        if slot.channel is not None:
            slot.channel.close()
        if slot.thread is not None and slot.thread is not threading.current_thread():
            slot.thread.join(timeout=10)
            if slot.thread.is_alive():
                log.warning("node %r did not stop within 10 s", slot.name)
        slot.thread = None
        try:
            slot.node.close()
        except Exception:
            log.error("node %r failed while closing:\n%s", slot.name, traceback.format_exc())

    def _close_all(self) -> None:
        slots = [self.slots[n] for n in self.graph.order if n in self.slots]
        # Sources first (stop new frames), then sinks drain their queues, then the rest.
        for slot in slots:
            if slot.rn.cls.is_source():
                self._close_slot(slot)
        for slot in slots:
            if slot.rn.cls.is_sink():
                self._close_slot(slot)
        for slot in reversed(slots):
            if not slot.rn.cls.is_source() and not slot.rn.cls.is_sink():
                self._close_slot(slot)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # shutdown only: every stream's last work is done
            self._poll_gpu_times()  # the last frames' GPU timings are readable now
        for slot in slots:  # the last frame's NaN/Inf checks, so every fault is counted
            try:
                self._judge(slot)
            except NodeStopped:
                pass  # stopping anyway
        self.slots.clear()

    def _build_program(self) -> None:
        """The frame program for the current graph, when capture is on (CUDA, or emulated for tests)."""
        self.live_cache = None  # nodes, slots or absent ones changed: live sets are worked out again
        self._roles_cache = None  # and the slots the executor walks a frame (a node reopened is a new slot)
        mode = self.graph.settings.capture
        if self.graph.settings.cuda_graphs and mode == "auto":
            mode = "on"
        cuda = self.device.type == "cuda"
        if mode == "emulate":
            self.program = FrameProgram(self, emulate=True)
        elif cuda and mode in ("auto", "on", "per_node"):
            self.program = FrameProgram(self, per_node=mode == "per_node")
        else:
            self.program = None
        if self.program is not None:
            self.stats.info["capture"] = self.program.describe()
            self.stats.info["capture_programs"] = self.stats.info.get("capture_programs", 0) + 1

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("graph stopped: %s", exc)
        self._stop.set()
        self._done.set()
