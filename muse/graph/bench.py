"""`muse bench`: what a frame costs, measured the way the frame budget is stated.

One unpaced run (sources as fast as they go) gives the steady frame rate, the GPU
time of a whole frame (events around it), the host CPU time per frame (the process's
CPU time over the steady frames: every thread counts) and per-node timings; a second
run paced at the graph's fps gives capture-to-output latency; an optional third run
counts the kernels a frame launches (CUDA profiler). It also says which nodes ran
captured and why the others did not. Each run measures steady frames only: after the warm-up frames, any
background compile, and ten frames in a row with no recording or warm-up frame of the frame program.
"""

from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any

from muse.graph import markers
from muse.graph.host_cpu import GcPauses, by_thread, thread_cpu_s, thread_names
from muse.graph.kernel_count import count_kernels, start_profiler
from muse.graph.segments import ONE_OFF_STEPS, TRANSITIONAL
from muse.graph.validate import ValidatedGraph

__all__ = ["BenchReport", "bench_graph"]

log = logging.getLogger("muse.bench")

WARM_FRAMES = 30  # model warm-up, cuDNN choices and the frame recordings happen in these
WARMING_WAIT_S = 900.0  # longest wait for nodes compiling in the background (a cold compile: minutes)
# Frames in a row with no recording and no warm-up frame before measuring: a finished compile is taken up by its
# node at the next frame boundary, a new variant then runs eagerly for a few frames and is recorded (the twelfth
# session's H200 runs counted 2 recordings and 6 eager frames inside the measured window after the wait).
SETTLE_FRAMES = 10
THREAD_SAMPLE_S = 1.0  # how often the per-thread CPU is read while measuring (reading /proc for every thread 4x a second cost this thread 0.14 ms a frame at 177 fps on the H200: counted in the host CPU it measures)
MEMORY_GROWTH_MB = 256.0  # reserved GPU memory growing more than this over the measured frames is reported


def _load() -> str:
    """The 1-minute load average (CPU figures on a shared machine mean little without it)."""
    try:
        return "%.2f" % os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on Windows
        return "n/a"


