"""Two frames in flight on the CPU (muse/graph/cpu_pipeline.py): the nodes of a graph run on two
threads, frames reach the output complete and in order, each node sees the frames in order,
never more than two frames are in flight, two branches of one frame run at the same time, and
live param changes wait for the frames in flight."""

from __future__ import annotations

import threading
import time

import pytest

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.registry import Registry
from muse.graph.runtime import GraphRunner
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text

LOG: list[tuple[str, int, str, float, float]] = []  # (node, frame index, thread, start, end)
LOCK = threading.Lock()


class Stage(Node):
    """Sleeps a while (as a model would, GIL released), tags the frame with its index (test node)."""

    node_type = "test.stage"
    description = "test"
    frame: In[Frame]
    out: Out[Frame]

    class Params(NodeParams):
        ms: float = 5.0
        add: float = 0.0
        spin_ms: float = 0.0  # CPU work (a busy loop) on top of the sleep

    def process(self, frame: Frame) -> dict[str, Frame]:
        t0 = time.perf_counter()
        time.sleep(self.params.ms / 1000.0)
        c0 = time.thread_time()
        while time.thread_time() - c0 < self.params.spin_ms / 1000.0:
            pass
        with LOCK:
            LOG.append((self.name, frame.index, threading.current_thread().name, t0, time.perf_counter()))
        img = frame.image.clone()
        img[0, 0, 0] = (int(img[0, 0, 0]) + int(self.params.add)) % 256
        return {"out": frame.with_image(img)}


class Join(Node):
    """Two inputs in, the first passed on (test node: where two branches of a frame meet)."""

    node_type = "test.join"
    description = "test"
    left: In[Frame]
    right: In[Frame]
    out: Out[Frame]

    def process(self, left: Frame, right: Frame) -> dict[str, Frame]:
        assert left.index == right.index
        with LOCK:
            LOG.append((self.name, left.index, threading.current_thread().name, time.perf_counter(), time.perf_counter()))
        return {"out": left}


class Keep(Node):
    node_type = "test.keep"
    description = "test"
    frame: In[Frame]
    seen: list[tuple[int, int]] = []

    def process(self, frame: Frame) -> None:
        Keep.seen.append((frame.index, int(frame.image[0, 0, 0])))


@pytest.fixture
def registry() -> Registry:
    reg = registry_with(Stage, Join, Keep)
    LOG.clear()
    Keep.seen.clear()
    return reg


def _graph(registry: Registry, frames: int, ms: tuple[float, float, float] = (8.0, 8.0, 8.0)):
    text = (
        "version: 1\nsettings: {device: cpu}\nnodes:\n"
        f"  src: {{type: basic.test_pattern, params: {{width: 32, height: 24, fps: 0, frames: {frames}}}}}\n"
        f"  a: {{type: test.stage, params: {{ms: {ms[0]}, add: 1}}, inputs: {{frame: {{from: src.frame, queue: 4}}}}}}\n"
        f"  b: {{type: test.stage, params: {{ms: {ms[1]}, add: 2}}, inputs: {{frame: a.out}}}}\n"
        f"  c: {{type: test.stage, params: {{ms: {ms[2]}, add: 4}}, inputs: {{frame: b.out}}}}\n"
        "  sink: {type: test.keep, inputs: {frame: {from: c.out, queue: 64}}}\n"
    )
    return validate_text(text, "test.yaml", registry)


