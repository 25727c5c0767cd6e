"""CUDA plumbing for the runner: per-node streams, events between them, the device clock,
frame timing on the GPU and the bound on frames in flight.

Nothing here synchronizes the device on the hot path: consumers wait on producers' events,
tensors read on another stream are tagged with `record_stream`, and timings are read with
`event.query()` (never blocking). On the CPU every method is a no-op.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch

from muse.graph.devices import device_index
from muse.graph.payloads import Payload
from muse.graph.slots import Item, Slot


_IDLE: dict[int, list[int]] = {}  # device -> stream handles no one holds now; none is ever destroyed (new_stream)

# torch's own setters under `torch.cuda.stream(s)`: that context manager costs ~9 us of host time (H200, torch 2.11,
# bench/host_ops.py: it asks the current device, makes a Stream object for the current stream, compares devices)
# and a frame went through it about eight times on its hot path. These take the stream's ids as plain ints.
_SET = getattr(torch._C, "_cuda_setStream", None)
_GET = getattr(torch._C, "_cuda_getCurrentStream", None)
_DEVICE = getattr(torch._C, "_cuda_getDevice", None)
_RAW = getattr(torch._C, "_cuda_getCurrentRawStream", None)


def on_stream(stream: Any) -> Any:
    """`with on_stream(s):` makes `s` the current stream, as `torch.cuda.stream(s)` does, for a fraction of its
    host time; on leaving, the stream current before (on the stream's device and on the device current before,
    if they differ) is current again. `None` does nothing."""
    if stream is None:
        return nullcontext()
    if _SET is None or _GET is None or _DEVICE is None:  # a torch without them (a CPU-only build): its own context
        return torch.cuda.stream(stream)
    return _StreamScope((stream.stream_id, stream.device_index, stream.device_type))


class _StreamScope:
    """`on_stream`'s context: torch's setters with the stream's ids as plain ints."""

    __slots__ = ("_ids", "_prev", "_prev_there")

    def __init__(self, ids: tuple[int, int, int]) -> None:
        self._ids = ids
        self._prev: Any = None
        self._prev_there: Any = None

    def __enter__(self) -> None:
        ids = self._ids
        here = _DEVICE()
        self._prev = _GET(here)
        if ids[1] != here:  # the stream lives on another device: its device's current stream comes back too
            self._prev_there = _GET(ids[1])
        _SET(*ids)

    def __exit__(self, *exc: Any) -> None:
        if self._prev_there is not None:
            _SET(*self._prev_there)
            self._prev_there = None
        _SET(*self._prev)


def raw_stream(device: torch.device) -> int:
    """The current stream's `cudaStream_t` on `device` as an int (no Stream object made: ~3 us less a call)."""
    index = device_index(device)
    if _RAW is not None:
        return int(_RAW(index))
    return torch.cuda.current_stream(device).cuda_stream


def record_event(stream: Any, timing: bool = False) -> Any:
    """A new blocking event recorded on `stream` (the current one), tagged with the stream's handle so that a later
    wait on the same stream can be skipped (`waits_on`): work on one stream runs in order anyway, and each
    `wait_event` is one more driver call on the hot path."""
    ev = torch.cuda.Event(enable_timing=timing, blocking=True)
    ev.record(stream)
    ev.recorded_on = stream.cuda_stream
    return ev


def waits_on(stream: Any, events: list[Any]) -> None:
    """`stream` waits for `events`, but for those recorded on it (`record_event`)."""
    here = stream.cuda_stream
    for ev in events:
        if getattr(ev, "recorded_on", None) != here:
            stream.wait_event(ev)


def new_stream(device: torch.device | str) -> "torch.cuda.Stream":
    """A CUDA stream of the caller's alone, for as long as the returned object lives.

    `torch.cuda.Stream()` hands out streams round-robin from a pool of 32 a device, so a graph of 20-odd nodes,
    its sinks, its recordings and the background compiles come to share streams: a sink's download or a
    compile's autotuning on a stream another thread records a frame on lands in that recording (or breaks it).
    Here the CUDA runtime makes the stream (through CuPy, as a bare handle) and torch uses it as an
    ExternalStream. A stream is never destroyed: a tensor tagged with `record_stream` can outlive its node, and
    freeing it records an event on the stream (on a destroyed one the process aborts, seen in the cuda tests);
    nor is there a destructor left to run at the interpreter's exit. Once its holder is gone the stream is
    handed to the next asker instead (`_OwnedStream.__del__`)."""
    dev = torch.device(device)
    index = device_index(dev)
    idle = _IDLE.setdefault(index, [])
    try:
        handle = idle.pop()
    except IndexError:
        try:
            import cupy

            with cupy.cuda.Device(index):
                handle = int(cupy.cuda.runtime.streamCreateWithFlags(cupy.cuda.runtime.streamNonBlocking))
        except Exception:  # no CuPy on this machine: torch's pooled streams (shared beyond 32)
            return torch.cuda.Stream(torch.device("cuda", index))
    stream = _OwnedStream(handle, device=torch.device("cuda", index))
    stream._muse_idle = idle
    return stream


