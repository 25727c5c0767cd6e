"""`output.tracking` on real photos (JSON lines and CSV, frame index and
timestamp, never overwrites) and `output.vmc`'s promises to the frame: a rate
limit, and `process` returning at once even while the sender is stuck."""

from __future__ import annotations

import csv
import shutil
import time

import pytest
import torch

import media
from muse.graph.node import NodeError
from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunError, GraphRunner
from muse.graph.testing import make_context
from muse.nodes.motion.record import TrackingOutput, read_tracking
from muse.nodes.motion.solve import BONES
from muse.nodes.motion.vmc import VMCOutput


def _graph(folder, path, extra: str = "") -> str:
    return f"""version: 1
settings: {{device: cpu}}
nodes:
  shots: {{type: capture.images, params: {{path: "{folder}/*.jpg", fps: 0}}}}
  pose: {{type: pose.blazepose, inputs: {{frame: {{from: shots.frame, queue: 4}}}}}}
  face: {{type: face.landmarks, inputs: {{frame: {{from: shots.frame, queue: 4}}, pose: {{from: pose.keypoints, queue: 4}}}}}}
  rec:
    type: output.tracking
    params: {{path: "{path}"{extra}}}
    inputs: {{keypoints: {{from: pose.keypoints3d, queue: 8}}, face: {{from: face.face, queue: 8}}}}
"""


@pytest.fixture
def shots(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in range(3):
        shutil.copy(media.opencv_sample_path("messi5.jpg"), folder / f"shot{i}.jpg")
    return folder


def test_tracking_jsonl_with_solve_and_never_overwrites(tmp_path, shots):
    from muse.graph.validate import validate_text

    path = tmp_path / "out" / "take.jsonl"
    reg = load_registry()
    GraphRunner(validate_text(_graph(shots, path, ", solve: true"), "rec.yaml", reg)).run()
    records = read_tracking(path)
    assert [r["frame"] for r in records] == [0, 1, 2]
    assert all(b["timestamp"] > a["timestamp"] for a, b in zip(records, records[1:]))
    r = records[-1]
    assert r["image_size"] == [548, 342] and r["skeleton"] == "blazepose33"
    assert len(r["keypoints"]) == 33 and len(r["keypoints"][0]) == 3 and len(r["keypoint_confidence"]) == 33
    assert len(r["face"]) == 478 and r["face_confidence"] > 0.5
    nose = r["keypoints"][0]
    assert abs(r["face"][1][0] - nose[0]) < 15 and abs(r["face"][1][1] - nose[1]) < 15  # the mesh's nose tip on the pose's nose
    assert set(r["bones"]) == set(BONES) and "Blink_L" in r["blendshapes"]
    before = path.read_bytes()
    with pytest.raises(GraphRunError, match="already exists and would be overwritten"):
        GraphRunner(validate_text(_graph(shots, path), "rec.yaml", reg)).run()
    assert path.read_bytes() == before


def test_tracking_csv_rows(tmp_path, shots):
    from muse.graph.validate import validate_text

    path = tmp_path / "take.csv"
    GraphRunner(validate_text(_graph(shots, path, ", face_points: false"), "rec.yaml", load_registry())).run()
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["frame"]) for r in rows] == [0, 1, 2]
    assert float(rows[0]["nose_conf"]) > 0.5 and float(rows[0]["left_wrist_x"]) > 0
    assert "nose_z" in rows[0] and float(rows[0]["face_confidence"]) > 0.5 and "face0_x" not in rows[0]


def test_tracking_refuses_an_unknown_format(tmp_path):
    node = TrackingOutput("rec", TrackingOutput.Params(path=str(tmp_path / "take.txt")))
    with pytest.raises(NodeError, match=r"node 'rec'.*field `path`"):
        node.open(make_context("rec"))


def _payloads(i: int) -> tuple[Keypoints, FaceLandmarks]:
    kp = Keypoints(torch.rand(33, 3) * 100, torch.ones(33), "blazepose33", (640, 480), timestamp=i / 30, index=i)
    face = FaceLandmarks(torch.rand(478, 3) * 50, torch.tensor(1.0), {}, (640, 480), timestamp=i / 30, index=i)
    return kp, face


