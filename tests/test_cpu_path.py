"""Issue 13: each CPU implementation gives the torch implementation's results on real photos.

Both run here on the CPU; MUSE_CPU_PATH=torch makes a node open its torch path, as it
would on a GPU. Tolerances: person masks IoU >= 0.99 (at 0.5) and within 0.05 everywhere;
composited pixels within 2 sRGB levels (uint8) of the torch output.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from muse.graph.payloads import Frame, Mask
from muse.graph.testing import build_node, make_context
from muse.nodes.composite import Composite
from muse.nodes.segment.refine import RefineMask
from muse.nodes.segment.selfie import SelfieSegment
from tests.cpu_nodes import ROOM, frame720 as _frame720, opened as _opened



def _pair(monkeypatch, cls, params: dict):
    torch_node = _opened(monkeypatch, cls, params, "torch")
    cpu_node = _opened(monkeypatch, cls, params, "fast")
    assert getattr(torch_node, "_cpu", None) is None and cpu_node._cpu is not None
    return torch_node, cpu_node


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0.5, b > 0.5
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.fixture(scope="module")
def photos(astronaut, messi):
    return {"astronaut": _frame720(astronaut), "messi": _frame720(messi)}


@pytest.fixture(scope="module")
def bundled_selfie():
    from muse.models import bundled

    try:
        bundled.onnx_model_path("selfie_segmentation_landscape")
    except Exception as exc:  # pragma: no cover - a machine without `muse models import`
        pytest.skip(f"bundled selfie model not imported: {exc}")


@pytest.mark.parametrize("model", ["landscape", "general"])
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_selfie_cpu_matches_torch(monkeypatch, photos, bundled_selfie, model, photo):
    ref, cpu = _pair(monkeypatch, SelfieSegment, {"model": model})
    frame = photos[photo]
    a, b = ref.process(frame)["mask"].alpha.numpy(), cpu.process(frame)["mask"].alpha.numpy()
    assert a.shape == b.shape
    assert a.mean() > 0.05  # a person is there: the comparison means something
    assert _iou(a, b) >= 0.99
    assert np.abs(a - b).max() < 0.05


@pytest.mark.parametrize("guide", ["gray", "colour"])
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_refine_cpu_matches_torch_over_frames(monkeypatch, photos, bundled_selfie, guide, photo):
    frame = photos[photo]
    seg = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch")
    low = seg.process(frame)["mask"]
    ref, cpu = _pair(monkeypatch, RefineMask, {"guide": guide})
    # three frames: a still one (the temporal filter's state), a shifted one (motion), a jittered mask
    shifted = Frame(torch.roll(frame.image, shifts=6, dims=1))
    jitter = Mask((low.alpha + 0.02 * torch.sin(torch.arange(low.alpha.numel()).float()).view_as(low.alpha)).clamp(0, 1))
    for f, m in ((frame, low), (shifted, low), (shifted, jitter)):
        a = ref.process(f, m)["refined"].alpha.numpy()
        b = cpu.process(f, m)["refined"].alpha.numpy()
        assert a.shape == b.shape == (720, 1280)
        assert _iou(a, b) >= 0.99
        assert np.abs(a - b).max() < 0.05
        assert np.abs(a - b).mean() < 1e-3


def test_refine_cpu_scale_and_no_temporal(monkeypatch, photos, bundled_selfie):
    frame = photos["messi"]
    low = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
    ref, cpu = _pair(monkeypatch, RefineMask, {"scale": 0.5, "temporal": False})
    a, b = ref.process(frame, low)["refined"].alpha.numpy(), cpu.process(frame, low)["refined"].alpha.numpy()
    assert a.shape == b.shape == (360, 640)
    assert _iou(a, b) >= 0.99


CASES = [
    ({"background": "blur", "light_wrap": 0.0}, False, False),
    ({"background": "blur"}, False, False),
    ({"background": "blur", "light_wrap": 0.0}, True, False),
    ({"background": "plate"}, True, True),
    ({"background": "plate", "light_wrap": 0.0}, True, False),
    ({"background": "colour", "colour": [20, 200, 40]}, False, False),
    ({"background": "image", "path": str(ROOM)}, False, False),
]


@pytest.mark.parametrize("params,with_plate,with_coverage", CASES)
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_composite_cpu_matches_torch(monkeypatch, photos, bundled_selfie, params, with_plate, with_coverage, photo):
    frame = photos[photo]
    low = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
    mask = _opened(monkeypatch, RefineMask, {}, "torch").process(frame, low)["refined"]
    room = cv2.imread(str(ROOM))[:, :, ::-1]
    kw: dict = {}
    if with_plate:
        kw["plate"] = _frame720(room)
    if with_coverage:  # a plate partly never seen: the live frame shows through there
        cov = torch.ones(720, 1280)
        cov[:, :300] = 0.0
        cov[:, 300:340] = 0.5
        kw["coverage"] = Mask(cov)
    ref, cpu = _pair(monkeypatch, Composite, params)
    a = ref.process(frame, mask, **kw)["out"].image.numpy().astype(np.int16)
    b = cpu.process(frame, mask, **kw)["out"].image.numpy().astype(np.int16)
    assert a.shape == b.shape == (720, 1280, 3)
    assert np.abs(a - b).max() <= 2
    # the mask was soft somewhere, so the exact band blend was exercised, not only copies
    alpha = mask.alpha.numpy()
    assert ((alpha > 0.05) & (alpha < 0.95)).mean() > 0.01


def test_composite_cpu_low_resolution_mask(monkeypatch, photos, bundled_selfie):
    """A mask straight from the segmenter (256x144) is upsampled inside the one pass, as on the GPU."""
    frame = photos["astronaut"]
    low = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
    ref, cpu = _pair(monkeypatch, Composite, {"background": "colour"})
    a = ref.process(frame, low)["out"].image.numpy().astype(np.int16)
    b = cpu.process(frame, low)["out"].image.numpy().astype(np.int16)
    assert np.abs(a - b).max() <= 2


def _bump_field(h: int, w: int, cx: float, cy: float, size: tuple[int, int], amp: float) -> torch.Tensor:
    """A smooth push (pixels of a `size` picture) around (cx, cy) in grid fractions: a slimming-like warp."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    g = torch.exp(-(((xs - cx) / 0.12) ** 2 + ((ys - cy) / 0.15) ** 2))
    return torch.stack((amp * g * torch.sign(xs - cx), 0.4 * amp * g))


