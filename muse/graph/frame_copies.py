"""The copies at a recorded frame's edges made by the recording itself (memcpy nodes), not by launches around it.

Inputs: a recorded segment reads static buffers, and each frame the source's picture (a new buffer every frame) is
copied into them. Outputs: a segment's outputs are static buffers the next replay overwrites, so each sink gets a
copy. Made eagerly, each is one more CUDA submission a frame for the executor, and on the H200 a submission costs
the host 17-46 us while frames are in flight (`bench/host_ops.py`). Here the recording begins with one memcpy node
per input tensor and ends with one per output tensor a sink reads; before each launch the host points them at this
frame's buffers (`cuGraphExecMemcpyNodeSetParams`: it changes the next launch, not the ones queued): an input's
source at the source's picture, an output's destination at a new buffer that becomes the sink's own copy. A frame
is then one launch. An input that cannot be copied flat this frame (not contiguous, or the static buffer itself)
switches its node off for the launch (`cuGraphNodeSetEnabled`) and is copied eagerly, as before; an output copy no
sink takes is dropped (the sink that gets none is given the runtime's copy). Where the driver lacks a call,
`available()` is False and every copy stays eager.

On by default where the driver has the calls; `MUSE_INPUT_COPIES=eager` / `MUSE_OUTPUT_COPIES=eager` turn either
off. On the H200 (`bench/run_gpu.sh OUT s18a`, stream_4k alternating both ways on one machine) the sinks' step fell
from 0.13-0.14 to 0.05 ms a frame and the executor from 1.07-1.15 to 1.06 ms, fps 223-224 -> 227-228.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import replace
from typing import Any

import torch

from muse.graph.driver import GraphEditError, call, check, current_context, function, has_calls, nodes_of_type
from muse.graph.payloads import Payload

__all__ = ["BoundCopies", "BoundOutputs", "InputCopies", "OutputCopies", "available", "copy_eagerly", "wanted"]

_MEMCPY = 1  # CUgraphNodeType: memcpy
_CALLS = ("cuMemcpyDtoDAsync_v2", "cuGraphMemcpyNodeGetParams", "cuGraphExecMemcpyNodeSetParams",
          "cuGraphNodeSetEnabled", "cuGraphNodeGetType", "cuCtxGetCurrent")


class _Memcpy3D(ctypes.Structure):
    """CUDA_MEMCPY3D (cuda.h)."""

    _fields_ = [("srcXInBytes", ctypes.c_size_t), ("srcY", ctypes.c_size_t), ("srcZ", ctypes.c_size_t),
                ("srcLOD", ctypes.c_size_t), ("srcMemoryType", ctypes.c_int), ("srcHost", ctypes.c_void_p),
                ("srcDevice", ctypes.c_uint64), ("srcArray", ctypes.c_void_p), ("reserved0", ctypes.c_void_p),
                ("srcPitch", ctypes.c_size_t), ("srcHeight", ctypes.c_size_t),
                ("dstXInBytes", ctypes.c_size_t), ("dstY", ctypes.c_size_t), ("dstZ", ctypes.c_size_t),
                ("dstLOD", ctypes.c_size_t), ("dstMemoryType", ctypes.c_int), ("dstHost", ctypes.c_void_p),
                ("dstDevice", ctypes.c_uint64), ("dstArray", ctypes.c_void_p), ("reserved1", ctypes.c_void_p),
                ("dstPitch", ctypes.c_size_t), ("dstHeight", ctypes.c_size_t),
                ("WidthInBytes", ctypes.c_size_t), ("Height", ctypes.c_size_t), ("Depth", ctypes.c_size_t)]


def available() -> bool:
    """Whether the driver has every call the copies inside a recording use."""
    return has_calls(*_CALLS)


def wanted(side: str) -> bool:
    """Whether the recordings copy their inputs (`side` "input") or the sinks' outputs ("output") themselves: yes
    where the driver has the calls, unless `MUSE_INPUT_COPIES=eager` / `MUSE_OUTPUT_COPIES=eager` says no."""
    choice = os.environ.get(f"MUSE_{side.upper()}_COPIES", "graph")
    if choice not in ("graph", "eager"):
        raise ValueError(f"MUSE_{side.upper()}_COPIES={choice!r}: expected 'graph' (the recording copies) or 'eager'")
    return choice == "graph" and available()


def _copyable(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Whether one flat device-to-device memcpy of `src` fills `dst` (and they are not the same memory)."""
    return (src.is_cuda and dst.is_cuda and src.device == dst.device and src.dtype == dst.dtype
            and src.shape == dst.shape and src.is_contiguous() and dst.is_contiguous() and dst.numel() > 0
            and src.data_ptr() != dst.data_ptr())


