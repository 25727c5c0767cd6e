"""Soak runs: a graph live for minutes or hours, watched for leaks, drift and lost frames.

`soak_graph` runs a validated graph with the real runtime, samples the process's resident memory
(and, on CUDA, the GPU memory torch holds and the device's used memory) and the frame count at a
fixed interval, taps one output to see every frame index that reaches it, and returns a
`SoakReport`:

- memory slopes: a least-squares line through the samples of the *second half* of the run (the
  first half holds warm-up, model loads, frame recordings and the allocators' growth to steady
  state), in MiB per minute, with the rise over that half;
- fps drift: the frame rate of the last quarter of the steady run against its first quarter;
- frames: every source frame index either reached the tapped output, was dropped by a counted
  `latest` policy on purpose, or was still in flight at the stop; anything else is a lost frame.

`muse.graph.soak.stream_soak_text` builds the usual subject: graphs/stream_4k.yaml on the demo
source (what its camera falls back to) with a counting sink in place of the virtual camera.
`bench/soak.py` is the command line; tests/soak/ the tests.
"""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from muse.graph.compiled import background_pending
from muse.graph.validate import ValidatedGraph

__all__ = ["SoakReport", "fit_slope", "rss_mib", "soak_graph", "stream_soak_text"]

REPO = Path(__file__).resolve().parents[2]


