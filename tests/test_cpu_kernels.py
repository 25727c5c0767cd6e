"""The CPU path's fused numba kernels (muse/nodes/cpu/kernels.py) against the OpenCV implementations
they replace and the torch path, on real photos (issue 13).

Tolerances: composited pixels within 2 sRGB levels of the torch path (as every CPU implementation) and
within 1 level of the OpenCV implementation (both round linear light to sRGB; they may differ at a
rounding boundary; the kernel's differ from the torch path's on under 0.1 % of values), 3 over a blurred room (the OpenCV implementation blends with the room upsampled in
sRGB, the kernel in linear light as the torch path); the sRGB encoding exact against float64 maths.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from muse.graph.payloads import Frame, Mask
from muse.nodes.composite import Composite
from muse.nodes.cpu import kernels
from muse.nodes.segment.fused import FusedSegment
from muse.nodes.segment.refine import RefineMask
from muse.nodes.segment.selfie import SelfieSegment
from tests.cpu_nodes import ROOM, frame720 as _frame720, opened as _opened


needs_numba = pytest.mark.skipif(not kernels.available(), reason=f"numba kernels not available: {kernels.why_not()}")


@pytest.fixture(scope="module")
def photos(astronaut, messi):
    return {"astronaut": _frame720(astronaut), "messi": _frame720(messi)}


def _refined(monkeypatch, frame: Frame) -> Mask:
    from muse.models import bundled

    try:
        bundled.onnx_model_path("selfie_segmentation")
    except Exception as exc:  # pragma: no cover - a machine without `muse models import`
        pytest.skip(f"bundled selfie model not imported: {exc}")
    low = _opened(monkeypatch, SelfieSegment, {}, "torch").process(frame)["mask"]
    return _opened(monkeypatch, RefineMask, {"guide": "gray"}, "torch").process(frame, low)["refined"]


@needs_numba
def test_encode_srgb_rounds_like_float64_maths():
    """Every float32 in [0, 1] at 2^-20 steps, plus the values right at each level's threshold."""
    x = np.arange(0, 2**20 + 1, dtype=np.float64) / 2**20
    t, _ = kernels.srgb_thresholds()
    near = np.concatenate([t[1:256], np.nextafter(t[1:256], np.float32(0)), np.nextafter(t[1:256], np.float32(1))]).astype(np.float64)
    x = np.concatenate([x, near, [-0.5, 1.5]]).astype(np.float32)
    got = kernels.encode_srgb(x)
    v = np.clip(x.astype(np.float64), 0.0, 1.0)
    srgb = np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055) * 255.0
    want = np.floor(srgb + 0.5).astype(np.int64)  # half up: a float32 is never exactly at a half in float64 maths
    exact = np.abs(got.astype(np.int64) - want)
    # the only disagreements allowed: float32 values within 1e-6 of a level's half (the torch path's pow is
    # no more precise than that)
    off = exact > 0
    assert exact.max() <= 1
    assert np.all(np.abs(srgb[off] - np.floor(srgb[off]) - 0.5) < 1e-4), srgb[off][:10]
    assert off.sum() <= 4


CASES = [
    # webcam_720p's composite: blurred room, no glow
    ({"background": "blur", "light_wrap": 0.0}, False, False),
    ({"background": "blur", "light_wrap": 0.3}, False, False),
    # stream_4k's: the plate, partly never seen, with the glow
    ({"background": "plate", "light_wrap": 0.3}, True, True),
    ({"background": "plate", "light_wrap": 0.0}, True, False),
    ({"background": "colour", "colour": [20, 200, 40]}, False, False),
    ({"background": "colour", "colour": [20, 200, 40], "light_wrap": 0.5}, False, False),
]


