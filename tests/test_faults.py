"""Runtime faults: the per-node `on_error` policy, NaN/Inf outputs, stalls, out of memory, and
`muse.testing.faults` that makes any node fail on purpose (issue 19). The whole stream graph
under injected faults is in tests/test_faults_stream.py."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import pytest
import torch
import yaml

from muse.graph.capture import EagerFrame
from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.registry import Registry
from muse.graph.runtime import GraphRunError, GraphRunner
from muse.graph.spec import GraphSpec, dump_yaml, load_yaml
from muse.graph.testing import registry_with
from muse.graph.validate import GraphValidationError, validate_text
from muse.testing.faults import Fault


class Ramp(Node):
    """Outputs a float frame whose every pixel is the source frame's index / 1000 (test node)."""

    node_type = "test.ramp"
    description = "test"
    capturable = True
    frame: In[Frame]
    out: Out[Frame]

    class Params(NodeParams):
        pass

    def process(self, frame: Frame) -> dict[str, Frame]:
        ctx = self.context
        assert ctx.clock is not None
        img = frame.chw(torch.float32)
        # From the device clock (the test pattern's timestamp is index / 30): a captured frame reads no host value.
        out = torch.zeros_like(img) + (ctx.clock * (30.0 / 1000.0)).to(torch.float32)
        return {"out": frame.with_image(out, layout="chw")}


class Seen(Node):
    """Sink keeping the first value of every frame it gets (test node)."""

    node_type = "test.seen"
    description = "test"
    frame: In[Frame]
    values: list[float] = []

    class Params(NodeParams):
        pass

    def process(self, frame: Frame) -> None:
        Seen.values.append(float(frame.chw(torch.float32)[0, 0, 0]))


@pytest.fixture
def registry() -> Registry:
    reg = registry_with(Ramp, Seen)
    Seen.values = []
    return reg


def graph(body: str, registry: Registry, settings: str = "device: cpu") -> object:
    return validate_text(f"version: 1\nsettings: {{{settings}}}\nnodes:\n" + body, "faults.yaml", registry)


# Unpaced, the test pattern's timestamp is index / 30: test.ramp turns it into index / 1000.
SRC = "  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 0, frames: %d}}\n"
RAMP = "  a: {type: test.ramp, %s inputs: {frame: {from: src.frame, queue: 64}}}\n"
SINK = "  sink: {type: test.seen, inputs: {frame: {from: a.out, queue: 64}}}\n"


def run(body: str, registry: Registry, faults: list[Fault], settings: str = "device: cpu"):
    runner = GraphRunner(graph(body, registry, settings), faults=faults)
    stats = runner.run()
    return stats, runner


# -- validation ------------------------------------------------------------------------------------


def _errors(text: str, registry: Registry) -> list:
    with pytest.raises(GraphValidationError) as info:
        validate_text(text, "bad.yaml", registry)
    return info.value.errors


def test_bad_policies_name_file_node_and_field(registry: Registry) -> None:
    head = "version: 1\nsettings: {device: cpu}\nnodes:\n" + SRC % 3
    errs = _errors(head + RAMP % "on_error: retry," + SINK, registry)
    assert any(e.node == "a" and e.field == "on_error" and e.file == "bad.yaml" and e.line == 5 for e in errs), [str(e) for e in errs]
    errs = _errors(head + RAMP % "" + "  sink: {type: test.seen, on_error: hold_last, inputs: {frame: a.out}}\n", registry)
    assert any(e.code == "bad_policy" and e.node == "sink" and e.field == "on_error" and "output" in e.message for e in errs)
    errs = _errors(head + RAMP % "on_error: fallback, fallback: {out: nothing}," + SINK, registry)
    assert any(e.code == "bad_fallback" and e.field == "fallback.out" and "no input 'nothing'" in e.message for e in errs)
    errs = _errors(head + RAMP % "fallback: {out: frame}," + SINK, registry)
    assert any(e.code == "bad_fallback" and e.field == "fallback" and "only used with on_error: fallback" in e.message for e in errs)
    # A mask cannot stand in for a frame; a node with no input of its output's type has no fallback.
    errs = _errors(head + "  m: {type: basic.luma_mask, on_error: fallback, inputs: {frame: src.frame}}\n"
                   "  sink: {type: basic.null, inputs: {mask: m.mask}}\n", registry)
    assert any(e.code == "bad_fallback" and e.node == "m" and "mask" in e.message for e in errs), [str(e) for e in errs]
    errs = _errors(head + RAMP % "budget_ms: -5," + SINK, registry)
    assert any(e.node == "a" and e.field == "budget_ms" for e in errs)


