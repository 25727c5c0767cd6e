"""Runtime behaviour on the CPU: drops under `latest`, none under `queue`,
lazy branches, the switch, live parameters, graph swap, failure handling."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from muse.graph.node import In, Node, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.graph.registry import Registry
from muse.graph.runtime import GraphRunError, GraphRunner
from muse.graph.stats import Trace
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text


class Counter(Node):
    """Counts calls; optionally fails (test node)."""

    node_type = "test.counter"
    description = "test"
    frame: In[Frame]
    out: Out[Frame]
    calls: dict[str, int] = {}

    class Params(NodeParams):
        fail: bool = False
        nan: bool = False
        tag: float = 0.0

    def process(self, frame: Frame) -> dict[str, Frame]:
        Counter.calls[self.name] = Counter.calls.get(self.name, 0) + 1
        if self.params.fail:
            raise NodeError(f"{self.name} is broken on purpose")
        img = frame.chw(torch.float32)
        value = float("nan") if self.params.nan else self.params.tag
        return {"out": frame.with_image(torch.full_like(img, value), layout="chw")}


class Collect(Node):
    """Sink that keeps what it saw (test node)."""

    node_type = "test.collect"
    description = "test"
    frame: In[Frame]
    seen: list[float] = []

    class Params(NodeParams):
        delay_ms: float = 0.0

    def process(self, frame: Frame) -> None:
        if self.params.delay_ms:
            time.sleep(self.params.delay_ms / 1000)
        Collect.seen.append(float(frame.chw()[0, 0, 0]))


@pytest.fixture
def registry() -> Registry:
    reg = registry_with(Counter, Collect)
    Counter.calls.clear()
    Collect.seen.clear()
    return reg


def graph(text: str, registry: Registry):
    return validate_text("version: 1\nsettings: {device: cpu}\nnodes:\n" + text, "test.yaml", registry)


SRC = "  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 0, frames: %d}}\n"


def test_latest_policy_drops_and_counts_under_a_slow_sink(registry: Registry) -> None:
    g = graph(SRC % 40 + "  sink: {type: basic.null, params: {delay_ms: 30}, inputs: {frame: {from: src.frame, queue: 64}}}\n"
              .replace("{from: src.frame, queue: 64}", "src.frame"), registry)
    runner = GraphRunner(g)
    stats = runner.run()
    sink = stats.nodes["sink"]
    src = stats.nodes["src"]
    assert src.frames == 40
    assert sink.drops + src.drops > 0, "a slow sink behind `latest` must drop frames"
    # every frame is accounted for: shown, or dropped in front of the executor or the sink
    assert sink.frames + sink.drops + src.drops == 40
    assert stats.drops == sink.drops + src.drops


def test_queue_policy_keeps_every_frame_in_order(registry: Registry) -> None:
    g = graph(SRC % 25 + "  tag: {type: basic.invert, inputs: {frame: {from: src.frame, queue: 4}}}\n"
              "  sink: {type: basic.null, params: {delay_ms: 5}, inputs: {frame: {from: tag.out, queue: 4}}}\n", registry)
    stats = GraphRunner(g).run()
    assert stats.nodes["sink"].frames == 25
    assert stats.drops == 0
    assert stats.frames_out == 25


def test_only_the_selected_branch_runs(registry: Registry) -> None:
    g = graph(SRC % 5 + """
  a: {type: test.counter, params: {tag: 0.25}, inputs: {frame: {from: src.frame, queue: 2}}}
  b: {type: test.counter, params: {tag: 0.75}, inputs: {frame: {from: src.frame, queue: 2}}}
  pick: {type: flow.switch, params: {mode: first_available, labels: [personal, base]}, inputs: {candidates: [a.out, b.out]}}
  sink: {type: test.collect, inputs: {frame: {from: pick.selected, queue: 8}}}
""", registry)
    stats = GraphRunner(g).run()
    assert Counter.calls == {"a": 5}
    assert Collect.seen == [0.25] * 5
    assert stats.nodes["pick"].info["live"] == "personal"
    assert stats.nodes["b"].frames == 0
    assert stats.nodes["pick"].info["branches"] == {"personal": "live", "base": "standby"}


def test_fallback_on_error_switches_and_reports(registry: Registry) -> None:
    g = graph(SRC % 6 + """
  a: {type: test.counter, params: {fail: true}, inputs: {frame: {from: src.frame, queue: 2}}}
  b: {type: test.counter, params: {tag: 0.5}, inputs: {frame: {from: src.frame, queue: 2}}}
  pick: {type: flow.switch, params: {mode: fallback_on_error, retry_s: 100, labels: [student, base]}, inputs: {candidates: [a.out, b.out]}}
  sink: {type: test.collect, inputs: {frame: {from: pick.selected, queue: 8}}}
