"""Runs a validated graph, frame after frame.

- Sources run in their own threads and hand frames over through channels with
  the graph's policy (`latest` drops stale frames and counts each drop).
- Per frame, the executor pulls from every sink backwards: a node runs only if
  something consumes its outputs this frame (a switch's idle branches don't run).
- On CUDA each node has its own stream owned here; a consumer's stream waits on
  the producer's event and tensors are tagged with `record_stream`, so there is
  no device-wide synchronize on the hot path.
- Sinks run in their own threads behind bounded channels.
- Chains of `cuda_graph_safe` nodes can be captured into one CUDA graph and replayed.
- `update_params` and `replace` change a running graph at a frame boundary.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace as dc_replace
from typing import Any, Callable

import torch

from muse.graph.channels import Channel, ChannelClosed
from muse.graph.node import Node, NodeContext, NodeError
from muse.graph.payloads import Payload
from muse.graph.stats import GraphStats, NodeStats, Trace
from muse.graph.validate import ResolvedNode, ValidatedGraph

log = logging.getLogger("muse.runtime")


class GraphRunError(RuntimeError):
    """The graph could not start or had to stop; the message names the node."""


class _FrameFailed(Exception):
    def __init__(self, node: str, exc: BaseException) -> None:
        super().__init__(f"node {node!r} failed: {exc}")
        self.node, self.exc = node, exc


@dataclass
class _Item:
    """What travels from a source to the executor, or from the executor to a sink."""

    values: dict[str, Any]
    events: list[Any] = field(default_factory=list)  # CUDA events to wait on
    t_capture: float = 0.0


@dataclass
class _Slot:
    """One running node and what the runtime keeps for it."""

    rn: ResolvedNode
    node: Node
    ctx: NodeContext
    stats: NodeStats
    stream: Any = None
    channel: Channel | None = None  # sources: out of the node; sinks: into the node
    thread: threading.Thread | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    last: _Item | None = None  # a secondary source's newest item
    pending_gpu: list = field(default_factory=list)
    consecutive_errors: int = 0

    @property
    def name(self) -> str:
        return self.rn.name


def resolve_device(setting: str, override: str | None = None) -> tuple[torch.device, str]:
    """The device to run on and a sentence saying why (shown to the user)."""
    want = override or setting
    has_cuda = torch.cuda.is_available()
    if want == "cuda":
        if not has_cuda:
            raise GraphRunError("device 'cuda' was asked for, but no CUDA GPU is available; use --device cpu or device: auto")
        return torch.device("cuda"), f"running on CUDA ({torch.cuda.get_device_name(0)})"
    if want == "cpu":
        return torch.device("cpu"), "running on the CPU (asked for)"
    if has_cuda:
        return torch.device("cuda"), f"running on CUDA ({torch.cuda.get_device_name(0)})"
    return torch.device("cpu"), "no CUDA GPU found: falling back to the CPU path"


class GraphRunner:
    """Run a ValidatedGraph. `start()` returns at once; `run()` blocks until done."""

    def __init__(
        self,
        graph: ValidatedGraph,
        device: str | None = None,
        *,
        frames: int | None = None,
        trace: Trace | None = None,
        stats: GraphStats | None = None,
    ) -> None:
        self.graph = graph
        self.device, self.device_note = resolve_device(graph.settings.device, device)
        self.max_frames = frames
        self.trace = trace
        self.stats = stats or GraphStats()
        self.stats.info["device"] = str(self.device)
        self.stats.info["device_note"] = self.device_note
        self.resolution = tuple(graph.settings.resolution)
        if self.device.type == "cpu":
            self._fit_sources_to_cpu()
        self.slots: dict[str, _Slot] = {}
        self._taps: dict[tuple[str, str], list[Callable[[Any], None]]] = {}
        self._pending: list[Callable[[], None]] = []
        self._pending_lock = threading.Lock()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._executor: threading.Thread | None = None
        self._error: BaseException | None = None
        self._frame_index = 0
        self._cuda_graphs: dict[tuple[str, ...], "_CapturedChain"] = {}
        self._chains: list[tuple[str, ...]] = []
        self._in_flight: deque[list[Any]] = deque()
        self._failed_frames = 0
        self._cpu_pipeline: Any = None  # muse.graph.cpu_pipeline: two frames in flight on the CPU path

    def _fit_sources_to_cpu(self) -> None:
        """4K on two CPU cores is a slide show: capture smaller, and say so."""
        limit = self.graph.settings.cpu_resolution
        if limit is None:
            return
        lw, lh = limit
        for rn in self.graph.nodes.values():
            if not rn.cls.is_source() or rn.params is None:
                continue
            w, h = getattr(rn.params, "width", None), getattr(rn.params, "height", None)
            if not isinstance(w, int) or not isinstance(h, int) or (w <= lw and h <= lh):
                continue
            scale = min(lw / w, lh / h)
            new_w, new_h = max(16, int(w * scale) // 2 * 2), max(16, int(h * scale) // 2 * 2)
            rn.params = rn.params.model_copy(update={"width": new_w, "height": new_h})
            note = f"{rn.name}: {w}x{h} is too much for the CPU path; capturing at {new_w}x{new_h} (settings.cpu_resolution)"
            log.warning(note)
            self.stats.info.setdefault("cpu_downscale", []).append(note)
        rw, rh = self.resolution
        if rw > lw or rh > lh:
            scale = min(lw / rw, lh / rh)
            self.resolution = (int(rw * scale) // 2 * 2, int(rh * scale) // 2 * 2)

    # -- public API ------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        p = self.graph.settings.precision
        if p == "fp16" and self.device.type == "cuda":
            return torch.float16
        if p == "auto" and self.device.type == "cuda":
            return torch.float16
        return torch.float32

    def start(self) -> "GraphRunner":
        self._open_all(self.graph)
        self._executor = threading.Thread(target=self._execute, name="muse-executor", daemon=True)
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

    def stop(self) -> None:
        """Stop sources, let sinks drain, close every node (files end playable). Idempotent."""
        self._stop.set()
        if self._executor is not None and self._executor is not threading.current_thread():
            self._executor.join(timeout=10)
        self._close_all()
        self._done.set()

    def update_params(self, node: str, values: dict[str, Any]) -> None:
        """Change a node's params live; applied at the next frame boundary.

        Invalid values raise pydantic's ValidationError here, before anything changes."""
        slot = self.slots.get(node)
        if slot is None:
            raise KeyError(f"no node {node!r} in the running graph")
        params = slot.rn.cls.Params.model_validate({**slot.node.params.model_dump(), **values})

        def apply() -> None:
            self._apply_params(slot, params)

        self._schedule(apply)

    def replace(self, graph: ValidatedGraph) -> None:
        """Swap in a changed graph without ending the process (kept nodes stay open)."""
        self._schedule(lambda: self._swap_graph(graph))

    def tap(self, node: str, port: str, callback: Callable[[Any], None]) -> Callable[[], None]:
        """Call `callback(payload)` with every new value of node.port; returns an untap function."""
        key = (node, port)
        self._taps.setdefault(key, []).append(callback)

        def untap() -> None:
            if callback in self._taps.get(key, []):
                self._taps[key].remove(callback)

        return untap

    # -- setup and teardown ---------------------------------------------
    def _make_slot(self, rn: ResolvedNode) -> _Slot:
        stats = self.stats.node(rn.name, rn.type)
        stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        s = self.graph.settings
        ctx = NodeContext(
            name=rn.name,
            device=self.device,
            dtype=self.dtype,
            fps=s.fps,
            resolution=self.resolution,
            stream=stream,
            graph_file=self.graph.file,
            settings=s.model_dump(),
            logger=logging.getLogger(f"muse.node.{rn.name}"),
            stats=stats,
        )
        node = rn.cls(rn.name, rn.params)
        return _Slot(rn=rn, node=node, ctx=ctx, stats=stats, stream=stream)

    def _open_slot(self, slot: _Slot) -> None:
        try:
            with self._in_stream(slot.stream):
                slot.node.open(slot.ctx)
        except NodeError as exc:
            raise GraphRunError(f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) could not start: {exc}") from exc
        except Exception as exc:
            raise GraphRunError(
                f"{self.graph.file}: node '{slot.name}' ({slot.rn.type}) could not start: {type(exc).__name__}: {exc}"
            ) from exc

    def _open_all(self, graph: ValidatedGraph, keep: dict[str, _Slot] | None = None) -> None:
        keep = keep or {}
        opened: list[_Slot] = []
        try:
            for name in graph.order:
                rn = graph.nodes[name]
                slot = keep.get(name)
                if slot is None:
                    slot = self._make_slot(rn)
                    self._open_slot(slot)
                    opened.append(slot)
                else:
                    slot.rn = rn
                self.slots[name] = slot
        except BaseException:
            for slot in reversed(opened):
                self._close_slot(slot)
            raise
        self.graph = graph
        self._chains = self._find_chains() if graph.settings.cuda_graphs and self.device.type == "cuda" else []
        if self._cpu_pipeline is not None:
            self._cpu_pipeline.close()
        from muse.graph import cpu_pipeline

        self._cpu_pipeline = cpu_pipeline.plan(self)
        self._cuda_graphs.clear()
        for name in graph.order:
            slot = self.slots[name]
            if slot.rn.cls.is_source() and slot.thread is None:
                self._start_source(slot)
            elif slot.rn.cls.is_sink() and slot.thread is None:
                self._start_sink(slot)

    def _close_slot(self, slot: _Slot) -> None:
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
        self.slots.clear()

    # -- threads ---------------------------------------------------------
    def _start_source(self, slot: _Slot) -> None:
        policy, size = _wiring(self.graph, slot.name)

        def on_drop(n: int) -> None:
            slot.stats.drops += n

        slot.channel = Channel(policy, size, on_drop)
        slot.stop.clear()

        demand = slot.node.on_demand and policy == "latest"

        def loop() -> None:
            while not slot.stop.is_set() and not self._stop.is_set():
                if demand and len(slot.channel):
                    time.sleep(0.001)  # a synthetic source renders only what will be shown
                    continue
                t0 = time.perf_counter()
                try:
                    with self._in_stream(slot.stream):
                        out = slot.node.process()
                        events = self._record(slot)
                except Exception as exc:
                    self._node_failed(slot, exc)
                    if slot.consecutive_errors >= self.graph.settings.max_consecutive_errors:
                        self._fail(GraphRunError(f"source '{slot.name}' failed {slot.consecutive_errors} times in a row: {exc}"))
                        break
                    time.sleep(0.01)
                    continue
                t1 = time.perf_counter()
                if out is None:
                    log.info("source '%s' reached the end of its stream", slot.name)
                    break
                slot.consecutive_errors = 0
                self._note_time(slot, t0, t1)
                self.stats.frames_in += 1
                if not slot.channel.put(_Item(out, events, t1), slot.stop):
                    break
            slot.channel.close()

        slot.thread = threading.Thread(target=loop, name=f"muse-src-{slot.name}", daemon=True)
        slot.thread.start()

    def _start_sink(self, slot: _Slot) -> None:
        policy, size = _wiring(self.graph, slot.name)

        def on_drop(n: int) -> None:
            slot.stats.drops += n

        slot.channel = Channel(policy, size, on_drop)
        slot.stop.clear()

        def loop() -> None:
            while True:
                try:
                    item = slot.channel.get(timeout=0.2)
                except TimeoutError:
                    if slot.stop.is_set() and slot.channel.closed:
                        break
                    continue
                except ChannelClosed:
                    break
                t0 = time.perf_counter()
                try:
                    with self._in_stream(slot.stream):
                        self._wait_events(slot.stream, item.events, item.values)
                        slot.node.process(**item.values)
                        self._record(slot)
                except Exception as exc:
                    self._node_failed(slot, exc)
                    if slot.consecutive_errors >= self.graph.settings.max_consecutive_errors:
                        self._fail(GraphRunError(f"output '{slot.name}' failed {slot.consecutive_errors} times in a row: {exc}"))
                        break
                    continue
                t1 = time.perf_counter()
                slot.consecutive_errors = 0
                self._note_time(slot, t0, t1)
                self.stats.add_latency((t1 - item.t_capture) * 1000.0)

        slot.thread = threading.Thread(target=loop, name=f"muse-sink-{slot.name}", daemon=True)
        slot.thread.start()

    # -- the per-frame executor ------------------------------------------
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
                except _FrameFailed as exc:
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

    def _gather_sources(self) -> dict[str, _Item] | None:
        sources = [self.slots[n] for n in self.graph.order if self.slots[n].rn.cls.is_source()]
        items: dict[str, _Item] = {}
        for i, slot in enumerate(sources):
            primary = i == 0
            while True:
                if self._stop.is_set():
                    return None
                try:
                    if primary or slot.last is None or (slot.channel and slot.channel.policy == "queue"):
                        item = slot.channel.get(timeout=0.1)
                    else:
                        item = slot.channel.get_nowait()  # a secondary source never stalls the stream
                    slot.last = item
                    break
                except TimeoutError:
                    if primary or slot.last is None or slot.channel.policy == "queue":
                        continue
                    item = slot.last
                    break
                except ChannelClosed:
                    if primary or slot.last is None:
                        return None
                    item = slot.last
                    break
            items[slot.name] = item
        return items

    def _run_frame(self, source_items: dict[str, _Item]) -> None:
        memo: dict[str, tuple[dict[str, Any], list[Any]]] = {}
        t_capture = min((it.t_capture for it in source_items.values()), default=time.perf_counter())
        for name, item in source_items.items():
            memo[name] = (item.values, item.events)
            with self._in_stream(self.slots[name].stream):  # ordered after the source's own upload
                self._fire_taps(name, item.values)
        if self._cpu_pipeline is not None:
            self._cpu_pipeline.run_frame(memo, t_capture)
            return
        sinks = [self.slots[n] for n in self.graph.order if self.slots[n].rn.cls.is_sink()]
        frame_events: list[Any] = []
        for sink in sinks:
            values, events = self._gather_inputs(sink, memo)
            frame_events.extend(events)
            if values is None:
                continue  # an upstream branch had nothing this frame (e.g. no face)
            sink.channel.put(_Item(values, events, t_capture), self._stop)
        self._limit_in_flight(frame_events)

    def _limit_in_flight(self, frame_events: list[Any]) -> None:
        """Keep at most `max_frames_in_flight` frames queued on the GPU.

        Launching never blocks, so without this a GPU slower than the camera
        would queue frames without end and latency would grow for the whole
        stream. Waiting on one old frame's events blocks only this thread."""
        if self.device.type != "cuda" or not frame_events:
            return
        self._in_flight.append(frame_events)
        while len(self._in_flight) > self.graph.settings.max_frames_in_flight:
            for ev in self._in_flight.popleft():
                ev.synchronize()

    def _gather_inputs(self, slot: _Slot, memo: dict) -> tuple[dict[str, Any] | None, list[Any]]:
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
                except _FrameFailed as exc:
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
        chain = self._chain_of(name)
        if chain is not None:
            self._run_chain(chain, memo)
            return memo[name]
        slot = self.slots[name]
        values, events = self._gather_inputs(slot, memo)
        if values is None:
            memo[name] = ({}, [])
            return memo[name]
        outs, ev = self._run_node(slot, values, events)
        memo[name] = (outs, ev)
        return memo[name]

    def _run_node(self, slot: _Slot, values: dict[str, Any], events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        t0 = time.perf_counter()
        nvtx = self.device.type == "cuda"
        try:
            with self._in_stream(slot.stream):
                self._wait_events(slot.stream, events, values)
                if nvtx:
                    torch.cuda.nvtx.range_push(slot.name)
                start_ev = self._gpu_start(slot)
                try:
                    outs = slot.node.process(**values) or {}
                finally:
                    if nvtx:
                        torch.cuda.nvtx.range_pop()
                out_events = self._record(slot, start_ev)
                # Taps run on the producer's stream, so a GPU preview copy is ordered after the work.
                self._fire_taps(slot.name, outs)
        except NodeError as exc:
            self._node_failed(slot, exc, expected=True)
            raise _FrameFailed(slot.name, exc) from exc
        except Exception as exc:
            self._node_failed(slot, exc)
            raise _FrameFailed(slot.name, exc) from exc
        t1 = time.perf_counter()
        slot.consecutive_errors = 0
        self._note_time(slot, t0, t1)
        return outs, out_events

    # -- CUDA plumbing -----------------------------------------------------
    def _in_stream(self, stream: Any) -> Any:
        if stream is None:
            return _nullcontext()
        return torch.cuda.stream(stream)

    def _gpu_start(self, slot: _Slot) -> Any:
        if slot.stream is None:
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(slot.stream)
        return ev

    def _record(self, slot: _Slot, start_ev: Any = None) -> list[Any]:
        if slot.stream is None:
            return []
        ev = torch.cuda.Event(enable_timing=start_ev is not None)
        ev.record(slot.stream)
        if start_ev is not None:
            slot.pending_gpu.append((start_ev, ev))
        return [ev]

    def _wait_events(self, stream: Any, events: list[Any], values: dict[str, Any]) -> None:
        if stream is None:
            return
        for ev in events:
            stream.wait_event(ev)
        # Tensors made on another stream must not be recycled while this stream uses them.
        for v in values.values():
            for payload in v if isinstance(v, list) else [v]:
                if isinstance(payload, Payload):
                    for t in payload.tensors():
                        if t.is_cuda:
                            t.record_stream(stream)

    def _poll_gpu_times(self) -> None:
        """Read finished GPU timings without waiting (event.query never blocks)."""
        for slot in self.slots.values():
            keep = []
            for start, end in slot.pending_gpu:
                if end.query():
                    slot.stats.gpu_ms.append(start.elapsed_time(end))
                else:
                    keep.append((start, end))
            slot.pending_gpu = keep[-64:]

    # -- CUDA graph capture of safe chains ------------------------------------
    def _find_chains(self) -> list[tuple[str, ...]]:
        """Maximal runs of cuda_graph_safe nodes, each fed only by the previous one."""
        safe = {
            n for n, s in self.slots.items()
            if s.rn.cls.cuda_graph_safe and not s.rn.cls.is_source() and not s.rn.cls.is_sink() and not s.rn.cls.lazy_inputs
        }
        chains: list[tuple[str, ...]] = []
        used: set[str] = set()
        for n in self.graph.order:
            if n not in safe or n in used:
                continue
            chain = [n]
            while True:
                consumers = {c for c, _ in self.graph.consumers(chain[-1])}
                nxt = next(iter(consumers)) if len(consumers) == 1 else None
                if nxt is None or nxt not in safe or nxt in used:
                    break
                srcs = {s.node for ri in self.graph.nodes[nxt].inputs.values() for s in ri.sources}
                if not srcs <= set(chain) | {s.node for ri in self.graph.nodes[chain[0]].inputs.values() for s in ri.sources}:
                    break
                chain.append(nxt)
            used.update(chain)
            chains.append(tuple(chain))
        return chains

    def _chain_of(self, name: str) -> tuple[str, ...] | None:
        for chain in self._chains:
            if name in chain:
                return chain
        return None

    def _run_chain(self, chain: tuple[str, ...], memo: dict) -> None:
        cap = self._cuda_graphs.get(chain)
        if cap is None:
            cap = self._cuda_graphs[chain] = _CapturedChain(self, chain)
        cap.run(memo)

    # -- bookkeeping -----------------------------------------------------------
    def _note_time(self, slot: _Slot, t0: float, t1: float) -> None:
        slot.stats.frames += 1
        slot.stats.host_ms.append((t1 - t0) * 1000.0)
        if self.trace is not None:
            self.trace.span(slot.name, t0, t1, category=slot.rn.type, args={"frame": self._frame_index})

    def _node_failed(self, slot: _Slot, exc: BaseException, expected: bool = False) -> None:
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

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            log.error("graph stopped: %s", exc)
        self._stop.set()
        self._done.set()

    def _schedule(self, action: Callable[[], None]) -> None:
        with self._pending_lock:
            self._pending.append(action)
        if self._executor is None or not self._executor.is_alive():
            self._run_pending()

    def _run_pending(self) -> None:
        with self._pending_lock:
            actions, self._pending = self._pending, []
        if actions and self._cpu_pipeline is not None:
            self._cpu_pipeline.drain()  # no node changes while the tail thread runs it
        for action in actions:
            try:
                action()
            except Exception:
                log.error("live change failed; the running graph keeps going:\n%s", traceback.format_exc())

    def _apply_params(self, slot: _Slot, params: Any) -> None:
        if slot.node.update_params(params):
            slot.rn.params = params
            log.info("node '%s': parameters updated live", slot.name)
            return
        # The node can't change in place: build a new one beside it, then swap.
        new_rn = dc_replace(slot.rn, params=params)
        fresh = self._make_slot(new_rn)
        self._open_slot(fresh)
        old = self.slots[slot.name]
        if old.rn.cls.is_source() or old.rn.cls.is_sink():
            self._close_slot(old)
            self.slots[slot.name] = fresh
            (self._start_source if fresh.rn.cls.is_source() else self._start_sink)(fresh)
        else:
            self.slots[slot.name] = fresh
            self._close_slot(old)
        self._cuda_graphs.clear()
        log.info("node '%s': reopened with new parameters", slot.name)

    def _swap_graph(self, graph: ValidatedGraph) -> None:
        old_graph = self.graph
        keep: dict[str, _Slot] = {}
        for name, slot in self.slots.items():
            new = graph.nodes.get(name)
            if new is not None and new.type == slot.rn.type and new.params == slot.rn.params:
                keep[name] = slot
        # Sources/sinks whose wiring changed get new channels: restart their threads.
        for name in list(keep):
            slot = keep[name]
            if slot.rn.cls.is_source() or slot.rn.cls.is_sink():
                if _wiring(old_graph, name) != _wiring(graph, name):
                    del keep[name]
        dropped = [s for n, s in self.slots.items() if n not in keep]
        self.slots = {}
        try:
            self._open_all(graph, keep)
        except Exception:
            log.error("new graph failed to start; keeping the old one running")
            for name, slot in keep.items():
                self.slots[name] = slot
            self._open_all(old_graph, {**keep, **{s.name: s for s in dropped}})
            raise
        for slot in dropped:
            self._close_slot(slot)
        log.info("graph replaced: %d nodes kept running, %d restarted/removed", len(keep), len(dropped))


def _wiring(graph: ValidatedGraph, name: str) -> tuple[str, int]:
    """The channel policy of a source (set by its consumers) or a sink (set by its inputs)."""
    rn = graph.nodes[name]
    links = [graph.nodes[c].inputs[p] for c, p in graph.consumers(name)] if rn.cls.is_source() else list(rn.inputs.values())
    queued = [ri.queue for ri in links if ri.policy == "queue"]
    return ("queue", max(queued)) if queued else ("latest", 1)


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


class _CapturedChain:
    """A chain of cuda_graph_safe nodes run as one CUDA graph after a short warm-up.

    Inputs are copied into static buffers, the graph is replayed, and outputs
    that leave the chain are copied out (device copies are cheap; sinks may
    still read them while the next replay runs)."""

    WARMUP = 3

    def __init__(self, runner: GraphRunner, chain: tuple[str, ...]) -> None:
        self.runner = runner
        self.chain = chain
        self.stream = torch.cuda.Stream(runner.device)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: dict[tuple[str, str], Any] = {}
        self.static_out: dict[str, dict[str, Any]] = {}
        self.signature: Any = None
        self.calls = 0
        self.disabled = False

    def _external_inputs(self, memo: dict) -> tuple[dict[tuple[str, str], Any], list[Any]]:
        values: dict[tuple[str, str], Any] = {}
        events: list[Any] = []
        for name in self.chain:
            for ri in self.runner.slots[name].rn.inputs.values():
                for src in ri.sources:
                    if src.node in self.chain:
                        continue
                    outs, evs = self.runner._evaluate(src.node, memo)
                    values[(src.node, src.port)] = outs.get(src.port) if outs else None
                    events.extend(evs)
        return values, events

    def _eager(self, ext: dict, memo: dict, events: list[Any]) -> None:
        local: dict[str, dict[str, Any]] = {}
        for name in self.chain:
            slot = self.runner.slots[name]
            outs, ev = self.runner._run_node(slot, _chain_values(slot, local, ext), events)
            local[name] = outs
            memo[name] = (outs, ev)
            events = ev

    def run(self, memo: dict) -> None:
        ext, events = self._external_inputs(memo)
        if any(v is None for v in ext.values()):
            for name in self.chain:
                memo[name] = ({}, [])
            return
        sig = tuple((k, tuple(tuple(t.shape) + (t.dtype,) for t in v.tensors())) for k, v in sorted(ext.items()) if isinstance(v, Payload))
        if self.disabled or self.calls < self.WARMUP or (self.graph is not None and sig != self.signature):
            if self.graph is not None and sig != self.signature:
                log.info("chain %s: input shapes changed, capturing again", "+".join(self.chain))
                self.graph, self.calls = None, 0
            self.calls += 1
            self._eager(ext, memo, events)
            return
        if self.graph is None:
            try:
                self._capture(ext, events, sig)
            except Exception as exc:
                self.disabled = True
                log.warning("chain %s cannot be captured as a CUDA graph (%s); running it eagerly", "+".join(self.chain), exc)
                self._eager(ext, memo, events)
                return
        self._replay(ext, memo, events)

    def _capture(self, ext: dict, events: list[Any], sig: Any) -> None:
        with torch.cuda.stream(self.stream):
            for ev in events:
                self.stream.wait_event(ev)
            self.static_in = {k: _clone_payload(v) for k, v in ext.items()}
        self.stream.synchronize()  # capture set-up only, once per shape
        g = torch.cuda.CUDAGraph()
        local: dict[str, dict[str, Any]] = {}
        with torch.cuda.graph(g, stream=self.stream):
            for name in self.chain:
                slot = self.runner.slots[name]
                local[name] = slot.node.process(**_chain_values(slot, local, self.static_in)) or {}
        self.graph, self.static_out, self.signature = g, local, sig
        log.info("chain %s captured as one CUDA graph", "+".join(self.chain))

    def _replay(self, ext: dict, memo: dict, events: list[Any]) -> None:
        t0 = time.perf_counter()
        with torch.cuda.stream(self.stream):
            for ev in events:
                self.stream.wait_event(ev)
            for k, v in ext.items():
                for dst, src in zip(self.static_in[k].tensors(), v.tensors()):
                    dst.copy_(src, non_blocking=True)
            self.graph.replay()
            ref = next(iter(ext.values()))
            outs_all = {name: {p: _clone_payload(v, like=ref) for p, v in outs.items()} for name, outs in self.static_out.items()}
            ev = torch.cuda.Event()
            ev.record(self.stream)
            for name in self.chain:
                self.runner._fire_taps(name, outs_all[name])
        t1 = time.perf_counter()
        for name in self.chain:
            slot = self.runner.slots[name]
            memo[name] = (outs_all[name], [ev])
            self.runner._note_time(slot, t0, t1)


def _chain_values(slot: _Slot, local: dict[str, dict[str, Any]], ext: dict[tuple[str, str], Any]) -> dict[str, Any]:
    """A chain node's inputs: from an earlier node of the chain, else from outside it."""
    values: dict[str, Any] = {}
    for port, ri in slot.rn.inputs.items():
        got = [local[s.node].get(s.port) if s.node in local else ext.get((s.node, s.port)) for s in ri.sources]
        values[port] = got if ri.port.multiple else (got[0] if got else None)
    return values


def _clone_payload(p: Any, like: Any = None) -> Any:
    if not isinstance(p, Payload):
        return p
    changes = {k: v.clone() for k, v in vars(p).items() if isinstance(v, torch.Tensor)}
    if like is not None:  # replayed outputs carry the current frame's timing, not the captured one's
        for key in ("timestamp", "index"):
            if hasattr(p, key) and hasattr(like, key):
                changes[key] = getattr(like, key)
    return dc_replace(p, **changes)
