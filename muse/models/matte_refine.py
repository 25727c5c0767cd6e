"""Mask refinement maths without weights: fast guided upsampling and motion-adaptive temporal smoothing.

Torch (no graph imports; CuPy lazily, for one full-resolution kernel) so `segment.refine`,
the hybrid node and `bench/` share one implementation. Shapes are NCHW; the low-resolution work runs in fp32.
"""

from __future__ import annotations

from typing import Any

import torch
from muse.graph.capture import device_constant
from muse.models.cuda_tap import TAP_F32
import torch.nn.functional as F

LUMA = (0.299, 0.587, 0.114)


def box_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Mean over a (2r+1)^2 window; borders average only the pixels inside the image."""
    if r <= 0:
        return x
    return F.avg_pool2d(x, 2 * r + 1, stride=1, padding=r, count_include_pad=False)


def to_gray(rgb: torch.Tensor) -> torch.Tensor:
    dtype = rgb.dtype if rgb.is_floating_point() else torch.float32  # uint8 pictures: weights stay fractional
    w = device_constant(list(LUMA), rgb.device, dtype).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def downsample(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-style downsampling to (h, w); antialiased so the small guide matches what the big one averages to."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)


def symmetric_adjugate3(s_rr: Any, s_rg: Any, s_rb: Any, s_gg: Any, s_gb: Any, s_bb: Any) -> tuple[Any, ...]:
    """The adjugate of a symmetric 3x3 matrix per element (torch tensors or numpy arrays alike) and its
    determinant: (i_rr, i_rg, i_rb, i_gg, i_gb, i_bb, det); the inverse is adjugate / det. One formula for
    the GPU path's guided filter and its CPU twin (muse.nodes.cpu.refine), so both round the same way."""
    i_rr = s_gg * s_bb - s_gb * s_gb
    i_rg = s_gb * s_rb - s_rg * s_bb
    i_rb = s_rg * s_gb - s_gg * s_rb
    i_gg = s_rr * s_bb - s_rb * s_rb
    i_gb = s_rb * s_rg - s_rr * s_gb
    i_bb = s_rr * s_gg - s_rg * s_rg
    return i_rr, i_rg, i_rb, i_gg, i_gb, i_bb, s_rr * i_rr + s_rg * i_rg + s_rb * i_rb