""", registry)
    stats = GraphRunner(g).run()
    assert Collect.seen == [0.5] * 6
    assert Counter.calls["a"] == 1, "a failed branch is not retried before retry_s"
    assert stats.nodes["pick"].info["live"] == "base"
    assert stats.nodes["a"].errors == 1 and "broken on purpose" in stats.nodes["a"].last_error
    branches = stats.nodes["pick"].info["branches"]  # what `muse run --stats` lists
    assert branches["base"] == "live"
    assert branches["student"].startswith("failed: ") and "broken on purpose" in branches["student"]
    assert "retried in" in branches["student"]


def test_fallback_on_nan_output(registry: Registry) -> None:
    g = graph(SRC % 6 + """
  a: {type: test.counter, params: {nan: true}, inputs: {frame: {from: src.frame, queue: 2}}}
  b: {type: test.counter, params: {tag: 0.5}, inputs: {frame: {from: src.frame, queue: 2}}}
  pick: {type: flow.switch, params: {retry_s: 100}, inputs: {candidates: [a.out, b.out]}}
  sink: {type: test.collect, inputs: {frame: {from: pick.selected, queue: 8}}}
""", registry)
    GraphRunner(g).run()
    # The NaN check is read without stalling, so the bad branch shows for at most one frame.
    assert Counter.calls["a"] <= 2 and Collect.seen[-1] == 0.5 and Collect.seen.count(0.5) >= 4


def test_manual_switch_by_param(registry: Registry) -> None:
    g = graph(SRC % 3 + """
  a: {type: test.counter, params: {tag: 0.25}, inputs: {frame: {from: src.frame, queue: 2}}}
  b: {type: test.counter, params: {tag: 0.75}, inputs: {frame: {from: src.frame, queue: 2}}}
  pick: {type: flow.switch, params: {mode: manual, index: 1}, inputs: {candidates: [a.out, b.out]}}
  sink: {type: test.collect, inputs: {frame: {from: pick.selected, queue: 8}}}
