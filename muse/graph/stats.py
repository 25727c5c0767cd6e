"""Per-node and per-graph observability: timings (p50/p95/p99), frames, drops,
errors, end-to-end latency, live info (a switch's mode), and a Chrome trace."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from muse.files import write_text

_WINDOW = 2048  # recent samples kept per series: enough for stable p99, bounded for hours-long runs


def percentiles(samples: "deque[float] | list[float]") -> dict[str, float]:
    if not samples:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}
    data = sorted(samples)

    def pick(q: float) -> float:
        return data[min(len(data) - 1, int(round(q * (len(data) - 1))))]

    return {"p50": pick(0.50), "p95": pick(0.95), "p99": pick(0.99), "mean": sum(data) / len(data)}


@dataclass
class NodeStats:
    name: str
    node_type: str
    frames: int = 0
    errors: int = 0
    drops: int = 0  # inputs dropped by a `latest` policy in front of this node
    host_ms: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    gpu_ms: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    # CPU time of the thread that ran `process` (time.thread_time): unlike host_ms it does not grow while
    # other processes hold the cores, so CPU-path figures on a shared machine stay comparable
    cpu_ms: deque = field(default_factory=lambda: deque(maxlen=_WINDOW))
    # the same, summed over every call since the start (never reset): a soak's per-node rate over an interval
    # (the window's mean reached back ~2,000 calls, into the warm-up, and read as the machine speeding up)
    cpu_total_ms: float = 0.0
    cpu_calls: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    last_error: str = ""
    captured: bool = False  # ran inside a replayed frame program (host and GPU times are the segment's)
    on_error: str = ""  # its policy (muse.graph.policy)
    nan_frames: int = 0  # frames whose floating outputs held NaN/Inf (replaced on the device, counted a frame late)
    stalls: int = 0  # calls longer than its budget
    slowest_ms: float = 0.0  # the longest call that was a stall
    oom: int = 0  # out-of-memory failures
    stepped_down: list = field(default_factory=list)  # what it switched to after running out of memory
    handled: dict = field(default_factory=dict)  # how failures were covered: held / fallback / skipped -> frames

    def faults(self) -> dict[str, Any]:
        """The fault counts `--stats`, the status line and the editor show (only what happened)."""
        out: dict[str, Any] = {k: v for k, v in (("errors", self.errors), ("nan", self.nan_frames), ("stalls", self.stalls),
                                                  ("oom", self.oom)) if v}
        if self.stalls:
            out["slowest_ms"] = round(self.slowest_ms, 1)
        if self.handled:
            out["handled"] = dict(self.handled)
        if self.stepped_down:
            out["stepped_down"] = list(self.stepped_down)
        return out

    def count_handled(self, how: str, n: int = 1) -> None:
        self.handled[how] = self.handled.get(how, 0) + n

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": self.node_type,
            "frames": self.frames,
            "errors": self.errors,
            "drops": self.drops,
            "host_ms": percentiles(self.host_ms),
        }
        if self.gpu_ms:
            out["gpu_ms"] = percentiles(self.gpu_ms)
        if self.cpu_ms:
            out["cpu_ms"] = percentiles(self.cpu_ms)
        if self.info:
            out["info"] = dict(self.info)
        if self.last_error:
            out["last_error"] = self.last_error
        if self.captured:
            out["captured"] = True
        if self.on_error:
            out["on_error"] = self.on_error
        faults = self.faults()
        if faults:
            out["faults"] = faults
        return out


class GraphStats:
    """Collects what `--stats` writes; thread-safe for source and sink threads."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeStats] = {}
        self.frames_in = 0
        self.frames_out = 0
        self.latency_ms: deque = deque(maxlen=_WINDOW)
        self.frame_gpu_ms: deque = deque(maxlen=_WINDOW)  # CUDA: events around each whole frame
        self.started = time.perf_counter()
        self.info: dict[str, Any] = {}
        # The executor thread's CPU time (ns) by step of a frame, and the wall time of its
        # waits ("... wall"): what `muse bench` splits the host CPU a frame into. Written by that thread only.
        self.executor_ns: Counter[str] = Counter()
        self._lock = threading.Lock()

    def node(self, name: str, node_type: str = "") -> NodeStats:
        with self._lock:
            if name not in self.nodes:
                self.nodes[name] = NodeStats(name, node_type)
            return self.nodes[name]

    def reset_timings(self) -> None:
        """Forget every timing sample so far (frames, drops and faults stay): `muse bench` calls it where its measured
        frames start, so the per-node table describes the same frames as its headline figures. Without it the
        warm-up frames stayed in: on the H200 a captured stream's only per-node GPU samples were its dozen eager
        warm-up frames, and the table showed model loading and convolution trials as a 5 s p99."""
        with self._lock:
            self.latency_ms.clear()
            self.frame_gpu_ms.clear()
            for n in self.nodes.values():
                n.host_ms.clear()
                n.gpu_ms.clear()
                n.cpu_ms.clear()

    def add_latency(self, ms: float) -> None:
        with self._lock:
            self.latency_ms.append(ms)

    @property
    def drops(self) -> int:
        return sum(n.drops for n in self.nodes.values())

    def fault_totals(self) -> dict[str, int]:
        """Errors, NaN/Inf frames, stalls and out-of-memory failures over all nodes (only those that happened)."""
        totals = {"errors": 0, "nan": 0, "stalls": 0, "oom": 0}
        for n in list(self.nodes.values()):
            totals["errors"] += n.errors
            totals["nan"] += n.nan_frames
            totals["stalls"] += n.stalls
            totals["oom"] += n.oom
        return {k: v for k, v in totals.items() if v}

    def as_dict(self) -> dict[str, Any]:
        elapsed = max(1e-9, time.perf_counter() - self.started)
        return {
            "elapsed_s": round(elapsed, 3),
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "fps": round(self.frames_out / elapsed, 2),
            "drops": self.drops,
            "faults": self.fault_totals(),
            "latency_ms": percentiles(self.latency_ms),
            "frame_gpu_ms": percentiles(self.frame_gpu_ms),
            "info": dict(self.info),
            "nodes": {name: s.as_dict() for name, s in self.nodes.items()},
        }

    def write(self, path: str | os.PathLike[str]) -> None:
        write_text(path, json.dumps(self.as_dict(), indent=2))

    def summary_lines(self) -> list[str]:
        d = self.as_dict()
        lines = [
            f"frames in {d['frames_in']}, out {d['frames_out']}, {d['fps']} fps, drops {d['drops']}, "
            f"latency p50 {d['latency_ms']['p50']:.1f} ms p99 {d['latency_ms']['p99']:.1f} ms"
        ]
        if d["faults"]:
            lines[0] += ", faults " + ", ".join(f"{k} {v}" for k, v in d["faults"].items())
        for name, s in d["nodes"].items():
            t = s.get("gpu_ms") or s["host_ms"]
            extra = f" {s['info']}" if s.get("info") else ""
            f = s.get("faults") or {}
            more = "".join(f" {k} {f[k]}" for k in ("nan", "stalls", "oom") if k in f)
            if f.get("handled"):
                more += f" ({s.get('on_error', '')}: " + ", ".join(f"{k} {v}" for k, v in f["handled"].items()) + ")"
            if f.get("stepped_down"):
                more += f" stepped down: {'; '.join(f['stepped_down'])}"
            lines.append(
                f"  {name:<16} {s['type']:<22} p50 {t['p50']:7.2f} ms  p95 {t['p95']:7.2f}  p99 {t['p99']:7.2f}"
                f"  frames {s['frames']:<6} drops {s['drops']:<4} errors {s['errors']}{more}{extra}"
            )
        return lines


