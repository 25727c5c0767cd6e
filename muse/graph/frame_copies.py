"""A segment's inputs copied into its recording by the recording itself (memcpy nodes), not by a launch before it.

A recorded segment reads static buffers; each frame the source's picture (a new buffer every frame) must be copied
into them. Done eagerly, that is one more CUDA submission a frame for the executor, and on the H200 each submission
costs the host 17-46 us while frames are in flight (`bench/host_ops.py`). Here the recording begins with one memcpy
node per input tensor, and before each launch the host points the node at the frame's buffer
(`cuGraphExecMemcpyNodeSetParams`: it changes the next launch, not the ones queued), so a frame is one launch.
A node whose input cannot be copied that way this frame (not contiguous, or already the static buffer itself) is
switched off for the launch (`cuGraphNodeSetEnabled`) and the copy is made eagerly, as before. Where the driver
lacks a call, `InputCopies.available()` is False and every copy stays eager.

Opt-in (`MUSE_INPUT_COPIES=graph`) until it has run on a GPU: written in a session whose device time had run out,
so neither its cuda test nor its host-time gain has been seen yet (`bench/run_gpu.sh OUT s18a` measures both).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch

from muse.graph.driver import GraphEditError, call, current_context, library, nodes_of_type
from muse.graph.payloads import Payload

__all__ = ["InputCopies", "BoundCopies", "copy_eagerly"]

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


class InputCopies:
    """The copies a recording makes of its inputs: `record` them on the capturing stream at the frame's start,
    then `bind` them to the instantiated graph."""

    def __init__(self) -> None:
        self.recorded: list[tuple[Any, int, int, int, int]] = []  # (key, index, dst ptr, src ptr, bytes)

    @staticmethod
    def available() -> bool:
        try:
            lib = library()
            return all(hasattr(lib, n) for n in _CALLS)
        except GraphEditError:
            return False

    def record(self, stream: Any, static_in: dict[Any, Any], ext: dict[Any, Any]) -> None:
        """One memcpy per input tensor that can be copied flat; the rest are copied before each launch (`BoundCopies`)."""
        handle = ctypes.c_void_p(int(stream.cuda_stream))
        for k, i, dst in _statics(static_in):
            src_p = ext.get(k)
            src = _nth(src_p, i)
            if src is None or not _copyable(dst, src):
                continue
            nbytes = dst.numel() * dst.element_size()
            call("cuMemcpyDtoDAsync_v2", ctypes.c_uint64(dst.data_ptr()), ctypes.c_uint64(src.data_ptr()),
                 ctypes.c_size_t(nbytes), handle)
            self.recorded.append((k, i, dst.data_ptr(), src.data_ptr(), nbytes))

    def bind(self, graph: int, graph_exec: int, static_in: dict[Any, Any]) -> "BoundCopies":
        """The recorded copies' nodes in `graph` (the `cudaGraph_t` `graph_exec` was made from); GraphEditError
        when one is missing."""
        by_ptrs: dict[tuple[int, int, int], tuple[int, _Memcpy3D]] = {}
        for node, params in nodes_of_type(graph, _MEMCPY, _Memcpy3D, "cuGraphMemcpyNodeGetParams"):
            if params.Height == 1 and params.Depth == 1:
                by_ptrs[(int(params.dstDevice), int(params.srcDevice), int(params.WidthInBytes))] = (node, params)
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


class BoundCopies:
    """`before_launch(ext, stream)`: the next launch copies this frame's inputs `ext` into the recording."""

    def __init__(self, graph_exec: int, entries: list[_Entry], ctx: Any) -> None:
        self._exec = ctypes.c_void_p(graph_exec)
        self._entries = entries
        self._ctx = ctx
        lib = library()
        self._set, self._enable = lib.cuGraphExecMemcpyNodeSetParams, lib.cuGraphNodeSetEnabled
        self._set.restype = self._enable.restype = ctypes.c_int

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
                    self._check(self._set(self._exec, node, ctypes.byref(e.params), self._ctx), "cuGraphExecMemcpyNodeSetParams")
                if e.off:
                    self._check(self._enable(self._exec, node, ctypes.c_uint(1)), "cuGraphNodeSetEnabled")
                    e.off = False
                src.record_stream(stream)  # read by the launch: not recycled before it ran
                continue
            # This frame's buffer cannot be copied flat (or is the static buffer): the node sits this launch out
            if not e.off:
                self._check(self._enable(self._exec, node, ctypes.c_uint(0)), "cuGraphNodeSetEnabled")
                e.off = True
            copy_eagerly(e.dst, src, stream)

    @staticmethod
    def _check(res: int, name: str) -> None:
        if res != 0:
            raise GraphEditError(f"{name} failed with CUresult {res}")
