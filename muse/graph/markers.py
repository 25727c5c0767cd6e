"""Node markers in a replayed frame's GPU timeline: which node ran when, inside one CUDA graph launch.

A profiler sees a replayed frame as ~1,700 kernels with no node names (NVTX ranges are not replayed), so a wait
on the frame's critical path cannot be pinned on a node. With markers on (`muse bench --kernel-frames N` with
`MUSE_BENCH_TRACE=FILE`: its profiled run only), every node's work is bracketed on its own stream by two empty
one-thread kernels named after it, `muse_mark_<node>_begin` / `_end`, recorded into the frame like the node's
own kernels; `bench/frame_timeline.py` reads them back as each node's start, end and lane. Each costs a launch
(~2-3 us of GPU); off, nothing is launched. A marker's kernel is compiled on the first eager frame that meets its
node (never while a frame records or a background compile holds the GPU lock: a node first met then is left unmarked
until a later eager frame).
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger("muse.runtime")

__all__ = ["ENABLED", "mark", "marker_name"]

ENABLED = [False]  # set by `muse bench` around its profiled run (a list: read on every node call, set rarely)
_KERNELS: dict[str, Any] = {}
_BROKEN: list[str] = []


def marker_name(node: str, edge: str) -> str:
    """The kernel name that marks `edge` ('begin' / 'end') of `node`'s work: a C identifier."""
    return f"muse_mark_{re.sub(r'[^0-9A-Za-z_]', '_', node)}_{edge}"


def _kernel(name: str) -> Any:
    fn = _KERNELS.get(name)
    if fn is not None:  # every frame, each node's two edges: nothing more to do
        return fn
    from muse.graph.compiled import build_gpu_code

    def make() -> Any:
        import cupy

        return cupy.RawModule(code=f'extern "C" __global__ void {name}() {{}}').get_function(name)

    # not while a compile runs in the background (it may hold the lock for a minute): unmarked meanwhile
    return build_gpu_code(_KERNELS, name, make, _BROKEN, log, "node markers unavailable ({exc}); the timeline has no node names",
                          logging.WARNING)


def mark(node: str, edge: str, stream: Any) -> None:
    """Launch `node`'s `edge` marker on `stream` (a torch CUDA stream); nothing when markers are off or unavailable."""
    if not ENABLED[0] or stream is None:
        return
    fn = _kernel(marker_name(node, edge))
    if fn is None:
        return
    import cupy

    with cupy.cuda.ExternalStream(stream.cuda_stream):
        fn((1,), (1,), ())