@pytest.mark.parametrize("with_plate", [False, True])
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_warp_apply_cpu_matches_torch(monkeypatch, photos, bundled_selfie, with_plate, photo):
    from muse.graph.payloads import Displacement
    from muse.nodes.warp import WarpApply

    frame = photos[photo]
    low = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
    mask = _opened(monkeypatch, RefineMask, {}, "torch").process(frame, low)["refined"]
    ys, xs = np.nonzero(mask.alpha.numpy() > 0.5)
    cx, cy = xs.mean() / 1280, ys.mean() / 720  # on the person: the gate keeps it
    face = Displacement(_bump_field(23, 40, cx, cy * 0.8, (1280, 720), 9.0), (1280, 720))
    body = Displacement(_bump_field(12, 20, cx, cy, (640, 360), -4.0), (640, 360))  # another grid and picture size
    kw = {"plate": _frame720(cv2.imread(str(ROOM))[:, :, ::-1])} if with_plate else {}
    ref, cpu = _pair(monkeypatch, WarpApply, {})
    a = ref.process(frame, face=face, body=body, mask=mask, **kw)
    b = cpu.process(frame, face=face, body=body, mask=mask, **kw)
    ia, ib = a["out"].image.numpy().astype(np.int16), b["out"].image.numpy().astype(np.int16)
    assert np.abs(ia - ib).max() <= 2
    assert (ia != frame.image.numpy()).mean() > 0.01  # the warp moved pixels: not a pass-through comparison
    ma, mb = a["warped_mask"].alpha.numpy(), b["warped_mask"].alpha.numpy()
    assert _iou(ma, mb) >= 0.99 and np.abs(ma - mb).max() < 0.05


def test_warp_apply_cpu_without_field_or_mask(monkeypatch, photos):
    from muse.graph.payloads import Displacement
    from muse.nodes.warp import WarpApply

    frame = photos["astronaut"]
    ref, cpu = _pair(monkeypatch, WarpApply, {})
    assert cpu.process(frame)["out"] is frame  # nothing to warp: untouched
    face = Displacement(_bump_field(23, 40, 0.5, 0.4, (1280, 720), 7.0), (1280, 720))
    ia = ref.process(frame, face=face)["out"].image.numpy().astype(np.int16)
    ib = cpu.process(frame, face=face)["out"].image.numpy().astype(np.int16)
    assert np.abs(ia - ib).max() <= 2 and (ia != frame.image.numpy()).mean() > 0.01


