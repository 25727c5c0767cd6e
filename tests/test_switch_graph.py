"""flow.switch as graph wiring (issue 18): it picks its branch before the frame, only the live
branch's nodes run, captured or not; branches that are absent or fail to start are reported and
cost nothing; `standby_for` stand-ins; include params. Fault injection: branches that raise, give
NaN, or fail to open."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from muse.graph.node import In, Node, NodeAbsent, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.registry import Registry
from muse.graph.resolved import GraphValidationError
from muse.graph.runtime import GraphRunError, GraphRunner
from muse.graph.stats import Trace
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text


class Branch(Node):
    """A capturable branch (test node): fills the frame with `tag`; from frame `nan_from` on (counted on
    the device, so it holds under capture) gives NaN; may be absent, fail to open, or raise."""

    node_type = "test.branch"
    description = "test"
    capturable = True
    frame: In[Frame]
    out: Out[Frame]
    calls: dict[str, int] = {}

    class Params(NodeParams):
        tag: float = 0.0
        absent: bool = False
        fail_open: bool = False
        raise_: bool = False
        nan_from: int = 0  # 0 = never

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        if self.params.absent:
            raise NodeAbsent(f"node '{self.name}': no model file (on purpose)")
        if self.params.fail_open:
            raise NodeError(f"node '{self.name}': broken model file (on purpose)")
        self.seen = torch.zeros((), device=ctx.device)  # frames computed, on the device: a branch's own state

    def process(self, frame: Frame) -> dict[str, Frame]:
        Branch.calls[self.name] = Branch.calls.get(self.name, 0) + 1
        if self.params.raise_:
            raise NodeError(f"{self.name} raises on purpose")
        self.seen.add_(1)
        img = frame.chw(torch.float32)
        value = torch.full_like(img, self.params.tag)
        if self.params.nan_from:
            value = torch.where(self.seen >= self.params.nan_from, torch.full_like(img, float("nan")), value)
        return {"out": frame.with_image(value, layout="chw")}


class Keep(Node):
    """Sink that keeps the first pixel of what it saw (test node)."""

    node_type = "test.keep"
    description = "test"
    frame: In[Frame]
    seen: dict[str, list[float]] = {}

    class Params(NodeParams):
        fail_open: bool = False

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        if self.params.fail_open:
            raise NodeError(f"node '{self.name}': no driver (on purpose)")

    def process(self, frame: Frame) -> None:
        Keep.seen.setdefault(self.name, []).append(float(frame.chw()[0, 0, 0]))


@pytest.fixture
def registry() -> Registry:
    reg = registry_with(source="muse")
    reg.register(Branch, "test")
    reg.register(Keep, "test")
    Branch.calls.clear()
    Keep.seen.clear()
    return reg


def graph(body: str, registry: Registry, capture: str = "off", frames: int = 12, **kw) -> object:
    text = (f"version: 1\nsettings: {{device: cpu, capture: {capture}}}\nnodes:\n"
            f"  src: {{type: basic.test_pattern, params: {{width: 32, height: 24, fps: 0, frames: {frames}}}}}\n" + body)
    return validate_text(text, "switch.yaml", registry, **kw)


THREE = """
  a: {type: test.branch, params: %s, inputs: {frame: {from: src.frame, queue: 64}}}
  b: {type: test.branch, params: %s, inputs: {frame: {from: src.frame, queue: 64}}}
  c: {type: test.branch, params: {tag: 0.75}, inputs: {frame: {from: src.frame, queue: 64}}}
  pick: {type: flow.switch, params: {labels: [personal, base, bundled], retry_s: 1000, hold_last: true},
         inputs: {candidates: [a.out, b.out, c.out]}}
  sink: {type: test.keep, inputs: {frame: {from: pick.selected, queue: 64}}}