def test_frames_overlap_on_two_threads_in_order(registry: Registry, monkeypatch) -> None:
    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    runner = GraphRunner(_graph(registry, 40))
    stats = runner.run()
    assert stats.frames_out == 40
    indices = [i for i, _ in Keep.seen]
    assert indices == sorted(indices) and len(indices) == 40  # every frame, in order
    # every frame went through a, b and c exactly once, in that order
    runs = [(n, i) for n, i, _, _, _ in LOG]
    for i in indices:
        assert [runs.count((n, i)) for n in "abc"] == [1, 1, 1]
    ends = {(n, i): e for n, i, _, _, e in LOG}
    starts = {(n, i): s for n, i, _, s, _ in LOG}
    assert all(starts[("b", i)] >= ends[("a", i)] and starts[("c", i)] >= ends[("b", i)] for i in indices)
    assert {thread for _, _, thread, _, _ in LOG} == {"muse-cpu-tail", "muse-cpu-1"}  # the executor only takes frames in
    # each node saw the frames in order, one call at a time
    for n in "abc":
        calls = sorted((s, e, i) for m, i, _, s, e in LOG if m == n)
        assert [i for _, _, i in calls] == sorted(i for _, _, i in calls)
        assert all(calls[k + 1][0] >= calls[k][1] for k in range(len(calls) - 1))
    # the stages really overlapped in time
    spans = {(n, i): (s, e) for n, i, _, s, e in LOG}
    overlapped = sum(1 for (n, i), (s, e) in spans.items() if n == "a" and ("c", i - 1) in spans
                     and s < spans[("c", i - 1)][1] and spans[("c", i - 1)][0] < e)
    assert overlapped >= 10


def test_at_most_two_frames_in_flight(registry: Registry, monkeypatch) -> None:
    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    GraphRunner(_graph(registry, 30, (2.0, 2.0, 20.0))).run()  # a slow tail: the head must wait for it
    ends = {(n, i): e for n, i, _, _, e in LOG}
    starts = {(n, i): s for n, i, _, s, _ in LOG}
    done = sorted(i for n, i in ends if n == "c")
    for i in done[2:]:
        # frame i's head starts only after frame i-2 has left the tail
        assert starts[("a", i)] >= ends[("c", i - 2)] - 1e-4


def test_switched_off_runs_everything_on_the_executor(registry: Registry, monkeypatch) -> None:
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    stats = GraphRunner(_graph(registry, 10)).run()
    assert stats.frames_out == 10 and len(Keep.seen) == 10
    assert {t for _, _, t, _, _ in LOG} == {"muse-executor"}


def test_live_param_change_while_pipelined(registry: Registry, monkeypatch) -> None:
    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    runner = GraphRunner(_graph(registry, 10_000))
    runner.start()
    try:
        deadline = time.time() + 20
        while len(Keep.seen) < 10 and time.time() < deadline:
            time.sleep(0.01)
        runner.update_params("c", {"add": 100})
        while not any(v for _, v in Keep.seen[-3:]) and time.time() < deadline:
            time.sleep(0.01)
        n = len(Keep.seen)
        while len(Keep.seen) < n + 10 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
    assert runner._error is None
    # after the change, c adds 100 instead of 4: a later frame shows it, and frames stay in order
    first_tag = Keep.seen[0][1]
    assert any((v - first_tag) % 256 == 96 for _, v in Keep.seen[-5:])
    indices = [i for i, _ in Keep.seen]
    assert indices == sorted(indices)


def test_thread_pools_are_put_back_after_the_run(registry: Registry, monkeypatch) -> None:
    import cv2
    import torch

    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    monkeypatch.delenv("MUSE_THREADS", raising=False)
    monkeypatch.setenv("MUSE_CPU_THREADS", "1")
    before = (cv2.getNumThreads(), torch.get_num_threads())
    runner = GraphRunner(_graph(registry, 5))
    runner.start()
    try:
        assert torch.get_num_threads() == 1  # one thread a stage while it runs
    finally:
        runner.wait(20)
        runner.stop()
    assert (cv2.getNumThreads(), torch.get_num_threads()) == before