def _scene(room: np.ndarray, person: np.ndarray, x: int, gain: float) -> tuple[Frame, Mask]:
    """The room with a cut-out person (muse/assets) standing at x, exposure scaled by `gain`."""
    img = room.astype(np.float32) * gain
    ph, pw = person.shape[:2]
    rgb, pa = person[:, :, :3].astype(np.float32), person[:, :, 3].astype(np.float32) / 255.0
    alpha = np.zeros(room.shape[:2], np.float32)
    alpha[-ph:, x : x + pw] = pa
    img[-ph:, x : x + pw] = img[-ph:, x : x + pw] * (1 - pa[..., None]) + rgb * pa[..., None]
    return Frame(torch.from_numpy(np.clip(np.rint(img), 0, 255).astype(np.uint8))), Mask(torch.from_numpy(alpha))


def _full(known: np.ndarray, height: int, width: int) -> np.ndarray:
    """A coverage plane (on the plate's blocks) at the frame's size, by the nearest rule both paths use."""
    return torch.nn.functional.interpolate(torch.from_numpy(known)[None, None], size=(height, width), mode="nearest")[0, 0].numpy()


def test_adaptive_background_cpu_matches_torch(monkeypatch):
    from muse.nodes.background import AdaptiveBackground

    room = cv2.resize(cv2.imread(str(ROOM))[:, :, ::-1], (1280, 720), interpolation=cv2.INTER_AREA)
    person = cv2.imread(str(ROOM.parent / "person_rgba.png"), cv2.IMREAD_UNCHANGED)
    person = cv2.cvtColor(cv2.resize(person, (560, 560), interpolation=cv2.INTER_AREA), cv2.COLOR_BGRA2RGBA)
    ref, cpu = _pair(monkeypatch, AdaptiveBackground, {})
    worst_still, worst_change, partly_hidden = 0, 0, False
    for i in range(40):  # the person walks through the room; the exposure drops by 15% at frame 24
        frame, mask = _scene(room, person, 40 + 16 * i, 1.0 if i < 24 else 0.85)
        a, b = ref.process(frame, mask), cpu.process(frame, mask)
        ka, kb = a["coverage"].alpha.numpy(), b["coverage"].alpha.numpy()
        assert (ka == kb).mean() >= 0.999  # the room is learned at the same places on the same frames
        known = _full(((ka > 0) & (kb > 0)).astype(np.float32), 720, 1280) > 0
        partly_hidden |= bool(0 < known.mean() < 1)
        d = np.abs(a["plate"].image.numpy().astype(np.int16) - b["plate"].image.numpy().astype(np.int16))[known]
        if i < 24:
            worst_still = max(worst_still, int(d.max()))
        else:
            worst_change = max(worst_change, int(d.max()))
    assert partly_hidden  # the person hid part of the room for a while: both filled it in, then learned it
    assert worst_still <= 2  # a still exposure: the same plate
    assert worst_change <= 6  # a sudden exposure jump is followed 10x a second instead of every frame


def test_odd_frame_size_matches_torch(monkeypatch, messi, bundled_selfie):
    """A frame that does not divide into 16x16 tiles or 4x4 blocks (messi5 as is, 548x342)."""
    from muse.nodes.background import AdaptiveBackground

    frame = Frame(torch.from_numpy(np.ascontiguousarray(messi)))
    assert frame.width % 16 and frame.height % 4
    low = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
    ref, cpu = _pair(monkeypatch, RefineMask, {})
    mask_t = ref.process(frame, low)["refined"]
    mask_c = cpu.process(frame, low)["refined"]
    assert _iou(mask_t.alpha.numpy(), mask_c.alpha.numpy()) >= 0.99
    for params in ({"background": "blur"}, {"background": "plate"}):
        kw = {"plate": Frame(torch.from_numpy(np.ascontiguousarray(messi[:, ::-1])))} if params["background"] == "plate" else {}
        ref, cpu = _pair(monkeypatch, Composite, params)
        a = ref.process(frame, mask_t, **kw)["out"].image.numpy().astype(np.int16)
        b = cpu.process(frame, mask_t, **kw)["out"].image.numpy().astype(np.int16)
        assert np.abs(a - b).max() <= 2
    ref, cpu = _pair(monkeypatch, AdaptiveBackground, {"margin": 0.05})
    for _ in range(6):
        pa, pb = ref.process(frame, mask_t), cpu.process(frame, mask_t)
    ka, kb = pa["coverage"].alpha.numpy(), pb["coverage"].alpha.numpy()
    assert (ka == kb).all() and 0 < ka.mean() < 1
    known = _full(ka, frame.height, frame.width) > 0
    d = np.abs(pa["plate"].image.numpy().astype(np.int16) - pb["plate"].image.numpy().astype(np.int16))
    assert d[known].max() <= 2