"""


@pytest.mark.parametrize("capture", ["off", "emulate"])
def test_only_the_live_branch_runs_and_a_nan_branch_falls_back(registry: Registry, capture: str) -> None:
    """Branch a turns NaN at its 5th frame: the switch notices a frame late (without stalling), b takes
    over, NaN never reaches the sink, and a is not run again (its state stays as it was)."""
    g = graph(THREE % ("{tag: 0.25, nan_from: 5}", "{tag: 0.5}"), registry, capture)
    runner = GraphRunner(g)
    stats = runner.run()
    seen = Keep.seen["sink"]
    assert len(seen) == 12 and all(v == v for v in seen), f"no NaN reaches the output: {seen}"
    assert seen[:4] == [0.25] * 4 and seen[-1] == 0.5, seen
    assert Branch.calls.get("c", 0) == 0, "the bundled branch never ran: it was never needed"
    assert stats.nodes["a"].frames <= 6, "the failed branch stops running once the switch knows"
    info = stats.nodes["pick"].info
    assert info["live"] == "base"
    assert info["branches"]["personal"].startswith("failed: NaN/Inf output")
    assert info["branches"]["bundled"] == "standby"
    if capture == "emulate":
        desc = runner.program.describe() if runner.program else {}
        assert desc["eager_nodes"] == {} and len(desc["segments"]) == 1, desc
        assert desc["captures"] >= 2, "each live branch is its own recorded variant"
        assert desc["replays"] >= 4
        # the segment's live inputs are worked out again when the live set changes (muse.graph.segments.live_inputs)
        nodes = runner.program.segments[0].live_in[1]
        assert "b" in nodes and "a" not in nodes, nodes


def test_a_raising_branch_falls_back_in_the_same_frame(registry: Registry) -> None:
    g = graph(THREE % ("{tag: 0.25, raise_: true}", "{tag: 0.5}"), registry, "emulate")
    stats = GraphRunner(g).run()
    assert Keep.seen["sink"] == [0.5] * 12, "no frame is lost to the failing branch"
    assert Branch.calls["a"] == 1, "not retried before retry_s"
    assert stats.nodes["pick"].info["branches"]["personal"].startswith("failed: a raises on purpose")
    assert stats.nodes["a"].errors == 1


def test_absent_and_unopenable_branches_are_reported_and_cost_nothing(registry: Registry) -> None:
    trace = Trace()
    g = graph(THREE % ("{absent: true}", "{fail_open: true}"), registry, "emulate")
    runner = GraphRunner(g, trace=trace)
    stats = runner.run()
    assert Keep.seen["sink"] == [0.75] * 12
    assert "a" not in Branch.calls and "b" not in Branch.calls
    branches = stats.nodes["pick"].info["branches"]
    assert branches == {"personal": "absent: node 'a': no model file (on purpose)",
                        "base": "failed: node 'b': broken model file (on purpose)", "bundled": "live"}
    assert stats.nodes["a"].info["state"].startswith("absent: ") and stats.nodes["a"].frames == 0
    assert stats.nodes["pick"].info["fallback"] == "bundled", "a branch that failed to start is a fallback to report"
    assert "a" not in runner.program.describe()["captured_nodes"]
    names = {e["name"] for e in trace.events}
    assert "c" in names and "a" not in names and "b" not in names, "the trace shows what ran"
    assert any(e.get("args", {}).get("live") == "bundled" for e in trace.events if e["name"] == "pick")


def test_a_switch_with_no_branch_left_is_a_clear_error(registry: Registry) -> None:
    body = """
  a: {type: test.branch, params: {absent: true}, inputs: {frame: src.frame}}
  b: {type: test.branch, params: {fail_open: true}, inputs: {frame: src.frame}}
  pick: {type: flow.switch, inputs: {candidates: [a.out, b.out]}}
  sink: {type: test.keep, inputs: {frame: pick.selected}}
"""
    with pytest.raises(GraphRunError, match=r"node 'pick'.*none of its 2 branches can run.*no model file.*broken model file"):
        GraphRunner(graph(body, registry)).run()


def test_a_node_outside_any_switch_that_cannot_open_still_stops_the_graph(registry: Registry) -> None:
    body = """
  a: {type: test.branch, params: {absent: true}, inputs: {frame: src.frame}}
  sink: {type: test.keep, inputs: {frame: a.out}}
