"""Rotated ROI crops straight from a CUDA uint8 picture: one CuPy kernel per crop call.

`roi.crop` on the GPU used to convert the whole frame to float (a 4K frame is 100 MB written, once by
pose and once by face, every frame) and then run up to 16 `grid_sample` calls for its antialiasing
taps. This kernel reads the (H, W, 3) bytes where the taps fall and writes the (N, 3, h, w) float
crop in [0, 1]: the same bilinear `grid_sample` (align_corners=False, zeros or border padding) on
the same affine grid, with the taps x taps samples averaged in one pass.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["crop_u8_cupy", "usable"]

_SOURCE = r"""
extern "C" __global__ void crop_u8(const unsigned char* __restrict__ img, int W, int H,
                                   const float* __restrict__ theta, int N,
                                   float* __restrict__ out, int oh, int ow, int taps, int border)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y, n = blockIdx.z;
    if (x >= ow || y >= oh || n >= N) return;
    const float* t = theta + n * 6;
    float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f;
    for (int i = 0; i < taps; ++i) {
        for (int j = 0; j < taps; ++j) {
            // output-normalised position of this tap (affine_grid's cell centre plus the tap's offset)
            float xo = (2 * x + 1) / (float)ow - 1.f + ((i + 0.5f) / taps - 0.5f) * 2.f / ow;
            float yo = (2 * y + 1) / (float)oh - 1.f + ((j + 0.5f) / taps - 0.5f) * 2.f / oh;
            float gx = t[0] * xo + t[1] * yo + t[2];
            float gy = t[3] * xo + t[4] * yo + t[5];
            float ix = ((gx + 1.f) * W - 1.f) * 0.5f, iy = ((gy + 1.f) * H - 1.f) * 0.5f;
            if (border) {
                ix = fminf(fmaxf(ix, 0.f), (float)(W - 1));
                iy = fminf(fmaxf(iy, 0.f), (float)(H - 1));
            }
            float fx0 = floorf(ix), fy0 = floorf(iy);
            int x0 = (int)fx0, y0 = (int)fy0;
            float ax = ix - fx0, ay = iy - fy0;
            #pragma unroll
            for (int k = 0; k < 4; ++k) {
                int xx = x0 + (k & 1), yy = y0 + (k >> 1);
                if (xx < 0 || yy < 0 || xx >= W || yy >= H) continue;
                float wgt = ((k & 1) ? ax : 1.f - ax) * ((k >> 1) ? ay : 1.f - ay);
                const unsigned char* p = img + ((long long)yy * W + xx) * 3;
                acc0 += wgt * p[0]; acc1 += wgt * p[1]; acc2 += wgt * p[2];
            }
        }
    }
    float s = 1.f / (255.f * taps * taps);
    long long plane = (long long)oh * ow, o = (long long)n * 3 * plane + (long long)y * ow + x;
    out[o] = acc0 * s; out[o + plane] = acc1 * s; out[o + 2 * plane] = acc2 * s;
}
"""
_MODULE: Any = None


def usable(image: torch.Tensor) -> bool:
    """A (3, H, W) view of an (H, W, 3) uint8 picture on a CUDA device, with CuPy installed."""
    from muse.nodes.warp.kernels import cupy_available

    return (image.is_cuda and image.dtype == torch.uint8 and image.dim() == 3
            and image.permute(1, 2, 0).is_contiguous() and cupy_available())


def crop_u8_cupy(image: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int, taps: int, border: str) -> torch.Tensor:
    """(N, 3, out_h, out_w) float32 in [0, 1] from `image` (3, H, W) uint8 view and `theta` (N, 2, 3) float32."""
    global _MODULE
    import cupy
    import numpy as np

    if _MODULE is None:
        _MODULE = cupy.RawModule(code=_SOURCE, options=("--std=c++14",))
    n = int(theta.shape[0])
    height, width = int(image.shape[1]), int(image.shape[2])
    out = torch.empty((n, 3, out_h, out_w), dtype=torch.float32, device=image.device)
    th = theta.float().contiguous()
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(image.device).cuda_stream)
    i32 = np.int32
    with stream:
        _MODULE.get_function("crop_u8")(
            ((out_w + 31) // 32, (out_h + 7) // 8, n), (32, 8, 1),
            (cupy.from_dlpack(image.permute(1, 2, 0)), i32(width), i32(height), cupy.from_dlpack(th), i32(n),
             cupy.from_dlpack(out), i32(out_h), i32(out_w), i32(max(1, taps)), i32(border == "border")),
        )
    return out