@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_pose_and_face_crops_from_uint8_match_torch(monkeypatch, photos, photo):
    """pose.blazepose and face.landmarks on the CPU path crop the uint8 frame (muse/nodes/cpu/crop.py)
    instead of a float copy (crops within half a level of the float ones).

    Tolerance: the landmark models are sensitive (measured: +-1 level of noise on the frame moves the
    torch path's sure keypoints by up to 7 px), so over four tracked frames the CPU path must stay
    closer to the torch path than the torch path is to itself on the same frames plus +-1 level of
    fixed noise (median over keypoints, 1 px of slack), and on the first frame sure keypoints
    (visibility > 0.99) within 1.5 px."""
    from muse.nodes.face.landmarks import FaceLandmarksNode
    from muse.nodes.pose.blazepose import BlazePose

    frame = photos[photo]
    rng = np.random.default_rng(13)
    frames, noisy = [], []
    for k in range(4):
        img = torch.roll(frame.image, shifts=4 * k, dims=1)
        frames.append(Frame(img, index=k))
        jitter = torch.from_numpy(rng.integers(-1, 2, img.shape)).to(torch.int16)
        noisy.append(Frame((img.to(torch.int16) + jitter).clamp(0, 255).to(torch.uint8), index=k))
    pose_t, pose_c = _pair_flag(monkeypatch, BlazePose, {})
    pose_n = _opened(monkeypatch, BlazePose, {}, "torch")
    face_t, face_c = _pair_flag(monkeypatch, FaceLandmarksNode, {})
    face_n = _opened(monkeypatch, FaceLandmarksNode, {}, "torch")
    faces = 0
    for k, (f, fn) in enumerate(zip(frames, noisy)):
        kt, kc, kn = pose_t.process(f)["keypoints"], pose_c.process(f)["keypoints"], pose_n.process(fn)["keypoints"]
        seen = kt.confidence > 0.5
        assert bool(seen.sum() >= 8)  # a person is tracked: the comparison means something
        d_cpu = (kt.points - kc.points).abs().max(1).values[seen]
        d_noise = (kt.points - kn.points).abs().max(1).values[seen]
        assert float(d_cpu.median()) <= float(d_noise.median()) + 1.0
        if k == 0:
            sure = kt.confidence > 0.99
            assert float((kt.points - kc.points).abs().max(1).values[sure].max()) < 1.5
        ft = face_t.process(f, pose=kt)["face"]
        fc, fn_ = face_c.process(f, pose=kc)["face"], face_n.process(fn, pose=kn)["face"]
        if float(ft.confidence) > 0.5:
            faces += 1
            assert float(fc.confidence) > 0.5
            d_cpu = (ft.points[:, :2] - fc.points[:, :2]).abs().max(1).values
            d_noise = (ft.points[:, :2] - fn_.points[:, :2]).abs().max(1).values
            assert float(d_cpu.median()) <= float(d_noise.median()) + 1.0
    assert faces >= 1 or photo == "messi"  # the astronaut's face is found


def _pair_flag(monkeypatch, cls, params: dict):
    """(torch reference, CPU path) for nodes whose CPU path is the uint8 crop (no `_cpu` object)."""
    ref = _opened(monkeypatch, cls, params, "torch")
    cpu = _opened(monkeypatch, cls, params, "fast")
    assert not ref._uint8 and cpu._uint8
    return ref, cpu


def test_emulated_capture_opens_the_torch_path(monkeypatch):
    """`capture: emulate` checks the GPU path's contract on the CPU, so nodes open their torch path there."""
    monkeypatch.setenv("MUSE_CPU_PATH", "fast")
    node = build_node(Composite, {})
    ctx = make_context(node.name)
    ctx.settings = {"capture": "emulate"}
    node.open(ctx)
    assert node._cpu is None
    plain = build_node(Composite, {})
    plain.open(make_context(plain.name))
    assert plain._cpu is not None


