"""Two frames in flight on a CPU, node by node on two worker threads (`muse-cpu-tail`, `muse-cpu-1`).

On a GPU the device already overlaps frames (nodes only launch work). On the CPU path
every node computes in `process`, so one thread uses one core at a time; the heavy calls
(ONNX Runtime, OpenCV, torch, numba) release the GIL, so two threads use two cores.

- Each frame in flight is a list of node calls (the graph's live processing nodes). Either
  worker takes the next call that can run: its inputs done this frame, and the same node
  done for the frame before (a node's state sees frames in order, one call at a time).
  Among those, the oldest frame first, then the longest measured path to the outputs (so the
  slow branch of a frame starts first and a short one fills the other core).
- Two independent branches of one frame (stream_4k: the segmenter and its matte, the pose and
  the face) run at the same time on the two workers, and the next frame fills a core that
  would otherwise wait. A frame's latency is then close to its longest path, not the sum of
  two pipeline stages (a fixed head | tail split keeps two frames in flight all the time, so
  its latency is 2 / fps).
- The executor only takes frames in: a new one when fewer than two are in flight and a worker
  waits with no call ready for it (both cores busy, no second frame waiting in line), and only
  once the switches' branches (the candidate models) of the frames in flight have run: one
  that failed has told its switch, and the new frame does not run it again.
- Frames reach the outputs complete and in order (the worker that completes the oldest frame
  hands it to the outputs). Param changes and graph swaps wait until no frame is in flight
  (`drain`).

Enabled on the CPU device when the graph has no lazy nodes; MUSE_CPU_PIPELINE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
from dataclasses import dataclass, field
from typing import Any

from muse.graph.liveness import branch_nodes, switches_fed_by
from muse.graph.slots import FrameFailed

log = logging.getLogger("muse.runtime.cpu_pipeline")

MEASURE_AFTER = 30  # frames before the calls' priorities come from their measured CPU times
MEASURE_EVERY = 300  # and how often they are taken again
MAX_IN_FLIGHT = 2
WORKERS = ("muse-cpu-tail", "muse-cpu-1")  # one a core on two cores (the executor only takes frames in)

__all__ = ["CpuPipeline", "path_costs", "plan"]


def plan(runner: Any) -> "CpuPipeline | None":
    """A pipeline for this runner's graph, or None where it does not apply (GPU, lazy nodes, one node)."""
    if runner.device.type != "cpu" or os.environ.get("MUSE_CPU_PIPELINE", "1") == "0":
        return None
    if getattr(runner, "program", None) is not None:  # the emulated frame capture (tests) runs frames whole
        return None
    graph = runner.graph
    middle = [n for n in graph.order if not graph.nodes[n].cls.is_source() and not graph.nodes[n].cls.is_sink()
              and not runner.slots[n].absent]
    if len(middle) < 2 or any(graph.nodes[n].cls.lazy_inputs for n in middle):
        return None
    previous = _share_cores()
    pipe = CpuPipeline(runner, middle, branch_nodes(graph))
    pipe.previous_threads = previous
    return pipe


def _share_cores() -> tuple[int, int]:
    """OpenCV's and torch's own thread pools get the per-thread share of the cores (see
    `muse.nodes.cpu.cpu_threads`): two threads each waking a pool as wide as the machine made
    small calls wait for a busy core (measured: 40 k-value torch ops taking 10-90 ms under load)."""
    import cv2
    import torch

    from muse.nodes.cpu import cpu_threads

    previous = (cv2.getNumThreads(), torch.get_num_threads())
    n = cpu_threads()
    cv2.setNumThreads(n)
    if not os.environ.get("MUSE_THREADS"):  # an explicit `MUSE_THREADS` wins (muse/cli.py)
        torch.set_num_threads(n)
    return previous


def _restore_cores(previous: tuple[int, int] | None) -> None:
    """Put the thread pools back as they were (a process that runs a graph and then does other work)."""
    if previous is None:
        return
    import cv2
    import torch

    cv2.setNumThreads(previous[0])
    torch.set_num_threads(previous[1])