def test_policies_resolve_with_defaults_and_survive_a_round_trip(registry: Registry) -> None:
    g = graph(SRC % 3 + RAMP % "on_error: fallback, budget_ms: 40," + SINK, registry, "device: cpu, budget_ms: 250")
    assert g.nodes["a"].policy.on_error == "fallback" and g.nodes["a"].policy.budget_ms == 40
    assert g.nodes["a"].policy.fallback == {"out": "frame"}  # the input of the output's type
    assert g.nodes["src"].policy.on_error == "skip" and g.nodes["sink"].policy.budget_ms == 250
    g2 = graph(SRC % 3 + RAMP % "" + SINK, registry, "device: cpu, on_error: stop")
    assert g2.nodes["a"].policy.on_error == "stop" and g2.nodes["src"].policy.on_error == "skip"
    text = dump_yaml(g.spec)
    data, _ = load_yaml(text)
    again = GraphSpec.model_validate(data).nodes["a"]
    assert (again.on_error, again.budget_ms) == ("fallback", 40)


def test_the_editor_keeps_the_policy_on_save(registry: Registry) -> None:
    from muse.editor.model import EditorModel

    m = EditorModel(registry=registry)
    m.load_text("version: 1\nnodes:\n" + SRC % 3 + RAMP % "on_error: fallback, budget_ms: 40, fallback: {out: frame}," + SINK)
    node = yaml.safe_load(m.to_yaml())["nodes"]["a"]
    assert node["on_error"] == "fallback" and node["budget_ms"] == 40 and node["fallback"] == {"out": "frame"}


# -- the policies ----------------------------------------------------------------------------------


def test_hold_last_repeats_the_last_good_output_and_counts(registry: Registry) -> None:
    stats, _ = run(SRC % 12 + RAMP % "" + SINK, registry, [Fault("a", "raise", at=4, every=3)])
    v = [round(x * 1000) for x in Seen.values]
    assert len(v) == 12, "every frame reached the output"
    assert v[:4] == [0, 1, 2, 3] and v[4] == 3 and v[5] == 5 and v[7] == 6 and v[10] == 9, v
    a = stats.nodes["a"]
    assert a.errors == 3 and a.handled == {"held": 3} and a.on_error == "hold_last"
    assert stats.fault_totals() == {"errors": 3}


def test_skip_drops_only_the_failing_frames(registry: Registry) -> None:
    stats, _ = run(SRC % 12 + RAMP % "on_error: skip," + SINK, registry, [Fault("a", "raise", at=4, every=3)])
    v = [round(x * 1000) for x in Seen.values]
    assert v == [0, 1, 2, 3, 5, 6, 8, 9, 11], v
    assert stats.nodes["a"].handled == {"skipped": 3} and stats.frames_out == 9


def test_fallback_passes_the_named_input_through(registry: Registry) -> None:
    stats, _ = run(SRC % 8 + RAMP % "on_error: fallback, fallback: {out: frame}," + SINK, registry, [Fault("a", "die", at=5)])
    assert [round(x * 1000) for x in Seen.values[:5]] == [0, 1, 2, 3, 4]
    # The test pattern's own first pixel (not the ramp's value) from frame 5 on: the input went through.
    assert len(Seen.values) == 8 and all(x > 0.01 or x == 0 for x in Seen.values[5:])
    assert stats.nodes["a"].handled == {"fallback": 3}


def test_hold_last_without_a_last_output_uses_the_fallback(registry: Registry) -> None:
    stats, _ = run(SRC % 4 + RAMP % "" + SINK, registry, [Fault("a", "die", at=0)])
    assert len(Seen.values) == 4 and stats.nodes["a"].handled == {"fallback": 4}


def test_stop_stops_the_graph_naming_the_node(registry: Registry) -> None:
    with pytest.raises(GraphRunError) as info:
        run(SRC % 20 + RAMP % "on_error: stop," + SINK, registry, [Fault("a", "raise", at=3)])
    assert "node 'a'" in str(info.value) and "on_error is stop" in str(info.value) and "faults.yaml" in str(info.value)


# -- NaN / Inf -------------------------------------------------------------------------------------