@pytest.mark.parametrize("params", [
    {"eyes": 0.25, "v_line": 0.3, "slim": 0.15},  # stream_4k.yaml's
    {"eyes": 1.0, "v_line": 1.0, "slim": 1.0, "cell": 4},
    {"eyes": 0.0, "v_line": 0.0, "slim": 0.6, "cell": 16},
])
def test_face_warp_cpu_matches_torch(monkeypatch, photos, astronaut, params):
    """warp.face on the CPU path (numpy over each term's reach) on real face.landmarks output: the same
    field within 1e-3 px (float32 sums in another order), at the astronaut's 720p face and rolled 30 degrees."""
    from muse.graph.payloads import FaceLandmarks
    from muse.nodes.face.landmarks import FaceLandmarksNode
    from muse.nodes.warp.face import FaceWarp

    lm = _opened(monkeypatch, FaceLandmarksNode, {}, "torch").process(photos["astronaut"])["face"]
    assert float(lm.confidence) > 0.5
    c = lm.points[:, :2].mean(0)
    a = math.radians(30)
    rot = lm.points.clone()
    rot[:, 0] = c[0] + math.cos(a) * (lm.points[:, 0] - c[0]) - math.sin(a) * (lm.points[:, 1] - c[1])
    rot[:, 1] = c[1] + math.sin(a) * (lm.points[:, 0] - c[0]) + math.cos(a) * (lm.points[:, 1] - c[1])
    ref, cpu = _pair(monkeypatch, FaceWarp, params)
    for landmarks in (lm, FaceLandmarks(rot, lm.confidence, lm.regions, lm.image_size)):
        ft, fc = ref.process(landmarks)["field"], cpu.process(landmarks)["field"]
        assert fc.image_size == ft.image_size and fc.field.shape == ft.field.shape
        assert float(ft.field.abs().max()) > 1.0  # the face really moves
        assert float((ft.field - fc.field).abs().max()) < 1e-3
    weak = FaceLandmarks(lm.points, torch.tensor(0.1), lm.regions, lm.image_size)
    assert torch.count_nonzero(cpu.process(weak)["field"].field) == 0
    assert torch.count_nonzero(cpu.process(None, photos["astronaut"])["field"].field) == 0


@pytest.mark.parametrize("size", [(1280, 720), (548, 342), (1000, 700)])
def test_warp_gate_cpu_matches_torch(photos, messi, bundled_selfie, size):
    """The warps' person gate (fields.mask_gate) in numpy/OpenCV: the same values on a real person mask,
    where grid cells tile the mask, leave a partial last cell (548x342) or need adaptive windows."""
    from muse.nodes.cpu.body_warp import mask_gate_np
    from muse.nodes.warp.fields import field_grid, mask_gate

    seg = build_node(SelfieSegment, {"model": "landscape"})
    seg.open(make_context(seg.name))
    frame = Frame(torch.from_numpy(np.ascontiguousarray(cv2.resize(messi, size, interpolation=cv2.INTER_AREA))))
    low = seg.process(frame)["mask"].alpha
    alpha = torch.nn.functional.interpolate(low[None, None], size=(size[1], size[0]), mode="bilinear")[0, 0]
    for cell in (8, 7):
        xs, _ = field_grid(size, cell, torch.device("cpu"))
        grid = tuple(xs.shape)
        a = mask_gate(alpha, grid, 0.04 * grid[0]).numpy()
        b = mask_gate_np(alpha.numpy(), grid, 0.04 * grid[0])
        assert a.shape == b.shape and 0 < a.mean() < 1
        assert np.abs(a - b).max() < 1e-5


def test_body_warp_cpu_matches_torch(monkeypatch, photos, bundled_selfie):
    """warp.body on the CPU path on real pose keypoints and a real person mask: the field within 1e-3 px."""
    from muse.nodes.pose.blazepose import BlazePose
    from muse.nodes.warp.body import BodyWarp

    moved = 0
    for photo in ("astronaut", "messi"):
        frame = photos[photo]
        kp = _opened(monkeypatch, BlazePose, {}, "torch").process(frame)["keypoints"]
        mask = _opened(monkeypatch, SelfieSegment, {"model": "landscape"}, "torch").process(frame)["mask"]
        for params in ({"waist": 0.2, "hips": 0.1}, {"waist": 1.0, "hips": -1.0, "shoulders": 1.0, "cell": 5}):
            ref, cpu = _pair(monkeypatch, BodyWarp, params)
            for m in (mask, None):
                ft, fc = ref.process(kp, m)["field"], cpu.process(kp, m)["field"]
                assert fc.field.shape == ft.field.shape and fc.image_size == ft.image_size
                assert float((ft.field - fc.field).abs().max()) < 1e-3
                moved += float(ft.field.abs().max()) > 1.0
    assert moved >= 2  # at least one photo's torso is seen: the comparison means something


