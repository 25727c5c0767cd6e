"""pose.overlay draws the skeleton (person's left orange, right blue) and the
face mesh where the keypoints are, and leaves the rest of the frame alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.graph.payloads import FaceLandmarks, Frame, Keypoints
from muse.graph.testing import run_node
from muse.nodes.face import regions as REG
from muse.nodes.pose.formats import index_of
from muse.nodes.pose.overlay import JAW, LEFT, RIGHT, Overlay


def _pose() -> Keypoints:
    pts = torch.zeros(33, 2)
    conf = torch.zeros(33)
    for name, xy in {"left_shoulder": (400, 150), "right_shoulder": (200, 150), "left_hip": (380, 330), "right_hip": (220, 330)}.items():
        pts[index_of("blazepose33", name)] = torch.tensor(xy, dtype=torch.float32)
        conf[index_of("blazepose33", name)] = 1.0
    return Keypoints(pts, conf, "blazepose33", (640, 480))


def _colour_at(img: torch.Tensor, x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in img[y, x])


def test_skeleton_sides_and_untouched_background(astronaut):
    frame = Frame(torch.full((480, 640, 3), 30, dtype=torch.uint8))
    img = run_node(Overlay, {"thickness": 2}, frame=frame, keypoints=_pose())["out"].hwc_uint8()
    assert _colour_at(img, 390, 240) == LEFT  # on the left side's shoulder-hip bone
    assert _colour_at(img, 210, 240) == RIGHT
    assert _colour_at(img, 300, 400) == (30, 30, 30) and _colour_at(img, 20, 20) == (30, 30, 30)
    changed = (img != 30).any(-1).float().mean()
    assert 0.001 < float(changed) < 0.05  # lines, not a filled frame
    assert torch.equal(frame.image, torch.full((480, 640, 3), 30, dtype=torch.uint8))  # input not modified


def test_face_mesh_and_jaw_drawn_where_the_face_is():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(REG.REFINED_POINTS, 3, generator=g) * torch.tensor([100.0, 120.0, 0.0]) + torch.tensor([270.0, 100.0, 0.0])
    face = FaceLandmarks(pts, torch.tensor(0.99), REG.face_regions(True), (640, 480), torch.tensor([270.0, 100, 370, 220]))
    frame = Frame(torch.zeros(480, 640, 3, dtype=torch.uint8))
    img = run_node(Overlay, {"thickness": 1}, frame=frame, face=face)["out"].hwc_uint8()
    drawn = (img > 0).any(-1)
    ys, xs = torch.nonzero(drawn, as_tuple=True)
    assert xs.min() >= 268 and xs.max() <= 372 and ys.min() >= 98 and ys.max() <= 222
    assert (img.reshape(-1, 3) == torch.tensor(JAW, dtype=torch.uint8)).all(-1).any()
    hidden = FaceLandmarks(pts, torch.tensor(0.1), REG.face_regions(True), (640, 480))
    img2 = run_node(Overlay, {}, frame=frame, face=hidden)["out"].hwc_uint8()
    assert not img2.any(), "a face below min_confidence is not drawn"


@pytest.mark.cuda
def test_overlay_on_gpu_matches_cpu():
    frame = Frame(torch.full((480, 640, 3), 30, dtype=torch.uint8))
    cpu = run_node(Overlay, {"thickness": 2}, frame=frame, keypoints=_pose())["out"].hwc_uint8()
    gpu = run_node(Overlay, {"thickness": 2}, frame=frame.to("cuda"), keypoints=_pose().to("cuda"), device="cuda")["out"].hwc_uint8()
    assert torch.equal(cpu, gpu.cpu())


def test_overlay_of_real_pose_and_face_written_for_review(messi, artifacts_dir):
    """The whole chain on messi5.jpg (pose -> face seeded by pose -> overlay), saved
    as test-artifacts/pose_face_overlay_messi.png for a person to look at."""
    import cv2

    from muse.nodes.face.landmarks import FaceLandmarksNode
    from muse.nodes.pose.blazepose import BlazePose

    frame = Frame(torch.from_numpy(np.ascontiguousarray(messi)))
    kp = run_node(BlazePose, {}, frame=frame)["keypoints"]
    face = run_node(FaceLandmarksNode, {"iris": False}, frame=frame, pose=kp)["face"]
    img = run_node(Overlay, {}, frame=frame, keypoints=kp, face=face)["out"].hwc_uint8().numpy()
    nose = kp.points[0].round().long().tolist()
    assert (img != messi).any(-1).mean() > 0.002
    patch = img[nose[1] - 3 : nose[1] + 4, nose[0] - 3 : nose[0] + 4]
    assert (patch != messi[nose[1] - 3 : nose[1] + 4, nose[0] - 3 : nose[0] + 4]).any(), "nothing drawn at the nose"
    assert cv2.imwrite(str(artifacts_dir / "pose_face_overlay_messi.png"), img[:, :, ::-1])
