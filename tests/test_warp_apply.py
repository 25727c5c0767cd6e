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
                bg = srcf[y, x] + a * (plate[y, x] - srcf[y, x]) if plate is not None else warped
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