def test_vmc_rate_limit_and_process_never_waits_for_the_sender(monkeypatch):
    import muse.nodes.motion.vmc as vmc

    node = VMCOutput("vmc", VMCOutput.Params(port=9, rate=10))  # port 9 (discard): nothing listens, nothing waits
    node.open(make_context("vmc"))
    try:
        t0 = time.perf_counter()
        for i in range(30):  # one second of 30 fps frames
            node.process(*_payloads(i))
            time.sleep(max(0.0, t0 + (i + 1) / 30 - time.perf_counter()))
        time.sleep(0.2)
        assert 8 <= node.sent <= 12 and node.skipped >= 18, (node.sent, node.skipped)
        # A sender stuck for a second (a slow network, a stalled receiver): the frame does not notice.
        monkeypatch.setattr(vmc, "solve_snapshot", lambda *a: time.sleep(1.0) or vmc.Solved())
        node.params = node.params.model_copy(update={"rate": 240})
        worst = 0.0
        for i in range(30, 60):
            t = time.perf_counter()
            node.process(*_payloads(i))
            worst = max(worst, time.perf_counter() - t)
            time.sleep(1 / 60)
        assert worst < 0.05, f"process took {worst * 1000:.1f} ms"
        assert node._ring.dropped + node._mail.replaced > 0  # frames the stuck sender could not take were dropped
    finally:
        node.close()


@pytest.mark.cuda
def test_vmc_snapshot_from_cuda_tensors():
    """On CUDA, process only queues a copy into pinned memory; the sender thread reads it after the event."""

    node = VMCOutput("vmc", VMCOutput.Params(port=9, rate=240))
    ctx = make_context("vmc", "cuda")
    node.open(ctx)
    try:
        kp, face = _payloads(0)
        with torch.cuda.stream(ctx.stream):
            node.process(kp.to("cuda"), face.to("cuda"))
        time.sleep(0.5)
        assert node.sent == 1 and node.errors == 0
        assert node._ring.slots[0].host["body"].is_pinned()
    finally:
        node.close()


def test_a_recording_replays_into_the_avatar_link_and_round_trips(tmp_path, shots):
    """Record real tracking, play it back through output.vmc (to a python-osc server) and
    through output.tracking again: the same numbers come out."""
    from test_avatar_vmc import VMCReceiver, last_frame

    from muse.graph.validate import validate_text

    take = tmp_path / "take.jsonl"
    reg = load_registry()
    GraphRunner(validate_text(_graph(shots, take), "rec.yaml", reg)).run()
    again = tmp_path / "again.jsonl"
    with VMCReceiver() as rx:
        text = f"""version: 1
settings: {{device: cpu}}
nodes:
  replay: {{type: capture.tracking, params: {{path: "{take}"}}}}
  avatar:
    type: output.vmc
    params: {{port: {rx.port}, smoothing: 0.0, rate: 240}}
    inputs: {{keypoints: {{from: replay.keypoints, queue: 8}}, face: {{from: replay.face, queue: 8}}}}
  rec:
    type: output.tracking
    params: {{path: "{again}"}}
    inputs: {{keypoints: {{from: replay.keypoints, queue: 8}}, face: {{from: replay.face, queue: 8}}}}
"""
        GraphRunner(validate_text(text, "replay.yaml", reg)).run()
        time.sleep(0.3)
        frame = last_frame(rx)
    original, replayed = read_tracking(take), read_tracking(again)
    assert [r["frame"] for r in replayed] == [r["frame"] for r in original]
    assert replayed[-1]["keypoints"] == original[-1]["keypoints"] and replayed[-1]["face"] == original[-1]["face"]
    assert {args[0] for a, args in frame if a == "/VMC/Ext/Bone/Pos"} == set(BONES)


def test_replay_names_a_bad_file(tmp_path):
    bad = tmp_path / "notes.jsonl"
    bad.write_text('{"hello": 1}\n')
    from muse.nodes.motion.replay import TrackingReplay

    node = TrackingReplay("replay", TrackingReplay.Params(path=str(bad)))
    with pytest.raises(NodeError, match=r"line 1 is not an output.tracking record.*field `path`"):
        node.open(make_context("replay"))
