"""A camera frame to a model's small input in two CUDA passes, straight from its uint8 bytes.

The segmenters' input (`frame_batch`, `segment.selfie`) was `frame.chw(dtype)` then an antialiased
bilinear resize: a strided full-size copy to float, a full-size divide, a contiguous copy and the resize
kernel, ~0.25-0.3 ms of GPU per call on a 4K frame, on the frame's critical path (measured on the H200
with `bench/frame_timeline.py`), once for the selfie model and once for the fused matte. `shrink_u8`
gives the same picture (torch's antialiased bilinear weights, see `aa_weights`) from the (H, W, 3)
uint8 frame: a horizontal pass reads each byte once into an (3, H, w) float32 plane, a vertical pass
writes the (1, 3, h, w) result in [0, 1]. Its weights are made on the host once per size (never while a
CUDA graph records); where CuPy or NVRTC is missing, or a recording meets a size not seen before, the
caller's torch ops run instead (`shrink_u8` returns None).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from muse.graph.compiled import GPU_CODE, build_gpu_code
from muse.graph.devices import device_index

log = logging.getLogger("muse.node.segment")

__all__ = ["aa_weights", "shrink_u8"]

_SOURCE = r"""
#ifdef OUT_HALF
typedef unsigned short out_t;
__device__ __forceinline__ out_t f2o(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
#else
typedef float out_t;
__device__ __forceinline__ out_t f2o(float f) { return f; }
#endif

// tmp (3, H, w): each row of the (H, W, 3) uint8 image filtered along x by output column ox's K weights.
extern "C" __global__ void shrink_rows(const unsigned char* __restrict__ img, int W, int H, int w, int K,
                                       const int* __restrict__ x0, const float* __restrict__ wx,
                                       float* __restrict__ tmp)
{
    int ox = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= w || y >= H) return;
    const unsigned char* row = img + ((long long)y * W + x0[ox]) * 3;
    const float* k = wx + (long long)ox * K;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
    for (int j = 0; j < K; ++j) {
        float c = k[j];
        s0 += c * row[j * 3]; s1 += c * row[j * 3 + 1]; s2 += c * row[j * 3 + 2];
    }
    long long plane = (long long)H * w, o = (long long)y * w + ox;
    tmp[o] = s0; tmp[plane + o] = s1; tmp[2 * plane + o] = s2;
}

// out (3, h, w) = tmp filtered along y by output row oy's K weights, / 255.
extern "C" __global__ void shrink_cols(const float* __restrict__ tmp, int H, int w, int h, int K,
                                       const int* __restrict__ y0, const float* __restrict__ wy,
                                       out_t* __restrict__ out)
{
    int ox = blockIdx.x * blockDim.x + threadIdx.x, oy = blockIdx.y * blockDim.y + threadIdx.y;
    if (ox >= w || oy >= h) return;
    const float* k = wy + (long long)oy * K;
    long long plane = (long long)H * w;
    const float* col = tmp + (long long)y0[oy] * w + ox;
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
    for (int i = 0; i < K; ++i) {
        float c = k[i];
        const float* p = col + (long long)i * w;
        s0 += c * p[0]; s1 += c * p[plane]; s2 += c * p[2 * plane];
    }
    long long oplane = (long long)h * w, o = (long long)oy * w + ox;
    const float inv = 1.f / 255.f;
    out[o] = f2o(s0 * inv); out[oplane + o] = f2o(s1 * inv); out[2 * oplane + o] = f2o(s2 * inv);
}
"""

_FUNCTIONS: dict[tuple[int, bool], tuple[Any, Any]] = {}
_WEIGHTS: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, int]] = {}
_BROKEN: list[str] = []
_MADE: dict[tuple[int, bool, int, int, int, int], bool] = {}  # (device, half, width, w, height, h) ready


def aa_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """torch's antialiased bilinear resize along one axis (align_corners=False), as each output's first input
    index (out_size,) int32 and its weights (out_size, K) float32, zero-padded to the widest support K; the
    first index is moved left where needed so every output reads K inputs inside [0, in_size)."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0  # bilinear: half its two-tap width, stretched when shrinking
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    starts, rows = [], []
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = (np.arange(lo, hi, dtype=np.float64) - center + 0.5) * invscale
        wts = np.clip(1.0 - np.abs(x), 0.0, None)
        total = wts.sum()
        starts.append(lo)
        rows.append(wts / total if total != 0 else wts)
    k = max(len(r) for r in rows)
    first = np.zeros(out_size, np.int32)
    weights = np.zeros((out_size, k), np.float32)
    for i, (lo, wts) in enumerate(zip(starts, rows)):
        start = min(lo, in_size - k)  # a support cut by the edge: read K in-range inputs, the extra ones weigh 0
        first[i] = start
        weights[i, lo - start : lo - start + len(wts)] = wts
    return first, weights