@needs_numba
@pytest.mark.parametrize("params,with_plate,with_coverage", CASES)
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_composite_kernel_matches_opencv_and_torch(monkeypatch, photos, params, with_plate, with_coverage, photo):
    frame = photos[photo]
    mask = _refined(monkeypatch, frame)
    kw: dict = {}
    if with_plate:
        kw["plate"] = _frame720(cv2.imread(str(ROOM))[:, :, ::-1])
    if with_coverage:
        cov = torch.ones(720, 1280)
        cov[:, :300] = 0.0
        cov[:, 300:340] = 0.5
        kw["coverage"] = Mask(cov)
    ref = _opened(monkeypatch, Composite, params, "torch")
    cpu = _opened(monkeypatch, Composite, params, "fast")
    assert cpu._cpu is not None
    a = ref.process(frame, mask, **kw)["out"].image.numpy().astype(np.int16)
    fused = cpu.process(frame, mask, **kw)["out"].image.numpy().astype(np.int16)
    monkeypatch.setattr(kernels, "available", lambda: False)
    opencv = cpu.process(frame, mask, **kw)["out"].image.numpy().astype(np.int16)
    assert np.abs(fused - a).max() <= 2
    if params["background"] == "blur":
        # the kernel blends with the room upsampled in linear light as the torch path does; the OpenCV
        # implementation with the room upsampled in sRGB (up to 3 levels off the torch path on a few pixels)
        assert np.abs(fused - opencv).max() <= 3
        assert np.abs(fused - a).mean() <= np.abs(opencv - a).mean()
    else:
        assert np.abs(fused - opencv).max() <= 1
        # off the torch path at rounding boundaries only (the OpenCV implementation's 8-bit mix of the live frame
        # and the plate rounds differently at half levels: 0.3-0.8 % of values over the half-known stripe)
        assert (fused != a).mean() < 1e-3
    # the band blend really ran over a soft edge (not only copies)
    alpha = mask.alpha.numpy()
    assert ((alpha > 0.05) & (alpha < 0.95)).mean() > 0.01


@needs_numba
def test_composite_kernel_over_a_wide_soft_matte(monkeypatch, photos):
    """A matte soft over most of the frame (a segmenter unsure of a busy room: webcam_720p's demo stand-in
    over the coffee photo is fractional over 20-40 % of the frame), with and without the glow."""
    frame = photos["messi"]
    ys, xs = np.mgrid[0:720, 0:1280].astype(np.float32)
    mask = np.clip(0.5 + 0.45 * np.sin(xs / 31.0) * np.cos(ys / 23.0), 0.0, 1.0).astype(np.float32)
    mask[:, :160] = 0.0
    mask[300:600, 500:800] = 1.0
    mask[:40] = 1e-4  # below the smallest level anything can move: the background stays
    for wrap in (0.0, 0.5):
        ref = _opened(monkeypatch, Composite, {"background": "blur", "light_wrap": wrap}, "torch")
        cpu = _opened(monkeypatch, Composite, {"background": "blur", "light_wrap": wrap}, "fast")
        a = ref.process(frame, Mask(torch.from_numpy(mask)))["out"].image.numpy().astype(np.int16)
        b = cpu.process(frame, Mask(torch.from_numpy(mask)))["out"].image.numpy().astype(np.int16)
        assert np.abs(a - b).max() <= 2


def test_without_numba_the_opencv_implementation_runs(monkeypatch, photos):
    """MUSE_CPU_NUMBA=0 (or no numba) leaves the kernels out and the composite still works."""
    monkeypatch.setattr(kernels, "_KERNELS", None)
    monkeypatch.setattr(kernels, "_WHY_NOT", None)
    monkeypatch.setenv("MUSE_CPU_NUMBA", "0")
    assert not kernels.available() and kernels.why_not() == "MUSE_CPU_NUMBA=0"
    frame = photos["astronaut"]
    mask = np.zeros((720, 1280), np.float32)
    mask[200:, 500:800] = 1.0
    mask[200:, 490:500] = 0.5
    cpu = _opened(monkeypatch, Composite, {"background": "colour", "colour": [0, 0, 0], "light_wrap": 0.0}, "fast")
    out = cpu.process(frame, Mask(torch.from_numpy(mask)))["out"].image.numpy()
    assert (out[:, :480] == 0).all() and (out[300, 600] == frame.image.numpy()[300, 600]).all()


