"""Where a benchmark's host CPU goes: each thread's CPU time (read from /proc while the threads live) and the
time Python's garbage collector stops every thread for. `muse bench` prints both per measured frame."""

from __future__ import annotations

import os
import time
from typing import Any

__all__ = ["GcPauses", "by_thread", "thread_cpu_s", "thread_names"]


class GcPauses:
    """Time Python's garbage collector takes while measuring: after Inductor compiles, the process holds millions
    of objects, and a full collection stops every thread for as long as it walks them."""

    def __init__(self) -> None:
        self.total = self.longest = 0.0
        self.full = 0
        self._t: float | None = None
        self._on = False

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        elif self._t is not None:
            took = time.perf_counter() - self._t
            self.total += took
            self.longest = max(self.longest, took)
            self.full += info.get("generation") == 2
            self._t = None

    def start(self) -> None:
        import gc

        if not self._on:
            gc.callbacks.append(self._callback)
            self._on = True

    def stop(self) -> None:
        import gc

        if self._on:
            gc.callbacks.remove(self._callback)
            self._on = False

    def summary(self, frames: int) -> dict[str, float]:
        import gc

        return {"ms_per_frame": round(self.total * 1000.0 / max(1, frames), 3), "full": self.full,
                "longest_ms": round(self.longest * 1000.0, 2), "objects": len(gc.get_objects())}


def thread_cpu_s() -> dict[int, float]:
    """CPU seconds (user + system) of each of this process's threads, by OS thread id (Linux /proc; else empty)."""
    out: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
        except (OSError, IndexError, ValueError):
            continue
    return out


def thread_names() -> dict[int, str]:
    """OS thread id -> the name Python gave the thread (threads Python did not start are not here)."""
    import threading

    return {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}


def by_thread(before: dict[int, float], after: dict[int, float], frames: int, names: dict[int, str] | None = None,
              top: int = 8) -> dict[str, float]:
    """CPU ms a frame per thread between two `thread_cpu_s()` readings, named as Python names them (`names`, by
    default the threads alive now; threads that Python did not start, e.g. a library's own pools, are summed as
    "native"); the busiest first."""
    names = thread_names() if names is None else names
    spent: dict[str, float] = {}
    for tid, cpu in after.items():
        name = names.get(tid, "native")
        spent[name] = spent.get(name, 0.0) + (cpu - before.get(tid, 0.0)) * 1000.0 / max(1, frames)
    busiest = sorted(spent.items(), key=lambda kv: -kv[1])[:top]
    return {k: round(v, 2) for k, v in busiest if v > 0.0}
