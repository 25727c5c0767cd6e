"""Recording a frame's device work once and replaying it: CUDA graphs, and a CPU emulation of them.

`CudaFrameGraph` wraps `torch.cuda.CUDAGraph`: the kernels launched while recording
are not run, they are replayed later with one launch, reading and writing the same
addresses every time. That is the whole contract a captured node must live with:
state it updates in place keeps its address; a Python value (a float, a host flag,
a frame counter) read while recording is baked into every replay.

`EmulatedFrameGraph` gives the CPU the same semantics, so the contract can be tested
without a GPU: every aten op issued while recording is kept with its arguments and
run again on replay, writing its result into the tensor it produced the first time.
An op that reads the device back to the host (`.item()`, `bool(t)`, `nonzero`,
boolean-mask indexing) raises `CaptureError` in both, instead of freezing one frame's answer.

`LateValue` is the one way a captured node reads a device value on the host: the
copy to pinned memory is part of the frame, and the host reads it a frame later.
"""

from __future__ import annotations

import gc
import threading
from typing import Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_map

from muse.graph.host_guards import CaptureError, HostDataGuard, HostReadGuard
from muse.graph.launch import default_generator, direct_launch
from muse.graph.linear import FRAME_ORDERS
from muse.graph.devices import device_index

__all__ = [
    "CaptureError",
    "CudaFrameGraph",
    "EagerFrame",
    "EmulatedFrameGraph",
    "FRAME_ORDERS",
    "LateValue",
    "active_recording",
    "device_constant",
    "is_recording",
]


class EagerFrame:
    """A `frame_variant()` value that asks for this frame to run eagerly: its segment is neither
    recorded nor replayed (fault injection uses it; so does a node that needs host work this frame)."""

    def __init__(self, why: str = "") -> None:
        self.why = why

    def __repr__(self) -> str:
        return f"EagerFrame({self.why!r})"


_state = threading.local()


def active_recording() -> "FrameGraph | None":
    """The frame graph this thread is recording into, if any."""
    return getattr(_state, "recording", None)


def is_recording() -> bool:
    return active_recording() is not None