def _functions(device: torch.device, half: bool) -> tuple[Any, Any]:
    import cupy

    index = device_index(device)
    key = (index, half)
    fns = _FUNCTIONS.get(key)
    if fns is None:
        options = ("--std=c++14",) + (("-DOUT_HALF",) if half else ())
        with GPU_CODE, cupy.cuda.Device(index):  # (the caller holds it already: re-entrant)
            mod = cupy.RawModule(code=_SOURCE, options=options)
            fns = _FUNCTIONS[key] = (mod.get_function("shrink_rows"), mod.get_function("shrink_cols"))
    return fns


def _axis(device: torch.device, in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    key = (device_index(device), in_size, out_size)
    got = _WEIGHTS.get(key)
    if got is None:
        first, weights = aa_weights(in_size, out_size)
        got = _WEIGHTS[key] = (torch.from_numpy(first).to(device), torch.from_numpy(weights).to(device), int(weights.shape[1]))
    return got


def _ready(image: torch.Tensor, size: tuple[int, int], half: bool) -> bool:
    """Whether the kernels and this size's weights exist, or can be made now (never inside a recording)."""
    if _BROKEN:
        return False
    index = device_index(image.device)
    (w, h), (height, width) = size, image.shape[:2]
    known = (index, half) in _FUNCTIONS and (index, int(width), w) in _WEIGHTS and (index, int(height), h) in _WEIGHTS
    if known:
        return True

    def make() -> bool:  # the kernels, and this size's weights (uploaded: not inside a recording either)
        _functions(image.device, half)
        _axis(image.device, int(width), w)
        _axis(image.device, int(height), h)
        return True

    # torch's ops this call when it cannot be made now; built on a later one
    return build_gpu_code(_MADE, (index, half, int(width), w, int(height), h), make, _BROKEN, log,
                          "frame shrink kernel unavailable ({exc}): models' inputs are resized by torch ops") is not None


def shrink_u8(image: torch.Tensor, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor | None:
    """A CUDA (H, W, 3) uint8 picture as (1, 3, h, w) `dtype` (float32 / float16) in [0, 1], size=(w, h),
    as torch's `F.interpolate(chw / 255, antialias=True, mode="bilinear")` makes it; None where these kernels
    cannot run (the caller's torch ops then)."""
    if (not image.is_cuda or image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3
            or dtype not in (torch.float32, torch.float16) or not image.is_contiguous()):
        return None
    half = dtype == torch.float16
    if not _ready(image, size, half):
        return None
    import cupy

    (w, h), (height, width) = size, (int(image.shape[0]), int(image.shape[1]))
    if height * width * 3 >= 2**31:
        return None
    x0, wx, kx = _axis(image.device, width, w)
    y0, wy, ky = _axis(image.device, height, h)
    tmp = torch.empty((3, height, w), dtype=torch.float32, device=image.device)
    out = torch.empty((1, 3, h, w), dtype=dtype, device=image.device)
    rows, cols = _functions(image.device, half)
    i32, u64 = np.int32, np.uint64
    block = (32, 8, 1)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(image.device).cuda_stream)
    with stream:
        rows((math.ceil(w / 32), math.ceil(height / 8), 1), block,
             (u64(image.data_ptr()), i32(width), i32(height), i32(w), i32(kx), u64(x0.data_ptr()), u64(wx.data_ptr()),
              u64(tmp.data_ptr())))
        cols((math.ceil(w / 32), math.ceil(h / 8), 1), block,
             (u64(tmp.data_ptr()), i32(height), i32(w), i32(h), i32(ky), u64(y0.data_ptr()), u64(wy.data_ptr()),
              u64(out.data_ptr())))
    return out
