"""warp.apply's two twins: torch grid_sample (checked here against a per-pixel transcription of the
CUDA kernel) and the CuPy kernel (checked against torch on the GPU machine, `-m cuda`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visual_scenes as vs
from muse.graph.payloads import Displacement, Frame, Mask
from muse.graph.testing import run_node
from muse.nodes.warp import BodyWarp, FaceWarp, WarpApply, kernels


def _tap(plane: np.ndarray, x: float, y: float) -> float:
    h, w = plane.shape
    x, y = min(max(x, 0.0), w - 1.0), min(max(y, 0.0), h - 1.0)
    x0, y0 = int(np.floor(x)), int(np.floor(y))
    x1, y1 = min(x0 + 1, w - 1), min(y0 + 1, h - 1)
    fx, fy = x - x0, y - y0
    return (plane[y0, x0] * (1 - fx) + plane[y0, x1] * fx) * (1 - fy) + (plane[y1, x0] * (1 - fx) + plane[y1, x1] * fx) * fy


def kernel_reference(src, field, mask=None, plate=None):
    """The CUDA kernel's arithmetic, pixel by pixel, in float64 (slow; small pictures only)."""
    H, W, _ = src.shape
    fh, fw = field.shape[1:]
    out = np.empty_like(src)
    wm = np.zeros((H, W)) if mask is not None else None
    srcf = src.astype(np.float64)
    for y in range(H):
        for x in range(W):
            fx = max((fw / W) * (x + 0.5) - 0.5, 0.0)
            fy = max((fh / H) * (y + 0.5) - 0.5, 0.0)
            dx, dy = _tap(field[0], fx, fy), _tap(field[1], fx, fy)
            if mask is not None:
                mh, mw = mask.shape
                a = _tap(mask, (x + 0.5) * mw / W - 0.5, (y + 0.5) * mh / H - 0.5)
            if dx == 0 and dy == 0:
                out[y, x] = src[y, x]
                if mask is not None:
                    wm[y, x] = a
                continue
            warped = np.array([_tap(srcf[..., c], x + dx, y + dy) for c in range(3)])
            v = warped
            if mask is not None:
                wa = _tap(mask, (x + dx + 0.5) * mw / W - 0.5, (y + dy + 0.5) * mh / H - 0.5)
                wm[y, x] = wa
                bg = srcf[y, x] + min(1.0, 4.0 * a) * (plate[y, x] - srcf[y, x]) if plate is not None else warped
                v = wa * warped + (1 - wa) * bg
            out[y, x] = np.clip(np.rint(v), 0, 255)
    return out, wm


def _case(mask_scale: int = 1):
    frame, plate, mask, kp = vs.body_scene()
    frame, plate, mask = frame[80:160, 30:130].copy(), plate[80:160, 30:130].copy(), mask[80:160, 30:130].copy()
    rng = np.random.default_rng(0)
    field = np.zeros((2, 10, 13), np.float32)
    field[:, 2:8, 3:10] = rng.uniform(-6, 6, (2, 6, 7)).astype(np.float32)  # zero border: the exact-copy path too
    if mask_scale > 1:
        mask = mask[::mask_scale, ::mask_scale].copy()
    return frame, plate, mask, field