def path_costs(order: list[str], inputs: dict[str, set[str]], cost: dict[str, float]) -> dict[str, float]:
    """Per node (in `order`, a topological order): its cost plus the costliest path from it to the end of the
    graph through the nodes that read it (the "bottom level" of list scheduling: the call to start first)."""
    users: dict[str, list[str]] = {n: [] for n in order}
    for n in order:
        for src in inputs.get(n, ()):
            if src in users:
                users[src].append(n)
    out: dict[str, float] = {}
    for n in reversed(order):
        out[n] = cost.get(n, 0.0) + max((out[u] for u in users[n]), default=0.0)
    return out


@dataclass(eq=False)
class _Frame:
    """One frame in flight: its values so far (`memo`), its calls still to start and those running."""

    memo: dict
    t_capture: float
    todo: list[str]  # not started yet, in topological order
    needs: dict[str, set[str]]  # per call: the calls of this frame it waits for
    running: dict[str, threading.Thread] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)
    failed: FrameFailed | None = None  # a node outside any switch's branch failed: the frame is not delivered
    delivering: bool = False

    @property
    def complete(self) -> bool:
        return not self.running and (not self.todo or self.failed is not None)


class CpuPipeline:
    def __init__(self, runner: Any, middle: list[str], branch: set[str] | None = None) -> None:
        self.runner = runner
        self.branch = branch or set()
        self.middle = middle
        self.frames = 0
        self._deps = self._inputs()
        self._rank = path_costs(middle, self._deps, {n: 1.0 for n in middle})  # by node count until measured
        self._flight: list[_Frame] = []  # oldest first
        self._cond = threading.Condition()
        self._idle = 0  # workers waiting for a call
        self._closed = False
        self.previous_threads: tuple[int, int] | None = None  # restored on close
        self.threads = [threading.Thread(target=self._loop, name=name, daemon=True) for name in WORKERS]
        for t in self.threads:
            t.start()
        log.info("CPU pipeline: %d nodes on %d threads, at most %d frames in flight", len(middle), len(WORKERS), MAX_IN_FLIGHT)

    # -- executor side -----------------------------------------------------
    def run_frame(self, memo: dict, t_capture: float) -> None:
        """Put a frame in flight, then wait until the next one should be taken in (see the module docstring)."""
        live = self.runner.live
        todo = [n for n in self.middle if n in live]  # a switch's idle branches do not run
        members = set(todo)
        frame = _Frame(memo, t_capture, todo, {n: self._deps.get(n, set()) & members for n in todo})
        with self._cond:
            while len(self._flight) >= MAX_IN_FLIGHT and not self._closed and self._alive():
                self._drop_abandoned()
                self._cond.wait(0.1)
            if self._closed:
                return
            self._flight.append(frame)
            self._cond.notify_all()
        self._deliver_ready()  # (a frame with nothing to run is complete already)
        self.frames += 1
        if self.frames == MEASURE_AFTER or self.frames % MEASURE_EVERY == 0:
            self._measure()
        with self._cond:  # the next frame is taken in when a worker would otherwise wait
            while not self._closed and self._alive():
                if len(self._flight) < MAX_IN_FLIGHT and not self._branch_pending() and self._idle > len(self._ready()):
                    return
                self._cond.wait(0.1)

    def _alive(self) -> bool:
        return any(t.is_alive() for t in self.threads)

    def drain(self) -> None:
        """Wait until no frame is in flight (before params change or the graph is swapped)."""
        with self._cond:
            while self._flight and not self._closed and self._alive():
                self._cond.wait(0.1)

    def close(self) -> None:
        self.drain()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        for t in self.threads:
            t.join(timeout=10)
        _restore_cores(self.previous_threads)

    def abandon(self) -> None:
        """A worker hung in a node call: release the executor waiting for it; the other worker ends now, this
        one once the call returns (the runner runs whole frames on the executor meanwhile)."""
        with self._cond:
            self._closed = True
            self._flight.clear()
            self._cond.notify_all()
        _restore_cores(self.previous_threads)

    def _measure(self) -> None:
        """Priorities from the nodes' measured mean thread CPU times (wall times also count the waits for a
        core that other processes hold). Means, not medians: a node that does its work every Nth frame
        (the clean plate's full-size update) costs its mean in throughput."""
        cost = {}
        for name in self.middle:
            slot = self.runner.slots.get(name)
            try:  # (the other thread may be appending to them)
                times = (list(slot.stats.cpu_ms) or list(slot.stats.host_ms)) if slot is not None else []
            except RuntimeError:
                return  # taken at the next measurement
            times = times[5:] if len(times) > 10 else times  # not the first calls (warm-up, model loading)
            cost[name] = statistics.fmean(times) if times else 0.0
        rank = path_costs(self.middle, self._deps, cost)
        with self._cond:
            self._rank = rank

    def _inputs(self) -> dict[str, set[str]]:
        """The nodes of `middle` each node of `middle` reads (an absent node's stand-in in its place)."""
        runner, inside = self.runner, set(self.middle)
        out: dict[str, set[str]] = {}
        for name in self.middle:
            found: set[str] = set()
            todo = [src.node for ri in runner.graph.nodes[name].inputs.values() for src in ri.sources]
            seen: set[str] = set()
            while todo:
                src = todo.pop()
                if src in seen:
                    continue
                seen.add(src)
                if src in inside:
                    found.add(src)
                    continue
                slot = runner.slots.get(src)
                if slot is not None and slot.absent:
                    given = runner.provider(src)
                    if given is not None:
                        todo.append(given)
            out[name] = found
        return out

    # -- scheduling (under self._cond) ------------------------------------
    def _ready(self) -> list[tuple[_Frame, str]]:
        """The calls that may start now, best first: the oldest frame, then the longest path to the end."""
        self._drop_abandoned()
        out: list[tuple[_Frame, str]] = []
        for i, frame in enumerate(self._flight):
            if frame.failed is not None:
                continue
            earlier = self._flight[:i]
            calls = [n for n in frame.todo if frame.needs[n] <= frame.done
                     and not any(n in f.running or (n in f.todo and f.failed is None) for f in earlier)]
            calls.sort(key=lambda n: -self._rank.get(n, 0.0))
            out.extend((frame, n) for n in calls)
        return out

    def _drop_abandoned(self) -> None:
        """A frame whose call hung on a thread the runner left behind will never complete: dropped (the
        runner goes on with new frames; the node is skipped until its call returns)."""
        gone = self.runner._abandoned
        if gone and any(t in gone for f in self._flight for t in f.running.values()):
            self._flight = [f for f in self._flight if not any(t in gone for t in f.running.values())]
            self._cond.notify_all()

    def _branch_pending(self) -> bool:
        """A switch's branch (a candidate model) has not run yet for a frame in flight: the next frame's live
        branches are chosen only once it has (a branch that fails tells its switch, so the next frame falls
        back instead of running it again)."""
        return any(n in self.branch for f in self._flight if f.failed is None for n in (*f.todo, *f.running))

    def _take(self, call: tuple[_Frame, str]) -> None:
        frame, name = call
        frame.todo.remove(name)
        frame.running[name] = threading.current_thread()

    # -- the workers -------------------------------------------------------
    def _work(self) -> None:
        """Run calls, the best ready one first; wait when there is none; return once closed."""
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    ready = self._ready()
                    if ready:
                        call = ready[0]
                        self._take(call)
                        break
                    self._idle += 1
                    self._cond.notify_all()  # (the executor takes a frame in when a worker waits)
                    self._cond.wait(0.1)
                    self._idle -= 1
            self._run(call)

    def _run(self, call: tuple[_Frame, str]) -> None:
        frame, name = call
        try:
            self.runner._evaluate(name, frame.memo)
        except FrameFailed as exc:
            if name in self.branch:
                # A switch's branch failed: its switch falls back; told now, so the next frame does not run the
                # branch again.
                for switch, port, index in switches_fed_by(self.runner.graph, name):
                    self.runner.slots[switch].node.input_failed(port, index, exc.exc)
            else:
                frame.failed = exc
        except BaseException:
            with self._cond:  # this frame cannot complete; the exception ends the graph (or this thread)
                if frame in self._flight:
                    self._flight.remove(frame)
                self._cond.notify_all()
            raise
        with self._cond:
            frame.running.pop(name, None)
            frame.done.add(name)
            self._cond.notify_all()
        self._deliver_ready()

    def _deliver_ready(self) -> None:
        """Hand the oldest frames that are complete to the outputs, in order, one thread at a time."""
        from muse.graph.executor import check_delivery
        from muse.graph.slots import GraphRunError, Item

        runner = self.runner
        while True:
            with self._cond:
                if not self._flight or not self._flight[0].complete or self._flight[0].delivering:
                    return
                frame = self._flight[0]
                frame.delivering = True
            try:
                if frame.failed is not None:
                    raise frame.failed
                sinks = [runner.slots[n] for n in runner.graph.order if runner.slots[n].rn.cls.is_sink() and not runner.slots[n].absent]
                delivered = 0
                for sink in sinks:
                    values, events = runner._gather_inputs(sink, frame.memo)
                    if values is None:
                        continue
                    runner._deliver(sink, Item(values, events, frame.t_capture))  # a stalled output does not hold the rest
                    delivered += 1
                check_delivery(frame.memo, delivered)  # nodes failed and no output got anything: a failed frame
                runner._failed_frames = 0
            except FrameFailed as exc:
                runner._failed_frames += 1
                if runner._failed_frames >= runner.graph.settings.max_consecutive_errors:
                    runner._fail(GraphRunError(f"{runner._failed_frames} frames in a row failed; last: {exc}. See the node's "
                                               "error above; the graph stopped so the stream doesn't show garbage."))
            finally:
                with self._cond:
                    if frame in self._flight:
                        self._flight.remove(frame)
                    self._cond.notify_all()

    # -- worker threads ------------------------------------------------------
    def _loop(self) -> None:
        from muse.graph.slots import LeftBehind

        try:
            self._work()
        except LeftBehind:
            return  # this thread hung in a node and was given up (CpuPipeline.abandon)
        except BaseException as exc:  # a worker must never die silently
            self.runner._fail(exc)