class FrameGraph:
    """One recorded frame (one variant). `record(fn)` runs `fn` under recording and returns its result."""

    executes_while_recording = False  # CUDA: recording runs nothing; the first replay computes the frame
    launched_by = "host"  # how a replay starts (`muse bench` shows it): the CPU emulation runs on the host

    def __init__(self) -> None:
        self.late: list[LateValue] = []  # published inside: stamped with the frame's event after each replay

    def record(self, fn: Callable[[], Any]) -> Any:
        raise NotImplementedError

    def replay(self) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Let go of what the recording holds (the graph, its memory); it is not replayed after this."""

    def _enter(self) -> None:
        if getattr(_state, "recording", None) is not None:
            raise CaptureError("a frame is already being recorded on this thread")
        _state.recording = self

    def _exit(self) -> None:
        _state.recording = None


class CudaFrameGraph(FrameGraph):
    """A CUDA graph recorded on `stream`; variants of one program share one memory pool.

    `join` lists the other streams the frame may fork onto: if the frame raises
    half-way, they are joined back so the capture ends cleanly and the allocator
    forgets it (a capture left open makes it defer every cross-stream free: memory
    would grow until the GPU is full)."""

    def __init__(self, stream: "torch.cuda.Stream", pool: Any = None, join: Iterable[Any] = (), order: str = "branches") -> None:
        super().__init__()
        if order not in FRAME_ORDERS:
            raise ValueError(f"frame order {order!r}: one of {', '.join(FRAME_ORDERS)}")
        self.stream = stream
        self.order = order
        # the graph is kept beside its instantiation: `shape` reads it when asked, and "linear" rewires it first
        self.graph = torch.cuda.CUDAGraph(keep_graph=True)
        self.pool = pool
        self.join = list(join)
        self._shape: dict[str, Any] | None = None
        self._launch: Callable[[], None] | None = None  # direct_launch, decided at the first replay
        self._launch_checked = False
        self.launched_by = "not yet"  # then "cudaGraphLaunch" (direct_launch) or "torch" (its replay)

    def record(self, fn: Callable[[], Any]) -> Any:
        torch.cuda.synchronize(self.stream.device)  # the recording starts from an idle device, once per variant
        self._enter()
        # No garbage collection while recording: a collection runs destructors on whichever thread allocates, and an
        # unreachable old CUDA graph (a recording a node's fault aborted lives on in its exception's reference cycle
        # until a collection) reset on this thread inside the capture breaks it ("operation not permitted when
        # stream is capturing (function reset)", then the next node's "operation failed due to a previous error
        # during capture": seen on the H200 in the fault-injection stream test). torch.cuda.graph collects first
        # for the same reason; disabled here instead, so the recording's stall is not a full collection longer.
        collecting = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.stream(self.stream), HostDataGuard(), HostReadGuard():
                # thread_local: sources and sinks keep uploading/downloading on their own threads meanwhile.
                if self.pool is None:
                    self.graph.capture_begin(capture_error_mode="thread_local")
                else:
                    self.graph.capture_begin(pool=self.pool, capture_error_mode="thread_local")
                try:
                    result = fn()
                except BaseException:
                    self._abort()
                    raise
                try:
                    self.graph.capture_end()
                except BaseException:
                    self._release()
                    raise
        finally:
            self._exit()
            if collecting:
                gc.enable()
        if self.order == "linear":
            from muse.graph.linear import linearize

            self._shape = self._read_shape()  # as recorded, before the rewiring
            linearize(self.graph.raw_cuda_graph())
        self.graph.instantiate()
        if self.pool is None:
            self.pool = self.graph.pool()
        return result

    @property
    def shape(self) -> dict[str, Any] | None:
        """Nodes by type, edges and roots of the graph as recorded (`muse bench` prints them); read on the first
        ask, not while recording: a recording already holds the stream ~0.1-0.3 s, and a walk over ~2,000 nodes
        through ctypes adds to it. None once released or before a recording."""
        if self._shape is None and self.pool is not None:
            self._shape = self._read_shape()
        return self._shape

    def _read_shape(self) -> dict[str, Any] | None:
        from muse.graph.linear import GraphEditError, graph_shape

        try:
            return graph_shape(self.graph.raw_cuda_graph())
        except GraphEditError as exc:  # a driver without the query: the shape is only reported
            return {"error": str(exc)}
        except RuntimeError:  # no graph kept (reset, or never recorded)
            return None

    def _abort(self) -> None:
        for s in self.join:
            try:
                self.stream.wait_stream(s)
            except Exception:  # a stream that never joined the capture: nothing to join
                pass
        try:
            self.graph.capture_end()
        except Exception:  # the capture was invalidated: torch never took it as ended, so the pool is ours to let go
            self._release()
            return
        # An ended capture is an ordinary graph: reset releases its pool once. Releasing it by hand too made the destructor
        # release it again, an assert in a destructor: the process aborted when the failed recording was freed (s15a).
        try:
            self.graph.reset()
        finally:
            torch.cuda.synchronize(self.stream.device)

    def _release(self) -> None:
        """Tell the allocator this capture is over, whatever state CUDA left it in."""
        device = device_index(self.stream.device)
        try:
            pool = self.graph.pool()
        except Exception:
            return
        for call in ("_cuda_endAllocateToPool", "_cuda_releasePool"):
            fn = getattr(torch._C, call, None)
            if fn is not None:
                try:
                    fn(device, pool)
                except Exception:
                    pass
        try:
            torch.cuda.synchronize(self.stream.device)
        except Exception:
            pass

    def replay(self) -> None:
        launch = self._launch
        if launch is not None:
            launch()
            return
        gen = default_generator(self.stream.device)
        before = gen.get_offset() if gen is not None else None
        self.graph.replay()
        if not self._launch_checked:
            self._launch_checked = True
            after = gen.get_offset() if gen is not None else None
            self._launch = direct_launch(self.graph, self.stream.device, uses_rng=before != after)
            self.launched_by = "cudaGraphLaunch" if self._launch is not None else "torch"

    def release(self) -> None:
        # While the runner stops, not in a finalizer at the interpreter's exit: every stream is idle then (the
        # bench's processes ended with a segmentation fault in the exit's finalizers, 2026-12-02).
        self._launch = None
        torch.cuda.synchronize(self.stream.device)
        self.graph.reset()
        self.pool = None


class EmulatedFrameGraph(FrameGraph):
    """CPU stand-in for a CUDA graph with the same rules (for tests; never faster)."""

    executes_while_recording = True  # recording runs the ops once: that is the recorded frame's result

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[Any, tuple, dict, Any]] = []

    def record(self, fn: Callable[[], Any]) -> Any:
        self._enter()
        try:
            with HostDataGuard(), HostReadGuard(on_op=self._keep):
                return fn()
        finally:
            self._exit()

    def _keep(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        self.ops.append((func, tree_map(_geometry, args), tree_map(_geometry, kwargs), tree_map(_geometry, out)))

    def replay(self) -> None:
        with torch.inference_mode():  # ops recorded under inference mode write inference tensors
            for func, args, kwargs, out in self.ops:
                # Tensors as they were when recorded: an in-place view op (`squeeze_`, as torch.quantile
                # uses) may have changed their shape since, while a CUDA graph keeps the recorded geometry.
                args, kwargs = tree_map(_as_recorded, (args, kwargs))
                out = tree_map(_as_recorded, out)
                fresh = func(*args, **kwargs)
                for old, new in zip(_flat(out), _flat(fresh)):
                    if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and not _same_view(old, new):
                        old.copy_(new)

    def release(self) -> None:
        self.ops.clear()

    def __len__(self) -> int:
        return len(self.ops)


_LANDED: list[Any] = [None]  # the last event seen done by `LateValue.ready` (events only ever go from pending to done)


class LateValue:
    """A small device tensor the host reads one frame later, without stalling the device.

    `publish(t)` queues a copy into pinned host memory on the current stream (inside a
    recorded frame the copy is part of every replay); `read()` waits only for that copy,
    which finished with the previous frame. `ready()` never blocks.
    """

    def __init__(self, device: torch.device | str, shape: tuple[int, ...] = (), dtype: torch.dtype = torch.float32) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.host = torch.zeros(shape, dtype=dtype, pin_memory=self.cuda)
        # the same bytes as numpy: reading a flag through it costs the host ~0.2 us, through torch ~10 us (each
        # replayed frame reads one of these per captured node: the NaN guard's, the trackers', the switches')
        self.view = self.host.numpy()
        self.event: Any = None
        self.published = False
        self.version = 0  # counts publishes (and replays that published): tells a fresh value from one already read

    def publish(self, value: torch.Tensor) -> None:
        self.host.copy_(value.detach().reshape(self.host.shape), non_blocking=self.cuda)
        self.published = True
        self.version += 1
        graph = active_recording()
        if graph is not None:
            graph.late.append(self)  # the frame program stamps it with each replay's end event
            self.event = None
        elif self.cuda:
            self.event = torch.cuda.Event(blocking=True)
            self.event.record()

    def stamp(self, event: Any) -> None:
        """The event after which the last replay's copy is in `host` (frame programs call this)."""
        self.event = event
        self.published = True
        self.version += 1

    def ready(self) -> bool:
        event = self.event
        if event is None or event is _LANDED[0]:
            return True
        if event.query():
            # every late value of a replay is stamped with that replay's end event: one query answers for all
            _LANDED[0] = event
            return True
        return False

    def read(self) -> torch.Tensor:
        """The value published last (zeros before any publish); waits only for its own copy."""
        if self.event is not None:
            self.event.synchronize()
        return self.host

    def reset(self) -> None:
        self.host.zero_()
        self.event = None
        self.published = False