class _OwnedStream(torch.cuda.ExternalStream):
    """A stream from `new_stream`: when the object is freed its handle goes back to the idle list.

    A finalizer, not a weak reference: torch 2.11's stream objects are freed without clearing the weak
    references to them (H200, 2026-12-02: a `weakref.finalize` on one never ran, and the dangling reference
    crashed every GPU process at exit, in `_PyWeakref_ClearRef` under `Py_FinalizeEx`)."""

    _muse_idle: list[int] | None = None

    def __del__(self) -> None:
        idle = self._muse_idle
        if idle is not None:
            try:
                idle.append(self.cuda_stream)
            except Exception:  # at the interpreter's exit there is no one left to hand it to
                pass


class SideStreams:
    """Parts of one node's device work run side by side: `with side.branch(i):` queues the block on the node's
    i-th extra stream, ordered after the work queued so far on the current stream; `side.join(i, *outs)` orders
    the current stream after it again. Inside a recorded frame the branch becomes a parallel branch of the frame's
    graph (the node's chains of small kernels overlap instead of waiting on each other). The results are the
    same numbers in the same order either way; on a CPU device both are no-ops (one stream). Code that
    torch.compile may trace picks `ONE_STREAM if torch.compiler.is_compiling() else self._side`: traced, it then
    reads nothing of the node's own object, whose attributes would become guards that another engine's fail."""

    def __init__(self, device: torch.device | str) -> None:
        self.device = torch.device(device)
        self._streams: list[Any] = []

    def _on(self) -> bool:
        return self.device.type == "cuda" and not torch.compiler.is_compiling()

    def branch(self, i: int) -> Any:
        if not self._on():
            return nullcontext()
        while len(self._streams) <= i:
            self._streams.append(new_stream(self.device))
        side = self._streams[i]
        side.wait_stream(torch.cuda.current_stream(self.device))
        return on_stream(side)

    def join(self, i: int, *outs: Any) -> None:
        """The current stream waits for branch i; tensors it made (`outs`) are not recycled on its stream
        before the current stream's use of them is done (eager frames; a recording's memory is the graph's)."""
        if not self._on() or i >= len(self._streams):
            return
        main = torch.cuda.current_stream(self.device)
        main.wait_stream(self._streams[i])
        if torch.cuda.is_current_stream_capturing():
            return
        for t in outs:
            for x in (t if isinstance(t, (tuple, list)) else (t,)):
                if isinstance(x, torch.Tensor) and x.is_cuda:
                    x.record_stream(main)


# What code that torch.compile traces uses instead of a node's own SideStreams: one stream, and nothing of the
# node's object to guard on (the compiled code must fit every engine alike: the warm-up's spare and the node's)
ONE_STREAM = SideStreams("cpu")


