"""pose.student and pose.hybrid: a profile's student pose head loads through
muse.models.student; the hybrid picks student > ViTPose > bundled BlazePose and
falls back (safe mode) on a broken file, an exception or NaN keypoints,
reporting the live mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context, run_node
from muse.models.student import StudentPose, save_student
from muse.nodes.pose.hybrid import PoseHybrid
from muse.nodes.pose.student import StudentPoseNode, student_pose_path
from test_pose_vitpose import save_tiny_vitpose


def _frame(img, i=0):
    return Frame(torch.from_numpy(np.ascontiguousarray(img)), timestamp=i / 30, index=i)


@pytest.fixture
def profile(tmp_path):
    """A profile folder whose live student pose head is a small random StudentPose."""
    torch.manual_seed(0)
    model = StudentPose(num_keypoints=17, width=0.5, decoder=16).eval()
    save_student(model, tmp_path / "models" / "live" / "pose.pt", {"input_size": [128, 128]})
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump({"name": "tester"}))
    return tmp_path


@pytest.fixture(scope="module")
def vitpose_dir(tmp_path_factory):
    return save_tiny_vitpose(tmp_path_factory.mktemp("vitpose"))


def test_student_node_loads_the_profile_head(profile, astronaut):
    assert student_pose_path(profile) == profile / "models" / "live" / "pose.pt"
    kp = run_node(StudentPoseNode, {"profile": str(profile)}, frame=_frame(astronaut))["keypoints"]
    assert kp.skeleton == "coco17" and kp.points.shape == (17, 2)
    assert ((kp.points >= 0) & (kp.points <= 512)).all()  # heatmap cells map into the frame
    with pytest.raises(NodeError, match="no student pose model"):
        run_node(StudentPoseNode, {"model": str(profile / "missing.pt")}, frame=_frame(astronaut))


def _open(params):
    node = build_node(PoseHybrid, params, name="pose")
    ctx = make_context("pose")
    node.open(ctx)
    return node, ctx


def test_priority_student_then_vitpose_then_bundled(profile, vitpose_dir, astronaut):
    node, ctx = _open({"profile": str(profile), "vitpose_checkpoint": str(vitpose_dir)})
    node.process(frame=_frame(astronaut))
    assert ctx.stats.info["mode"] == "personalized"
    node.close()
    node, ctx = _open({"vitpose_checkpoint": str(vitpose_dir)})
    kp = node.process(frame=_frame(astronaut))["keypoints"]
    assert ctx.stats.info["mode"] == "base" and kp.skeleton == "coco17"
    node.close()
    node, ctx = _open({"output": "coco17"})
    kp = node.process(frame=_frame(astronaut))["keypoints"]
    assert ctx.stats.info["mode"] == "bundled" and kp.skeleton == "coco17"  # converted from BlazePose-33
    node.close()


def test_corrupt_student_falls_back_to_base(profile, vitpose_dir, astronaut):
    (profile / "models" / "live" / "pose.pt").write_bytes(b"not a checkpoint")
    node, ctx = _open({"profile": str(profile), "vitpose_checkpoint": str(vitpose_dir)})
    node.process(frame=_frame(astronaut))
    assert ctx.stats.info["mode"] == "base"
    assert "personalized" in ctx.stats.info["failed"]
    node.close()


def test_nan_and_exceptions_hand_over(profile, vitpose_dir, astronaut):
    node, ctx = _open({"profile": str(profile), "vitpose_checkpoint": str(vitpose_dir), "retry_after_s": 0})
    student = node.live.node
    student.model.forward = lambda x: torch.full((1, 17, 32, 32), float("nan"))  # a student gone bad
    kp = node.process(frame=_frame(astronaut, 0))["keypoints"]
    assert ctx.stats.info["mode"] == "personalized"
    assert torch.isfinite(kp.points).all() and (kp.confidence == 0).all()  # the bad frame is neutralised on the device
    node.process(frame=_frame(astronaut, 1))  # the NaN flag is read one frame late: switch now
    assert ctx.stats.info["mode"] == "base" and node.switches == 1

    def broken(**_):
        raise RuntimeError("CUDA error: an illegal memory access")

    node.live.node.process = broken
    kp = node.process(frame=_frame(astronaut, 2))["keypoints"]
    assert ctx.stats.info["mode"] == "bundled" and kp.skeleton == "blazepose33"
    assert set(ctx.stats.info["failed"]) == {"personalized", "base"}
    node.close()


def test_new_student_export_is_swapped_in_and_a_broken_one_ignored(profile, astronaut, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr("muse.nodes.pose.hybrid.time.monotonic", lambda: clock[0])
    node, ctx = _open({"profile": str(profile)})
    node.process(frame=_frame(astronaut, 0))
    first = node.live.node
    path = profile / "models" / "live" / "pose.pt"
    torch.manual_seed(1)
    save_student(StudentPose(num_keypoints=17, width=0.5, decoder=16).eval(), path, {"input_size": [96, 96]})
    clock[0] += 2.0  # the watcher looks at most once a second
    node.process(frame=_frame(astronaut, 1))
    assert node.live.node is not first and node.live.node.input_size == (96, 96)
    assert ctx.stats.info["mode"] == "personalized" and ctx.stats.info["student_swaps"] == 1
    second = node.live.node
    path.write_bytes(b"half-written export")
    clock[0] += 2.0
    kp = node.process(frame=_frame(astronaut, 2))["keypoints"]
    assert node.live.node is second, "a broken export must leave the old student live"
    assert kp.points.shape == (17, 2) and "personalized (new file)" in ctx.stats.info["failed"]
    node.close()