def copy_eagerly(dst: torch.Tensor, src: torch.Tensor, stream: Any) -> None:
    """`src` into `dst` on the current stream, `src` kept from reuse until that copy ran (as a launch would read it)."""
    if dst.data_ptr() != src.data_ptr():
        dst.copy_(src, non_blocking=True)
        if stream is not None and src.is_cuda:
            src.record_stream(stream)  # its producer must not recycle it before this copy ran


def _memcpy(stream: Any, dst: int, src: int, nbytes: int) -> None:
    """A flat device-to-device copy issued on `stream` (inside a capture: a memcpy node)."""
    call("cuMemcpyDtoDAsync_v2", ctypes.c_uint64(dst), ctypes.c_uint64(src), ctypes.c_size_t(nbytes),
         ctypes.c_void_p(int(stream.cuda_stream)))


def _memcpy_nodes(graph: int) -> dict[tuple[int, int, int], tuple[int, _Memcpy3D]]:
    """The flat memcpy nodes of a `cudaGraph_t`, by (destination, source, bytes)."""
    return {(int(p.dstDevice), int(p.srcDevice), int(p.WidthInBytes)): (node, p)
            for node, p in nodes_of_type(graph, _MEMCPY, _Memcpy3D, "cuGraphMemcpyNodeGetParams")
            if p.Height == 1 and p.Depth == 1}


def _nth(payload: Any, index: int) -> torch.Tensor | None:
    """The payload's `index`-th tensor (in `Payload.tensors()` order), None if it is no payload or has fewer."""
    if not isinstance(payload, Payload):
        return None
    for i, t in enumerate(payload.tensors()):
        if i == index:
            return t
    return None


def _statics(static_in: dict[Any, Any]) -> list[tuple[Any, int, torch.Tensor]]:
    return [(k, i, dst) for k in sorted(static_in, key=repr) if isinstance(static_in[k], Payload)
            for i, dst in enumerate(static_in[k].tensors())]


class InputCopies:
    """The copies a recording makes of its inputs: `record` them on the capturing stream at the frame's start,
    then `bind` them to the instantiated graph."""

    def __init__(self) -> None:
        self.recorded: list[tuple[Any, int, int, int, int]] = []  # (key, index, dst ptr, src ptr, bytes)

    def record(self, stream: Any, static_in: dict[Any, Any], ext: dict[Any, Any]) -> None:
        """One memcpy per input tensor that can be copied flat; the rest are copied before each launch (`BoundCopies`)."""
        for k, i, dst in _statics(static_in):
            src = _nth(ext.get(k), i)
            if src is None or not _copyable(dst, src):
                continue
            nbytes = dst.numel() * dst.element_size()
            _memcpy(stream, dst.data_ptr(), src.data_ptr(), nbytes)
            self.recorded.append((k, i, dst.data_ptr(), src.data_ptr(), nbytes))

    def bind(self, graph: int, graph_exec: int, static_in: dict[Any, Any]) -> "BoundCopies":
        """The recorded copies' nodes in `graph` (the `cudaGraph_t` `graph_exec` was made from); GraphEditError
        when one is missing."""
        by_ptrs = _memcpy_nodes(graph)
        nodes = {}
        for k, i, dst, src, nbytes in self.recorded:
            found = by_ptrs.get((dst, src, nbytes))
            if found is None:
                raise GraphEditError("an input's copy is not a memcpy node of the recorded graph")
            nodes[(k, i)] = found
        entries = [_Entry(k, i, dst, *nodes.get((k, i), (None, None))) for k, i, dst in _statics(static_in)]
        return BoundCopies(graph_exec, entries, current_context())


class _Entry:
    """One static input tensor: its key and index, and the memcpy node that fills it (None: copied eagerly)."""

    __slots__ = ("key", "index", "dst", "node", "params", "off")

    def __init__(self, key: Any, index: int, dst: torch.Tensor, node: int | None, params: _Memcpy3D | None) -> None:
        self.key, self.index, self.dst, self.node, self.params = key, index, dst, node, params
        self.off = False  # switched off for the next launch


class BoundCopies:
    """`before_launch(ext, stream)`: the next launch copies this frame's inputs `ext` into the recording."""

    def __init__(self, graph_exec: int, entries: list[_Entry], ctx: Any) -> None:
        self._exec = ctypes.c_void_p(graph_exec)
        self._entries = entries
        self._ctx = ctx
        self._set = function("cuGraphExecMemcpyNodeSetParams")
        self._enable = function("cuGraphNodeSetEnabled")

    @property
    def count(self) -> int:
        """Inputs the recording copies itself."""
        return sum(e.node is not None for e in self._entries)

    def before_launch(self, ext: dict[Any, Any], stream: Any) -> None:
        for e in self._entries:
            src = _nth(ext.get(e.key), e.index)
            if src is None:
                continue
            if e.node is None:  # copied eagerly since its recording
                copy_eagerly(e.dst, src, stream)
                continue
            node = ctypes.c_void_p(e.node)
            if _copyable(e.dst, src):
                ptr = src.data_ptr()
                if e.params.srcDevice != ptr:
                    e.params.srcDevice = ptr
                    check(self._set(self._exec, node, ctypes.byref(e.params), self._ctx), "cuGraphExecMemcpyNodeSetParams")
                if e.off:
                    check(self._enable(self._exec, node, ctypes.c_uint(1)), "cuGraphNodeSetEnabled")
                    e.off = False
                src.record_stream(stream)  # read by the launch: not recycled before it ran
                continue
            # This frame's buffer cannot be copied flat (or is the static buffer): the node sits this launch out
            if not e.off:
                check(self._enable(self._exec, node, ctypes.c_uint(0)), "cuGraphNodeSetEnabled")
                e.off = True
            copy_eagerly(e.dst, src, stream)


