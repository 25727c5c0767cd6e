"""warp.face + warp.apply on the astronaut photo with hand-placed eye and face-outline landmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visual_scenes as vs
from muse.graph.payloads import FaceLandmarks, Frame, Mask
from muse.graph.testing import run_node
from muse.nodes.warp import FaceWarp, WarpApply


def _face(astronaut, params: dict, mask: np.ndarray | None = None):
    lm = vs.astronaut_landmarks()
    field = run_node(FaceWarp, params, landmarks=lm)["field"]
    inputs = dict(frame=Frame(torch.from_numpy(astronaut)), face=field)
    if mask is not None:
        inputs["mask"] = Mask(torch.from_numpy(mask))
    out = run_node(WarpApply, {}, **inputs)["out"].image.numpy()
    return field, out


def _dark_area(img: np.ndarray, cx: float, cy: float) -> int:
    """Pixels of iris and pupil: dark pixels in a box around the eye."""
    x0, x1, y0, y1 = int(cx - 14), int(cx + 14), int(cy - 9), int(cy + 9)
    luma = img[y0:y1, x0:x1].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return int((luma < 90).sum())


def _face_mask() -> np.ndarray:
    fx, fy, rx, ry = vs.ASTRONAUT_FACE
    ys, xs = np.mgrid[0:512, 0:512]
    return (((xs - fx) / (rx * 1.3)) ** 2 + ((ys - fy) / (ry * 1.4)) ** 2 <= 1).astype(np.float32)


def test_strength_zero_is_bit_identical(astronaut):
    field, out = _face(astronaut, {"eyes": 0.0, "v_line": 0.0, "slim": 0.0}, _face_mask())
    assert torch.count_nonzero(field.field) == 0
    assert np.array_equal(out, astronaut)


def test_eye_enlargement_grows_the_measured_eye(astronaut):
    field, out = _face(astronaut, {"eyes": 1.0}, _face_mask())
    for side, (cx, cy, _, _) in vs.ASTRONAUT_EYES.items():
        before, after = _dark_area(astronaut, cx, cy), _dark_area(out, cx, cy)
        assert before >= 20, (side, before)  # the landmarks really sit on the eye
        assert after >= 1.3 * before, (side, before, after)
    # half strength grows less than full strength
    _, half = _face(astronaut, {"eyes": 0.5}, _face_mask())
    cx, cy = vs.ASTRONAUT_EYES["left"][:2]
    assert _dark_area(astronaut, cx, cy) < _dark_area(half, cx, cy) < _dark_area(out, cx, cy)


def test_eye_field_is_local(astronaut):
    field, out = _face(astronaut, {"eyes": 1.0})
    # nothing moves at the mouth or outside the face
    assert np.array_equal(out[150:200], astronaut[150:200])
    assert np.array_equal(out[:, :150], astronaut[:, :150])


def test_v_line_and_slim_pull_the_jaw_in(astronaut):
    fx, fy, rx, ry = vs.ASTRONAUT_FACE
    lm = vs.astronaut_landmarks()
    for params in ({"v_line": 1.0}, {"slim": 1.0}):
        field = run_node(FaceWarp, params, landmarks=lm)["field"].field
        h, w = field.shape[1:]
        # at jaw height (v_line) / cheek height (slim), a little inside the outline on each side
        row_y = fy + (0.75 if "v_line" in params else 0.3) * ry
        r = int(row_y / 512 * h)
        left = field[0, r, int((fx - 0.8 * rx) / 512 * w)]
        right = field[0, r, int((fx + 0.8 * rx) / 512 * w)]
        # backward field: the left side samples farther left (moves in), the right side farther right
        assert left < -0.5 and right > 0.5, (params, float(left), float(right))
        assert abs(float(left) + float(right)) < 0.35 * abs(float(left))  # near-symmetric for a frontal face
        # above the eyes nothing moves
        assert field[:, : int((fy - ry) / 512 * h)].abs().max() == 0


def test_v_line_narrows_the_warped_jaw(astronaut):
    """Warp the face mask itself: the jaw outline row gets narrower, the forehead does not."""
    fx, fy, rx, ry = vs.ASTRONAUT_FACE
    ys, xs = np.mgrid[0:512, 0:512]
    oval = (((xs - fx) / rx) ** 2 + ((ys - fy) / ry) ** 2 <= 1).astype(np.float32)
    lm = vs.astronaut_landmarks()
    field = run_node(FaceWarp, {"v_line": 1.0}, landmarks=lm)["field"]
    out = run_node(WarpApply, {"margin": 0.2}, frame=Frame(torch.from_numpy(astronaut)), face=field, mask=Mask(torch.from_numpy(oval)))
    warped = out["warped_mask"].alpha.numpy()
    jaw_row = int(fy + 0.75 * ry)
    assert warped[jaw_row].sum() < oval[jaw_row].sum() - 4
    brow_row = int(fy - 0.5 * ry)
    assert abs(warped[brow_row].sum() - oval[brow_row].sum()) < 0.5


def test_no_face_or_low_confidence_is_identity(astronaut):
    frame = Frame(torch.from_numpy(astronaut))
    field = run_node(FaceWarp, {"eyes": 1.0, "v_line": 1.0}, frame=frame)["field"]
    assert torch.count_nonzero(field.field) == 0 and field.image_size == (512, 512)
    lm = vs.astronaut_landmarks()
    weak = FaceLandmarks(lm.points, 0.1, lm.regions, lm.image_size)
    field = run_node(FaceWarp, {"eyes": 1.0}, landmarks=weak)["field"]
    assert torch.count_nonzero(field.field) == 0
    # face.landmarks sends the confidence as a 0-d tensor (no host sync): gated on the device
    for conf, moves in ((torch.tensor(0.1), False), (torch.tensor(0.9), True)):
        lmt = FaceLandmarks(lm.points, conf, lm.regions, lm.image_size)  # type: ignore[arg-type]
        field = run_node(FaceWarp, {"eyes": 1.0}, landmarks=lmt)["field"]
        assert bool(torch.count_nonzero(field.field)) == moves


def test_head_roll_is_followed(astronaut):
    """Rotate the landmarks by 90 degrees: the V-line shifts rotate with them."""
    lm = vs.astronaut_landmarks()
    c = torch.tensor([256.0, 256.0])
    rot = lm.points.clone()
    rot[:, 0] = c[0] - (lm.points[:, 1] - c[1])
    rot[:, 1] = c[1] + (lm.points[:, 0] - c[0])
    a = run_node(FaceWarp, {"v_line": 1.0, "cell": 4}, landmarks=lm)["field"].field
    b = run_node(FaceWarp, {"v_line": 1.0, "cell": 4}, landmarks=FaceLandmarks(rot, 0.95, lm.regions, lm.image_size))["field"].field
    # rotating the picture maps (dx, dy) at p to (-dy, dx) at R p
    a_rot = torch.stack((-a[1], a[0])).transpose(1, 2).flip(2)
    assert torch.allclose(a_rot, b, atol=0.15 * float(a.abs().max()))


@pytest.mark.slow
def test_with_real_face_landmarks(astronaut):
    """End to end with the real face.landmarks node (MediaPipe mesh + iris) on the astronaut."""
    node_mod = pytest.importorskip("muse.nodes.face.landmarks")
    frame = Frame(torch.from_numpy(astronaut))
    lm = run_node(node_mod.FaceLandmarksNode, {}, frame=frame)["face"]
    field = run_node(FaceWarp, {"eyes": 1.0, "v_line": 1.0}, landmarks=lm)["field"]
    out = run_node(WarpApply, {}, frame=frame, face=field)["out"].image.numpy()
    for side in ("left", "right"):
        cx, cy = (float(v) for v in lm.points[lm.regions[f"{side}_iris"], :2].mean(0))
        assert _dark_area(out, cx, cy) >= 1.25 * _dark_area(astronaut, cx, cy), side
    assert np.array_equal(out[:, :140], astronaut[:, :140])  # far from the face nothing moves


@pytest.mark.parametrize("path", ["torch", "fast"])
def test_eye_contours_of_different_lengths_give_the_same_field(path, monkeypatch):
    """Both eyes are gathered at once when their contours match in length; a landmark set whose right-eye
    contour repeats a point (so it is one longer) takes the per-eye path and must give the same field."""
    from dataclasses import replace

    monkeypatch.setenv("MUSE_CPU_PATH", path)  # torch: the GPU code, on the CPU
    lm = vs.astronaut_landmarks()
    params = {"eyes": 0.6, "v_line": 0.3, "slim": 0.2}
    regions = dict(lm.regions)
    assert regions.get("left_iris") and regions.get("right_iris")  # the centre comes from the iris: the repeat moves nothing
    regions["right_eye"] = list(regions["right_eye"]) + [regions["right_eye"][0]]
    same = run_node(FaceWarp, params, landmarks=lm)["field"].field
    longer = run_node(FaceWarp, params, landmarks=replace(lm, regions=regions))["field"].field
    assert same.abs().max() > 0.5
    assert torch.allclose(same, longer, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
def test_cuda_face_field_kernel_gives_the_torch_steps_field(monkeypatch):
    """The one-pass CUDA field (warp/face_kernel.py) against the torch steps, on the astronaut's landmarks scaled into
    a 4K picture: eyes alone, outline alone, both, and gated by a 0-d confidence above and below the threshold."""
    from dataclasses import replace

    from muse.nodes.warp import face as face_mod

    lm = vs.astronaut_landmarks()
    pts = lm.points.clone()
    pts[:, :2] = pts[:, :2] * 4.0 + torch.tensor([900.0, 40.0])  # the face at ~1,200 px across, off-centre
    dev = torch.device("cuda")
    cases = [({"eyes": 1.0}, 0.95), ({"v_line": 1.0, "slim": 0.5}, 0.95), ({"eyes": 0.6, "v_line": 0.7, "slim": 0.3}, 0.95),
             ({"eyes": 0.6, "v_line": 0.7}, torch.tensor(0.9)), ({"eyes": 0.6, "v_line": 0.7}, torch.tensor(0.2))]
    for params, conf in cases:
        big = replace(lm, points=pts.to(dev), confidence=conf.to(dev) if isinstance(conf, torch.Tensor) else conf,
                      image_size=(3840, 2160))
        kernel = run_node(FaceWarp, params, device=dev, landmarks=big)["field"].field
        monkeypatch.setattr(face_mod, "face_field_cuda", lambda *a, **k: None)  # the torch steps
        steps = run_node(FaceWarp, params, device=dev, landmarks=big)["field"].field
        monkeypatch.undo()
        assert kernel.shape == steps.shape == (2, 270, 480), kernel.shape
        moved = float(steps.abs().max())
        gated = isinstance(conf, torch.Tensor) and float(conf) < 0.5
        assert (moved == 0.0) if gated else (moved > 5.0), (params, moved)  # pixels of a 4K picture
        worst = float((kernel - steps).abs().max())
        assert worst <= 1e-3 * max(moved, 1.0), (params, worst, moved)