@dataclass
class BenchReport:
    device: str
    fps: float = 0.0
    frames: int = 0
    frame_gpu_ms: dict[str, float] = field(default_factory=dict)
    host_cpu_ms: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    paced_fps: float = 0.0
    host_cpu_ms_paced: float | None = None  # host CPU a frame paced at the graph's fps: what a live stream costs
    kernels_per_frame: float | None = None
    top_kernels: list[dict[str, Any]] = field(default_factory=list)  # costliest kernel names over the profiled frames
    host_calls: list[dict[str, Any]] = field(default_factory=list)  # CUDA runtime calls by host time, profiled frames
    capture: dict[str, Any] | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    gpu_memory_mb: dict[str, float] = field(default_factory=dict)  # reserved at the first and last measured frame
    host_cpu_by_thread: dict[str, float] = field(default_factory=dict)  # thread name -> CPU ms a measured frame
    gc: dict[str, float] = field(default_factory=dict)  # Python's garbage collector over the measured frames
    # The frame program over the measured frames only (replays, eager frames and why) and the background compiles
    # that overlapped them: an eager frame costs the whole frame's launches, so a few dozen show in the fps.
    measured_capture: dict[str, Any] = field(default_factory=dict)
    compiles: list[dict[str, Any]] = field(default_factory=list)
    # The paced run's own: frames dropped (node -> count: a `latest` input replaced before it was read, as a
    # camera's frame would be), its frame program's counts, its threads' CPU ms a frame (each frame wakes them)
    paced_drops: dict[str, int] = field(default_factory=dict)
    paced_capture: dict[str, Any] = field(default_factory=dict)
    paced_threads: dict[str, float] = field(default_factory=dict)
    # The executor thread's CPU ms a measured frame by step of the frame (`GraphStats.executor_ns`), unpaced run
    executor_steps: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
            "unpaced_fps": self.fps, "frames": self.frames, "frame_gpu_ms": self.frame_gpu_ms,
            "host_cpu_ms_per_frame": self.host_cpu_ms, "latency_ms_paced": self.latency_ms, "paced_fps": self.paced_fps,
            "host_cpu_ms_per_frame_paced": self.host_cpu_ms_paced, "kernels_per_frame": self.kernels_per_frame, "top_kernels": self.top_kernels,
            "host_calls": self.host_calls, "capture": self.capture, "stats": self.stats,
            "gpu_memory_mb": self.gpu_memory_mb, "host_cpu_by_thread_ms": self.host_cpu_by_thread,
            "gc": self.gc, "measured_capture": self.measured_capture, "compiles": self.compiles,
            "paced_drops": self.paced_drops, "paced_measured_capture": self.paced_capture, "host_cpu_by_thread_ms_paced": self.paced_threads,
            "executor_steps_ms": self.executor_steps, "host_cpu_ms_per_steady_frame": self.host_cpu_steady_ms(),
        }

    def host_cpu_steady_ms(self) -> float | None:
        """The host CPU a frame less the executor's CPU in recordings and eager frames; None when there were none."""
        one_off = sum(self.executor_steps.get(k, 0.0) for k in ONE_OFF_STEPS)
        if not one_off or self.host_cpu_ms is None:
            return None
        return round(self.host_cpu_ms - one_off, 3)

    def lines(self, graph_file: str) -> list[str]:
        out = [f"| node | type | p50 ms | p95 ms | p99 ms | thread CPU p50 ms | frames | captured |  ({graph_file}, {self.device}, "
               f"{platform.node()}, {time.strftime('%Y-%m-%d')}, load average {_load()})", "|---|---|---|---|---|---|---|---|"]
        for name, s in self.stats.get("nodes", {}).items():
            t = s.get("gpu_ms") or s["host_ms"]
            cpu = s.get("cpu_ms", {}).get("p50")
            out.append(f"| {name} | {s['type']} | {t['p50']:.2f} | {t['p95']:.2f} | {t['p99']:.2f} | "
                       f"{'' if cpu is None else '%.2f' % cpu} | {s['frames']} | {'yes' if s.get('captured') else ''} |")
        gpu = self.frame_gpu_ms.get("p50")
        out.append(
            f"unpaced {self.fps:.1f} fps over {self.frames} frames; frame GPU p50 "
            f"{'%.2f ms' % gpu if gpu else 'n/a'}; host CPU {self.host_cpu_ms:.2f} ms/frame"
        )
        if self.latency_ms:
            cpu = "" if self.host_cpu_ms_paced is None else f"; host CPU {self.host_cpu_ms_paced:.2f} ms/frame"
            dropped = "".join(f"; {n} dropped {k}" for n, k in self.paced_drops.items())
            out.append(f"paced {self.paced_fps:.1f} fps: latency p50 {self.latency_ms['p50']:.1f} ms, "
                       f"p99 {self.latency_ms['p99']:.1f} ms{cpu}{dropped}")
        if self.kernels_per_frame is not None:
            out.append(f"kernels per frame: {self.kernels_per_frame:.0f}")
        if self.host_calls:
            out.append("CUDA calls, host ms a frame: " + ", ".join(
                f"{c['call']} {c['per_frame_us'] / 1000:.2f} ({c['count'] / c['frames']:.0f}x)" for c in self.host_calls[:8]))
        if self.host_cpu_by_thread:
            out.append("host CPU ms a frame by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in self.host_cpu_by_thread.items()))
        if self.paced_threads:
            out.append("paced, host CPU ms a frame by thread: " + ", ".join(f"{k} {v:.2f}" for k, v in self.paced_threads.items()))
        if self.gc:
            out.append(f"Python GC: {self.gc['ms_per_frame']:.2f} ms a frame ({self.gc['full']:.0f} full collections,"
                       f" longest {self.gc['longest_ms']:.1f} ms; {self.gc['objects']:.0f} objects tracked)")
        mem = self.gpu_memory_mb
        if mem:
            grew = memory_growth_mb(mem)
            out.append(f"GPU memory: {mem['allocated_end']:.0f} MB in use, {mem['reserved_end']:.0f} MB reserved"
                       f" ({grew:+.0f} MB over the measured frames{': GROWING' if grew > MEMORY_GROWTH_MB else ''})")
        if self.capture:
            eager = self.capture.get("eager_nodes") or {}
            out.append(f"captured: {', '.join(self.capture.get('captured_nodes', [])) or 'none'}")
            for n, why in eager.items():
                out.append(f"eager: {n}: {why}")
            for shape in self.capture.get("graph_shapes") or []:
                if "nodes" in shape:
                    kinds = ", ".join(f"{k} {v}" for k, v in sorted(shape["by_type"].items(), key=lambda kv: -kv[1]))
                    out.append(f"frame graph ({self.capture.get('order', 'branches')}): {shape['nodes']} nodes ({kinds}), "
                               f"{shape['edges']} edges ({shape['programmatic_edges']} programmatic), {shape['roots']} roots")
        m = self.measured_capture
        if m:
            why = ", ".join(f"{k} {v}" for k, v in m.get("eager_reasons", {}).items())
            out.append(f"measured frames: {m.get('replays', 0)} replayed, {m.get('captures', 0)} recorded, "
                       f"{m.get('eager_frames', 0)} eager{' (' + why + ')' if why else ''}")
        if self.executor_steps:
            own, sources = ({k: v for k, v in self.executor_steps.items() if k.startswith("source ") == s} for s in (False, True))
            out.append("executor thread, ms a frame by step (CPU; '... wall': time waited): "
                       + ", ".join(f"{k} {v:.3f}" for k, v in own.items()))
            if sources:
                out.append("source threads, ms a frame by step (CPU): " + ", ".join(f"{k} {v:.3f}" for k, v in sources.items()))
            steady = self.host_cpu_steady_ms()
            if steady is not None:
                out.append(f"host CPU {steady:.2f} ms/frame without the recordings and eager frames that fell in the "
                           "measured frames (a one-off each; the figure a long stream tends to)")
        for c in self.compiles:
            end = "still running" if c.get("end_s") is None else f"to {c['end_s']:+.1f} s"
            out.append(f"compile during the measured frames: {c['what']}: {c['start_s']:+.1f} s {end}, {c['outcome']}")
        return out


def _unpaced(graph: ValidatedGraph) -> ValidatedGraph:
    """Sources with an `fps` param run as fast as they go (cameras keep their mode: they cannot go faster)."""
    from dataclasses import replace

    nodes = {}
    for name, rn in graph.nodes.items():
        if rn.cls.is_source() and rn.params is not None and "fps" in type(rn.params).model_fields and not rn.type.startswith("capture.camera"):
            try:
                rn = replace(rn, params=rn.params.model_copy(update={"fps": 0.0}))
            except Exception:
                pass
        nodes[name] = rn
    return replace(graph, nodes=nodes)


def memory_growth_mb(memory: dict[str, float]) -> float:
    """Reserved GPU memory gained between the first and last measured frame (0 without figures)."""
    return memory["reserved_end"] - memory["reserved_start"] if memory else 0.0


@dataclass
class _Measured:
    """One run of the graph: the runner (its stats) and what was measured over its steady frames."""

    runner: Any
    fps: float = 0.0
    frames: int = 0
    cpu_ms: float = 0.0
    kernels: Any = None
    memory: dict[str, float] = field(default_factory=dict)
    threads: dict[str, float] = field(default_factory=dict)
    gc: dict[str, float] = field(default_factory=dict)
    capture: dict[str, Any] = field(default_factory=dict)  # the frame program's counts over the measured frames
    compiles: list[dict[str, Any]] = field(default_factory=list)  # background compiles overlapping them
    drops: dict[str, int] = field(default_factory=dict)  # node -> inputs dropped over them (only nodes that dropped)
    steps: dict[str, float] = field(default_factory=dict)  # the executor's CPU ms a measured frame by step


def _node_drops(runner: Any) -> dict[str, int]:
    return {name: int(n.drops) for name, n in list(runner.stats.nodes.items())}


def _program_counts(runner: Any) -> dict[str, Any]:
    p = runner.program
    if p is None:
        return {}
    return {"captures": p.captures, "replays": p.replays, "eager_frames": p.eager_frames,
            "eager_reasons": dict(p.eager_reasons)}


def _transitions(counts: dict[str, Any]) -> int | None:
    """Recordings and warm-up frames so far (a node that never runs captured does not count: it never settles);
    None without a frame program (the CPU path: nothing to settle)."""
    if not counts:
        return None
    return int(counts["captures"]) + sum(int(counts["eager_reasons"].get(r, 0)) for r in TRANSITIONAL)


class Settle:
    """Whether the captured frame program has run `frames` frames in a row with no recording or warm-up frame."""

    def __init__(self, frames: int = SETTLE_FRAMES) -> None:
        self.frames = frames
        self._seen: int | None = None  # transitions at the last change
        self._since = 0

    def settled(self, transitions: int | None, frames_out: int) -> bool:
        if transitions is None:
            return True
        if transitions != self._seen:
            self._seen, self._since = transitions, frames_out
        return frames_out - self._since >= self.frames


def _counts_since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    if not after:
        return {}
    reasons = {k: v - before.get("eager_reasons", {}).get(k, 0) for k, v in after["eager_reasons"].items()}
    return {k: after[k] - before.get(k, 0) for k in ("captures", "replays", "eager_frames")} | {
        "eager_reasons": {k: v for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if v}}


def _run(graph: ValidatedGraph, device: str | None, frames: int, *, unpaced: bool, profile: bool = False) -> _Measured:
    from muse.graph.runtime import GraphRunner

    runner = GraphRunner(_unpaced(graph) if unpaced else graph, device=device, frames=frames, unpaced=unpaced)
    runner.start()
    t0 = c0 = None
    n0 = 0
    prof = None
    warm_n = min(WARM_FRAMES, frames // 3)
    memory: dict[str, float] = {}
    threads0: dict[int, float] = {}
    pauses = GcPauses()
    threads1: tuple[dict[int, float], dict[int, str], int, float] | None = None  # the latest reading while running
    warm_until = time.monotonic() + WARMING_WAIT_S
    settle = Settle()
    said = False
    done = _Measured(runner)
    counts0: dict[str, Any] = {}
    drops0: dict[str, int] = {}
    steps0: dict[str, int] = {}
    m0 = 0.0
    try:
        poll = 0.002
        while not runner.wait(poll):
            # every 2 ms while warming up (to start measuring on time), every five frames while measuring: this
            # thread's CPU counts in the host CPU a frame (a 2 ms poll cost the graph 1.8-3 ms of CPU a frame on a
            # two-core machine, stream_4k at 18 fps; five looks a frame 0.26 ms on the H200 at 120 fps)
            if t0 is not None and runner.stats.frames_out > n0:
                # a look every five frames (the per-thread reading within the last ten needs no finer), 2-20 ms
                poll = min(0.02, max(0.002, 5 * (time.perf_counter() - t0) / (runner.stats.frames_out - n0)))
            near_end = runner.max_frames is not None and runner.max_frames - runner.stats.frames_out <= 10
            if t0 is not None and (threads1 is None or near_end or time.perf_counter() - threads1[3] > THREAD_SAMPLE_S):
                # read while the graph's threads live: they end with the last frame, and their CPU time with them
                # (a reading taken after one of them ended is not kept)
                reading = (thread_cpu_s(), thread_names(), runner.stats.frames_out, time.perf_counter())
                if threads1 is None or set(threads1[1]) <= set(reading[1]):
                    threads1 = reading
            if t0 is None and runner.stats.frames_out >= warm_n:
                warming = runner.warming()  # e.g. a node compiling its fused maths: measure it at full speed
                if warming and time.monotonic() < warm_until:
                    if not said:
                        log.warning("waiting for %s before measuring", "; ".join(f"{n}: {w}" for n, w in warming.items()))
                        said = True
                    if runner.max_frames is not None:  # a fast graph must not run out of frames while it waits
                        runner.max_frames = max(runner.max_frames, runner.stats.frames_out + frames)
                    continue
                if not settle.settled(_transitions(_program_counts(runner)), runner.stats.frames_out) \
                        and time.monotonic() < warm_until:
                    if runner.max_frames is not None:
                        runner.max_frames = max(runner.max_frames, runner.stats.frames_out + frames)
                    continue
                if runner.max_frames is not None:  # the frames run while waiting do not count
                    runner.max_frames = runner.stats.frames_out + frames - warm_n
                t0, c0, n0 = time.perf_counter(), time.process_time(), runner.stats.frames_out
                counts0, m0 = _program_counts(runner), time.monotonic()
                drops0 = _node_drops(runner)
                steps0 = _snapshot(runner.stats.executor_ns)
                memory["reserved_start"] = _reserved_mb(runner)
                threads0 = thread_cpu_s()
                pauses.start()
                runner.stats.reset_timings()  # steady state only: warm-up and the recordings stall once
                if profile:
                    prof = start_profiler()
        t1, c1, n1 = time.perf_counter(), time.process_time(), runner.stats.frames_out
        if t0 is not None:
            from muse.graph.compiled import compiles_since

            done.capture = _counts_since(counts0, _program_counts(runner))
            done.compiles = compiles_since(m0)
            done.drops = {n: k - drops0.get(n, 0) for n, k in _node_drops(runner).items() if k > drops0.get(n, 0)}
            if n1 > n0:
                done.steps = {k: round((v - steps0.get(k, 0)) / 1e6 / (n1 - n0), 3)
                              for k, v in sorted(_snapshot(runner.stats.executor_ns).items(), key=lambda kv: -kv[1])}
        pauses.stop()
        if t0 is not None and n1 > n0:
            done.gc = pauses.summary(n1 - n0)
        if threads1 is not None and threads1[2] > n0:
            done.threads = by_thread(threads0, threads1[0], threads1[2] - n0, threads1[1])
        if memory and runner.device.type == "cuda":
            import torch

            done.memory = dict(memory, reserved_end=_reserved_mb(runner),
                               allocated_end=round(torch.cuda.memory_allocated(runner.device) / 2**20, 1))
    finally:
        pauses.stop()
        runner.stop()
        _release_memory(runner)
    if prof is not None:
        frames_seen = max(1, n1 - n0)
        total, top, calls = count_kernels(prof)
        done.kernels = (total / frames_seen, [dict(t, per_frame_us=round(t["total_us"] / frames_seen, 1)) for t in top],
                        [dict(c, frames=frames_seen, per_frame_us=round(c["total_us"] / frames_seen, 1)) for c in calls])
    if t0 is not None and n1 > n0:
        done.fps, done.frames, done.cpu_ms = (n1 - n0) / (t1 - t0), n1 - n0, (c1 - (c0 or 0.0)) * 1000.0 / (n1 - n0)
    return done


def _snapshot(counter: dict[str, int]) -> dict[str, int]:
    """A copy of a counter another thread writes (a step it meets for the first time adds a key meanwhile)."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # changed size during the copy
            continue
    return {}


def _reserved_mb(runner: Any) -> float:
    if runner.device.type != "cuda":
        return 0.0
    import torch

    return round(torch.cuda.memory_reserved(runner.device) / 2**20, 1)


def _release_memory(runner: Any) -> None:
    """The next run of the bench starts from the memory a fresh process would have (a leak stays in one run)."""
    if runner.device.type == "cuda":
        import gc

        import torch

        gc.collect()
        torch.cuda.empty_cache()


def bench_graph(graph: ValidatedGraph, *, device: str | None = None, frames: int = 300, latency_frames: int = 240,
                kernel_frames: int = 0) -> BenchReport:
    run = _run(graph, device, frames, unpaced=True)
    runner = run.runner
    stats = runner.stats.as_dict()
    report = BenchReport(device=runner.device_note, fps=round(run.fps, 2), frames=run.frames, host_cpu_ms=round(run.cpu_ms, 3),
                         frame_gpu_ms=stats.get("frame_gpu_ms", {}), stats=stats,
                         capture=runner.program.describe() if runner.program is not None else None,
                         gpu_memory_mb=run.memory, host_cpu_by_thread=run.threads, gc=run.gc,
                         measured_capture=run.capture, compiles=run.compiles, executor_steps=run.steps)
    if memory_growth_mb(run.memory) > MEMORY_GROWTH_MB:
        log.warning("GPU memory grew by %.0f MB over %d frames: something allocates every frame and keeps it",
                    memory_growth_mb(run.memory), run.frames)
    if latency_frames:
        paced = _run(graph, device, latency_frames, unpaced=False)
        report.latency_ms = paced.runner.stats.as_dict()["latency_ms"]
        report.paced_fps = round(paced.fps, 2)
        report.host_cpu_ms_paced = round(paced.cpu_ms, 3) if paced.frames else None
        report.paced_drops, report.paced_capture, report.paced_threads = paced.drops, paced.capture, paced.threads
    if kernel_frames and runner.device.type == "cuda":
        markers.ENABLED[0] = bool(os.environ.get("MUSE_BENCH_TRACE"))  # node names in the written timeline
        try:
            kernels = _run(graph, device, WARM_FRAMES + kernel_frames, unpaced=True, profile=True).kernels
        finally:
            markers.ENABLED[0] = False
        if kernels is not None:
            report.kernels_per_frame, report.top_kernels, report.host_calls = kernels
    return report