"""
    with pytest.raises(GraphRunError, match="node 'a'.*no model file"):
        GraphRunner(graph(body, registry)).run()


def test_standby_output_starts_only_when_its_primary_does_not(registry: Registry) -> None:
    body = """
  a: {type: test.branch, params: {tag: 0.5}, inputs: {frame: {from: src.frame, queue: 64}}}
  out: {type: test.keep, params: {fail_open: %s}, inputs: {frame: {from: a.out, queue: 64}}}
  spare: {type: test.keep, standby_for: out, inputs: {frame: {from: a.out, queue: 64}}}
"""
    stats = GraphRunner(graph(body % "true", registry)).run()
    assert Keep.seen == {"spare": [0.5] * 12}
    assert stats.nodes["out"].info["fallback"] == "spare"
    assert "no driver" in stats.nodes["out"].info["fallback_reason"]
    assert stats.nodes["spare"].info["state"] == "live: standing in for out"
    Keep.seen.clear()
    stats = GraphRunner(graph(body % "false", registry)).run()
    assert Keep.seen == {"out": [0.5] * 12}
    assert stats.nodes["spare"].info["state"] == "standby: for out" and stats.nodes["spare"].frames == 0


def test_stand_in_source_behind_a_switch_paces_the_stream(registry: Registry) -> None:
    """camera -> demo as graph wiring: a camera that cannot open leaves the stream to its stand-in."""
    text = """version: 1
settings: {device: cpu}
nodes:
  webcam: {type: capture.camera, params: {device: /nonexistent/video9, open_timeout_s: 0.1}}
  demo: {type: capture.demo, standby_for: webcam, params: {width: 64, height: 48, fps: 0, frames: 6}}
  camera: {type: flow.switch, params: {labels: [webcam, demo]}, inputs: {candidates: [webcam.frame, {from: demo.frame}]}}
  sink: {type: test.keep, inputs: {frame: {from: camera.selected, queue: 64}}}