class Trace:
    """Chrome trace-event recorder (open the JSON in Perfetto or chrome://tracing)."""

    def __init__(self, limit: int = 200_000) -> None:
        self.events: list[dict[str, Any]] = []
        self.limit = limit  # bounded: a trace of a 6-hour stream must not eat the RAM
        self._t0 = time.perf_counter()
        self._lock = threading.Lock()

    def instant(self, name: str, args: dict | None = None, category: str = "graph") -> None:
        """A point in time with facts (a node that does not run and why, a switch's branches)."""
        with self._lock:
            if len(self.events) >= self.limit:
                return
            self.events.append({"name": name, "cat": category, "ph": "i", "s": "g", "ts": (time.perf_counter() - self._t0) * 1e6,
                                "pid": os.getpid(), "tid": threading.current_thread().name, **({"args": args} if args else {})})

    def span(self, name: str, start: float, end: float, category: str = "node", args: dict | None = None) -> None:
        with self._lock:
            if len(self.events) >= self.limit:
                return
            self.events.append(
                {
                    "name": name,
                    "cat": category,
                    "ph": "X",
                    "ts": (start - self._t0) * 1e6,
                    "dur": max(0.0, (end - start) * 1e6),
                    "pid": os.getpid(),
                    "tid": threading.current_thread().name,
                    **({"args": args} if args else {}),
                }
            )

    def write(self, path: str | os.PathLike[str]) -> None:
        write_text(path, json.dumps({"traceEvents": self.events, "displayTimeUnit": "ms"}))