class OutputCopies:
    """The sinks' copies of a recording's outputs: `record` them on the capturing stream at the frame's end (every
    side stream joined), then `bind` them to the instantiated graph. Each is recorded into a stand-in buffer of the
    recording's own memory; every launch writes it into a new buffer instead (`BoundOutputs`)."""

    def __init__(self) -> None:
        self.recorded: list[tuple[torch.Tensor, int, int]] = []  # (static tensor, stand-in's pointer, bytes)
        self._stand_ins: list[torch.Tensor] = []  # alive until bound: their addresses name the nodes

    def record(self, stream: Any, payloads: list[Any]) -> None:
        """One memcpy per tensor of `payloads` (outputs a sink reads) that is contiguous and not yet copied."""
        seen = {t.data_ptr() for t, _p, _n in self.recorded}
        for payload in payloads:
            for t in payload.tensors() if isinstance(payload, Payload) else ():
                if not (t.is_cuda and t.is_contiguous() and t.numel() > 0) or t.data_ptr() in seen:
                    continue
                seen.add(t.data_ptr())
                stand_in = torch.empty_like(t)
                nbytes = t.numel() * t.element_size()
                _memcpy(stream, stand_in.data_ptr(), t.data_ptr(), nbytes)
                self._stand_ins.append(stand_in)
                self.recorded.append((t, stand_in.data_ptr(), nbytes))

    def bind(self, graph: int, graph_exec: int) -> "BoundOutputs":
        """The recorded copies' nodes in `graph`; GraphEditError when one is missing."""
        by_ptrs = _memcpy_nodes(graph)
        entries = []
        for t, stand_in, nbytes in self.recorded:
            found = by_ptrs.get((stand_in, t.data_ptr(), nbytes))
            if found is None:
                raise GraphEditError("an output's copy is not a memcpy node of the recorded graph")
            entries.append((t, *found))
        self._stand_ins.clear()
        return BoundOutputs(graph_exec, entries, current_context())


class BoundOutputs:
    """`before_launch()` points each output copy at a new buffer; after the launch, `take(payload)` hands a sink
    the payload with those buffers in place of the recording's (each once: a second sink gets None, then the
    runtime's copy)."""

    def __init__(self, graph_exec: int, entries: list[tuple[torch.Tensor, int, _Memcpy3D]], ctx: Any) -> None:
        self._exec = ctypes.c_void_p(graph_exec)
        self._entries = entries
        self._ctx = ctx
        self._set = function("cuGraphExecMemcpyNodeSetParams")
        self.ready: dict[int, torch.Tensor] = {}  # a static tensor's pointer -> this launch's copy of it

    @property
    def count(self) -> int:
        """Output tensors the recording copies for the sinks itself."""
        return len(self._entries)

    def before_launch(self) -> None:
        """New buffers, on the current stream (the launch's: the allocator orders their reuse after it)."""
        ready = {}
        for static, node, params in self._entries:
            buf = torch.empty_like(static)
            params.dstDevice = buf.data_ptr()
            check(self._set(self._exec, ctypes.c_void_p(node), ctypes.byref(params), self._ctx), "cuGraphExecMemcpyNodeSetParams")
            ready[static.data_ptr()] = buf
        self.ready = ready

    def take(self, payload: Any) -> Any:
        """`payload` (a recording's output, or the same tensors retimed) with this launch's copies in place of its
        tensors, marked as a sink's own; None when a tensor of it has no copy left."""
        if not isinstance(payload, Payload):
            return None
        swap = {}
        for name, value in vars(payload).items():
            if isinstance(value, torch.Tensor):
                if value.data_ptr() not in self.ready:
                    return None
                swap[name] = value.data_ptr()
        if not swap:
            return None
        bufs = {ptr: self.ready.pop(ptr) for ptr in set(swap.values())}
        out = replace(payload, **{name: bufs[ptr] for name, ptr in swap.items()})
        out.__dict__["_sink_copy"] = True  # as Payload.sink_copy marks its copies
        return out
