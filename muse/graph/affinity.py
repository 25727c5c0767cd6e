"""The runtime's own threads kept on a few CPU cores (`settings.runtime_cores`, or `MUSE_RUNTIME_CORES` for a run:
"2", "2-3", "0,2"; empty: wherever the OS puts them, the default).

Python's lock lets one of the executor, source and sink threads run at a time, and each wakes once a frame. On the
H200 the 4K stream's host CPU a frame fell from 1.48 / 1.60 to 1.16 / 1.22 ms (paced at 60 fps 2.04 / 2.39 ->
1.74 / 1.82, latency p50 1.2-1.4 -> 0.9 ms) with the three threads on one core (`bench/RESULTS.md`, twenty-first
session): a thread that wakes where the others just ran finds the driver's and the interpreter's state in that
core's caches. The price: the threads cannot move off that core when something else (a game) keeps it busy, so
it stays a choice, not the default; pick a core the game leaves alone.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

__all__ = ["checked_cores", "chosen_cores", "parse_cores", "pinned"]

ENV = "MUSE_RUNTIME_CORES"


def parse_cores(spec: str) -> set[int]:
    """ "2", "2-3" or "0,2" as a set of core numbers; empty for ""; ValueError saying what was expected."""
    cores: set[int] = set()
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        found = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if found is None:
            raise ValueError(f"{spec!r}: expected core numbers like '2', '2-3' or '0,2'")
        first, last = int(found[1]), int(found[2] or found[1])
        if last < first:
            raise ValueError(f"{spec!r}: {part!r} is not a rising range of core numbers")
        cores.update(range(first, last + 1))
    return cores


def checked_cores(spec: str) -> str:
    """`spec` as it is, once `parse_cores` reads it (the graph's `runtime_cores` setting is checked so)."""
    parse_cores(spec)
    return spec


def chosen_cores(setting: str) -> set[int]:
    """The cores `MUSE_RUNTIME_CORES` names, else the graph's `runtime_cores` setting (empty: no pinning)."""
    env = os.environ.get(ENV)
    if env is not None:
        try:
            return parse_cores(env)
        except ValueError as exc:
            raise ValueError(f"{ENV}={exc}") from None
    return parse_cores(setting)


def pinned(target: Callable[[], Any], cores: set[int]) -> Callable[[], Any]:
    """`target`, run by a thread that first moves itself onto `cores` (those of them this process may use; none
    of them allowed, or no cores given: it stays where the OS puts it)."""
    if not cores or not hasattr(os, "sched_setaffinity"):
        return target

    def run() -> Any:
        allowed = os.sched_getaffinity(0) & cores
        if allowed:
            os.sched_setaffinity(0, allowed)  # (0: this thread alone, on Linux)
        return target()

    return run
