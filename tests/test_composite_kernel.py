"""composite.over's final pass: torch twin vs a per-pixel transcription of the CUDA kernel (CPU),
and CuPy kernel vs torch on the GPU machine (`-m cuda`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import visual_scenes as vs
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import run_node
from muse.nodes.composite import Composite
from muse.nodes.warp import kernels
from test_warp_apply import _tap


def _dec(v: float) -> float:
    v = v / 255.0
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _enc(x: float) -> int:
    x = min(max(x, 0.0), 1.0)
    v = x * 12.92 if x <= 0.0031308 else 1.055 * x ** (1 / 2.4) - 0.055
    return int(min(max(np.rint(v * 255.0), 0), 255))


def kernel_reference(fg, alpha, bg, colour, wrap, inside, soft):
    H, W, _ = fg.shape
    out = np.empty_like(fg)
    ah, aw = alpha.shape
    for y in range(H):
        for x in range(W):
            a = min(max(_tap(alpha, (x + 0.5) * aw / W - 0.5, (y + 0.5) * ah / H - 0.5), 0.0), 1.0)
            if wrap > 0:
                ih, iw = inside.shape
                ix, iy = (x + 0.5) * iw / W - 0.5, (y + 0.5) * ih / H - 0.5
                w = wrap * a * (1 - _tap(inside, ix, iy))
            for c in range(3):
                f = _dec(float(fg[y, x, c]))
                if wrap > 0:
                    f = f + w * (_tap(soft[c], ix, iy) - f)
                if bg is None:
                    b = colour[c]
                elif bg.dtype == np.uint8:
                    b = _dec(float(bg[y, x, c]))
                else:
                    bh, bw = bg.shape[1:]
                    b = _tap(bg[c], (x + 0.5) * bw / W - 0.5, (y + 0.5) * bh / H - 0.5)
                out[y, x, c] = _enc(a * f + (1 - a) * b)
    return out


def _case():
    frame, plate, mask, _ = vs.body_scene()
    sl = (slice(100, 130), slice(40, 80))
    fg, plate, mask = frame[sl].copy(), plate[sl].copy(), mask[sl].copy()
    rng = np.random.default_rng(1)
    alpha = np.clip(mask[::2, ::2] * 0.8 + rng.uniform(0, 0.2, mask[::2, ::2].shape), 0, 1).astype(np.float32)
    low_bg = rng.uniform(0, 1, (3, 6, 8)).astype(np.float32)
    inside = rng.uniform(0, 1, (5, 7)).astype(np.float32)
    soft = rng.uniform(0, 1, (3, 5, 7)).astype(np.float32)
    return fg, plate, alpha, low_bg, inside, soft


@pytest.mark.parametrize("bg_kind", ["colour", "uint8", "lowres"])
@pytest.mark.parametrize("wrap", [0.0, 0.6])
def test_torch_twin_matches_the_kernel_arithmetic(bg_kind, wrap):
    fg, plate, alpha, low_bg, inside, soft = _case()
    bg = {"colour": None, "uint8": plate, "lowres": low_bg}[bg_kind]
    colour = (0.1, 0.7, 0.2)
    ref = kernel_reference(fg, alpha.astype(np.float64), bg, colour, wrap, inside.astype(np.float64), soft.astype(np.float64))
    t = lambda a: None if a is None else torch.from_numpy(a)
    out = kernels.composite_over_torch(t(fg), t(alpha), t(bg), colour, wrap, t(inside), t(soft)).numpy()
    diff = np.abs(out.astype(int) - ref.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def test_known_plane_mixes_the_live_frame_into_the_plate():
    """Where the plate is not known the background is the live frame, mixed per pixel in 8-bit values."""
    fg, plate, alpha, _, _, _ = _case()
    h, w = fg.shape[:2]
    known = np.zeros((4, 6), np.float32)
    known[:, 3:] = 1.0
    t = torch.from_numpy
    zero = np.zeros_like(alpha)  # all background: the output is the mixed background itself
    out = kernels.composite_over_torch(t(fg), t(zero), t(plate), known=t(known)).numpy().astype(int)
    k = torch.nn.functional.interpolate(t(known)[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    expect = np.rint(fg + k[..., None] * (plate.astype(np.float64) - fg)).astype(int)
    assert np.abs(out - expect).max() <= 1
    assert np.abs(out[:, : w // 4] - fg[:, : w // 4].astype(int)).max() <= 1  # unknown: the live frame
    assert np.abs(out[:, -w // 4 :] - plate[:, -w // 4 :].astype(int)).max() <= 1  # known: the plate


def test_every_byte_survives_decode_then_encode():
    """The CUDA composite writes a solid person's or room's byte as it is (no pow per channel): that is exact
    because encoding a decoded level gives the level back, for all 256."""
    levels = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(kernels.encode_uint8(kernels.decode_uint8(levels)), levels)


@pytest.mark.cuda
@pytest.mark.parametrize("wrap", [0.4, 0.0])
@pytest.mark.parametrize("bg_kind", ["colour", "uint8", "lowres", "uint8_known"])
@pytest.mark.parametrize("alpha_dtype", [torch.float32, torch.float16])
def test_cupy_composite_agrees_with_torch(bg_kind, alpha_dtype, wrap):
    pytest.importorskip("cupy")
    frame, plate, mask, _ = vs.body_scene()
    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    fg = torch.from_numpy(frame).to(dev)
    alpha = torch.from_numpy(mask).to(dev, alpha_dtype)
    bg = {"colour": None, "uint8": torch.from_numpy(plate).to(dev), "uint8_known": torch.from_numpy(plate).to(dev),
          "lowres": torch.rand(3, 30, 20, generator=g).to(dev)}[bg_kind]
    known = torch.rand(45, 30, generator=g).to(dev) if bg_kind == "uint8_known" else None
    inside = torch.rand(60, 40, generator=g).to(dev)
    soft = torch.rand(3, 60, 40, generator=g).to(dev)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        a = kernels.composite_over_cupy(fg, alpha, bg, (0.0, 1.0, 0.0), wrap, inside, soft, known)
        b = kernels.composite_over_torch(fg, alpha, bg, (0.0, 1.0, 0.0), wrap, inside, soft, known)
    stream.synchronize()
    diff = (a.int() - b.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.002


@pytest.mark.cuda
@pytest.mark.parametrize("background", ["colour", "plate", "blur"])
def test_composite_node_cuda_matches_cpu(background, monkeypatch):
    pytest.importorskip("cupy")
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")  # the same code on the CPU (not the OpenCV CPU path): GPU precision only
    frame, plate, mask, _ = vs.body_scene()
    outs = {}
    for d in ("cpu", "cuda"):
        inputs = dict(frame=Frame(torch.from_numpy(frame).to(d)), mask=Mask(torch.from_numpy(mask).to(d)), plate=Frame(torch.from_numpy(plate).to(d)))
        outs[d] = run_node(Composite, {"background": background}, device=d, **inputs)["out"].image.cpu()
    diff = (outs["cpu"].int() - outs["cuda"].int()).abs()
    assert diff.max() <= 2, int(diff.max())


@pytest.mark.cuda
@pytest.mark.parametrize("size", [(1080, 1920), (61, 83)])
def test_cupy_gaussian_blur_matches_torch_convolution(size):
    """The feather/wrap blurs on the GPU: the CuPy separable kernel equals the reflected depthwise convolution."""
    pytest.importorskip("cupy")
    import torch.nn.functional as F

    from muse.nodes.composite import _blur_taps

    frame, _, mask, _ = vs.body_scene()
    plane = F.interpolate(torch.from_numpy(mask)[None, None].float(), size=size, mode="bilinear")[0].cuda()
    img = torch.cat((plane, plane.flip(-1), plane.flip(-2)))  # 3 channels, each different
    sigma, radius = 1.62, 5
    taps = _blur_taps(sigma, radius, img.device)
    out = kernels.gaussian_blur_cupy(img, taps)
    k = taps.view(1, 1, 1, -1).expand(3, 1, 1, -1)
    ref = F.conv2d(F.pad(img[None], (radius, radius, 0, 0), mode="reflect"), k, groups=3)
    ref = F.conv2d(F.pad(ref, (0, 0, radius, radius), mode="reflect"), taps.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)[0]
    assert float((out - ref).abs().max()) < 1e-5