@pytest.mark.parametrize("variant", ["plain", "mask", "mask+plate", "lowres mask"])
def test_torch_path_matches_the_kernel_arithmetic(variant):
    frame, plate, mask, field = _case(2 if variant == "lowres mask" else 1)
    m = mask if variant != "plain" else None
    pl = plate if variant in ("mask+plate", "lowres mask") else None
    ref, ref_mask = kernel_reference(frame, field.astype(np.float64), None if m is None else m.astype(np.float64), pl)
    out, wm = kernels.warp_apply_torch(
        torch.from_numpy(frame), torch.from_numpy(field), None if m is None else torch.from_numpy(m), None if pl is None else torch.from_numpy(pl)
    )
    diff = np.abs(out.numpy().astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    still = (np.abs(field).sum(0) == 0).all()  # sanity: the case has moving and still parts
    assert not still and not np.array_equal(out.numpy(), frame)
    if m is not None:
        assert np.abs(wm.numpy() - ref_mask).max() < 1e-4


def test_no_field_passes_the_frame_through(astronaut):
    f = Frame(torch.from_numpy(astronaut))
    m = Mask(torch.ones(512, 512))
    out = run_node(WarpApply, {}, frame=f, mask=m)
    assert out["out"] is f and out["warped_mask"] is m


def test_fields_of_other_sizes_are_combined():
    """A face field on a finer grid and a body field made for a half-size picture add up in full-size pixels."""
    a = Displacement(torch.ones(2, 8, 8), (64, 64))
    b = Displacement(torch.ones(2, 4, 4), (32, 32))
    from muse.nodes.warp.apply import combine_fields

    total = combine_fields([a, b], (64, 64))
    assert total.shape == (2, 8, 8) and torch.allclose(total, torch.full_like(total, 3.0))


def test_cupy_backend_on_cpu_is_a_clear_error():
    from muse.graph.node import NodeError
    from muse.graph.testing import build_node, make_context

    node = build_node(WarpApply, {"backend": "cupy"}, name="warp")
    with pytest.raises(NodeError, match="node 'warp': backend 'cupy' needs a CUDA device"):
        node.open(make_context("warp"))


@pytest.mark.parametrize("path", ["fast", "torch"])
def test_the_warp_never_uncovers_room_the_plate_has_not_seen(path, monkeypatch):
    """Issue 14's no-ghost rule for the reshape: a slimmer waist uncovers the plate where the person was; where
    background.adaptive's coverage says that room was never seen (the plate there is a fill-in guess), the
    person keeps their outline, on the CPU path and the torch reference alike. Where the room was seen, and
    with `unseen_room: reveal`, the waist is slimmed and the plate shows."""
    monkeypatch.setenv("MUSE_CPU_PATH", path)
    frame, plate, mask, kp = vs.body_scene()
    body = run_node(BodyWarp, {"waist": 1.0, "hips": 0.8}, keypoints=kp, mask=Mask(torch.from_numpy(mask)))["field"]
    guess = np.full_like(plate, 255)  # a never-seen plate is a guess: make it unmistakable
    guess[:, : plate.shape[1] // 2] = plate[:, : plate.shape[1] // 2]
    coverage = np.zeros(mask.shape, np.float32)
    coverage[:, : mask.shape[1] // 2] = 1.0  # the room left of the axis was seen, right of it never

    def warp(params: dict, cov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        inputs = dict(frame=Frame(torch.from_numpy(frame), layout="hwc"), body=body, mask=Mask(torch.from_numpy(mask)),
                      plate=Frame(torch.from_numpy(guess), layout="hwc"))
        if cov is not None:
            inputs["coverage"] = Mask(torch.from_numpy(cov))
        out = run_node(WarpApply, params, **inputs)
        return out["out"].hwc_uint8().numpy(), out["warped_mask"].alpha.float().numpy()

    held, held_mask = warp({}, coverage)
    revealed, revealed_mask = warp({"unseen_room": "reveal"}, coverage)
    axis = vs.AXIS_X
    uncovered = (mask > 0.5) & (revealed_mask < 0.5)
    left, right = uncovered[:, :axis], uncovered[:, axis:]
    assert left.sum() > 50 and right.sum() > 50, "the case slims both sides when told to reveal"
    # the never-seen side: nothing of the guess shows where the person was, and the outline stays
    gone_right = (mask[:, axis:] > 0.5) & (held_mask[:, axis:] < 0.5)
    assert gone_right.sum() <= 0.1 * right.sum(), (gone_right.sum(), right.sum())
    white = (held[:, axis:] > 250).all(-1) & (mask[:, axis:] > 0.5)
    assert white.sum() <= 0.1 * right.sum(), white.sum()
    # the seen side is slimmed as before and shows the real room there
    gone_left = (mask[:, :axis] > 0.5) & (held_mask[:, :axis] < 0.5)
    assert gone_left.sum() >= 0.6 * left.sum(), (gone_left.sum(), left.sum())
    room_err = np.abs(held[:, :axis][gone_left].astype(int) - plate[:, :axis][gone_left].astype(int)).mean()
    assert room_err < 12, room_err
    # everything seen: the same slimming as without a coverage input
    full, full_mask = warp({}, np.ones_like(coverage))
    plain, plain_mask = warp({}, None)
    assert np.abs(full_mask - plain_mask).max() < 1e-3 and np.abs(full.astype(int) - plain.astype(int)).max() <= 1


# ---------------------------------------------------------------------------- GPU machine


@pytest.mark.cuda
@pytest.mark.parametrize("mask_dtype", [None, torch.float32, torch.float16])
@pytest.mark.parametrize("with_plate", [False, True])
def test_cupy_kernel_agrees_with_torch(mask_dtype, with_plate):
    pytest.importorskip("cupy")
    frame, plate, mask, kp = vs.body_scene()
    dev = torch.device("cuda")
    m = torch.from_numpy(mask).to(dev, mask_dtype) if mask_dtype is not None else None
    # the field comes from the real node, on the GPU
    field = run_node(BodyWarp, {"waist": 1.0, "hips": 0.8, "shoulders": -0.5}, keypoints=kp.to(dev), mask=Mask(torch.from_numpy(mask).to(dev)), device=dev)["field"].field
    field = field + 0.3 * torch.randn_like(field) * (field != 0)  # sub-pixel offsets everywhere it moves
    src = torch.from_numpy(frame).to(dev)
    pl = torch.from_numpy(plate).to(dev) if with_plate and m is not None else None
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        a, am = kernels.warp_apply_cupy(src, field, m, pl)
        b, bm = kernels.warp_apply_torch(src, field, m, pl)
    stream.synchronize()
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.002, (int(diff.max()), float((diff > 0).float().mean()))
    still = (kernels.upsample_field(field, src.shape[0], src.shape[1]) == 0).all(0)
    assert torch.equal(a[still], src[still])
    if m is not None:
        tol = 2e-3 if mask_dtype == torch.float16 else 1e-4
        assert am.dtype == m.dtype and (am.float() - bm.float()).abs().max() < tol


@pytest.mark.cuda
def test_nodes_on_cuda_match_cpu(astronaut):
    pytest.importorskip("cupy")
    lm = vs.astronaut_landmarks()
    dev = torch.device("cuda")
    fields = {d: run_node(FaceWarp, {"eyes": 1.0, "v_line": 1.0, "slim": 0.5}, landmarks=lm.to(d), device=d)["field"] for d in ("cpu", dev)}
    assert torch.allclose(fields["cpu"].field, fields[dev].field.cpu(), atol=1e-3)
    outs = {}
    for d in ("cpu", dev):
        f = Frame(torch.from_numpy(astronaut).to(d))
        outs[d] = run_node(WarpApply, {}, frame=f, face=fields[d], device=d)["out"].image.cpu()
    diff = (outs["cpu"].int() - outs[dev].int()).abs()
    assert diff.max() <= 1 and not torch.equal(outs["cpu"], torch.from_numpy(astronaut))


def _squeeze_scene():
    """The demo's astronaut with her exact soft alpha over opencv-doc's home.jpg, and a field that slims
    her torso towards its axis (12 % of the distance, strongest at three quarters of the height)."""
    import cv2
    import media
    from muse.nodes.capture.demo import person_cutout

    rgb, alpha = person_cutout()
    h, w = alpha.shape
    room = cv2.resize(media.opencv_sample("home.jpg"), (w, h), interpolation=cv2.INTER_AREA)
    frame = (alpha[..., None] * rgb + (1 - alpha[..., None]) * room + 0.5).astype(np.uint8)
    cell = 8
    ys, xs = np.mgrid[0 : h // cell, 0 : w // cell].astype(np.float32)
    xs, ys = (xs + 0.5) * cell - 0.5, (ys + 0.5) * cell - 0.5
    axis = float((alpha * np.arange(w)[None]).sum() / alpha.sum())
    fx = 0.12 * (xs - axis) * np.clip(1 - np.abs(ys - 0.75 * h) / (0.3 * h), 0, 1) ** 2
    field = np.stack([fx, np.zeros_like(fx)]).astype(np.float32)
    # the truth: her exact layer warped by the same field, over the room
    dx = cv2.resize(fx, (w, h), interpolation=cv2.INTER_LINEAR)
    mx = (np.arange(w)[None] + dx).astype(np.float32)
    my = np.repeat(np.arange(h, dtype=np.float32)[:, None], w, 1)
    aw = cv2.remap(alpha, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    pw = cv2.remap(rgb.astype(np.float32), mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    truth = aw[..., None] * pw + (1 - aw[..., None]) * room
    return frame, room, alpha, field, aw, truth


@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto on the CPU = the OpenCV twin
def test_reshaped_edge_shows_neither_the_old_edge_nor_the_room_inside(backend):
    """Issue 14: the warp must not pull the room through the person's edge. Warp + composite over the plate on
    a real photo with the exact mask, against her exact layer warped and composited: where she was slimmed
    away only the room shows (the old soft edge used to stay half-transparent: 6.5 % of those pixels were
    more than 25 levels off), inside her new outline only she shows, and the room beside her is untouched."""
    from muse.nodes.composite import Composite

    frame, room, alpha, field, aw, truth = _squeeze_scene()
    disp = Displacement(torch.from_numpy(field), (frame.shape[1], frame.shape[0]))
    m = Mask(torch.from_numpy(alpha))
    warped = run_node(WarpApply, {"backend": backend}, frame=Frame(torch.from_numpy(frame)), body=disp, mask=m,
                      plate=Frame(torch.from_numpy(room)))
    # as in stream_4k: the matte's confidence is 0 at its soft edge, where the composite keeps the warp's own picture
    confidence = Mask(torch.from_numpy(np.abs(2 * alpha - 1)))
    out = run_node(Composite, {"background": "plate", "light_wrap": 0.0, "feather": 0.0}, frame=warped["out"],
                   mask=warped["warped_mask"], plate=Frame(torch.from_numpy(room)), confidence=confidence)["out"].image.numpy()
    err = np.abs(out.astype(np.float32) - truth).max(-1)
    uncovered = (aw < 0.02) & (alpha > 0.02)
    inside = aw > 0.98
    assert uncovered.sum() > 2000 and inside.sum() > 50000
    assert (err[uncovered] > 25).mean() < 0.005, (err[uncovered] > 25).mean()
    assert (err[inside] > 25).mean() < 0.002, (err[inside] > 25).mean()
    near_room = (aw < 0.02) & (alpha < 0.02)
    assert (err[near_room] > 25).mean() < 0.001
    assert np.abs(warped["warped_mask"].alpha.numpy() - aw).max() < 0.02  # the mask moved with the picture


def test_unseen_gate_cpu_twin_matches_torch():
    """muse/nodes/cpu/unseen.py (OpenCV) against warp.fields.unseen_gate (torch) on a real person's mask (the
    astronaut's outline from the demo source), an outward-pushing field and half the room seen."""
    from muse.graph.testing import build_node, make_context
    from muse.nodes.capture.demo import Demo
    from muse.nodes.cpu.unseen import unseen_gate_np
    from muse.nodes.warp.fields import unseen_gate

    demo = build_node(Demo, {"width": 1280, "height": 720, "fps": 0})
    demo.open(make_context("demo", "cpu", resolution=(1280, 720)))
    alpha = demo.process()["mask"].alpha.float()
    cx = float((alpha.sum(0) * torch.arange(1280.0)).sum() / alpha.sum())
    gy, gx = torch.meshgrid((torch.arange(90.0) + 0.5) * 8, (torch.arange(160.0) + 0.5) * 8, indexing="ij")
    field = torch.stack([torch.sign(gx - cx) * 14 * torch.exp(-((gy - 500) / 150) ** 2), torch.zeros_like(gx)])
    coverage = torch.zeros(45, 80)
    coverage[:, :40] = 1
    a = unseen_gate(field, alpha, coverage, (1280, 720))
    b = unseen_gate_np(field, alpha, coverage, (1280, 720))
    assert (a < 0.5).sum() > 20, "the case holds some cells"
    assert float((a - b).abs().max()) < 0.02 and torch.equal(a < 0.5, b < 0.5)
