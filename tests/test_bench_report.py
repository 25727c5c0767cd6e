"""`muse bench`'s report: where the host CPU goes, thread by thread (the H200's 4K stream spent 22.9 ms of host
CPU a replayed frame in one run and nothing said which thread), and no GPU memory figures off the GPU."""

from __future__ import annotations

import threading
import time

from muse.graph.bench import Settle, _transitions, bench_graph
from muse.graph.host_cpu import by_thread, thread_cpu_s
from muse.graph.validate import validate_text


def test_host_cpu_is_split_by_thread_name() -> None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    before = thread_cpu_s()
    t = threading.Thread(target=spin, name="busy-one")
    t.start()
    try:
        time.sleep(0.4)  # the main thread sleeps: its CPU stays near zero
        spent = by_thread(before, thread_cpu_s(), frames=10)  # names are read while the threads live
    finally:
        stop.set()
        t.join()
    assert spent["busy-one"] >= 10.0  # >= 100 ms of CPU over 10 frames (~400 ms spinning, under the GIL's share)
    assert spent["busy-one"] > spent.get("MainThread", 0.0)
    assert list(spent) == sorted(spent, key=lambda k: -spent[k])


def test_bench_report_names_the_runtime_threads() -> None:
    text = ("version: 1\nsettings: {device: cpu}\nnodes:\n"
            "  demo: {type: capture.demo, params: {width: 320, height: 180, fps: 0}}\n"
            "  inv: {type: basic.invert, inputs: {frame: demo.frame}}\n"
            "  sink: {type: output.null, inputs: {frame: inv.out}}\n")
    report = bench_graph(validate_text(text, "tiny.yaml"), device="cpu", frames=120, latency_frames=0)
    assert report.frames > 0 and report.fps > 0
    threads = report.host_cpu_by_thread
    assert threads and all(v > 0 for v in threads.values())
    assert any(name.startswith("muse-") for name in threads), threads  # the executor, the source, the sink
    assert report.gpu_memory_mb == {}  # a CPU run has no GPU memory figures
    assert report.as_dict()["host_cpu_ms_per_frame_paced"] is None  # no paced run asked for
    line = next(x for x in report.lines("tiny.yaml") if x.startswith("host CPU ms a frame by thread"))
    assert next(iter(threads)) in line
    assert report.as_dict()["host_cpu_by_thread_ms"] == threads
    assert report.gc["ms_per_frame"] >= 0.0 and report.gc["objects"] > 0
    assert any(x.startswith("Python GC:") for x in report.lines("tiny.yaml"))


def test_gc_pauses_are_timed_while_measuring() -> None:
    import gc

    from muse.graph.host_cpu import GcPauses

    pauses = GcPauses()
    pauses.start()
    try:
        junk = [[i] for i in range(200_000)]  # tracked containers: a full collection has work to do
        gc.collect()
        del junk
    finally:
        pauses.stop()
    assert pauses._callback not in gc.callbacks
    summary = pauses.summary(frames=10)
    assert summary["full"] >= 1 and summary["longest_ms"] > 0.0 and summary["ms_per_frame"] > 0.0
    assert summary["objects"] > 1000


def test_measuring_waits_for_recordings_and_warm_ups_to_stop():
    """A finished compile is taken up at the next frame boundary: its warm-up frames and recording must fall
    before the measured window, not in it; a node that is never captured does not hold the wait."""
    counts = {"captures": 1, "replays": 40, "eager_frames": 3,
              "eager_reasons": {"warm-up of a new variant": 3, "face: pulls its inputs lazily": 30}}
    s = Settle(frames=10)
    assert not s.settled(_transitions(counts), 30)
    assert not s.settled(_transitions(counts), 39)
    counts["eager_reasons"]["face: pulls its inputs lazily"] += 9  # eager every frame: not a transition
    assert s.settled(_transitions(counts), 40)
    counts["eager_reasons"]["warm-up after new compiled code"] = 1  # new compiled code arrives
    assert not s.settled(_transitions(counts), 41)
    counts["captures"] += 1
    assert not s.settled(_transitions(counts), 44)
    assert s.settled(_transitions(counts), 54)
    assert Settle().settled(_transitions({}), 0)  # no frame program (the CPU path): nothing to wait for


def test_the_paced_run_says_which_node_dropped_frames() -> None:
    """Paced at 60 fps into a sink that takes 40 ms a frame: the sink's `latest` input drops frames, and the report
    says where (the H200's paced runs reached 55-58 of 60 fps and nothing said why). The paced fps is the graph's
    output, which a slow sink does not hold back."""
    text = ("version: 1\nsettings: {device: cpu, fps: 60}\nnodes:\n"
            "  demo: {type: capture.demo, params: {width: 160, height: 90, fps: 60}}\n"
            "  sink: {type: basic.null, params: {delay_ms: 40}, inputs: {frame: demo.frame}}\n")
    report = bench_graph(validate_text(text, "slow_sink.yaml"), device="cpu", frames=15, latency_frames=45)
    assert report.paced_drops.get("sink", 0) >= 10, report.paced_drops  # ~1/3 of the frames reach it
    assert "demo" not in report.paced_drops
    assert report.as_dict()["paced_drops"] == report.paced_drops
    line = next(x for x in report.lines("slow_sink.yaml") if x.startswith("paced "))
    assert "sink dropped" in line


def test_the_paced_run_splits_its_host_cpu_by_thread() -> None:
    """Paced, every thread sleeps between frames and wakes for each: what that costs a live stream shows per thread
    (the H200's paced 4K frame cost 1.95 ms of host CPU against 1.47 unpaced, and nothing said where)."""
    text = ("version: 1\nsettings: {device: cpu, fps: 30}\nnodes:\n"
            "  demo: {type: capture.demo, params: {width: 960, height: 540, fps: 30}}\n"
            "  inv: {type: basic.invert, inputs: {frame: demo.frame}}\n"
            "  sink: {type: output.null, inputs: {frame: inv.out}}\n")
    report = bench_graph(validate_text(text, "paced.yaml"), device="cpu", frames=15, latency_frames=60)
    paced = report.paced_threads
    assert paced and all(v > 0 for v in paced.values()), paced  # /proc counts CPU in 10 ms ticks: ~1.5 s of frames
    assert any(name.startswith("muse-") for name in paced), paced
    assert report.as_dict()["host_cpu_by_thread_ms_paced"] == paced
    line = next(x for x in report.lines("paced.yaml") if x.startswith("paced, host CPU ms a frame by thread: "))
    assert next(iter(paced)) in line


def test_timings_are_forgotten_where_measuring_starts_and_counts_are_kept() -> None:
    from muse.graph.stats import GraphStats

    stats = GraphStats()
    pose = stats.node("pose", "pose.blazepose")
    pose.frames, pose.drops, pose.errors = 12, 2, 1
    for ms in (5301.0, 2.5, 2.6):  # the first call loads the model and times both convolution engines
        pose.gpu_ms.append(ms)
        pose.host_ms.append(ms)
        pose.cpu_ms.append(ms)
    stats.add_latency(900.0)
    stats.frame_gpu_ms.append(700.0)
    stats.reset_timings()
    pose.gpu_ms.append(2.4)
    d = stats.as_dict()["nodes"]["pose"]
    assert d["gpu_ms"]["p99"] == 2.4 and d["host_ms"]["p99"] == 0.0 and "cpu_ms" not in d
    assert (d["frames"], d["drops"], d["errors"]) == (12, 2, 1)
    assert not stats.latency_ms and not stats.frame_gpu_ms