@needs_numba
@pytest.mark.parametrize("guide", ["gray", "colour"])
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_refine_kernel_matches_opencv_and_torch(monkeypatch, photos, guide, photo):
    """segment.refine's full-resolution step fused: within float rounding of the OpenCV implementation, and
    the torch path's tolerance (IoU >= 0.99, within 0.05) over a still, a moved and a jittered frame."""
    from muse.models import bundled

    try:
        bundled.onnx_model_path("selfie_segmentation")
    except Exception as exc:  # pragma: no cover - a machine without `muse models import`
        pytest.skip(f"bundled selfie model not imported: {exc}")
    frame = photos[photo]
    low = _opened(monkeypatch, SelfieSegment, {}, "torch").process(frame)["mask"]
    shifted = Frame(torch.roll(frame.image, shifts=6, dims=1))
    jitter = Mask((low.alpha + 0.02 * torch.sin(torch.arange(low.alpha.numel()).float()).view_as(low.alpha)).clamp(0, 1))
    ref = _opened(monkeypatch, RefineMask, {"guide": guide}, "torch")
    fused = _opened(monkeypatch, RefineMask, {"guide": guide}, "fast")
    opencv = _opened(monkeypatch, RefineMask, {"guide": guide}, "fast")
    for f, m in ((frame, low), (shifted, low), (shifted, jitter)):
        a = ref.process(f, m)["refined"].alpha.numpy()
        b = fused.process(f, m)["refined"].alpha.numpy()
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "available", lambda: False)
            c = opencv.process(f, m)["refined"].alpha.numpy()
        assert a.shape == b.shape == c.shape == (720, 1280)
        assert np.abs(b - c).max() < 1e-5
        inter, union = ((a > 0.5) & (b > 0.5)).sum(), ((a > 0.5) | (b > 0.5)).sum()
        assert inter / union >= 0.99 and np.abs(a - b).max() < 0.05
        assert 0.0 <= b.min() and b.max() <= 1.0 and 0.02 < (b > 0.5).mean() < 0.98


def _bump_field(h: int, w: int, cx: float, cy: float, amp: float) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    g = torch.exp(-(((xs - cx) / 0.12) ** 2 + ((ys - cy) / 0.15) ** 2))
    return torch.stack((amp * g * torch.sign(xs - cx), 0.4 * amp * g))


@needs_numba
@pytest.mark.parametrize("case", ["plate", "mask", "low_mask", "no_mask"])
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_warp_kernel_matches_torch_and_opencv(monkeypatch, photos, case, photo):
    """warp.apply's box in one pass: within a level of the torch path on almost every value (the OpenCV
    implementation remaps at 1/32 pixel and rounds three times: 1 level off on ~1 % of values), the warped
    mask within float rounding of it; a mask below the frame's size sampled on its own grid."""
    from muse.graph.payloads import Displacement
    from muse.nodes.warp import WarpApply

    frame = photos[photo]
    mask = _refined(monkeypatch, frame)
    alpha = mask.alpha.numpy()
    ys, xs = np.nonzero(alpha > 0.5)
    cx, cy = xs.mean() / 1280, ys.mean() / 720
    face = Displacement(_bump_field(23, 40, cx, cy * 0.8, 9.0), (1280, 720))
    body = Displacement(_bump_field(12, 20, cx, cy, -4.0), (640, 360))
    kw: dict = {}
    if case == "plate":
        kw = {"mask": mask, "plate": _frame720(cv2.imread(str(ROOM))[:, :, ::-1])}
    elif case == "mask":
        kw = {"mask": mask}
    elif case == "low_mask":
        kw = {"mask": Mask(torch.from_numpy(cv2.resize(alpha, (320, 180), interpolation=cv2.INTER_AREA)))}
    ref = _opened(monkeypatch, WarpApply, {}, "torch")
    cpu = _opened(monkeypatch, WarpApply, {}, "fast")
    a = ref.process(frame, face=face, body=body, **kw)
    b = cpu.process(frame, face=face, body=body, **kw)
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "available", lambda: False)
        c = cpu.process(frame, face=face, body=body, **kw)
    ia, ib, ic = (x["out"].image.numpy().astype(np.int16) for x in (a, b, c))
    assert np.abs(ia - ib).max() <= 1 and (ia != ib).mean() < 1e-3
    assert np.abs(ib - ic).max() <= 2
    assert (ib != frame.image.numpy()).mean() > 0.01  # the warp moved pixels
    if case != "no_mask":
        ma, mb, mc = (x["warped_mask"].alpha.numpy() for x in (a, b, c))
        assert np.abs(ma - mb).max() < 1e-3 and np.abs(mb - mc).max() < 1e-3


