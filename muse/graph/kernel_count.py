"""`muse bench`'s profiled phase: kernels launched a frame, the costliest kernels and the CUDA calls by host time.

CUPTI's kernel tracing makes each kernel node of a graph launch cost the host ~1 us, so the host times of this
phase (a 4K frame's `cudaGraphLaunch` read 2.0-2.7 ms on the H200) are not those of an unprofiled frame (0.2 ms):
the bench's executor steps are measured without it.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["count_kernels", "start_profiler"]


def start_profiler() -> Any:
    from torch.profiler import ProfilerActivity, profile

    # CPU too: the CUDA runtime calls (graph launches, synchronisations, copies) and how long the host spent in them
    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
    prof.__enter__()
    return prof


def count_kernels(prof: Any) -> tuple[int, list[dict[str, Any]], list[dict[str, Any]]]:
    """Kernels launched (graph replays count each kernel inside), the costliest kernel names, and the CUDA
    runtime calls by the host time spent in them. `MUSE_BENCH_TRACE=FILE` also writes the timeline (Chrome trace)."""
    prof.__exit__(None, None, None)
    trace = os.environ.get("MUSE_BENCH_TRACE")
    if trace:
        prof.export_chrome_trace(trace)
    count = 0
    by_name: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    for ev in prof.events():
        name = ev.name
        if str(getattr(ev, "device_type", "")).endswith("CUDA"):
            # copies and fills are not kernels; nor are the node markers a traced run adds (muse.graph.markers)
            if "memcpy" not in name.lower() and "memset" not in name.lower() and not name.startswith("muse_mark_"):
                count += 1
                slot = by_name.setdefault(name, [0, 0.0])
                slot[0] += 1
                slot[1] += float(getattr(ev, "device_time", 0.0) or getattr(ev, "cuda_time", 0.0) or 0.0)
        elif name.startswith(("cuda", "cu")) and not name.startswith("cuda::"):  # a runtime/driver API call
            slot = calls.setdefault(name, [0, 0.0])
            slot[0] += 1
            slot[1] += float(ev.time_range.elapsed_us())
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:40]
    host = sorted(calls.items(), key=lambda kv: -kv[1][1])[:20]
    return (count, [{"kernel": k[:160], "launches": int(v[0]), "total_us": round(v[1], 1)} for k, v in top],
            [{"call": k, "count": int(v[0]), "total_us": round(v[1], 1)} for k, v in host])