""", registry)
    GraphRunner(g).run()
    assert Collect.seen == [0.75] * 3 and "a" not in Counter.calls


def test_live_param_update_applies_between_frames(registry: Registry) -> None:
    g = graph("  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 200}}\n"
              "  a: {type: test.counter, params: {tag: 0.25}, inputs: {frame: src.frame}}\n"
              "  sink: {type: test.collect, inputs: {frame: a.out}}\n", registry)
    runner = GraphRunner(g).start()
    try:
        _wait_until(lambda: len(Collect.seen) >= 3)
        runner.update_params("a", {"tag": 0.75})
        _wait_until(lambda: Collect.seen[-1] == 0.75)
        with pytest.raises(Exception):
            runner.update_params("a", {"tag": "not a number"})
    finally:
        runner.stop()
    assert 0.25 in Collect.seen and Collect.seen[-1] == 0.75


def test_graph_swap_without_stopping(registry: Registry) -> None:
    base = "  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 200}}\n"
    g1 = graph(base + "  a: {type: test.counter, params: {tag: 0.25}, inputs: {frame: src.frame}}\n"
               "  sink: {type: test.collect, inputs: {frame: a.out}}\n", registry)
    g2 = graph(base + "  b: {type: test.counter, params: {tag: 0.5}, inputs: {frame: src.frame}}\n"
               "  sink: {type: test.collect, inputs: {frame: b.out}}\n", registry)
    runner = GraphRunner(g1).start()
    try:
        _wait_until(lambda: len(Collect.seen) >= 3)
        src_node = runner.slots["src"].node
        runner.replace(g2)
        _wait_until(lambda: Collect.seen and Collect.seen[-1] == 0.5)
        assert runner.slots["src"].node is src_node, "unchanged nodes stay open across the swap"
        assert "a" not in runner.slots
    finally:
        runner.stop()


def test_failing_node_stops_after_limit_with_its_name(registry: Registry) -> None:
    # on_error: skip leaves the output nothing to show: after max_consecutive_errors such frames the graph stops
    # (under hold_last or fallback, the default, the stream goes on: see tests/test_faults.py).
    g = validate_text("version: 1\nsettings: {device: cpu, max_consecutive_errors: 3}\nnodes:\n" + SRC % 50 +
                      "  a: {type: test.counter, on_error: skip, params: {fail: true}, inputs: {frame: {from: src.frame, queue: 2}}}\n"
                      "  sink: {type: test.collect, inputs: {frame: a.out}}\n", "t.yaml", registry)
    with pytest.raises(GraphRunError) as info:
        GraphRunner(g).run()
    assert "'a'" in str(info.value) and "broken on purpose" in str(info.value)


def test_open_failure_names_node(registry: Registry) -> None:
    class BadOpen(Counter):
        node_type = "test.bad_open"

        def open(self, ctx):
            raise FileNotFoundError("model.ckpt")

    registry.register(BadOpen, "test")
    g = graph(SRC % 2 + "  a: {type: test.bad_open, inputs: {frame: src.frame}}\n"
              "  sink: {type: test.collect, inputs: {frame: a.out}}\n", registry)
    with pytest.raises(GraphRunError) as info:
        GraphRunner(g).start()
    assert "node 'a'" in str(info.value) and "model.ckpt" in str(info.value)


def test_trace_and_stats_are_written(registry: Registry, tmp_path: Path) -> None:
    import json

    g = graph(SRC % 8 + "  a: {type: basic.invert, inputs: {frame: {from: src.frame, queue: 2}}}\n"
              "  sink: {type: basic.null, inputs: {frame: {from: a.out, queue: 2}}}\n", registry)
    trace = Trace()
    stats = GraphRunner(g, trace=trace).run()
    stats.write(tmp_path / "s.json")
    trace.write(tmp_path / "t.json")
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["nodes"]["a"]["frames"] == 8 and s["nodes"]["a"]["host_ms"]["p99"] >= s["nodes"]["a"]["host_ms"]["p50"] > 0
    assert s["latency_ms"]["p50"] > 0
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    assert {e["name"] for e in events} >= {"src", "a", "sink"} and all(e["ph"] == "X" for e in events)


def test_tap_sees_outputs(registry: Registry) -> None:
    g = graph(SRC % 4 + "  a: {type: basic.luma_mask, inputs: {frame: {from: src.frame, queue: 2}}}\n"
              "  sink: {type: basic.null, inputs: {frame: {from: src.frame, queue: 2}}}\n"
              "  sink2: {type: test.collect, inputs: {frame: {from: src.frame, queue: 2}}}\n", registry)
    seen: list[Mask] = []
    runner = GraphRunner(g)
    runner.tap("src", "frame", seen.append)
    runner.run()
    assert len(seen) == 4 and isinstance(seen[0], Frame)


def _wait_until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached in time")


def test_runner_never_changes_the_graph_it_was_given(registry: Registry) -> None:
    """The CPU downscale is a resolved setting on the runner's own copy; live params stay there too."""
    g = validate_text(
        "version: 1\nsettings: {device: cpu, resolution: [64, 48], cpu_resolution: [32, 24]}\nnodes:\n"
        "  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 100, frames: 20}}\n"
        "  a: {type: test.counter, params: {tag: 0.25}, inputs: {frame: {from: src.frame, queue: 4}}}\n"
        "  sink: {type: test.collect, inputs: {frame: {from: a.out, queue: 8}}}\n", "test.yaml", registry)
    before = {n: rn.params.model_dump() for n, rn in g.nodes.items()}
    runner = GraphRunner(g)
    assert runner.resolution == (32, 24)
    assert runner.graph.nodes["src"].params.width == 32 and runner.graph.nodes["src"].params.height == 24
    assert runner.stats.info["cpu_downscale"] == [
        "src: 64x48 is too much for the CPU path; capturing at 32x24 (settings.cpu_resolution)"]
    runner.start()
    runner.update_params("a", {"tag": 0.75})  # at the next frame boundary
    assert runner.wait(30)
    runner.stop()
    assert {n: rn.params.model_dump() for n, rn in g.nodes.items()} == before, "the caller's graph was changed"
    assert runner.graph.nodes["a"].params.tag == 0.75
    assert len(Collect.seen) == 20 and Collect.seen[-1] == 0.75


def test_a_sink_is_handed_the_copy_the_replay_made_for_it_and_the_runtime_copies_the_rest(registry: Registry) -> None:
    """The executor's hand-over to a sink (`_detach_for_sink`) with copies the recording made itself
    (MUSE_OUTPUT_COPIES=graph; muse.graph.frame_copies): a value the program has a copy of is handed over as it is
    (no copy made, the frame's events kept), an unconnected optional input stays None, and any other value gets
    the runtime's own copy, as before."""
    from muse.graph.frame_copies import BoundOutputs

    runner = GraphRunner(graph(SRC % 1 + "  sink: {type: test.collect, inputs: {frame: src.frame}}\n", registry))
    static, other = torch.zeros(4, 5, 3, dtype=torch.uint8), torch.ones(4, 5, 3, dtype=torch.uint8)
    made = torch.full((4, 5, 3), 9, dtype=torch.uint8)
    outs = BoundOutputs.__new__(BoundOutputs)

    class Program:
        frame_outputs = [outs]

        def take_sink_copy(self, value: object) -> object:
            return outs.take(value)

    runner.program = Program()  # type: ignore[assignment]
    events = ["the frame's end"]
    outs.ready = {static.data_ptr(): made}
    got, evs = runner._detach_for_sink({"frame": Frame(static, index=3), "mask": None}, events)
    assert got["frame"].image is made and got["frame"].is_sink_copy() and got["frame"].index == 3
    assert got["mask"] is None and evs == events
    outs.ready = {static.data_ptr(): made}
    got, _evs = runner._detach_for_sink({"frame": Frame(static, index=4), "other": Frame(other, index=4)}, events)
    assert got["frame"].image is made
    assert got["other"].image is not other and torch.equal(got["other"].image, other) and got["other"].is_sink_copy()
