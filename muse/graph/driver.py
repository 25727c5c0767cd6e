"""The CUDA driver API (`libcuda`) through ctypes, for what torch and CuPy do not expose: reading and editing a
recorded frame's graph (`muse.graph.linear`) and setting the values its nodes write (`muse.graph.frame_clock`)."""

from __future__ import annotations

import ctypes
from typing import Any

__all__ = ["GraphEditError", "call", "check", "current_context", "function", "graph_nodes", "has_calls", "library",
           "nodes_of_type"]


class GraphEditError(RuntimeError):
    """The driver refused a graph edit or query (the message names the call and its CUresult)."""


_lib: ctypes.CDLL | None = None


def library() -> ctypes.CDLL:
    """libcuda, loaded once; GraphEditError where it cannot be."""
    global _lib
    if _lib is None:
        try:
            _lib = ctypes.CDLL("libcuda.so.1")
        except OSError as exc:
            raise GraphEditError(f"the CUDA driver library (libcuda.so.1) cannot be loaded: {exc}") from exc
    return _lib


def has_calls(*names: str) -> bool:
    """Whether the driver library loads and has every function in `names`."""
    try:
        lib = library()
    except GraphEditError:
        return False
    return all(hasattr(lib, n) for n in names)


def function(name: str) -> Any:
    """The driver function `name`, returning its CUresult as an int (kept by callers on a hot path: a lookup less)."""
    fn = getattr(library(), name)
    fn.restype = ctypes.c_int
    return fn


def check(res: int, name: str) -> None:
    """GraphEditError naming `name` unless its CUresult `res` is CUDA_SUCCESS."""
    if res != 0:
        raise GraphEditError(f"{name} failed with CUresult {res}")


def call(name: str, *args: object) -> None:
    """The driver function `name` called with `args`; GraphEditError unless it returns CUDA_SUCCESS."""
    check(function(name)(*args), name)


def graph_nodes(graph: int) -> list[int]:
    """Every node of a `cudaGraph_t` (given as an int), as ints."""
    count = ctypes.c_size_t(0)
    call("cuGraphGetNodes", ctypes.c_void_p(graph), None, ctypes.byref(count))
    buf = (ctypes.c_void_p * count.value)()
    call("cuGraphGetNodes", ctypes.c_void_p(graph), buf, ctypes.byref(count))
    return [int(buf[i] or 0) for i in range(count.value)]


def nodes_of_type(graph: int, kind: int, params_type: type[ctypes.Structure], get_params: str) -> list[tuple[int, Any]]:
    """Every node of a `cudaGraph_t` of CUgraphNodeType `kind`, with its params as the driver call `get_params`
    reads them into a `params_type`."""
    out = []
    for node in graph_nodes(graph):
        found = ctypes.c_int(-1)
        call("cuGraphNodeGetType", ctypes.c_void_p(node), ctypes.byref(found))
        if found.value == kind:
            params = params_type()
            call(get_params, ctypes.c_void_p(node), ctypes.byref(params))
            out.append((node, params))
    return out


def current_context() -> ctypes.c_void_p:
    """The calling thread's CUDA context (the graph-exec edits name it)."""
    ctx = ctypes.c_void_p()
    call("cuCtxGetCurrent", ctypes.byref(ctx))
    return ctx