def guided_coefficients(mask: torch.Tensor, guide: torch.Tensor, radius: int, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Linear model `mask ~ A . guide + b` per window (He et al.), at the mask's resolution.

    mask (B,1,h,w), guide (B,C,h,w) with C = 1 or 3; returns A (B,C,h,w) and b (B,1,h,w), box-averaged.
    All window means come from one pooling call (13 channels for a colour guide): fewer, larger kernels."""
    p = mask.float()
    g = guide.float()
    c = g.shape[1]
    pairs = [(i, j) for i in range(c) for j in range(i, c)]
    stack = torch.cat([p, g, g * p] + [g[:, i : i + 1] * g[:, j : j + 1] for i, j in pairs], 1)
    means = box_filter(stack, radius)
    mean_p, mean_g = means[:, :1], means[:, 1 : 1 + c]
    cov = means[:, 1 + c : 1 + 2 * c] - mean_g * mean_p
    sig = {pair: means[:, 1 + 2 * c + k : 2 + 2 * c + k] - mean_g[:, pair[0] : pair[0] + 1] * mean_g[:, pair[1] : pair[1] + 1]
           for k, pair in enumerate(pairs)}
    if c == 1:
        a = cov / (sig[(0, 0)] + eps)
    else:
        # Covariance of the colour guide per window, regularised; solved with a 3x3 adjugate (no batched solver).
        s_rr, s_rg, s_rb = sig[(0, 0)] + eps, sig[(0, 1)], sig[(0, 2)]
        s_gg, s_gb, s_bb = sig[(1, 1)] + eps, sig[(1, 2)], sig[(2, 2)] + eps
        i_rr, i_rg, i_rb, i_gg, i_gb, i_bb, det = symmetric_adjugate3(s_rr, s_rg, s_rb, s_gg, s_gb, s_bb)
        c_r, c_g, c_b = cov[:, 0:1], cov[:, 1:2], cov[:, 2:3]
        a = torch.cat((
            i_rr * c_r + i_rg * c_g + i_rb * c_b,
            i_rg * c_r + i_gg * c_g + i_gb * c_b,
            i_rb * c_r + i_gb * c_g + i_bb * c_b,
        ), 1) / det
    b = mean_p - (a * mean_g).sum(1, keepdim=True)
    ab = box_filter(torch.cat((a, b), 1), radius)
    return ab[:, :c], ab[:, c:]


def fast_guided_upsample(
    mask: torch.Tensor, guide_full: torch.Tensor, *, radius: int = 1, eps: float = 1e-4,
    colour: bool = True, guide_small: torch.Tensor | None = None, full_scale: float = 1.0,
    out_dtype: torch.dtype | None = None, sharpness: float = 1.0, offset: float = 0.0,
) -> torch.Tensor:
    """Upsample a low-res mask (B,1,h,w) to the guide's full size (B,3,H,W) following its edges.

    Fast guided filter (He & Sun 2015): coefficients at low resolution, applied at full resolution.
    `guide_full * full_scale` must be in [0,1]: pass a uint8 picture with full_scale=1/255 to skip
    converting the full frame to float. Returns (B,1,H,W) in [0,1] in `out_dtype` (default: the guide's
    float dtype, float32 for uint8), after the contrast curve clamp((v - 0.5 - offset) * sharpness + 0.5).
    On a CUDA uint8 picture (a channels-last view of its bytes) the full-resolution step is one CuPy kernel
    (`guided_apply_cupy`); about ten full-resolution torch passes otherwise."""
    h, w = mask.shape[-2:]
    if guide_small is None:
        guide_small = downsample(guide_full.float() * full_scale, (h, w))
    small = guide_small if colour else to_gray(guide_small)
    a, b = guided_coefficients(mask, small, radius, eps)
    return guided_apply(a, b, guide_full, colour=colour, full_scale=full_scale, out_dtype=out_dtype,
                        sharpness=sharpness, offset=offset)


def guided_apply(a: torch.Tensor, b: torch.Tensor, guide_full: torch.Tensor, *, colour: bool = True,
                 full_scale: float = 1.0, out_dtype: torch.dtype | None = None, sharpness: float = 1.0,
                 offset: float = 0.0) -> torch.Tensor:
    """The full-resolution half of `fast_guided_upsample`: A . I + b with A, b (from `guided_coefficients`)
    upsampled to the guide's size, then the contrast curve."""
    if out_dtype is None:
        out_dtype = guide_full.dtype if guide_full.is_floating_point() else torch.float32
    if colour and _raw_hwc(guide_full) and _cupy():
        # A uint8 picture on the GPU: A . I + b (and the contrast curve) in one pass over its bytes.
        return guided_apply_cupy(a, b, guide_full, full_scale, sharpness, offset, out_dtype)
    big = guide_full if colour else to_gray(guide_full)
    size = tuple(guide_full.shape[-2:])
    # One upsampling call for A and b together (A pre-scaled for the guide's range); then A . I + b at
    # full resolution, in fp32: at sharp edges |A| reaches tens and b nearly cancels A . I, which fp16
    # would quantise visibly.
    up = F.interpolate(torch.cat((a * full_scale, b), 1), size=size, mode="bilinear", align_corners=False)
    c = a.shape[1]
    out = (up[:, :c] * big).sum(1, keepdim=True).add_(up[:, c:]).clamp_(0.0, 1.0)
    if sharpness != 1.0 or offset != 0.0:
        out = ((out - 0.5 - offset) * sharpness + 0.5).clamp_(0.0, 1.0)
    return out.to(out_dtype)


def _raw_hwc(image: torch.Tensor) -> bool:
    """A (1, 3, H, W) channels-last view of an (H, W, 3) uint8 picture on a CUDA device."""
    return (image.is_cuda and image.dtype == torch.uint8 and image.dim() == 4 and image.shape[0] == 1
            and image.shape[1] == 3 and image.permute(0, 2, 3, 1).is_contiguous())


def _cupy() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


_APPLY_SOURCE = TAP_F32 + r"""
// out = contrast(clamp(A . I * scale + b)); A (3, h, w) and b (h, w) bilinear on cell centres.
extern "C" __global__ void guided_apply(const unsigned char* __restrict__ img, int W, int H,
                                        const float* __restrict__ ab, int w, int h, float scale,
                                        float sharp, float offset, OUT_T* __restrict__ out)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    float sx = (x + 0.5f) * ((float)w / W) - 0.5f, sy = (y + 0.5f) * ((float)h / H) - 0.5f;
    long long o = ((long long)y * W + x) * 3;
    int n = w * h;
    float v = tap(ab + 3 * n, w, h, sx, sy);
    #pragma unroll
    for (int c = 0; c < 3; ++c) v += tap(ab + c * n, w, h, sx, sy) * scale * (float)img[o + c];
    v = fminf(fmaxf(v, 0.f), 1.f);
    if (sharp != 1.f || offset != 0.f) v = fminf(fmaxf((v - 0.5f - offset) * sharp + 0.5f, 0.f), 1.f);
    out[(long long)y * W + x] = STORE(v);
}
"""
_APPLY_MODULES: dict[torch.dtype, Any] = {}


def guided_apply_cupy(a: torch.Tensor, b: torch.Tensor, image: torch.Tensor, scale: float, sharpness: float,
                      offset: float, out_dtype: torch.dtype) -> torch.Tensor:
    """The full-resolution step of `fast_guided_upsample` as one CUDA kernel on an (H, W, 3) uint8 picture
    (given as its (1, 3, H, W) view): A and b sampled bilinearly, A . I + b, clamp, the contrast curve."""
    import cupy
    import numpy as np

    half = out_dtype == torch.float16
    if not half:
        out_dtype = torch.float32
    mod = _APPLY_MODULES.get(out_dtype)
    if mod is None:
        defs = ("-DOUT_T=__half", "-DSTORE=__float2half") if half else ("-DOUT_T=float", "-DSTORE=")
        code = ("#include <cuda_fp16.h>\n" if half else "") + _APPLY_SOURCE
        mod = _APPLY_MODULES[out_dtype] = cupy.RawModule(code=code, options=("--std=c++14",) + defs)
    height, width = int(image.shape[2]), int(image.shape[3])
    h, w = int(a.shape[2]), int(a.shape[3])
    ab = torch.cat((a[0], b[0]), 0).float().contiguous()
    out = torch.empty((1, 1, height, width), dtype=out_dtype, device=image.device)
    hwc = image[0].permute(1, 2, 0)  # the picture's own bytes
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(image.device).cuda_stream)
    block = (32, 8, 1)
    grid = ((width + 31) // 32, (height + 7) // 8, 1)
    with stream:
        mod.get_function("guided_apply")(grid, block, (
            cupy.from_dlpack(hwc), np.int32(width), np.int32(height), cupy.from_dlpack(ab), np.int32(w), np.int32(h),
            np.float32(scale), np.float32(sharpness), np.float32(offset), cupy.from_dlpack(out)))
    return out


class TemporalStabilizer:
    """Motion-adaptive EMA of a mask: heavy smoothing where nothing moves, none where something does.

    Motion is the frame-to-frame change of the guide picture (dilated a little, so an
    edge's neighbourhood counts) or a large jump of the mask itself. Static camera
    noise flickers the mask's edge; real motion changes the picture, so it passes through at once.
    """

    def __init__(self, stability: float = 0.7, motion_threshold: float = 0.04, mask_jump: float = 0.5) -> None:
        self.stability = stability  # weight of the past on still pixels
        self.motion_threshold = motion_threshold  # mean RGB change (0..1) counted as full motion
        self.mask_jump = mask_jump  # a mask change this big is trusted at once (someone walks in)
        self.reset()

    def reset(self) -> None:
        self._state: torch.Tensor | None = None
        self._prev_guide: torch.Tensor | None = None

    def __call__(self, mask: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """mask (B,1,h,w), guide (B,C,h,w) at the same size, both on one device; returns the smoothed mask (fp32)."""
        m = mask.float()
        g = guide.float()
        if self._state is None or self._state.shape != m.shape or self._prev_guide is None or self._prev_guide.shape != g.shape:
            # Buffers owned here and updated in place from now on (a recorded frame replays into them).
            self._state, self._prev_guide = m.clone(), g.clone()
            return m
        frame_motion = (g - self._prev_guide).abs().mean(1, keepdim=True)
        frame_motion = F.max_pool2d(frame_motion, 3, stride=1, padding=1) / self.motion_threshold
        # Small mask changes are noise; from a third of mask_jump on they count, fully at mask_jump.
        lo = self.mask_jump / 3.0
        mask_motion = ((m - self._state).abs() - lo) / max(1e-6, self.mask_jump - lo)
        motion = torch.maximum(frame_motion, mask_motion).clamp_(0.0, 1.0)
        k = (1.0 - self.stability) + self.stability * motion
        out = self._state + k * (m - self._state)
        self._state.copy_(out)
        self._prev_guide.copy_(g)
        return out
