"""The default graph (graphs/stream_4k.yaml) on the demo source (issue 14): its output shows no room
through the person and no halo around her, judged against the demo's exact mask and clean plate.

The graph is run as shipped by the real runtime, on the CPU at 384x216; only the webcam is dropped, so the
camera switch runs on the demo stand-in (which also hands out the truth), and the outputs are a test sink."""

from __future__ import annotations

import cv2
import numpy as np
import yaml

from muse.graph.node import In, Node, NodeParams
from muse.graph.payloads import Frame, Mask
from muse.graph.runtime import GraphRunner
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text
from tests.stream_graph import GRAPH, GRAPHS, stream_spec

W, H, FRAMES = 384, 216, 14


class KeepOutput(Node):
    """Sink that keeps the composite with the truth of the same frame (test node)."""

    node_type = "test.keep_output"
    description = "test"
    out: In[Frame]
    raw: In[Frame]
    truth: In[Mask]
    plate: In[Frame]
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    class Params(NodeParams):
        pass

    def process(self, out: Frame, raw: Frame, truth: Mask, plate: Frame) -> None:
        assert out.index == truth.index == raw.index
        KeepOutput.seen.append((out.hwc_uint8().numpy().copy(), raw.hwc_uint8().numpy().copy(),
                                truth.alpha.float().numpy().copy(), plate.hwc_uint8().numpy().copy()))


def _graph_text(reshape: bool = True) -> str:
    q = lambda src: {"from": src, "queue": FRAMES}  # noqa: E731  keep every frame: the sink judges each
    keep = {"keep": {"type": "test.keep_output", "inputs": {
        "out": q("composite.out"), "raw": q("camera.selected"), "truth": q("demo.mask"), "plate": q("demo.clean_plate")}}}
    spec = stream_spec(W, H, FRAMES, fps=30, sinks=keep, queue=FRAMES)
    if not reshape:  # the halo is the matte's; a slimmer waist legitimately moves the outline
        for name in ("face_shape", "body_shape"):
            spec["nodes"][name]["params"] = {k: 0.0 for k in spec["nodes"][name].get("params", {})}
    return yaml.safe_dump(spec, sort_keys=False)


def _run(reshape: bool) -> list:
    reg = registry_with(KeepOutput)
    KeepOutput.seen.clear()
    assert "segment.fused" in GRAPH.read_text()
    GraphRunner(validate_text(_graph_text(reshape), "stream_4k.yaml", reg, base_dir=GRAPHS)).run()
    assert len(KeepOutput.seen) >= FRAMES - 2
    return KeepOutput.seen[2:]


def test_stream_4k_output_has_no_room_through_the_person():
    k = np.ones((5, 5), np.uint8)
    for i, (out, raw, truth, plate) in enumerate(_run(reshape=True)):
        person = truth > 0.5
        inner = cv2.erode(person.astype(np.uint8), k, iterations=2) > 0  # face/body warps move the outline a little
        room_like = np.abs(raw.astype(int) - plate.astype(int)).sum(-1) > 60  # where person and room differ
        out_is_room = np.abs(out.astype(int) - plate.astype(int)).sum(-1) < 20
        ghost = (inner & room_like & out_is_room).sum() / max(1, (inner & room_like).sum())
        assert ghost < 0.01, f"frame {i}: the room shows through {ghost:.1%} of the person"


def test_stream_4k_output_has_no_halo():
    """Without reshaping the output should be the input: inside her (the matte's light leaks, halos, room
    through the hair) and on a ring just outside (a pale or dark rim). Measured 2026-12-01 at 384x216, mean
    over frames: new graph inside 2.25, ring 1.06 (p95 6.2); the graph before issue 14 (segment.refine)
    inside 5.53, ring 2.24 (p95 9.7): the thresholds sit between them."""
    k = np.ones((5, 5), np.uint8)
    inside, rim, rim95 = [], [], []
    for out, raw, truth, plate in _run(reshape=False):
        person = truth > 0.5
        inner = cv2.erode(person.astype(np.uint8), k) > 0
        room_like = np.abs(raw.astype(int) - plate.astype(int)).sum(-1) > 60
        inside.append(np.abs(out.astype(int) - raw.astype(int)).sum(-1)[inner & room_like].mean())
        ring = (cv2.dilate(person.astype(np.uint8), k, iterations=2) > 0) & ~(cv2.dilate(person.astype(np.uint8), k) > 0)
        diff = np.abs(out.astype(int) - plate.astype(int)).sum(-1)[ring]
        rim.append(diff.mean())
        rim95.append(np.percentile(diff, 95))
    assert np.mean(inside) < 4.0, inside
    assert np.mean(rim) < 1.7 and np.mean(rim95) < 8.0, (rim, rim95)