@needs_numba
def test_warm_up_compiles_what_the_nodes_call(monkeypatch, photos):
    """The background warm-up compiles each kernel for the very argument types the nodes pass (a node's
    first call mid-stream must not compile a second specialisation)."""
    from muse.graph.payloads import Displacement
    from muse.nodes.warp import WarpApply

    kernels.warm_up()
    kernels._WARM.join(timeout=300)
    k = kernels._kernels()
    before = {name: len(fn.signatures) for name, fn in k.items() if hasattr(fn, "signatures")}
    over_before = {key: len(fn.signatures) for key, fn in k["over"].items()}
    assert len(over_before) == 6 and all(n == 1 for n in over_before.values())
    frame = photos["astronaut"]
    mask = _refined(monkeypatch, frame)
    plate = _frame720(cv2.imread(str(ROOM))[:, :, ::-1])
    cov = torch.ones(720, 1280)
    cov[:, :300] = 0.0
    for params, kw in (({"background": "blur", "light_wrap": 0.0}, {}), ({"background": "plate"}, {"plate": plate, "coverage": Mask(cov)}),
                       ({"background": "colour", "light_wrap": 0.3}, {})):
        _opened(monkeypatch, Composite, params, "fast").process(frame, mask, **kw)
    _opened(monkeypatch, RefineMask, {"guide": "gray"}, "fast").process(frame, Mask(torch.rand(144, 256)))
    matte = _opened(monkeypatch, FusedSegment, {}, "fast")
    for _ in range(2):  # the second frame carries the first along the motion; the plate runs the light field
        matte.process(frame, prior=Mask(torch.rand(144, 256)), plate=plate)
    face = Displacement(_bump_field(23, 40, 0.5, 0.4, 7.0), (1280, 720))
    _opened(monkeypatch, WarpApply, {}, "fast").process(frame, face=face, mask=mask, plate=plate)
    after = {name: len(fn.signatures) for name, fn in k.items() if hasattr(fn, "signatures")}
    assert after == before and {key: len(fn.signatures) for key, fn in k["over"].items()} == over_before


@needs_numba
@pytest.mark.parametrize("contrast", [(1.0, 0.0), (1.6, 0.15), (1.2, 0.3)])  # none, folded, applied after
@pytest.mark.parametrize("photo", ["astronaut", "messi"])
def test_fused_matte_edge_kernel_matches_opencv(monkeypatch, photos, contrast, photo):
    """segment.fused's full-resolution edge pass (A . I + b with the colour guide, the contrast folded in or
    applied after) in one numba loop: within float rounding of the OpenCV planes it replaced."""
    from muse.nodes.cpu import fused as fused_cpu

    frame = photos[photo]
    small = fused_cpu.working_picture(frame, 512, 288)
    alpha = _refined(monkeypatch, frame).alpha.numpy()
    alpha = np.ascontiguousarray(cv2.resize(alpha, (512, 288), interpolation=cv2.INTER_AREA))
    s = FusedSegment.Params(edge_sharpness=contrast[0], edge_offset=contrast[1])
    for step in (1, 2):
        a = fused_cpu.refine_full(alpha, frame, small, s, step)
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "available", lambda: False)
            b = fused_cpu.refine_full(alpha, frame, small, s, step)
        assert a.shape == b.shape == (720, 1280) and a.dtype == b.dtype == np.float32
        assert np.abs(a - b).max() < 1e-5
        assert 0.0 <= a.min() and a.max() <= 1.0 and 0.05 < (a > 0.5).mean() < 0.95