class CudaPlumbing:
    """Mixin of `GraphRunner`: streams and events (uses its `device`, `slots`, `stats`, `clock`)."""

    def _in_stream(self, stream: Any) -> Any:
        return on_stream(stream)

    def _gpu_start(self, slot: Slot) -> Any:
        if slot.stream is None:
            return None
        ev = torch.cuda.Event(enable_timing=True, blocking=True)
        ev.record(slot.stream)
        return ev

    # Events are made with blocking=True throughout: a host thread that waits on one (the in-flight
    # bound, a sink's download) sleeps instead of spinning a CPU core the streamer's game needs.
    def _record(self, slot: Slot, start_ev: Any = None) -> list[Any]:
        if slot.stream is None:
            return []
        ev = torch.cuda.Event(enable_timing=start_ev is not None, blocking=True)
        ev.record(slot.stream)
        if start_ev is not None:
            slot.pending_gpu.append((start_ev, ev))
        return [ev]

    def _wait_events(self, stream: Any, events: list[Any], values: dict[str, Any]) -> None:
        if stream is None:
            return
        waits_on(stream, events)
        if self._recording:
            return  # recorded memory belongs to the graph's pool for as long as the graph lives
        # Tensors made on another stream must not be recycled while this stream uses them.
        for v in values.values():
            for payload in v if isinstance(v, list) else [v]:
                if isinstance(payload, Payload):
                    for t in payload.tensors():
                        if t.is_cuda:
                            t.record_stream(stream)

    def _poll_gpu_times(self) -> None:
        """Read finished GPU timings without waiting (event.query never blocks)."""
        keep = []
        for start, end in self._frame_times:
            if end.query():
                self.stats.frame_gpu_ms.append(start.elapsed_time(end))
            else:
                keep.append((start, end))
        self._frame_times = keep[-64:]
        for slot in self.slots.values():
            if not slot.pending_gpu:  # captured and host-only nodes: nothing timed on their own
                continue
            keep = []
            for start, end in slot.pending_gpu:
                if end.query():
                    slot.stats.gpu_ms.append(start.elapsed_time(end))
                else:
                    keep.append((start, end))
            slot.pending_gpu = keep[-64:]

    def _tick_clock(self, source_items: dict[str, Item]) -> list[Any]:
        """Write this frame's time into the device clock, after the last frame's readers are done; with a frame
        program that writes it inside its recording (`muse.graph.frame_clock`), only when the frame runs eagerly
        (`_clock_for_eager`), and else at the replay (`_clock_in_replay`)."""
        primary = next(iter(source_items.values()), None)
        t = 0.0
        if primary is not None:
            for v in primary.values.values():
                if isinstance(v, Payload) and isinstance(getattr(v, "timestamp", None), (int, float)):
                    t = float(v.timestamp)
                    break
        program = self.program
        if program is not None and program.clock_nodes is not None:
            self._clock_t, self._clock_due = t, True
            return []
        return self._write_clock(t)

    def _clock_in_replay(self, stream: Any, bound: Any) -> None:
        """The replay about to launch on `stream` writes the clock: after the last frame's readers, and it starts
        the frame's GPU time."""
        bound.set(self._clock_t)
        if not self._clock_due:  # written already this frame (eagerly, the same value)
            return
        self._clock_due = False
        waits_on(stream, self._last_frame_events)  # (the last replay's own end is on this stream: no wait)
        self._frame_start = record_event(stream, timing=True)

    def _clock_for_eager(self, memo: dict) -> None:
        """Nodes run eagerly this frame: the clock is written as without a recording, and the sources' consumers
        wait for it (their events are the sources' in `memo`)."""
        if not self._clock_due:
            return
        self._clock_due = False
        events = self._write_clock(self._clock_t)
        for name in self._roles()[1]:
            done = memo.get(name)
            if isinstance(done, tuple):
                done[1].extend(events)

    def _write_clock(self, t: float) -> list[Any]:
        stream = self._frame_stream
        if stream is None:
            self.clock.fill_(t)
            return []
        with on_stream(stream):
            waits_on(stream, self._last_frame_events)
            self.clock.fill_(t)  # the value travels as a kernel argument: no host buffer to race on
            # One event both starts the frame's GPU time (the GPU reaches it when the last frame is done; the fill
            # is a microsecond) and tells the nodes the clock is written.
            ev = self._frame_start = record_event(stream, timing=True)
        return [ev]

    def _time_frame(self, frame_events: list[Any]) -> None:
        """Events around the whole frame on the GPU (read later, never waited on)."""
        stream = self._frame_stream
        start = getattr(self, "_frame_start", None)
        if stream is None or start is None:
            return
        if frame_events and all(ev is self._frame_end for ev in frame_events):
            # every output waits on one timed event, the frame's last (a sink's copy, or the replay that made the
            # sinks' copies itself): it ends the frame
            self._frame_times.append((start, self._frame_end))
            self._frame_start = None
            return
        with on_stream(stream):
            waits_on(stream, frame_events)
            end = record_event(stream, timing=True)
        self._frame_times.append((start, end))
        self._frame_start = None

    def _detach_for_sink(self, values: dict[str, Any], events: list[Any]) -> tuple[dict[str, Any], list[Any]]:
        program = self.program
        made: dict[str, Any] = {}
        if program is not None and program.frame_outputs:  # copies the replay made for the sinks (frame_copies)
            for k, v in values.items():
                got = v if v is None else program.take_sink_copy(v)  # (an optional input with nothing: as it is)
                if got is not None or v is None:
                    made[k] = got
            if len(made) == len(values):
                return made, events  # written by the launch: its end event (in `events`) is all the sink waits for
            values = {k: v for k, v in values.items() if k not in made}
        stream = self._frame_stream
        with self._in_stream(stream):
            self._wait_events(stream, events, values)  # and the originals are not recycled before the copy ran
            out = {k: copy_payload(v) for k, v in values.items()} | made
            if stream is None:
                return out, events
            ev = self._frame_end = record_event(stream, timing=True)
        return out, [ev]

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
                ev.synchronize()  # a blocking event: the thread sleeps (H200: 0.06 ms CPU for 4.5 ms waited)


def copy_payload(p: Any) -> Any:
    """A payload (or list of them) with its own copy of every tensor, marked as a sink's own (`is_sink_copy`)."""
    if isinstance(p, list):
        return [copy_payload(v) for v in p]
    return p.sink_copy() if isinstance(p, Payload) else p