def startup_note(runner: Any) -> str | None:
    """What `muse run` says about the CPU path when it starts (None on a GPU)."""
    if runner.device.type != "cpu":
        return None
    from muse.nodes.cpu import cpu_threads, wanted

    parts = []
    some = next(iter(runner.slots.values()), None)
    if some is not None and not wanted(some.ctx):
        parts.append("torch reference nodes (MUSE_CPU_PATH=torch)")
    else:
        from muse.nodes.cpu import kernels

        reason = kernels.why_not()
        parts.append("ONNX Runtime/OpenCV nodes" + (", fused numba kernels" if reason is None else f" (no fused kernels: {reason})"))
    parts.append(f"{cpu_threads()} thread(s) per call")
    pipe = runner._cpu_pipeline
    if pipe is not None:
        parts.append(f"up to {MAX_IN_FLIGHT} frames in flight, node by node on {len(WORKERS)} threads")
    else:
        parts.append("1 frame in flight")
    if any(rn.type.startswith("pose.") for rn in runner.graph.nodes.values()):
        from muse.models import bundled

        lighter = [n for n in bundled.CATALOGUE if n.startswith("pose_landmark") and n != "pose_landmark_full"]
        lean = [s.name for s in runner.slots.values() if s.rn.type == "pose.blazepose" and not s.absent
                and s.ctx.wanted_outputs is not None and "mask" not in s.ctx.wanted_outputs]
        parts.append("pose model pose_landmark_full" + (
            f" ({', '.join(lighter)} available)" if lighter
            else " (the bundled MediaPipe 0.10.14 models include no lighter pose model)")
            + (" without its person mask (nothing reads it)" if lean else ""))
    return "CPU path: " + "; ".join(parts)