def test_two_branches_of_one_frame_run_at_once(registry: Registry, monkeypatch) -> None:
    """stream_4k's shape: two independent branches (the matte, the pose) meet at the composite. They run on
    the two threads at the same time, so a frame takes about its longest branch, not the sum of both."""
    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    text = (
        "version: 1\nsettings: {device: cpu}\nnodes:\n"
        "  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 0, frames: 20}}\n"
        "  a: {type: test.stage, params: {ms: 30}, inputs: {frame: {from: src.frame, queue: 4}}}\n"
        "  b: {type: test.stage, params: {ms: 30}, inputs: {frame: {from: src.frame, queue: 4}}}\n"
        "  j: {type: test.join, inputs: {left: a.out, right: b.out}}\n"
        "  sink: {type: test.keep, inputs: {frame: {from: j.out, queue: 64}}}\n"
    )
    stats = GraphRunner(validate_text(text, "test.yaml", registry)).run()
    assert stats.frames_out == 20 and [i for i, _ in Keep.seen] == list(range(20))
    spans = {(n, i): (s, e) for n, i, _, s, e in LOG}
    both = [i for i in range(20) if spans[("a", i)][0] < spans[("b", i)][1] and spans[("b", i)][0] < spans[("a", i)][1]]
    assert len(both) >= 15, f"a and b of one frame overlapped on {len(both)} of 20 frames"
    assert all(spans[("j", i)][0] >= max(spans[("a", i)][1], spans[("b", i)][1]) for i in range(20))


def test_priorities_follow_cpu_time_not_waits(registry: Registry, monkeypatch) -> None:
    """The calls to start first are those with the costliest path to the outputs by the nodes' thread CPU
    times: a node that mostly waits (here: sleeps, as a node would while another process holds the core)
    does not count its wait."""
    monkeypatch.delenv("MUSE_CPU_PIPELINE", raising=False)
    text = (
        "version: 1\nsettings: {device: cpu}\nnodes:\n"
        "  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 0, frames: 45}}\n"
        "  a: {type: test.stage, params: {ms: 25}, inputs: {frame: {from: src.frame, queue: 4}}}\n"
        "  b: {type: test.stage, params: {ms: 0, spin_ms: 6}, inputs: {frame: a.out}}\n"
        "  c: {type: test.stage, params: {ms: 0, spin_ms: 6}, inputs: {frame: b.out}}\n"
        "  sink: {type: test.keep, inputs: {frame: {from: c.out, queue: 64}}}\n"
    )
    runner = GraphRunner(validate_text(text, "test.yaml", registry))
    stats = runner.run()
    nodes = stats.as_dict()["nodes"]
    assert nodes["a"]["cpu_ms"]["p50"] < 3.0 < nodes["b"]["cpu_ms"]["p50"]  # recorded per node
    assert nodes["a"]["host_ms"]["p50"] > 20.0
    rank = runner._cpu_pipeline._rank
    assert rank["c"] == pytest.approx(6.0, abs=2.0) and rank["b"] == pytest.approx(12.0, abs=3.0)
    assert rank["a"] - rank["b"] < 3.0  # by wall time a would add 25 ms
    assert [i for i, _ in Keep.seen] == list(range(45))


def test_path_costs_are_the_costliest_path_to_the_end() -> None:
    from muse.graph.cpu_pipeline import path_costs

    order = ["camera", "pose", "selfie", "matte", "face", "room", "composite"]
    inputs = {"camera": set(), "pose": {"camera"}, "selfie": {"camera"}, "matte": {"camera", "selfie"},
              "face": {"camera", "pose"}, "room": {"camera", "matte"}, "composite": {"matte", "face", "room"}}
    cost = {"camera": 0.5, "pose": 20.0, "selfie": 8.0, "matte": 50.0, "face": 11.0, "room": 6.0, "composite": 11.0}
    got = path_costs(order, inputs, cost)
    assert got["composite"] == 11.0 and got["room"] == 17.0 and got["matte"] == 67.0 and got["selfie"] == 75.0
    assert got["face"] == 22.0 and got["pose"] == 42.0 and got["camera"] == 75.5
    assert path_costs(["a"], {"a": set()}, {}) == {"a": 0.0}
