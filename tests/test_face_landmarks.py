"""face.landmarks on real photos: 478 points inside the face, named regions in
the right places, pose seeding for small faces, tracking under motion."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import build_node, make_context, run_node, run_node_frames
from muse.nodes.face import regions as REG
from muse.nodes.face.landmarks import FaceLandmarksNode, FaceTracker
from muse.nodes.pose.blazepose import BlazePose
from muse.nodes.pose.formats import index_of


def _frame(img: np.ndarray, index: int = 0) -> Frame:
    return Frame(torch.from_numpy(np.ascontiguousarray(img)), timestamp=index / 30, index=index)


def _centre(face, region: str) -> torch.Tensor:
    return face.region(region)[:, :2].mean(0)


def assert_face_plausible(face) -> None:
    p = face.points
    assert p.shape == (REG.REFINED_POINTS, 3)
    assert float(face.confidence) > 0.5
    left, right = _centre(face, "left_eye"), _centre(face, "right_eye")
    eye_gap = float(left[0] - right[0])
    assert eye_gap > 0, "left/right eyes swapped (person's left appears on the image's right)"
    nose = p[1, :2]  # nose tip
    assert right[0] < nose[0] < left[0], "nose tip not between the eyes"
    assert nose[1] > max(left[1], right[1]), "nose tip above the eyes"
    lips = _centre(face, "lips")
    assert lips[1] > nose[1], "lips above the nose tip"
    assert _centre(face, "jaw")[1] > lips[1], "jaw above the lips"
    assert float(face.region("jaw")[:, 1].max()) > float(face.region("lips")[:, 1].max()), "chin not below the lips"
    brows = face.region("eyebrows")[:, 1].mean()
    assert brows < min(left[1], right[1]), "eyebrows below the eyes"
    assert _centre(face, "left_cheek")[0] > nose[0] > _centre(face, "right_cheek")[0], "cheeks swapped"
    for side in ("left", "right"):  # iris centre inside its eye outline
        eye = face.region(f"{side}_eye")[:, :2]
        iris = p[REG.LEFT_IRIS_CENTER if side == "left" else REG.RIGHT_IRIS_CENTER, :2]
        assert (eye.amin(0) <= iris).all() and (iris <= eye.amax(0)).all(), f"{side} iris outside the {side} eye"
        radius = float(torch.linalg.vector_norm(face.region(f"{side}_iris")[1:, :2] - iris, dim=-1).mean())
        assert 0.05 * eye_gap < radius < 0.4 * eye_gap, f"{side} iris radius {radius:.1f} px implausible"


def test_astronaut_mesh_inside_the_detected_face(astronaut):
    frame = _frame(astronaut)
    out = run_node(FaceLandmarksNode, {}, frame=frame)
    face = out["face"]
    assert face.image_size == (512, 512)
    assert_face_plausible(face)
    # The face detector's own box (independent of the mesh), grown 25 % per side for forehead and chin.
    tracker = FaceTracker("face", torch.device("cpu"), torch.float32, iris=False)
    _, score, box = tracker.detect(frame.chw())
    assert float(score) > 0.5
    x0, y0, x1, y1 = box.tolist()
    mx, my = 0.25 * (x1 - x0), 0.25 * (y1 - y0)
    mesh = face.points[: REG.MESH_POINTS, :2]
    inside = (mesh[:, 0] >= x0 - mx) & (mesh[:, 0] <= x1 + mx) & (mesh[:, 1] >= y0 - my) & (mesh[:, 1] <= y1 + my)
    assert bool(inside.all()), f"{int((~inside).sum())} of 468 landmarks outside the face box"
    # and the mesh fills that box (not collapsed onto a part of the face)
    assert float(mesh[:, 0].max() - mesh[:, 0].min()) > 0.8 * (x1 - x0)
    assert set(face.regions) >= {"left_eye", "right_eye", "left_iris", "right_iris", "jaw", "face_oval", "cheeks", "nose", "lips", "eyebrows"}


@pytest.mark.parametrize("photo", ["messi", "basketball"])
def test_small_faces_seeded_from_the_pose(photo, request):
    """Faces too small for the short-range detector are found through the body
    pose (head keypoints). Messi's face (~35 px) is found with confidence; the
    basketball player's (~25 px, turned) gets a low presence score from the
    mesh model, so there we only check where the mesh lands (min_tracking 0)."""
    img = request.getfixturevalue(photo)
    frame = _frame(img)
    pose = run_node(BlazePose, {}, frame=frame)["keypoints"]
    params = {"seed": "pose"} if photo == "messi" else {"seed": "pose", "min_tracking": 0.0}
    face = run_node(FaceLandmarksNode, params, frame=frame, pose=pose)["face"]
    if photo == "messi":
        assert float(face.confidence) > 0.5
    mesh = face.points[: REG.MESH_POINTS, :2]
    eyes = pose.points[[index_of("blazepose33", "left_eye"), index_of("blazepose33", "right_eye")]]
    eye_gap = float(torch.linalg.vector_norm(eyes[0] - eyes[1]))
    # The mesh's eyes and nose tip sit on the pose's eyes and nose.
    assert float(torch.linalg.vector_norm(mesh[1] - pose.points[0])) < 0.8 * eye_gap
    assert float(torch.linalg.vector_norm(_centre(face, "left_eye") - eyes[0])) < 0.8 * eye_gap
    assert float(torch.linalg.vector_norm(_centre(face, "right_eye") - eyes[1])) < 0.8 * eye_gap
    lo, hi = mesh.amin(0), mesh.amax(0)
    assert (lo < eyes).all() and (eyes < hi).all(), "the pose's eyes are outside the face mesh"
    assert float((hi - lo).max()) < 6 * eye_gap, "face mesh far larger than the head"


def test_tracking_follows_motion(astronaut):
    """The photo slides 25 px/frame and grows 2 %/frame across 6 frames; the mesh follows within 3 %
    of the face width (median over 478 points; seen 0.3-2 px on a 95 px face) and the detector runs once."""
    canvas = (768, 576)
    moves = [(1.0 + 0.02 * i, 30.0 + 25.0 * i, 10.0 + 6.0 * i) for i in range(6)]
    node = build_node(FaceLandmarksNode, {"iris": True})
    node.open(make_context("face"))
    base = None
    errors = []
    for i, (s, tx, ty) in enumerate(moves):
        m = np.array([[s, 0, tx], [0, s, ty]])
        img = cv2.warpAffine(astronaut, m, canvas, borderMode=cv2.BORDER_REPLICATE)
        face = node.process(frame=_frame(img, i))["face"]
        pts = face.points[:, :2].numpy()
        assert float(face.confidence) > 0.5
        if base is None:
            base = (pts - m[:, 2]) / s
            width = float(np.ptp(base[:, 0]))
            continue
        errors.append(float(np.median(np.linalg.norm(pts - (base * s + m[:, 2]), axis=1))))
    node.close()
    assert node.tracker.detector_runs == 1
    assert max(errors) < 0.03 * width, f"median mesh errors {errors} px, face {width:.0f} px wide"


def test_no_face_is_reported_and_pose_seed_needs_the_input(astronaut):
    from skimage import data

    out = run_node(FaceLandmarksNode, {"iris": False}, frame=_frame(data.rocket()))
    assert float(out["face"].confidence) < 0.5
    with pytest.raises(NodeError, match="pose"):
        run_node(FaceLandmarksNode, {"seed": "pose", "iris": False}, frame=_frame(astronaut))


def test_regions_are_valid_mesh_indices():
    regions = REG.face_regions(with_iris=True)
    for name, idx in regions.items():
        assert idx and all(0 <= i < REG.REFINED_POINTS for i in idx), name
        assert len(set(idx)) == len(idx), f"{name} repeats an index"
    assert all(i < REG.MESH_POINTS for n, i_s in regions.items() if "iris" not in n for i in i_s)
    assert len(regions["left_cheek"]) == len(regions["right_cheek"])
    assert set(REG.JAW) <= set(REG.FACE_OVAL)


def test_torch_and_onnxruntime_backends_agree(astronaut):
    frame = _frame(astronaut)
    a = run_node(FaceLandmarksNode, {"backend": "torch"}, frame=frame)["face"]
    b = run_node(FaceLandmarksNode, {"backend": "onnxruntime"}, frame=frame)["face"]
    assert (a.points[:, :2] - b.points[:, :2]).abs().max() < 1.0


@pytest.mark.cuda
def test_gpu_fp16_matches_cpu_and_never_syncs(astronaut):
    # The same three frames as the GPU run below (seed, then track); torch backend: no ONNX export needed.
    cpu = run_node_frames(FaceLandmarksNode, {"backend": "torch"}, [{"frame": _frame(astronaut)}] * 3)[-1]["face"]
    ctx = make_context("face", "cuda")
    node = build_node(FaceLandmarksNode)
    node.open(ctx)
    frame = _frame(astronaut).to("cuda")
    with torch.cuda.stream(ctx.stream):
        node.process(frame=frame)
        node.process(frame=frame)
        ctx.stream.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            face = node.process(frame=frame)["face"]
        finally:
            torch.cuda.set_sync_debug_mode("default")
        ctx.stream.synchronize()
    node.close()
    assert face.points.is_cuda and face.confidence.is_cuda
    assert float(face.confidence) > 0.5
    assert (face.points[:, :2].cpu() - cpu.points[:, :2]).abs().max() < 2.0


def test_face_leaving_drops_the_track_and_redetects(astronaut):
    """Unlike the pose model's, the face mesh's presence flag rejects textures at a
    stale crop (brick wall: ~0.0), so the track drops at once and the next frame
    re-seeds from the detector."""
    from skimage import data

    wall = np.ascontiguousarray(np.stack([data.brick()] * 3, -1))
    node = build_node(FaceLandmarksNode, {"iris": False})
    node.open(make_context("face"))
    node.process(frame=_frame(astronaut, 0))
    gone = node.process(frame=_frame(wall, 1))["face"]
    assert float(gone.confidence) < 0.5
    runs = node.tracker.detector_runs
    back = node.process(frame=_frame(astronaut, 2))["face"]
    assert node.tracker.detector_runs == runs + 1 and float(back.confidence) > 0.5
    node.close()
