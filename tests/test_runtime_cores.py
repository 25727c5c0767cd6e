"""`settings.runtime_cores`: the executor, source and sink threads move onto the cores it names; nothing else does."""

from __future__ import annotations

import os
import time

import pytest

from muse.graph.affinity import chosen_cores, parse_cores
from muse.graph.host_cpu import thread_names
from muse.graph.runtime import GraphRunner
from muse.graph.validate import GraphValidationError, validate_text

pytestmark = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="thread affinity is Linux's")


def _graph(cores: str) -> str:
    return ("version: 1\nsettings: {device: cpu, fps: 30, runtime_cores: '%s'}\nnodes:\n"
            "  demo: {type: capture.demo, params: {width: 160, height: 90, fps: 30}}\n"
            "  inv: {type: basic.invert, inputs: {frame: demo.frame}}\n"
            "  sink: {type: output.null, inputs: {frame: inv.out}}\n") % cores


def _allowed(tid: int) -> set[int]:
    """The cores thread `tid` of this process may run on (Cpus_allowed_list of /proc)."""
    with open(f"/proc/self/task/{tid}/status") as fh:
        line = next(x for x in fh if x.startswith("Cpus_allowed_list:"))
    return parse_cores(line.split(":", 1)[1].strip())


def test_core_lists_are_read_as_a_streamer_writes_them() -> None:
    assert parse_cores("2") == {2} and parse_cores("2-3") == {2, 3} and parse_cores("0, 2-3") == {0, 2, 3}
    assert parse_cores("") == set()
    for bad in ("two", "3-1", "-1", "2-"):
        with pytest.raises(ValueError, match="core"):
            parse_cores(bad)


def test_a_bad_setting_is_refused_before_the_first_frame_naming_the_field() -> None:
    with pytest.raises(GraphValidationError, match="runtime_cores"):
        validate_text(_graph("fast"), "cores.yaml")


def test_the_environment_wins_over_the_graph_and_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_RUNTIME_CORES", raising=False)
    assert chosen_cores("1") == {1}
    monkeypatch.setenv("MUSE_RUNTIME_CORES", "")
    assert chosen_cores("1") == set()  # set but empty: no pinning for this run
    monkeypatch.setenv("MUSE_RUNTIME_CORES", "0-x")
    with pytest.raises(ValueError, match="MUSE_RUNTIME_CORES"):
        chosen_cores("")


def test_the_runtime_threads_run_on_the_chosen_core_and_the_callers_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_RUNTIME_CORES", raising=False)
    before = os.sched_getaffinity(0)
    core = max(before)
    runner = GraphRunner(validate_text(_graph(str(core)), "cores.yaml"), frames=None)
    runner.start()
    try:
        seen: dict[str, set[int]] = {}
        end = time.monotonic() + 10.0
        while time.monotonic() < end and len(seen) < 3:
            time.sleep(0.05)
            for tid, name in thread_names().items():
                if name in ("muse-executor", "muse-src-demo", "muse-sink-sink"):
                    seen[name] = _allowed(tid)
        assert runner.stats.frames_out > 0
    finally:
        runner.stop()
    assert seen == {"muse-executor": {core}, "muse-src-demo": {core}, "muse-sink-sink": {core}}, seen
    assert os.sched_getaffinity(0) == before  # the caller's thread is left where it was


def test_without_the_setting_the_threads_stay_where_the_os_puts_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_RUNTIME_CORES", raising=False)
    before = os.sched_getaffinity(0)
    runner = GraphRunner(validate_text(_graph(""), "cores.yaml"), frames=None)
    runner.start()
    try:
        time.sleep(0.3)
        executor = next(tid for tid, name in thread_names().items() if name == "muse-executor")
        assert _allowed(executor) == before
    finally:
        runner.stop()
