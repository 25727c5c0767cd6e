"""The frame clock written inside a recorded frame, not by a kernel launched before it.

Captured nodes read the time from the runner's clock, a float64 on the device (`ctx.clock`). Writing it eagerly
before each replay was a `fill_` kernel on a stream of its own, ordered after the last frame: ~0.1 ms of the
executor's host time a 4K frame on the H200, because every launch costs the host far more while the GPU is busy
with the frames in flight (`bench/host_ops.py`). Here the recording begins with two 32-bit memset nodes that write
the clock's two halves, and before each launch the host sets the values they write
(`cuGraphExecMemsetNodeSetParams`: it changes the next launch, not the ones queued). The driver API is reached
through ctypes (`muse.graph.driver`); where a call is missing the clock stays eager.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any

import torch

from muse.graph.driver import GraphEditError, call, check, current_context, function, has_calls, nodes_of_type

__all__ = ["ClockNodes", "BoundClock"]

_MEMSET = 2  # CUgraphNodeType: memset


class _MemsetParams(ctypes.Structure):
    """CUDA_MEMSET_NODE_PARAMS (cuda.h)."""

    _fields_ = [("dst", ctypes.c_uint64), ("pitch", ctypes.c_size_t), ("value", ctypes.c_uint),
                ("elementSize", ctypes.c_uint), ("width", ctypes.c_size_t), ("height", ctypes.c_size_t)]


def _halves(t: float) -> tuple[int, int]:
    """The float64 `t` as its low and high 32-bit words (little-endian, as the GPU stores it)."""
    lo, hi = struct.unpack("<II", struct.pack("<d", float(t)))
    return lo, hi


class ClockNodes:
    """What a recording needs to write `clock` (a float64 device scalar) from inside: `record` on the capturing
    stream at the frame's start, then `bind` on the instantiated graph."""

    def __init__(self, clock: torch.Tensor) -> None:
        self.clock = clock
        self.ptr = int(clock.data_ptr())

    @staticmethod
    def available(clock: torch.Tensor) -> bool:
        """A CUDA float64 scalar, and a driver with the calls used here."""
        if not (clock.is_cuda and clock.dtype == torch.float64 and clock.numel() == 1):
            return False
        return has_calls("cuMemsetD32Async", "cuGraphExecMemsetNodeSetParams", "cuGraphMemsetNodeGetParams",
                         "cuGraphNodeGetType", "cuCtxGetCurrent")

    def record(self, stream: Any, t: float = 0.0) -> None:
        """Issue the two memsets on `stream` (inside a capture they become the frame's first nodes)."""
        handle = ctypes.c_void_p(int(stream.cuda_stream))
        for offset, word in zip((0, 4), _halves(t)):
            call("cuMemsetD32Async", ctypes.c_uint64(self.ptr + offset), ctypes.c_uint(word), ctypes.c_size_t(1), handle)

    def bind(self, graph: int, graph_exec: int) -> "BoundClock":
        """The two memset nodes of `graph` (the `cudaGraph_t` `graph_exec` was instantiated from) that write the
        clock; GraphEditError when they are not both there."""
        found: dict[int, tuple[int, _MemsetParams]] = {}
        for node, params in nodes_of_type(graph, _MEMSET, _MemsetParams, "cuGraphMemsetNodeGetParams"):
            offset = params.dst - self.ptr
            if offset in (0, 4) and params.elementSize == 4 and params.width == 1:
                found[offset] = (node, params)
        if set(found) != {0, 4}:
            raise GraphEditError("the frame clock's memset nodes are not in the recorded graph")
        return BoundClock(graph_exec, found[0], found[4], current_context())


class BoundClock:
    """`set(t)`: the next launch of the graph writes `t` into the clock."""

    def __init__(self, graph_exec: int, low: tuple[int, _MemsetParams], high: tuple[int, _MemsetParams], ctx: Any) -> None:
        self._exec = ctypes.c_void_p(graph_exec)
        self._low, self._high = low, high
        self._ctx = ctx
        self._set = function("cuGraphExecMemsetNodeSetParams")

    def set(self, t: float) -> None:
        for (node, params), word in zip((self._low, self._high), _halves(t)):
            if params.value == word:  # what the graph writes already (the high half changes every ~minute)
                continue
            params.value = word
            check(self._set(self._exec, ctypes.c_void_p(node), ctypes.byref(params), self._ctx), "cuGraphExecMemsetNodeSetParams")
