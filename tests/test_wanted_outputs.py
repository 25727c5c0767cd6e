"""Nodes learn which of their outputs anything reads (`NodeContext.wanted_outputs`, issue 13): the ports
wired to another node, a stand-in's those of the node it stands in for, and tapped ports (the editor's
preview) while the tap lasts. And a paced on-demand source (the demo standing in for a camera) hands
over frames no older than a frame period, as a camera would."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame
from muse.graph.registry import Registry
from muse.graph.runtime import GraphRunner
from muse.graph.testing import build_node, make_context, registry_with
from muse.graph.validate import validate_text

SEEN: list[frozenset[str] | None] = []
KEPT: list[int] = []


class TwoOut(Node):
    """Passes the frame on and offers a second output (test node); notes what its consumers want."""

    node_type = "test.two_out"
    description = "test"
    frame: In[Frame]
    out: Out[Frame]
    extra: Out[Frame]

    class Params(NodeParams):
        ms: float = 0.0

    def process(self, frame: Frame) -> dict[str, Frame]:
        assert self.ctx is not None
        SEEN.append(self.ctx.wanted_outputs)
        time.sleep(self.params.ms / 1000.0)
        outs = {"out": frame}
        if self.ctx.wanted_outputs is None or "extra" in self.ctx.wanted_outputs:
            outs["extra"] = frame
        return outs


class Keep(Node):
    node_type = "test.keep_index"
    description = "test"
    frame: In[Frame]

    def process(self, frame: Frame) -> None:
        KEPT.append(frame.index)


@pytest.fixture
def registry() -> Registry:
    reg = registry_with(TwoOut, Keep)
    SEEN.clear()
    KEPT.clear()
    return reg


def _graph(registry: Registry, frames: int, ms: float = 0.0, fps: float = 0.0, standby: bool = False):
    text = (
        "version: 1\nsettings: {device: cpu, fps: 30}\nnodes:\n"
        f"  src: {{type: basic.test_pattern, params: {{width: 32, height: 24, fps: {fps}, frames: {frames}}}}}\n"
        + ("  alt: {type: basic.test_pattern, standby_for: src, params: {width: 32, height: 24}}\n" if standby else "")
        + f"  a: {{type: test.two_out, params: {{ms: {ms}}}, inputs: {{frame: src.frame}}}}\n"
        "  sink: {type: test.keep_index, inputs: {frame: {from: a.out, queue: 64}}}\n"
    )
    return validate_text(text, "test.yaml", registry)


def test_wired_outputs_and_stand_ins(registry: Registry) -> None:
    wired = _graph(registry, 1, standby=True).wired_outputs()
    assert wired["src"] == {"frame"} and wired["a"] == {"out"}
    assert wired["alt"] == {"frame"}  # it serves src's consumers when it stands in
    assert "sink" not in wired


def test_a_node_sees_its_wired_outputs_and_taps(registry: Registry) -> None:
    runner = GraphRunner(_graph(registry, 10_000, ms=2.0))
    got: list[Frame] = []
    runner.start()
    try:
        deadline = time.time() + 20
        while len(SEEN) < 3 and time.time() < deadline:
            time.sleep(0.01)
        assert runner.slots["a"].ctx.wanted_outputs == frozenset({"out"})
        untap = runner.tap("a", "extra", got.append)
        assert runner.slots["a"].ctx.wanted_outputs == frozenset({"out", "extra"})
        while not got and time.time() < deadline:
            time.sleep(0.01)
        assert got, "a tapped output is produced again"
        untap()
        assert runner.slots["a"].ctx.wanted_outputs == frozenset({"out"})
    finally:
        runner.stop()
    assert runner._error is None
    assert SEEN[0] == frozenset({"out"})


def test_demo_leaves_out_its_mask_when_nothing_reads_it(monkeypatch) -> None:
    from muse.nodes.capture.demo import Demo

    outs = {}
    for wanted in (None, frozenset({"frame"})):
        node = build_node(Demo, {"width": 320, "height": 180, "fps": 0})
        ctx = make_context("demo")
        ctx.wanted_outputs = wanted
        node.open(ctx)
        outs[wanted] = node.process()
        node.close()
    full, lean = outs[None], outs[frozenset({"frame"})]
    assert "mask" in full and "mask" not in lean
    assert torch.equal(full["frame"].image, lean["frame"].image)  # the same picture
    assert float(full["mask"].alpha.max()) > 0.5  # the person is there


def test_paced_on_demand_source_hands_over_fresh_frames(registry: Registry, monkeypatch) -> None:
    """A 100 fps on-demand source feeding a 40 ms node: paced, frames that waited longer than a source
    period are rendered afresh (indices skip, drops counted); unpaced (`muse bench`'s fps run), every
    frame rendered is used."""
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    # the graph's fps is the camera rate the source stands in for
    text = _graph(registry, 0, ms=40.0, fps=100.0)
    text.settings.fps = 100.0
    runner = GraphRunner(text, frames=12)
    stats = runner.run()
    paced = list(KEPT)
    assert len(paced) == 12 and paced == sorted(paced)
    assert paced[-1] - paced[0] >= 2 * (len(paced) - 1), paced  # about 4 source frames a graph frame
    assert stats.as_dict()["nodes"]["src"]["drops"] > 0
    KEPT.clear()
    GraphRunner(_graph(registry, 0, ms=40.0, fps=100.0), frames=12, unpaced=True).run()
    assert KEPT == list(range(KEPT[0], KEPT[0] + 12))