def rss_mib() -> float:
    """This process's resident set size in MiB (Linux /proc; psutil-free)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # peak only, where /proc is missing


def fit_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ys over xs (0 for fewer than two distinct xs)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def stream_soak_text(width: int = 3840, height: int = 2160, fps: float = 60.0, device: str = "auto",
                     graph: Path | None = None) -> str:
    """graphs/stream_4k.yaml with its camera replaced by the demo source it falls back to (same size and
    rate, endless) and the virtual camera by `output.null` (no driver, no preview port on a test machine).
    Links keep their shipped policies: what a `latest` link drops is counted, on purpose."""
    import yaml

    path = graph or REPO / "graphs" / "stream_4k.yaml"
    spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    spec["settings"]["device"] = device
    spec["settings"]["resolution"] = [width, height]
    spec["settings"]["fps"] = fps
    nodes = spec["nodes"]
    demo = {"type": "capture.demo", "params": {"width": width, "height": height, "fps": fps, "frames": 0}}
    if nodes.get("camera", {}).get("type") == "flow.switch" and "demo" in nodes:
        # the shipped graph: the camera switch of webcam and demo; the demo runs on its own here
        nodes.pop("webcam", None)
        nodes["demo"] = {**demo, "description": nodes["demo"].get("description", "")}
        nodes["demo"].pop("standby_for", None)
        nodes["camera"]["params"]["labels"] = ["demo"]
        nodes["camera"]["inputs"] = {"candidates": ["demo.frame"]}
    else:
        nodes["camera"] = {**demo, "description": nodes["camera"].get("description", "")}
    out = nodes.pop("virtualcam")
    nodes.pop("preview", None)  # its stand-in: an output.null takes the virtual camera's place
    frame_src = out["inputs"]["frame"]
    nodes["virtualcam"] = {"type": "output.null", "description": "Counts frames in place of the virtual camera (soak run)",
                           "inputs": {"frame": frame_src}}
    return yaml.safe_dump(spec, sort_keys=False)


@dataclass
class Sample:
    t: float  # seconds since start
    rss_mib: float
    frames: int  # frames the executor finished
    cpu_s: float  # process CPU time (all threads)
    gpu_alloc_mib: float = 0.0
    gpu_reserved_mib: float = 0.0
    gpu_used_mib: float = 0.0  # the device's used memory (every allocator, cuDNN/cuBLAS workspaces included)
    load1: float = 0.0  # the machine's 1-minute load average (other jobs slow a shared CPU down)
    node_cpu_ms: dict[str, tuple[float, int]] = field(default_factory=dict)  # per node: thread CPU ms and calls so far
    warming: bool = False  # background compiles under way (the CPU path's numba kernels on a cold cache, Inductor)


@dataclass
class SoakReport:
    device: str
    seconds: float
    samples: list[Sample] = field(default_factory=list)
    frames_in: int = 0
    frames_out: int = 0
    frames_at_output: int = 0
    drops_counted: int = 0
    lost: int = 0
    lost_examples: list[int] = field(default_factory=list)
    errors: int = 0
    load_average: tuple[float, float, float] = (0.0, 0.0, 0.0)
    stats: dict[str, Any] = field(default_factory=dict)

    def _half(self) -> list[Sample]:
        return [s for s in self.samples if s.t >= self.seconds / 2]

    def slope(self, attr: str) -> float:
        """MiB per minute over the second half."""
        half = self._half()
        return fit_slope([s.t / 60.0 for s in half], [getattr(s, attr) for s in half])

    def floor_slope(self, attr: str, window: int = 5) -> float:
        """MiB per minute of the floor over the second half: the least-squares line through the minimum of
        each run of `window` samples. Host RSS jumps by tens of MiB as big frame buffers come and go; a
        leak raises the floor, which a single fit through every sample hides in that noise."""
        half = self._half()
        pts = [(sum(s.t for s in half[i:i + window]) / len(half[i:i + window]) / 60.0, min(getattr(s, attr) for s in half[i:i + window]))
               for i in range(0, len(half), window) if len(half[i:i + window]) >= max(1, window // 2)]
        return fit_slope([p[0] for p in pts], [p[1] for p in pts])

    def rise(self, attr: str) -> float:
        """Last minus first sample of the second half, MiB."""
        half = self._half()
        return getattr(half[-1], attr) - getattr(half[0], attr) if len(half) >= 2 else 0.0

    @property
    def first_frame_s(self) -> float:
        """Seconds from the start to the first sample with frames (models load, frames are recorded)."""
        return next((s.t for s in self.samples if s.frames > 0), self.seconds)

    def _steady(self) -> list[Sample]:
        """Samples of the steady run: after the first 10%, at least 5 s after the first frame (a GPU
        start-up that records its frames takes tens of seconds, which must not count as drift) and after the
        last background compile (the CPU path's numba kernels take tens of seconds of CPU on a cold cache, as
        in CI: seen as a "drift" of -47 % that every node shared). A compile that outlasts half the run is
        measured through, as before."""
        start = max(0.1 * self.seconds, self.first_frame_s + 5.0)
        warm_until = max((s.t for s in self.samples if s.warming), default=0.0)
        if warm_until <= 0.5 * self.seconds:
            start = max(start, warm_until + 1.0)
        return [s for s in self.samples if s.t >= start]

    def _quarter_load(self) -> tuple[float, float]:
        steady = self._steady()
        if len(steady) < 4:
            return 0.0, 0.0
        q = max(1, len(steady) // 4)
        return sum(s.load1 for s in steady[:q]) / q, sum(s.load1 for s in steady[-q:]) / q

    def node_cpu_quarters(self) -> dict[str, tuple[float, float]]:
        """Per node, its thread CPU ms a call in the first and the last quarter of the steady run: which node
        a drift in the process's CPU time per frame comes from."""
        steady = [s for s in self._steady() if s.node_cpu_ms]
        if len(steady) < 4:
            return {}
        n = len(steady)
        quarters = ((steady[0], steady[n // 4]), (steady[n - 1 - n // 4], steady[-1]))  # as `_quarter_rates`
        out: dict[str, tuple[float, float]] = {}
        for name in steady[-1].node_cpu_ms:
            rates = []
            for a, b in quarters:
                if name not in a.node_cpu_ms or name not in b.node_cpu_ms:
                    break
                (ms0, calls0), (ms1, calls1) = a.node_cpu_ms[name], b.node_cpu_ms[name]
                if calls1 <= calls0:
                    break
                rates.append((ms1 - ms0) / (calls1 - calls0))  # this quarter's calls only
            if len(rates) == 2:
                out[name] = (rates[0], rates[1])
        return out

    def _quarter_rates(self) -> tuple[float, float, float, float]:
        """(fps, CPU ms per frame) of the first and last quarter of the steady run (see `_steady`)."""
        steady = self._steady()
        if len(steady) < 4:
            return 0.0, 0.0, 0.0, 0.0
        n = len(steady)
        a0, a1 = steady[0], steady[n // 4]
        b0, b1 = steady[n - 1 - n // 4], steady[-1]

        def rates(x: Sample, y: Sample) -> tuple[float, float]:
            frames = max(1, y.frames - x.frames)
            return (y.frames - x.frames) / max(1e-9, y.t - x.t), (y.cpu_s - x.cpu_s) * 1000.0 / frames

        f0, c0 = rates(a0, a1)
        f1, c1 = rates(b0, b1)
        return f0, f1, c0, c1

    @property
    def fps_drift(self) -> float:
        """(last-quarter fps - first-quarter fps) / first-quarter fps."""
        f0, f1, _, _ = self._quarter_rates()
        return (f1 - f0) / f0 if f0 > 0 else 0.0

    @property
    def cpu_ms_drift(self) -> float:
        """The same for the process CPU time per frame (less sensitive to other jobs on a shared machine)."""
        _, _, c0, c1 = self._quarter_rates()
        return (c1 - c0) / c0 if c0 > 0 else 0.0

    @property
    def machine_drift(self) -> float:
        """The drift all nodes share: the median of each node's own (last-quarter / first-quarter thread CPU - 1),
        over nodes of at least half a millisecond. On a shared machine (a VM whose neighbours come and go) every
        node speeds up or slows down together; a node that leaks or slows by itself does not move the median."""
        drifts = [b / a - 1.0 for a, b in self.node_cpu_quarters().values() if a >= 0.5]
        return statistics.median(drifts) if drifts else 0.0

    @property
    def cpu_ms_drift_own(self) -> float:
        """`cpu_ms_drift` less what the machine explains (`machine_drift`): what the engine itself changed."""
        return (1.0 + self.cpu_ms_drift) / (1.0 + self.machine_drift) - 1.0

    def as_dict(self) -> dict[str, Any]:
        f0, f1, c0, c1 = self._quarter_rates()
        cuda = any(s.gpu_reserved_mib for s in self.samples)
        out: dict[str, Any] = {
            "device": self.device, "host": platform.node(), "date": time.strftime("%Y-%m-%d %H:%M"),
            "seconds": round(self.seconds, 1), "samples": len(self.samples),
            "first_frame_s": round(self.first_frame_s, 1),
            "fps_first_quarter": round(f0, 3), "fps_last_quarter": round(f1, 3), "fps_drift": round(self.fps_drift, 4),
            "cpu_ms_per_frame_first_quarter": round(c0, 2), "cpu_ms_per_frame_last_quarter": round(c1, 2),
            "cpu_ms_per_frame_drift": round(self.cpu_ms_drift, 4),
            "machine_drift": round(self.machine_drift, 4), "cpu_ms_per_frame_drift_own": round(self.cpu_ms_drift_own, 4),
            "load1_first_quarter": round(self._quarter_load()[0], 2), "load1_last_quarter": round(self._quarter_load()[1], 2),
            "rss_mib_start": round(self.samples[0].rss_mib, 1) if self.samples else 0.0,
            "rss_mib_end": round(self.samples[-1].rss_mib, 1) if self.samples else 0.0,
            "rss_slope_mib_per_min_2nd_half": round(self.slope("rss_mib"), 3),
            "rss_rise_mib_2nd_half": round(self.rise("rss_mib"), 2),
            "rss_floor_slope_mib_per_min_2nd_half": round(self.floor_slope("rss_mib"), 3),
            "frames_in": self.frames_in, "frames_out": self.frames_out, "frames_at_output": self.frames_at_output,
            "drops_counted": self.drops_counted, "frames_lost": self.lost, "lost_examples": self.lost_examples,
            "node_errors": self.errors, "load_average": [round(x, 2) for x in self.load_average],
        }
        quarters = self.node_cpu_quarters()
        if quarters:
            out["node_cpu_ms_first_last_quarter"] = {n: [round(a, 2), round(b, 2)] for n, (a, b) in quarters.items()}
        if cuda:
            for attr in ("gpu_alloc_mib", "gpu_reserved_mib", "gpu_used_mib"):
                out[f"{attr}_end"] = round(getattr(self.samples[-1], attr), 1)
                out[f"{attr[:-4]}_slope_mib_per_min_2nd_half"] = round(self.slope(attr), 3)
                out[f"{attr[:-4]}_rise_mib_2nd_half"] = round(self.rise(attr), 2)
        return out


def _node_cpu(runner: Any) -> dict[str, tuple[float, int]]:
    """Each node's thread CPU ms and calls so far (differences between two samples give an interval's rate)."""
    return {name: (st.cpu_total_ms, st.cpu_calls) for name, st in list(runner.stats.nodes.items()) if st.cpu_calls}


def _gpu_sample(device: Any) -> tuple[float, float, float]:
    import torch

    if device.type != "cuda":
        return 0.0, 0.0, 0.0
    free, total = torch.cuda.mem_get_info(device)
    return (torch.cuda.memory_allocated(device) / 2**20, torch.cuda.memory_reserved(device) / 2**20,
            (total - free) / 2**20)


MAX_WARM_S = 240.0  # the longest background compile a soak waits out before its own `seconds` begin


def soak_graph(graph: ValidatedGraph, seconds: float, *, device: str | None = None, interval: float = 1.0,
               tap: tuple[str, str] = ("composite", "out"), source: str | None = None,
               progress: Any = None) -> SoakReport:
    """Run `graph` for `seconds`, sampling every `interval` s; see the module docstring. `source`: the node whose
    frames are accounted for (default: the graph's first source, the demo behind stream_4k's camera switch)."""
    from muse.graph.runtime import GraphRunner

    if source is None:
        source = next(n for n in graph.order if graph.nodes[n].cls.is_source())

    runner = GraphRunner(graph, device=device)
    report = SoakReport(device=runner.device_note, seconds=seconds)
    seen: list[int] = []
    seen_lock = threading.Lock()

    def at_output(payload: Any) -> None:
        with seen_lock:
            seen.append(int(payload.index))

    source_indices: list[int] = []

    def at_source(payload: Any) -> None:
        source_indices.append(int(payload.index))

    runner.tap(*tap, at_output)
    runner.tap(source, "frame", at_source)
    t_start = time.perf_counter()
    runner.start()
    next_sample = 0.0
    warm_s = 0.0  # when background compiles were last seen under way: the run is that much longer
    try:
        while True:
            now = time.perf_counter() - t_start
            if now >= next_sample:
                alloc, reserved, used = _gpu_sample(runner.device)
                warming = bool(background_pending())
                report.samples.append(Sample(now, rss_mib(), runner.stats.frames_out, time.process_time(), alloc, reserved, used,
                                             os.getloadavg()[0], _node_cpu(runner), warming))
                if warming:
                    warm_s = min(now, MAX_WARM_S)
                if progress is not None:
                    progress(report.samples[-1])
                next_sample += interval
            # `seconds` of steady run after the compiles (on a slow cold start the numba warm-up outlasted half of
            # CI's two minutes, and its CPU was judged as drift); a compile outlasting MAX_WARM_S is measured through
            if now >= seconds + warm_s or runner.wait(min(0.05, max(0.0, next_sample - now))):
                break
    finally:
        runner.stop()
    report.seconds = time.perf_counter() - t_start
    if runner._error is not None:
        raise RuntimeError(f"the graph stopped during the soak: {runner._error}")
    stats = runner.stats.as_dict()
    report.stats = stats
    report.frames_in = stats["frames_in"]
    report.frames_out = stats["frames_out"]
    report.drops_counted = stats["drops"]
    report.errors = sum(n["errors"] for n in stats["nodes"].values())
    report.frames_at_output = len(seen)
    # Every frame the executor took from the source must reach the output, in order, unless a counted
    # policy dropped it; frames the source made but the executor never took are the source channel's drops.
    taken = set(source_indices)
    reached = set(seen)
    missing = sorted(taken - reached)
    # The executor's last frame(s) may still be in flight at the stop (the CPU pipeline holds one).
    tail = sorted(taken)[-2:] if taken else []
    lost = [i for i in missing if i not in tail]
    # Frames the source made that the executor never took: only its own channel's counted drops (and at
    # most one frame left in that channel at the stop) may account for them.
    source_drops = stats["nodes"].get(source, {}).get("drops", 0)
    untaken = report.frames_in - len(taken) - source_drops
    if untaken > 1:
        lost.extend([-2] * (untaken - 1))  # made, never taken, not counted: shown as -2
    report.lost = len(lost)
    report.lost_examples = lost[:10]
    if seen != sorted(seen):
        report.lost_examples.append(-1)  # out of order: shown as -1
    report.load_average = os.getloadavg()
    return report