"""
    text = text.replace("[webcam.frame, {from: demo.frame}]", "[webcam.frame, demo.frame]")
    stats = GraphRunner(validate_text(text, "cam.yaml", registry)).run()
    assert len(Keep.seen["sink"]) == 6
    info = stats.nodes["camera"].info
    assert info["live"] == "demo" and info["fallback"] == "demo"
    assert info["branches"]["webcam"].startswith("failed: ") and "could not be opened" in info["branches"]["webcam"]
    assert stats.nodes["demo"].info["state"] == "live: standing in for webcam"


def test_standby_for_must_name_another_node(registry: Registry) -> None:
    body = "  out: {type: test.keep, standby_for: %s, inputs: {frame: src.frame}}\n"
    for target, needle in (("nope", "not in the graph"), ("out", "itself")):
        with pytest.raises(GraphValidationError, match=needle) as err:
            graph(body % target, registry)
        assert "field 'standby_for'" in str(err.value)


def test_a_branch_set_live_starts_without_a_restart(registry: Registry) -> None:
    """A MODNet checkpoint (here: a test branch's model) set while running brings that branch in."""
    g = graph(THREE % ("{absent: true}", "{tag: 0.5}"), registry, frames=400)
    runner = GraphRunner(g).start()
    try:
        import time

        deadline = time.monotonic() + 20
        while len(Keep.seen.get("sink", [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        runner.update_params("a", {"absent": False, "tag": 0.25})
        while (not Keep.seen["sink"] or Keep.seen["sink"][-1] != 0.25) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        runner.stop()
    assert Keep.seen["sink"][0] == 0.5 and Keep.seen["sink"][-1] == 0.25
    assert runner.stats.nodes["pick"].info["branches"]["personal"] == "live"


def test_include_params_set_included_nodes(registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "sub.yaml").write_text(
        "version: 1\nnodes:\n  x: {type: test.branch, params: {tag: 0.1}}\n"
        "  pick: {type: flow.switch, inputs: {candidates: [x.out]}}\n")
    main = ("version: 1\nsettings: {device: cpu}\n"
            "include:\n  - {file: sub.yaml, prefix: s, inputs: {x.frame: src.frame}, params: {x: {tag: 0.5}}}\n"
            "nodes:\n  src: {type: basic.test_pattern, params: {width: 32, height: 24, fps: 0, frames: 3}}\n"
            "  sink: {type: test.keep, inputs: {frame: {from: s/pick.selected, queue: 8}}}\n")
    g = validate_text(main, str(tmp_path / "main.yaml"), registry, base_dir=tmp_path)
    assert g.nodes["s/x"].params.tag == 0.5
    GraphRunner(g).run()
    assert Keep.seen["sink"] == [0.5] * 3
    bad = main.replace("params: {x: {tag: 0.5}}", "params: {y: {tag: 0.5}}")
    with pytest.raises(GraphValidationError, match="include params for 'y', which is no node of sub.yaml"):
        validate_text(bad, str(tmp_path / "main.yaml"), registry, base_dir=tmp_path)


def test_shipped_hybrid_sub_graphs_report_every_branch(registry: Registry) -> None:
    """graphs/include/*_hybrid.yaml here (no student, no MODNet checkpoint, no ViTPose): the absent
    branches are named, the bundled models are live, and the switches' branches are in the stats."""
    from tests.stream_graph import GRAPHS, stream_text

    text = stream_text(96, 64, 3)
    stats = GraphRunner(validate_text(text, "stream.yaml", registry, base_dir=GRAPHS)).run()
    seg = stats.nodes["segment/switch"].info["branches"]
    pose = stats.nodes["pose/switch"].info["branches"]
    assert seg["bundled"] == pose["bundled"] == "live"
    assert seg["personalized"].startswith("absent: ") and "profile" in seg["personalized"]
    assert seg["base"].startswith("absent: ") and "checkpoint" in seg["base"]
    assert pose["base"].startswith("absent: ") and "checkpoint" in pose["base"]
    for name in ("segment/student", "segment/modnet", "pose/student", "pose/vitpose"):
        assert stats.nodes[name].frames == 0
    assert stats.frames_out == 3


def test_the_trace_names_every_branch_and_the_live_one(registry: Registry) -> None:
    trace = Trace()
    GraphRunner(graph(THREE % ("{absent: true}", "{tag: 0.5}"), registry), trace=trace).run()
    marks = {e["name"]: e for e in trace.events if e["ph"] == "i"}
    assert marks["a: absent"]["args"]["state"] == "absent: node 'a': no model file (on purpose)"
    assert marks["pick: branches"]["args"]["personal"].startswith("absent: ")
    assert {"base", "bundled"} <= set(marks["pick: branches"]["args"])
    spans = [e for e in trace.events if e["name"] == "pick" and e["ph"] == "X"]
    assert spans and all(e["args"]["live"] == "base" for e in spans)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_switch_falls_back_inside_real_cuda_graphs(registry: Registry) -> None:
    """On CUDA graphs: the NaN of branch a is seen a frame late without a sync, b's variant is recorded
    and replayed, NaN never reaches the output, and the frame stays one captured segment."""
    text = (THREE % ("{tag: 0.25, nan_from: 20}", "{tag: 0.5}")).replace("queue: 64", "queue: 200")
    g = validate_text("version: 1\nsettings: {device: cuda, capture: on}\nnodes:\n"
                      "  src: {type: basic.test_pattern, params: {width: 64, height: 48, fps: 0, frames: 80}}\n" + text,
                      "switch.yaml", registry)
    runner = GraphRunner(g)
    stats = runner.run()
    seen = Keep.seen["sink"]
    assert len(seen) == 80 and all(v == v for v in seen) and seen[-1] == 0.5
    desc = runner.program.describe()
    assert desc["eager_nodes"] == {} and len(desc["segments"]) == 1 and desc["captures"] >= 2, desc
    assert desc["replays"] >= 60, desc
    assert stats.nodes["pick"].info["live"] == "base"