_CONSTANTS: dict[tuple, torch.Tensor] = {}
_CONSTANTS_MAX = 512


def device_constant(values: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A small constant (index list, colour, scale) as a device tensor, made once and kept.

    `pt[[1, 5, 9]]` or `torch.tensor(list, device=...)` copies host memory to the device
    on every call, which a recorded frame cannot do (the copy would need pageable host
    memory at replay); the first (eager) frame makes the tensor, recordings reuse it."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    key = (repr(values), str(device), dtype)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= _CONSTANTS_MAX:
            _CONSTANTS.pop(next(iter(_CONSTANTS)))
        t = _CONSTANTS[key] = torch.tensor(values, device=device, dtype=dtype)
    return t


class _Geometry:
    """A recorded tensor with the shape, strides and offset it had at recording."""

    __slots__ = ("t", "shape", "stride", "offset")

    def __init__(self, t: torch.Tensor) -> None:
        self.t, self.shape, self.stride, self.offset = t, tuple(t.shape), t.stride(), t.storage_offset()


def _geometry(x: Any) -> Any:
    return _Geometry(x) if isinstance(x, torch.Tensor) else x


def _as_recorded(x: Any) -> Any:
    if not isinstance(x, _Geometry):
        return x
    t = x.t
    if tuple(t.shape) == x.shape and t.stride() == x.stride and t.storage_offset() == x.offset:
        return t
    return t.as_strided(x.shape, x.stride, x.offset)


# -- internals ------------------------------------------------------------------------------------------
def _flat(x: Any) -> Iterable[Any]:
    if isinstance(x, (tuple, list)):
        for v in x:
            yield from _flat(v)
    else:
        yield x


def _same_view(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
        and a.storage_offset() == b.storage_offset()
        and a.shape == b.shape
        and a.stride() == b.stride()
    )