def test_smooth_cpu_matches_torch(monkeypatch, photos):
    """landmarks.smooth on the CPU path (numpy One-Euro): real pose keypoints and face landmarks of the
    astronaut, moved and jittered over 12 frames (a still spell, a fast move, a dropped point, a
    repeated timestamp): the same smoothed points within 1e-3 px."""
    from dataclasses import replace

    from muse.nodes.face.landmarks import FaceLandmarksNode
    from muse.nodes.landmarks.smooth import Smooth
    from muse.nodes.pose.blazepose import BlazePose

    frame = photos["astronaut"]
    kp = _opened(monkeypatch, BlazePose, {}, "torch").process(frame)["keypoints"]
    lm = _opened(monkeypatch, FaceLandmarksNode, {}, "torch").process(frame, pose=kp)["face"]
    ref, cpu = _pair(monkeypatch, Smooth, {"beta": 5.0})
    gen = torch.Generator().manual_seed(3)  # fixed jitter: the same for both paths
    moved = 0.0
    for i in range(12):
        shift = torch.tensor([0.0 if i < 5 else 25.0 * (i - 4), 0.0])
        ts = i / 30 if i != 7 else 6 / 30  # one timestamp that does not advance
        conf = kp.confidence.clone()
        if i == 9:
            conf[15] = 0.1  # a wrist lost for a frame: passed through, its filter restarts
        kpi = replace(kp, points=kp.points + torch.cat((shift, torch.zeros(kp.points.shape[1] - 2))) +
                      torch.randn(kp.points.shape, generator=gen) * 0.7, confidence=conf, timestamp=ts, index=i)
        lmi = replace(lm, points=lm.points + torch.cat((shift, torch.zeros(lm.points.shape[1] - 2))) +
                      torch.randn(lm.points.shape, generator=gen) * 0.3, timestamp=ts, index=i)
        a, b = ref.process(kpi, lmi), cpu.process(kpi, lmi)
        for port in ("smoothed_keypoints", "smoothed_face"):
            pa, pb = a[port].points, b[port].points
            assert pa.shape == pb.shape and pa.dtype == pb.dtype
            assert float((pa - pb).abs().max()) < 1e-3, (i, port)
        moved = max(moved, float((a["smoothed_keypoints"].points - kpi.points).abs().max()))
    assert moved > 1.0  # the filter really smooths (lags a moving person a little)
    cpu.update_params(Smooth.Params(beta=50.0))
    assert cpu._cpu.filters["keypoints"].beta == 50.0


def test_retain_freed_memory_stops_page_faults_on_frame_sized_temporaries():
    """The CPU path keeps freed frame-sized buffers for the next frame (glibc's mallopt): the fused
    matte's guided filter (dozens of 0.6 MB numpy temporaries) costs no page faults once warm
    (measured 2026-12-01: 5,584 faults a call without it, 0 with it; half its CPU time)."""
    import resource
    import sys

    from muse.nodes import cpu
    from muse.nodes.cpu.refine import guided_colour

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc malloc tuning is Linux-only")
    if not cpu.retain_freed_memory():
        pytest.skip("malloc left alone (MUSE_CPU_MALLOC=0) or not glibc")
    rng = np.random.default_rng(0)
    guide, mask = rng.random((288, 512, 3), dtype=np.float32), rng.random((288, 512), dtype=np.float32)
    for _ in range(3):
        guided_colour(mask, guide, 2, 2e-3)
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(5):
        guided_colour(mask, guide, 2, 2e-3)
    assert resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before < 100