@needs_numba
@pytest.mark.parametrize("with_plate", [False, True])
def test_fused_matte_loops_match_its_numpy_implementation(monkeypatch, photos, with_plate):
    """segment.fused's numba loops (the last matte and frame carried along the motion, the light field, the edge
    pass) against its numpy/OpenCV/torch implementation over a moving, brightening shot with a plate: the same
    outputs within float rounding, frame after frame (the state carried along does not drift apart)."""
    from muse.models import bundled

    try:
        bundled.onnx_model_path("selfie_segmentation")
    except Exception as exc:  # pragma: no cover - a machine without `muse models import`
        pytest.skip(f"bundled selfie model not imported: {exc}")
    frame = photos["astronaut"]
    low = _opened(monkeypatch, SelfieSegment, {}, "torch").process(frame)["mask"]
    # a recorded plate (a real room, not this one's: the plate difference and its light field run everywhere), or
    # none (the node's own plate, stream_4k's case)
    plate = _frame720(cv2.imread(str(ROOM))[:, :, ::-1]) if with_plate else None
    params = {"trust_jumps": True} if with_plate else {}  # (the jump rule only acts where a plate is known)
    fast = _opened(monkeypatch, FusedSegment, params, "fast")
    plain = _opened(monkeypatch, FusedSegment, params, "fast")
    for i in range(6):
        img = torch.roll(frame.image, shifts=3 * i, dims=1)
        img = (img.float() * (1.0 + 0.04 * i)).clamp(0, 255).to(torch.uint8)
        f = Frame(img, timestamp=i / 30.0, index=i)
        prior = Mask(torch.roll(low.alpha, shifts=i * 3 * 256 // 1280, dims=1))
        a = fast.process(f, prior=prior, plate=plate)
        with monkeypatch.context() as mp:
            mp.setattr(kernels, "available", lambda: False)
            b = plain.process(f, prior=prior, plate=plate)
        for port in ("mask", "confidence", "keep_out"):
            pa, pb = a[port].alpha.numpy(), b[port].alpha.numpy()
            assert pa.shape == pb.shape and np.abs(pa - pb).max() < 1e-3, (i, port, np.abs(pa - pb).max())
        if not with_plate:  # the model's person, carried along
            assert 0.05 < (a["mask"].alpha.numpy() > 0.5).mean() < 0.95


@needs_numba
def test_edge_anti_aliasing_loop_matches_its_numpy_implementation(monkeypatch, photos):
    """edge_aa: the clamp's numba loop and its numpy passes give the same matte; every pixel stays on its side of
    0.5; a flat matte is unchanged (the replicated border fades nothing); the torch path's filter gives the same."""
    from muse.nodes.cpu import edge_aa

    matte = (photos["astronaut"].hwc_uint8().numpy()[..., 0] > 128).astype(np.float32)
    got = edge_aa.antialias(matte.copy(), 1.0, wait=True)  # (in place: the edge pass's own fresh matte)
    with monkeypatch.context() as mp:
        mp.setattr(kernels, "available", lambda: False)
        ref = edge_aa.antialias(matte.copy(), 1.0)
    assert np.abs(got - ref).max() < 1e-6
    assert ((got > 0.5) == (matte > 0.5)).all()
    assert 0.01 < ((got > 0.0) & (got < 1.0)).mean() < 0.5  # the edges were softened
    ones = np.ones((40, 60), np.float32)
    assert (edge_aa.antialias(ones, 1.0) == 1.0).all()
    assert edge_aa.antialias(matte, 0.0) is matte
    from muse.nodes.segment.fused import antialias, antialias_kernel

    ref_torch = antialias(torch.from_numpy(matte)[None, None], antialias_kernel(1.0, "cpu", torch.float32))[0, 0].numpy()
    assert np.abs(got - ref_torch).max() < 1e-6
