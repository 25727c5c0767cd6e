"""Two frames in flight on a CPU: the head of the graph for frame N+1 runs on the executor
thread while the tail (the nodes nearest the outputs) finishes frame N on a second thread.

On a GPU the device already overlaps frames (nodes only launch work). On the CPU path
every node computes in `process`, so one executor thread uses one core at a time; the
heavy calls (ONNX Runtime, OpenCV, torch) release the GIL, so two threads use two cores.

- Head: a prefix of the graph's topological order, evaluated eagerly by the executor.
  Tail: everything else, pulled by the sinks as usual, on the `muse-cpu-tail` thread.
- At most two frames are in flight: the executor hands frame N+1 over only once the tail
  thread has finished frame N (a rendezvous, no queue), so latency stays bounded.
- The split starts with only the last node before the outputs in the tail and is moved
  once, after `REBALANCE_AFTER` frames, to where the measured head and tail CPU times are
  closest. The head is any set of nodes that holds its own inputs (not only a prefix of the
  topological order): two independent branches (stream_4k's pose and matte) may go one to
  each thread. Every node still runs on one thread only, in frame order.
- Param changes and graph swaps wait until the tail is idle (`drain`).

Enabled on the CPU device when the graph has no lazy nodes; MUSE_CPU_PIPELINE=0 turns it off.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
from typing import Any

from muse.graph.liveness import branch_nodes, switches_fed_by
from muse.graph.slots import FrameFailed

log = logging.getLogger("muse.runtime.cpu_pipeline")

REBALANCE_AFTER = 30
SPLIT_SEARCH_LIMIT = 200_000  # head sets tried at most (a dozen nodes have a few thousand)

__all__ = ["CpuPipeline", "best_head", "plan"]


def plan(runner: Any) -> "CpuPipeline | None":
    """A pipeline for this runner's graph, or None where it does not apply (GPU, lazy nodes, one stage)."""
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
    """OpenCV's and torch's own thread pools get the per-stage share of the cores (see
    `muse.nodes.cpu.cpu_threads`): two stages each waking a pool as wide as the machine made
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


def best_head(order: list[str], inputs: dict[str, set[str]], cost: dict[str, float]) -> list[str] | None:
    """The head (in `order`, a topological order) with the smallest max(head, tail) cost, among the sets of
    nodes that hold every node's inputs from `order` (so the head never waits for the tail), head and tail
    both non-empty; the closest balance among equals. None when there is no such split."""
    total = sum(cost.get(n, 0.0) for n in order)
    best: list = [None, None, None]  # worst stage, imbalance, head
    tried = 0

    def visit(i: int, chosen: list[str], members: set[str], c: float) -> None:
        nonlocal tried
        tried += 1
        if tried > SPLIT_SEARCH_LIMIT or (best[0] is not None and c > best[0]):
            return  # a larger head only costs more
        if i == len(order):
            if chosen and len(chosen) < len(order):
                worst, gap = max(c, total - c), abs(total - 2 * c)
                if best[0] is None or (worst, gap) < (best[0], best[1]):
                    best[:] = [worst, gap, list(chosen)]
            return
        name = order[i]
        if inputs.get(name, set()) <= members:
            chosen.append(name)
            members.add(name)
            visit(i + 1, chosen, members, c + cost.get(name, 0.0))
            members.discard(name)
            chosen.pop()
        visit(i + 1, chosen, members, c)

    visit(0, [], set(), 0.0)
    return best[2]


class CpuPipeline:
    def __init__(self, runner: Any, middle: list[str], branch: set[str] | None = None) -> None:
        self.runner = runner
        self.branch = branch or set()
        self.middle = middle
        self._head = middle[:-1]  # in topological order; the tail is the rest of `middle`
        self.frames = 0
        self._job: tuple[dict, float] | None = None
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self.previous_threads: tuple[int, int] | None = None  # restored on close
        self._thread = threading.Thread(target=self._loop, name="muse-cpu-tail", daemon=True)
        self._thread.start()
        log.info("CPU pipeline: head %s | tail %s", self.head, self.tail)

    @property
    def head(self) -> list[str]:
        return self._head

    @property
    def tail(self) -> list[str]:
        head = set(self._head)
        return [n for n in self.middle if n not in head]

    # -- executor side -----------------------------------------------------
    def run_frame(self, memo: dict, t_capture: float) -> None:
        """Evaluate the head here, then hand the frame to the tail thread (waiting for it to be free)."""
        live = self.runner.live
        for name in self.head:
            if name not in live:  # a switch's idle branches do not run
                continue
            try:
                self.runner._evaluate(name, memo)  # FrameFailed propagates to the executor as before
            except FrameFailed as exc:
                if name not in self.branch:
                    raise
                # A switch's branch failed: its switch (run in the tail) falls back; told now, so the next
                # frame, whose head starts before this frame's tail ends, does not run the branch again.
                for switch, port, index in switches_fed_by(self.runner.graph, name):
                    self.runner.slots[switch].node.input_failed(port, index, exc.exc)
        with self._cond:
            while self._busy and not self._closed:
                self._cond.wait(0.1)
            if self._closed:
                return
            self._job, self._busy = (memo, t_capture), True
            self._cond.notify_all()
        self.frames += 1
        if self.frames == REBALANCE_AFTER:
            self._rebalance()

    def drain(self) -> None:
        """Wait until the tail thread has finished its frame (before params change or the graph is swapped)."""
        with self._cond:
            while self._busy and not self._closed:
                self._cond.wait(0.1)

    def close(self) -> None:
        self.drain()
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=10)
        _restore_cores(self.previous_threads)

    def abandon(self) -> None:
        """The tail thread hung in a node call: release the executor waiting for it; the thread ends
        once the call returns (the runner runs whole frames meanwhile)."""
        with self._cond:
            self._closed = True
            self._busy = False
            self._cond.notify_all()
        _restore_cores(self.previous_threads)

    def _rebalance(self) -> None:
        """Move the split to where head and tail take about the same time (measured means). The nodes'
        thread CPU times, where recorded: wall times also count the waits for a core that other
        processes (or the other stage) hold, which on a busy machine moved the split by whole nodes.
        Means, not medians: a node that does its work every Nth frame (the clean plate's full-size
        update: p50 1.4 ms, mean 5.6 ms at 720p) costs its mean in throughput."""
        self.drain()
        cost = {}
        for name in self.middle:
            slot = self.runner.slots.get(name)
            times = (list(slot.stats.cpu_ms) or list(slot.stats.host_ms)) if slot is not None else []
            times = times[5:] if len(times) > 10 else times  # not the first calls (warm-up, model loading)
            cost[name] = statistics.fmean(times) if times else 0.0
        head = best_head(self.middle, self._inputs(), cost)
        if head is not None and head != self._head:
            self._head = head
            log.info("CPU pipeline rebalanced: head %s | tail %s", self.head, self.tail)

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

    # -- tail thread ---------------------------------------------------------
    def _loop(self) -> None:
        from muse.graph.executor import check_delivery
        from muse.graph.slots import FrameFailed, GraphRunError, Item, LeftBehind

        runner = self.runner
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait(0.1)
                if self._job is None:
                    return
                memo, t_capture = self._job
                self._job = None
            try:
                sinks = [runner.slots[n] for n in runner.graph.order if runner.slots[n].rn.cls.is_sink() and not runner.slots[n].absent]
                delivered = 0
                for sink in sinks:
                    values, events = runner._gather_inputs(sink, memo)
                    if values is None:
                        continue
                    runner._deliver(sink, Item(values, events, t_capture))  # a stalled output does not hold the tail
                    delivered += 1
                check_delivery(memo, delivered)  # nodes failed and no output got anything: a failed frame
                runner._failed_frames = 0
            except FrameFailed as exc:
                runner._failed_frames += 1
                if runner._failed_frames >= runner.graph.settings.max_consecutive_errors:
                    runner._fail(GraphRunError(f"{runner._failed_frames} frames in a row failed; last: {exc}. See the node's "
                                               "error above; the graph stopped so the stream doesn't show garbage."))
            except LeftBehind:
                return  # this thread hung in a node and was given up (CpuPipeline.abandon)
            except BaseException as exc:  # the tail must never die silently
                runner._fail(exc)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


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
    parts.append(f"{cpu_threads()} thread(s) per stage")
    pipe = runner._cpu_pipeline
    if pipe is not None:
        parts.append(f"2 frames in flight ({', '.join(pipe.head)} | {', '.join(pipe.tail)})")
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