@pytest.mark.parametrize("border", ["zeros", "border"])
def test_big_crops_through_four_channels_are_the_same_crops(astronaut, border, monkeypatch):
    """A big crop (a 720p body at 2 taps) samples a four-channel copy of the frame region under the ROI
    (muse/nodes/cpu/crop.py: OpenCV's vector path): the same crop as three channels from the whole frame, and
    within half a level of the torch reference, for ROIs inside the frame, across its edge and rotated."""
    import cv2

    from muse.nodes.cpu import crop as C
    from muse.nodes.landmarks import roi as R

    img = torch.from_numpy(cv2.resize(astronaut, (1280, 720), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
    rois = torch.tensor([[640.0, 380.0, 700.0, 700.0, 0.15], [1250.0, 700.0, 900.0, 900.0, 0.5], [90.0, 60.0, 600.0, 600.0, -0.3]])
    monkeypatch.setattr(C, "FOUR_CHANNELS_FROM", 10**12)
    three = C.crop_uint8(img, rois, 256, 256, border, None, 2)
    monkeypatch.setattr(C, "FOUR_CHANNELS_FROM", 1)
    four = C.crop_uint8(img, rois, 256, 256, border, None, 2)
    assert float((three - four).abs().max()) * 255 <= 1.0 and float((three != four).float().mean()) < 1e-3
    ref = R.crop(img.float() / 255, rois, 256, border=border, taps=2)
    assert float((four - ref).abs().max()) * 255 <= 0.51


@pytest.mark.parametrize("border", ["zeros", "border"])
def test_crop_taps_loop_gives_opencvs_crops_to_the_bit(astronaut, border, monkeypatch):
    """The crops' taps x taps mean, scale to [0, 1] and planes in one numba loop (muse/nodes/cpu/crop.py) give what
    OpenCV's float conversion, area resize and scale gave, to the bit, at 1, 2 and 3 taps (the pose detector's
    720p crop): the landmark models track from frame to frame, and a last-bit difference in the detector's crop
    moved the astronaut's keypoints by 13-110 px four frames later."""
    from muse.nodes.cpu import crop as C
    from muse.nodes.cpu import kernels

    if not kernels.available():
        pytest.skip(f"numba kernels not usable: {kernels.why_not()}")
    kernels.warm_up()
    kernels._WARM.join(timeout=300)
    assert kernels.compiled("taps_mean")  # (until it is, the crops take OpenCV's passes)
    img = torch.from_numpy(cv2.resize(astronaut, (1280, 720), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
    rois = torch.tensor([[640.0, 380.0, 700.0, 700.0, 0.15], [1250.0, 700.0, 900.0, 900.0, 0.5], [640.0, 360.0, 1280.0, 1280.0, 0.0]])
    for taps, size in ((1, 192), (2, 256), (3, 224)):
        loop = C.crop_uint8(img, rois, size, size, border, None, taps)
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "available", lambda: False)
            cv = C.crop_uint8(img, rois, size, size, border, None, taps)
        assert loop.shape == cv.shape == (3, 3, size, size)
        assert torch.equal(loop, cv), (taps, float((loop - cv).abs().max()))


@pytest.mark.parametrize("light_wrap", [0.0, 0.3])
def test_composite_cpu_known_on_two_grids_matches_torch(monkeypatch, photos, light_wrap):
    """stream_4k's plate composite at 720p: the coverage on the plate's 4x4 blocks (320x180, sharp
    edges of never-seen room) and the matte's confidence on its working grid (512x288), over a plate
    that is another picture than the frame, so every difference in where the two mix shows. The torch
    path multiplies the two on the finer grid and upsamples once; the CPU path does the same (it used
    to upsample each to full size first: up to 12 levels off on stream_4k's own frames)."""
    frame = photos["astronaut"]
    room = _frame720(cv2.imread(str(ROOM))[:, :, ::-1])
    cov = np.ones((180, 320), np.float32)
    cov[40:130, 37:151] = 0.0  # the room behind where the person stood, never seen
    cov[130:150, 37:151] = 0.5
    ys, xs = np.mgrid[0:288, 0:512].astype(np.float32)
    conf = np.clip(0.5 + 0.5 * np.sin(xs / 23.0) * np.cos(ys / 17.0) + 0.3, 0.0, 1.0).astype(np.float32)
    mask = np.zeros((720, 1280), np.float32)
    mask[200:720, 700:1000] = 1.0
    mask[200:720, 690:700] = 0.5  # a soft edge: the band blend runs too
    kw = dict(plate=room, coverage=Mask(torch.from_numpy(cov)), confidence=Mask(torch.from_numpy(conf)))
    ref, cpu = _pair(monkeypatch, Composite, {"background": "plate", "light_wrap": light_wrap})
    a = ref.process(frame, Mask(torch.from_numpy(mask)), **kw)["out"].image.numpy().astype(np.int16)
    b = cpu.process(frame, Mask(torch.from_numpy(mask)), **kw)["out"].image.numpy().astype(np.int16)
    assert np.abs(a - b).max() <= 2
    # the live frame and the plate really mix over a large part of the picture (not only copies)
    known = cv2.resize(cv2.resize(cov, (512, 288), interpolation=cv2.INTER_LINEAR) * conf, (1280, 720), interpolation=cv2.INTER_LINEAR)
    assert ((known > 0.05) & (known < 0.95)).mean() > 0.2


def test_adaptive_background_cpu_block_means_follow_the_plate(monkeypatch):
    """The CPU plate keeps its 4x4 block means beside it (the exposure gain and the fill read them):
    stepped and scaled with the plate over 70 updates (past the refresh), with first-seen blocks copied
    in between, they stay the means of the plate itself."""
    from muse.nodes.background import AdaptiveBackground

    room = cv2.resize(cv2.imread(str(ROOM))[:, :, ::-1], (1280, 720), interpolation=cv2.INTER_AREA)
    person = cv2.imread(str(ROOM.parent / "person_rgba.png"), cv2.IMREAD_UNCHANGED)
    person = cv2.cvtColor(cv2.resize(person, (560, 560), interpolation=cv2.INTER_AREA), cv2.COLOR_BGRA2RGBA)
    node = _opened(monkeypatch, AdaptiveBackground, {}, "fast")
    cpu = node._cpu
    worst, checked = 0.0, 0
    for i in range(200):  # 30 fps: an update every third frame; the exposure drifts down, the person walks
        frame, mask = _scene(room, person, 40 + (8 * i) % 640, 1.0 - 0.001 * i)
        node.process(frame, mask)
        if cpu._plate_q is not None and cpu._since == 0:
            fresh = cv2.resize(cpu.plate, (320, 180), interpolation=cv2.INTER_AREA)
            worst = max(worst, float(np.abs(cpu._plate_q - fresh).max()))
            checked += 1
    assert cpu._updates > 64 and checked > 30
    assert worst < 1e-4  # a 40th of a level (the plate is in [0, 1])


def test_composite_cpu_soft_band_over_most_of_the_frame(monkeypatch, photos):
    """A soft matte over most of the frame with the light wrap on: the band's tiles (more than 2048, a
    gathered picture taller than cv2.remap takes) are sampled in slices, and still match the torch path."""
    frame = photos["messi"]
    ys, xs = np.mgrid[0:720, 0:1280].astype(np.float32)
    mask = np.clip(0.5 + 0.45 * np.sin(xs / 31.0) * np.cos(ys / 23.0), 0.0, 1.0).astype(np.float32)
    mask[:, :160] = 0.0
    mask[300:600, 500:800] = 1.0
    ref, cpu = _pair(monkeypatch, Composite, {"background": "blur", "light_wrap": 0.5})
    a = ref.process(frame, Mask(torch.from_numpy(mask)))["out"].image.numpy().astype(np.int16)
    b = cpu.process(frame, Mask(torch.from_numpy(mask)))["out"].image.numpy().astype(np.int16)
    assert np.abs(a - b).max() <= 2
    assert ((mask > 0.01) & (mask < 0.99)).mean() > 0.6  # the band really covers most of the 3600 tiles


def test_shrunk_frame_is_shared_and_follows_changes(photos):
    """The segmenter and the refine of one frame share its shrunk copy (`shrunk_uint8`); a frame changed in
    place, or another frame, gets its own."""
    import torch.nn.functional as F

    from muse.nodes.cpu import shrunk_uint8

    def ref(img: torch.Tensor) -> torch.Tensor:
        return F.interpolate(img.permute(2, 0, 1)[None], size=(144, 256), mode="bilinear", align_corners=False, antialias=True)[0]

    img = photos["astronaut"].image.clone()
    a = shrunk_uint8(img, 144, 256)
    assert shrunk_uint8(img, 144, 256) is a and torch.equal(a, ref(img))
    assert shrunk_uint8(img, 72, 128).shape == (3, 72, 128)
    img[:360] = 0  # in place: the version counter moves
    b = shrunk_uint8(img, 144, 256)
    assert b is not a and torch.equal(b, ref(img))
    other = photos["messi"].image
    assert torch.equal(shrunk_uint8(other, 144, 256), ref(other))


@pytest.mark.parametrize("size", [(1280, 720), (300, 500)])
@pytest.mark.parametrize("edge_loop", [True, False])
def test_demo_render_blends_only_her_edge_and_is_the_same_picture(size, edge_loop):
    """capture.demo on the CPU copies her square where her alpha is 1 and blends only the soft edge (with numba in
    one loop over the edge's points, else by gathering them): the same frames, to the bit, as one blend over the
    whole square (also where the square leaves the frame)."""
    from muse.nodes.capture.demo import Demo
    from muse.nodes.cpu import kernels

    if edge_loop and not kernels.available():
        pytest.skip(f"numba kernels not available: {kernels.why_not()}")
    w, h = size
    demo = build_node(Demo, {"width": w, "height": h, "fps": 0, "background": "coffee", "motion": 2.0})
    demo.open(make_context("camera"))
    if edge_loop:
        kernels.warm_up()
        kernels._WARM.join(timeout=300)
        assert kernels.compiled("blend_points")
    else:
        demo._edge_loop = False
    assert 0 < demo._edge[0].size < 0.2 * demo._side**2  # the edge is a thin part of her square
    p = demo.params
    for i in range(0, 240, 17):
        got, _ = demo.render(i)
        x0, y0 = demo.placement(i)
        fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(w, x0 + demo._side), min(h, y0 + demo._side)
        want = demo._plate.clone()
        if fx1 > fx0 and fy1 > fy0:
            sx0, sy0 = fx0 - x0, fy0 - y0
            fg, wa, wb = (np.ascontiguousarray(t[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0]) for t in demo._cv)
            region = want.numpy()[fy0:fy1, fx0:fx1]
            region[...] = cv2.blendLinear(fg, np.ascontiguousarray(region), wa, wb)
        assert torch.equal(got, want), (i, p.width)
        assert not torch.equal(got, demo._plate)  # she is in the picture
