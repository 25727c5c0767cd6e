"""The matte's final anti-aliasing (`fused.antialias`) on CUDA in two passes instead of six torch steps.

In torch it is a replicate pad, a 1 x n convolution, a second pad, an n x 1 convolution, two clamps and a
`where`, each over the full 4K matte: ~0.3 ms of GPU a frame on the frame's critical path (the H200
timeline, `bench/frame_timeline.py`: the pads copy the whole matte and cuDNN's grouped direct convolution
takes 76-107 us a pass). Here a row pass writes the x-filtered matte (rounded to the matte's dtype, as the
convolution's output is) and a column pass filters it along y, keeps every pixel on its side of 0.5 and
writes the result: the same numbers up to the order of the taps' sums. Borders are clamped reads, which is
what the replicate pad gave.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from muse.graph.compiled import build_gpu_code
from muse.graph.devices import device_index
from muse.models.cuda_tap import MASK_T

log = logging.getLogger("muse.node.segment")

__all__ = ["antialias_cuda"]

_SOURCE = MASK_T + r"""
extern "C" __global__ void aa_rows(const mask_t* __restrict__ m, mask_t* __restrict__ tmp, int W, int H,
                                   const mask_t* __restrict__ taps, int r)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    const mask_t* row = m + (long long)y * W;
    float s = 0.f;
    for (int j = -r; j <= r; ++j) s += m2f(taps[j + r]) * m2f(row[min(max(x + j, 0), W - 1)]);
    tmp[(long long)y * W + x] = f2m(s);
}

extern "C" __global__ void aa_cols(const mask_t* __restrict__ tmp, const mask_t* __restrict__ m,
                                   mask_t* __restrict__ out, int W, int H, const mask_t* __restrict__ taps, int r,
                                   float keep_in)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    float s = 0.f;
    for (int i = -r; i <= r; ++i) s += m2f(taps[i + r]) * m2f(tmp[(long long)min(max(y + i, 0), H - 1) * W + x]);
    float v = m2f(f2m(s));  // the convolution's output, in the matte's dtype
    long long o = (long long)y * W + x;
    out[o] = f2m(m2f(m[o]) > 0.5f ? fmaxf(v, keep_in) : fminf(v, 0.5f));
}
"""

_FUNCTIONS: dict[tuple[int, bool], tuple[Any, Any]] = {}
_BROKEN: list[str] = []


def _functions(device: torch.device, half: bool) -> tuple[Any, Any] | None:
    index = device_index(device)

    def make() -> tuple[Any, Any]:
        import cupy

        options = ("--std=c++14",) + (("-DMASK_HALF",) if half else ())
        with cupy.cuda.Device(index):
            mod = cupy.RawModule(code=_SOURCE, options=options)
            return mod.get_function("aa_rows"), mod.get_function("aa_cols")

    return build_gpu_code(_FUNCTIONS, (index, half), make, _BROKEN, log,
                          "matte edge kernel unavailable ({exc}): the edge is anti-aliased by torch ops")


def antialias_cuda(matte: torch.Tensor, taps: torch.Tensor, keep_in: float) -> torch.Tensor | None:
    """`fused.antialias(matte, taps)` for a contiguous (1, 1, H, W) float16/float32 CUDA matte and taps of its
    dtype; None where the kernels cannot run (the torch steps then)."""
    if (not matte.is_cuda or matte.dtype not in (torch.float16, torch.float32) or taps.dtype != matte.dtype
            or matte.dim() != 4 or matte.shape[:2] != (1, 1) or not matte.is_contiguous() or not taps.is_contiguous()):
        return None
    fns = _functions(matte.device, matte.dtype == torch.float16)
    if fns is None:
        return None
    import cupy

    height, width = int(matte.shape[2]), int(matte.shape[3])
    r = (taps.numel() - 1) // 2
    tmp = torch.empty_like(matte)
    out = torch.empty_like(matte)
    i32, u64 = np.int32, np.uint64
    block = (64, 4, 1)
    grid = ((width + 63) // 64, (height + 3) // 4, 1)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(matte.device).cuda_stream)
    with stream:
        fns[0](grid, block, (u64(matte.data_ptr()), u64(tmp.data_ptr()), i32(width), i32(height), u64(taps.data_ptr()), i32(r)))
        fns[1](grid, block, (u64(tmp.data_ptr()), u64(matte.data_ptr()), u64(out.data_ptr()), i32(width), i32(height),
                             u64(taps.data_ptr()), i32(r), np.float32(keep_in)))
    return out