@pytest.mark.parametrize("capture", ["off", "emulate"])
def test_nan_never_reaches_the_output_and_is_counted(registry: Registry, capture: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    stats, runner = run(SRC % 16 + RAMP % "" + SINK, registry, [Fault("a", "nan", at=6, every=4)], f"device: cpu, capture: {capture}")
    v = Seen.values
    assert len(v) == 16 and all(math.isfinite(x) for x in v), v
    # The NaN frames (6, 10, 14) show the last good output on the same frame (on the device).
    assert [round(x * 1000) for x in v] == [0, 1, 2, 3, 4, 5, 5, 7, 8, 9, 9, 11, 12, 13, 13, 15]
    assert stats.nodes["a"].nan_frames == 3 and stats.fault_totals() == {"nan": 3}
    if capture == "emulate":
        assert runner.program is not None and runner.program.replays > 0, "the other frames were replayed"


def test_nan_under_skip_quarantines_until_the_output_is_finite_again(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    stats, _ = run(SRC % 12 + RAMP % "on_error: skip," + SINK, registry, [Fault("a", "nan", at=4)], "device: cpu, capture: emulate")
    v = [round(x * 1000) for x in Seen.values]
    # Frame 4 is held on the device; the host learns of it at frame 5, which is skipped; frame 5 was clean, so 6 is back.
    assert v == [0, 1, 2, 3, 3, 6, 7, 8, 9, 10, 11], v
    assert stats.nodes["a"].nan_frames == 1 and stats.nodes["a"].handled == {"skipped": 1}


def test_a_switch_still_falls_back_on_a_nan_branch(registry: Registry) -> None:
    registry.register(Ramp, "test")
    g = graph(SRC % 10 + RAMP % "" + "  b: {type: basic.invert, inputs: {frame: {from: src.frame, queue: 64}}}\n"
              "  pick: {type: flow.switch, params: {retry_s: 100}, inputs: {candidates: [a.out, b.out]}}\n"
              "  sink: {type: test.seen, inputs: {frame: {from: pick.selected, queue: 64}}}\n", registry)
    stats = GraphRunner(g, faults=[Fault("a", "nan", at=3, every=1)]).run()
    assert len(Seen.values) == 10 and all(math.isfinite(x) for x in Seen.values)
    assert stats.nodes["pick"].info["live"] != "branch 0"


# -- stalls ------------------------------------------------------------------------------------------


def test_a_stall_is_counted_warned_and_shown(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "muse.runtime")
    body = SRC % 6 + RAMP % "budget_ms: 100," + SINK
    runner = GraphRunner(graph(body, registry), faults=[Fault("a", "stall", at=2, ms=600)])
    seen_live = []
    runner.start()
    while not runner.wait(0.05):
        if runner.stats.nodes["a"].info.get("stalled"):
            seen_live.append(runner.stats.nodes["a"].info["stalled"])
    runner.stop()
    a = runner.stats.nodes["a"]
    assert a.stalls == 1 and a.slowest_ms >= 600 and len(Seen.values) == 6
    assert seen_live and seen_live[0].startswith("running"), "the watchdog shows the stall while it lasts"
    warned = [r.getMessage() for r in caplog.records if "over its budget" in r.getMessage()]
    assert any("has been running" in w and "'a'" in w for w in warned), warned  # while it ran
    assert any("took" in w for w in warned), warned  # when it ended
    assert "stalled" not in a.info, "cleared once the call returned"
    from muse.live_status import status_line

    assert "stalls 1" in status_line(runner.stats, 30.0)


def test_an_output_that_never_returns_does_not_hold_the_others(registry: Registry, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "muse.runtime")

    class Hang(Seen):
        node_type = "test.hang"

        def process(self, frame: Frame) -> None:
            time.sleep(30)

    registry.register(Hang, "test")
    body = ("  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 100}}\n" + RAMP % "" +
            "  stuck: {type: test.hang, budget_ms: 100, inputs: {frame: {from: a.out, queue: 2}}}\n"
            "  sink: {type: test.seen, inputs: {frame: {from: a.out, queue: 2}}}\n")
    runner = GraphRunner(graph(body, registry)).start()
    try:
        time.sleep(1.5)
        got = len(Seen.values)
        time.sleep(0.5)
        assert len(Seen.values) > got > 20, "the other output kept running"
        assert runner.stats.nodes["stuck"].info.get("stalled", "").startswith("running")
        assert runner.stats.nodes["stuck"].drops > 0, "the stalled output's frames are dropped and counted"
        assert any("'stuck'" in r.getMessage() and "other outputs keep running" in r.getMessage() for r in caplog.records)
    finally:
        runner._stop.set()
        runner.slots["stuck"].thread = None  # do not wait 10 s for its sleep: it is a daemon thread
        runner.stop()


# -- out of memory -----------------------------------------------------------------------------------


def test_out_of_memory_steps_down_and_says_so(registry: Registry, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.WARNING, "muse.runtime")
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")
    body = ("  src: {type: capture.demo, params: {width: 160, height: 96, fps: 0, frames: 10}}\n"
            "  seg: {type: basic.luma_mask, inputs: {frame: {from: src.frame, queue: 64}}}\n"
            "  matte: {type: segment.fused, params: {working_height: 96}, inputs: {frame: {from: src.frame, queue: 64}, prior: seg.mask}}\n"
            "  sink: {type: output.null, inputs: {mask: {from: matte.mask, queue: 64}}}\n")
    runner = GraphRunner(graph(body, registry), faults=[Fault("matte", "oom", at=3)])
    stats = runner.run()
    m = stats.nodes["matte"]
    assert m.oom == 1 and m.stepped_down == ["working_height 96 -> 64"], m.stepped_down
    assert any("ran out of GPU memory; stepping down: working_height 96 -> 64" in r.getMessage() for r in caplog.records)
    assert stats.nodes["sink"].frames == 10, "the frame that ran out of memory was covered (hold_last), none lost"
    assert stats.as_dict()["nodes"]["matte"]["faults"]["stepped_down"] == ["working_height 96 -> 64"]


def test_out_of_memory_with_nothing_lighter_is_covered_by_the_policy(registry: Registry) -> None:
    stats, _ = run(SRC % 6 + RAMP % "" + SINK, registry, [Fault("a", "oom", at=2)])
    assert stats.nodes["a"].oom == 1 and stats.nodes["a"].handled == {"held": 1} and len(Seen.values) == 6


# -- the injector and the command line ---------------------------------------------------------------


def test_fault_specs_parse_and_hit_the_frames_they_say() -> None:
    f = Fault.parse("pose:nan@10/5")
    assert (f.node, f.kind, f.at, f.every) == ("pose", "nan", 10, 5)
    assert [n for n in range(30) if f.hits(n)] == [10, 15, 20, 25]
    assert [n for n in range(8) if Fault.parse("x:die@5").hits(n)] == [5, 6, 7]
    assert Fault.parse("m:stall=2500@3").ms == 2500
    with pytest.raises(ValueError, match="NODE:KIND"):
        Fault.parse("seg:explode@3")


def test_a_fault_frame_runs_eagerly_under_capture(registry: Registry) -> None:
    node = Ramp("a", Ramp.Params())
    inj = Fault("a", "raise", at=1).inject(node)
    assert inj.frame_variant() is None and isinstance(inj.frame_variant(), EagerFrame) and inj.frame_variant() is None


def test_muse_run_stats_show_the_fault_counts(tmp_path: Path, registry: Registry) -> None:
    from muse.cli import main

    g = tmp_path / "g.yaml"
    g.write_text("version: 1\nsettings: {device: cpu}\nnodes:\n"
                 "  src: {type: capture.demo, params: {width: 64, height: 48, fps: 0, frames: 12}}\n"
                 "  inv: {type: basic.invert, inputs: {frame: {from: src.frame, queue: 32}}}\n"
                 "  mask: {type: basic.luma_mask, inputs: {frame: {from: inv.out, queue: 32}}}\n"
                 "  sink: {type: output.null, inputs: {frame: {from: inv.out, queue: 32}, mask: {from: mask.mask, queue: 32}}}\n")
    out = tmp_path / "stats.json"
    code = main(["run", str(g), "--no-status", "--stats", str(out), "--fault", "inv:raise@2/4", "--fault", "mask:nan@3/4"])
    assert code == 0
    s = json.loads(out.read_text())
    assert s["faults"] == {"errors": 3, "nan": 3}
    assert s["nodes"]["inv"]["faults"] == {"errors": 3, "handled": {"held": 3}} and s["nodes"]["inv"]["on_error"] == "hold_last"
    assert s["nodes"]["mask"]["faults"]["nan"] == 3 and s["frames_out"] == 12
    assert main(["run", str(g), "--fault", "nobody:raise"]) == 2


# -- network output --------------------------------------------------------------------------------


def test_stream_output_stays_on_this_machine_unless_allowed(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MUSE_ALLOW_NETWORK", raising=False)
    body = "version: 1\nnodes:\n" + SRC % 3 + "  out: {type: output.stream, params: {url: '%s'}, inputs: {frame: src.frame}}\n"
    for url in ("udp://10.1.2.3:5000", "rtmp://live.example.com/app/key", "srt://localhost.evil.example:9000", "tcp://[2001:db8::1]:9"):
        errs = _errors(body % url, registry)
        assert any(e.code == "network_output" and e.node == "out" and e.field == "url" and "--allow-network" in e.hint for e in errs), url
    for url in ("udp://127.0.0.1:5000", "tcp://localhost:9000", "udp://[::1]:5000", "udp://127.4.5.6:1"):
        validate_text(body % url, "ok.yaml", registry)
    validate_text(body % "udp://10.1.2.3:5000", "ok.yaml", registry, allow_network=True)
    monkeypatch.setenv("MUSE_ALLOW_NETWORK", "1")
    validate_text(body % "udp://10.1.2.3:5000", "ok.yaml", registry)


def test_stream_output_refuses_a_remote_url_at_open_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from muse.graph.node import NodeError
    from muse.graph.testing import make_context
    from muse.nodes.output.stream import StreamOutput

    monkeypatch.delenv("MUSE_ALLOW_NETWORK", raising=False)
    node = StreamOutput("out", StreamOutput.Params(url="udp://192.0.2.7:5000"))
    with pytest.raises(NodeError, match="node 'out': field `url`.*another machine.*--allow-network"):
        node.open(make_context("out"))


@pytest.mark.parametrize("hung", ["a", "b"])
def test_a_node_that_never_returns_is_left_behind_and_the_stream_goes_on(registry: Registry, caplog: pytest.LogCaptureFixture,
                                                                         hung: str) -> None:
    """Two nodes in a row: on the CPU path 'a' runs on the executor and 'b' on the pipeline's tail thread."""
    caplog.set_level(logging.WARNING, "muse.runtime")
    body = ("  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 50}}\n" + RAMP % "budget_ms: 100," +
            "  b: {type: test.ramp, budget_ms: 100, inputs: {frame: a.out}}\n"
            "  sink: {type: test.seen, inputs: {frame: {from: b.out, queue: 64}}}\n")
    runner = GraphRunner(graph(body, registry, "device: cpu, hang_after_s: 1"), faults=[Fault(hung, "stall", at=5, ms=3500)])
    runner.start()
    assert runner._cpu_pipeline is not None, "two frames in flight on the CPU"
    try:
        _wait_until(lambda: runner.slots[hung].hung, 5)
        got = len(Seen.values)
        time.sleep(0.8)
        during = len(Seen.values) - got
        assert during >= 10, f"the stream went on while 'a' hung ({during} frames in 0.8 s)"
        shown = set(Seen.values[got:])
        if hung == "b":  # the output's own input: held at its last good value while it hangs
            assert shown == {Seen.values[got - 1]}, shown
        else:  # 'b' (the ramp of the clock) keeps computing from a's held output
            assert len(shown) >= 10, shown
        _wait_until(lambda: not runner.slots[hung].hung, 6)
        n = len(Seen.values)
        _wait_until(lambda: len(Seen.values) > n + 5, 5)
        assert round(Seen.values[-1] * 1000) > 10, "it runs again once the call returned"
    finally:
        runner.stop()
    msgs = [r.getMessage() for r in caplog.records]
    assert any("has not returned for" in m and "goes on without it" in m for m in msgs), msgs
    assert any("returned after" in m and "runs again" in m for m in msgs), msgs
    assert runner.stats.nodes[hung].handled.get("held", 0) >= 10


def _wait_until(cond, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached in time")


def test_stop_inside_a_switch_branch_still_stops_the_graph(registry: Registry) -> None:
    g = graph(SRC % 10 + RAMP % "on_error: stop," + "  b: {type: basic.invert, inputs: {frame: {from: src.frame, queue: 64}}}\n"
              "  pick: {type: flow.switch, inputs: {candidates: [a.out, b.out]}}\n"
              "  sink: {type: test.seen, inputs: {frame: {from: pick.selected, queue: 64}}}\n", registry)
    with pytest.raises(GraphRunError, match="node 'a'.*on_error is stop"):
        GraphRunner(g, faults=[Fault("a", "raise", at=3)]).run()


# -- on the GPU machine ------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("capture", ["off", "on"])
def test_cuda_nan_is_held_on_the_device_and_counted_a_frame_late(registry: Registry, capture: str) -> None:
    """Real CUDA graphs: the guard's sum, where and 1-byte copy are recorded; NaN frames show the last good value."""
    stats, runner = run(SRC % 40 + RAMP % "" + SINK, registry, [Fault("a", "nan", at=12, every=6)], f"device: cuda, capture: {capture}")
    v = [round(x * 1000) for x in Seen.values]
    assert len(v) == 40 and all(math.isfinite(x) for x in Seen.values), v
    for i in range(12, 40, 6):
        assert v[i] == v[i - 1], (i, v)  # held on the same frame
    assert stats.nodes["a"].nan_frames == len(range(12, 40, 6))
    if capture == "on":
        assert runner.program is not None and runner.program.replays > 10, runner.program.describe()


@pytest.mark.cuda
def test_cuda_out_of_memory_steps_down_under_capture(registry: Registry) -> None:
    body = ("  src: {type: capture.demo, params: {width: 640, height: 360, fps: 0, frames: 40}}\n"
            "  seg: {type: basic.luma_mask, inputs: {frame: {from: src.frame, queue: 64}}}\n"
            "  matte: {type: segment.fused, inputs: {frame: {from: src.frame, queue: 64}, prior: seg.mask}}\n"
            "  sink: {type: output.null, inputs: {mask: {from: matte.mask, queue: 64}}}\n")
    stats, runner = run(body, registry, [Fault("matte", "oom", at=10)], "device: cuda, capture: on")
    assert stats.nodes["matte"].stepped_down == ["working_height 288 -> 208"] and stats.nodes["sink"].frames == 40
    assert runner.program is not None and runner.program.replays > 10


def test_the_warps_stand_in_with_no_reshaping(registry: Registry) -> None:
    """warp.face and warp.body declare their own fallback (a zero field), so `on_error: fallback` validates on them."""
    from skimage.data import astronaut

    from muse.graph.testing import make_context

    frame = Frame(torch.from_numpy(astronaut().copy()))
    for type_, inputs in (("warp.face", {"frame": frame}), ("warp.body", {})):
        cls = registry.get(type_)
        node = cls("w", cls.Params())
        node.open(make_context("w", resolution=(512, 512)))
        field = node.fallback(**inputs)["field"]
        assert field.image_size == (512, 512) and field.field.abs().max().item() == 0.0
    g = validate_text("version: 1\nsettings: {device: cpu}\nnodes:\n" + SRC % 3 +
                      "  f: {type: warp.face, on_error: fallback, inputs: {frame: src.frame}}\n"
                      "  m: {type: basic.luma_mask, inputs: {frame: src.frame}}\n"
                      "  w: {type: warp.apply, on_error: fallback, inputs: {frame: src.frame, face: f.field, mask: m.mask}}\n"
                      "  sink: {type: test.seen, inputs: {frame: w.out}}\n", "w.yaml", registry)
    assert g.nodes["f"].policy.fallback == {"field": "<node>"}
    assert g.nodes["w"].policy.fallback == {"out": "frame", "warped_mask": "mask"}


def test_a_node_failing_while_its_frame_is_recorded_is_recorded_again(registry: Registry, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node's exception during a recording is a fault (its on_error covers that frame), not a capture-contract
    violation: the variant warms up and records again instead of running eagerly for good."""
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")

    class Flaky(Ramp):
        node_type = "test.flaky"
        calls = 0

        def process(self, frame: Frame) -> dict[str, Frame]:
            Flaky.calls += 1
            if Flaky.calls == 4:  # frames 0-2 warm up eagerly; the 4th call is the recording
                from muse.graph.node import NodeError

                raise NodeError("flaky while recorded")
            return super().process(frame)

    registry.register(Flaky, "test")
    body = SRC % 16 + "  a: {type: test.flaky, inputs: {frame: {from: src.frame, queue: 64}}}\n" + SINK
    stats, runner = run(body, registry, [], "device: cpu, capture: emulate")
    assert [round(x * 1000) for x in Seen.values] == list(range(16)), "the failed recording's frame was run again eagerly"
    desc = runner.program.describe() if runner.program else {}
    assert desc["captures"] == 1 and desc["segments"][0]["failed_variants"] == [] and desc["replays"] >= 8, desc
    assert stats.nodes["a"].errors == 1 and "flaky while recorded" in stats.nodes["a"].last_error


def test_a_dead_output_is_stopped_and_the_others_keep_running(registry: Registry) -> None:
    body = SRC % 20 + RAMP % "" + SINK + "  rec: {type: basic.null, inputs: {frame: {from: a.out, queue: 64}}}\n"
    text = "device: cpu, max_consecutive_errors: 3"
    stats, _ = run(body, registry, [Fault("rec", "die", at=2)], text)
    assert len(Seen.values) == 20 and stats.nodes["rec"].info["status"] == "lost" and stats.nodes["rec"].errors == 3
    with pytest.raises(GraphRunError, match="output 'sink' failed 3 times in a row"):  # the only output: the graph stops
        run(SRC % 20 + RAMP % "" + SINK, registry, [Fault("sink", "die", at=2)], text)


def test_out_of_memory_in_a_source_or_output_is_counted(registry: Registry) -> None:
    stats, _ = run(SRC % 8 + RAMP % "" + SINK, registry, [Fault("src", "oom", at=2), Fault("sink", "oom", at=3)])
    assert stats.nodes["src"].oom == 1 and stats.nodes["sink"].oom == 1 and len(Seen.values) == 7


def test_on_the_cpu_pipeline_a_hung_output_does_not_hold_the_others_and_skips_still_stop(registry: Registry) -> None:
    """Two nodes in a row run as two stages on the CPU (the tail thread hands frames to the outputs)."""

    class Hang(Seen):
        node_type = "test.hang2"

        def process(self, frame: Frame) -> None:
            time.sleep(30)

    registry.register(Hang, "test")
    body = ("  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 100}}\n" + RAMP % "" +
            "  b: {type: test.ramp, inputs: {frame: a.out}}\n"
            "  stuck: {type: test.hang2, budget_ms: 100, inputs: {frame: {from: b.out, queue: 2}}}\n"
            "  sink: {type: test.seen, inputs: {frame: {from: b.out, queue: 2}}}\n")
    runner = GraphRunner(graph(body, registry)).start()
    assert runner._cpu_pipeline is not None
    try:
        time.sleep(1.5)
        got = len(Seen.values)
        time.sleep(0.5)
        assert len(Seen.values) > got > 20, "the other output kept running"
    finally:
        runner._stop.set()
        runner.slots["stuck"].thread = None  # a daemon thread asleep for 30 s: not waited for
        runner.stop()
    g = validate_text("version: 1\nsettings: {device: cpu, max_consecutive_errors: 3}\nnodes:\n" + SRC % 50 +
                      RAMP % "on_error: skip," + "  b: {type: test.ramp, inputs: {frame: a.out}}\n"
                      "  sink: {type: test.seen, inputs: {frame: b.out}}\n", "t.yaml", registry)
    runner = GraphRunner(g, faults=[Fault("a", "die", at=5)])
    assert runner.start()._cpu_pipeline is not None
    runner.wait(20)
    runner.stop()
    assert runner._error is not None and "3 frames in a row failed" in str(runner._error) and "'a'" in str(runner._error)


def test_failed_checks_are_all_counted_when_the_host_reads_them_late() -> None:
    """The device keeps a tally of failed checks: frames the host did not read before the next one published
    (a host running frames ahead of the device) are counted all the same, and a clean read says 0."""
    from muse.graph.guard import NodeGuard

    guard = NodeGuard("mask")
    good = torch.linspace(0, 1, 192).reshape(3, 8, 8)
    bad = good.clone()
    bad[1, 3, 4] = float("nan")
    shown = []
    for t in (good, bad, bad, good, bad):  # published frame after frame, never read in between
        out = guard.check({"frame": Frame(image=t, layout="chw")}, in_place=False, sync=False)
        shown.append(out["frame"].image)
    assert guard.poll() == 3
    assert guard.poll() is None  # nothing newer landed
    assert all(torch.isfinite(s).all() for s in shown)  # held on the same frame, as before
    assert torch.equal(shown[2], good)  # the last finite picture stood in for both bad frames
    guard.check({"frame": Frame(image=good, layout="chw")}, in_place=False, sync=False)
    assert guard.poll() == 0
