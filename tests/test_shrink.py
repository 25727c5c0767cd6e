"""The models' small input straight from the camera's uint8 bytes (muse/nodes/segment/shrink.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse.graph.payloads import Frame
from muse.nodes.segment._prep import frame_batch
from muse.nodes.segment.shrink import aa_weights, shrink_u8


def _torch_resize(img: np.ndarray | torch.Tensor, h: int, w: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    t = torch.as_tensor(img).permute(2, 0, 1)[None].to(dtype) / 255.0
    return F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("shape", [(512, 512, 144, 256), (512, 512, 300, 170), (512, 512, 512, 512), (40, 60, 90, 100)])
def test_weights_are_torchs_antialiased_bilinear(astronaut, shape):
    """Applied as the two CUDA passes apply them (rows, then columns), the weights give torch's resize of a real
    photo: shrinking, the same size, growing."""
    height, width, h, w = shape
    img = astronaut[:height, :width]
    x0, wx = aa_weights(width, w)
    y0, wy = aa_weights(height, h)
    assert x0.min() >= 0 and (x0 + wx.shape[1]).max() <= width  # every tap inside the row
    assert np.allclose(wx.sum(1), 1.0, atol=1e-5) and np.allclose(wy.sum(1), 1.0, atol=1e-5)
    cols = img[:, x0[:, None] + np.arange(wx.shape[1]), :].astype(np.float64)  # (H, w, K, 3)
    rows = np.einsum("ok,yokc->cyo", wx.astype(np.float64), cols)
    out = np.einsum("ok,cokx->cox", wy.astype(np.float64), rows[:, y0[:, None] + np.arange(wy.shape[1]), :]) / 255.0
    ref = _torch_resize(img, h, w)[0].numpy()
    assert np.abs(out - ref).max() < 1e-6


def test_shrink_is_none_off_cuda(astronaut):
    """On the CPU (or for anything but a contiguous HWC uint8 picture) the callers' torch ops run."""
    assert shrink_u8(torch.from_numpy(astronaut), (64, 64), torch.float32) is None


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_shrink_matches_torch_on_the_gpu(astronaut, dtype):
    """A 4K frame made of the astronaut (resized up, then shrunk to the selfie model's 256 x 144 and the matte's
    512 x 288) and the photo itself: what torch's ops made, within float rounding."""
    import cv2

    big = torch.from_numpy(cv2.resize(astronaut, (3840, 2160), interpolation=cv2.INTER_CUBIC)).cuda()
    small = torch.from_numpy(astronaut).cuda()
    for img, (w, h) in ((big, (256, 144)), (big, (512, 288)), (small, (200, 120)), (small, (700, 600))):
        got = shrink_u8(img, (w, h), dtype)
        assert got is not None and got.dtype == dtype and tuple(got.shape) == (1, 3, h, w)
        ref = _torch_resize(img, h, w, torch.float32)
        tol = 1e-5 if dtype == torch.float32 else 2e-3
        assert float((got.float() - ref).abs().max()) < tol


@pytest.mark.cuda
def test_frame_batch_on_the_gpu_takes_the_kernel_and_agrees(astronaut):
    frame = Frame(torch.from_numpy(astronaut).cuda())
    x = frame_batch(frame, (160, 90), torch.float32)
    ref = _torch_resize(frame.image, 90, 160, torch.float32)
    assert tuple(x.shape) == (1, 3, 90, 160) and float((x - ref).abs().max()) < 1e-5
    assert torch.equal(frame_batch(frame, (512, 512), torch.float32), frame.chw(torch.float32)[None])  # no resize


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_edge_kernel_is_the_torch_antialias(dtype, sigma):
    """The matte's final anti-aliasing in two CUDA passes (edge_kernel.py) against the torch steps it replaces, on
    the demo's real soft silhouette at 4K sharpened as the edge step makes it (a person cut by the bottom edge)."""
    from muse.nodes.capture.demo import Demo
    from muse.graph.testing import build_node, make_context
    from muse.nodes.segment import fused
    from muse.nodes.segment.edge_kernel import antialias_cuda

    node = build_node(Demo, {"width": 3840, "height": 2160, "fps": 30, "start": 40})
    node.open(make_context("demo", "cuda"))
    try:
        _, alpha = node.render(40)
    finally:
        node.close()
    matte = ((alpha.float() - 0.5) * 3.0 + 0.5).clamp(0, 1).to(dtype)[None, None].contiguous()
    taps = fused.antialias_kernel(sigma, "cuda", dtype)
    got = antialias_cuda(matte, taps, fused.KEEP_IN)
    assert got is not None and got.dtype == dtype and got.shape == matte.shape
    r = (taps.numel() - 1) // 2
    x = F.conv2d(F.pad(matte, (r, r, 0, 0), mode="replicate"), taps.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), taps.view(1, 1, -1, 1))
    ref = torch.where(matte > 0.5, x.clamp_min(fused.KEEP_IN), x.clamp_max(0.5))
    assert float((got.float() - ref.float()).abs().max()) < (2e-3 if dtype == torch.float16 else 1e-5)
    assert torch.equal(got > 0.5, matte > 0.5)  # the outline stays where it was
    assert torch.equal(fused.antialias(matte, taps), got)  # the node's path takes the kernel
