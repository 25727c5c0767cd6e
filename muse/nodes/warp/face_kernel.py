"""`warp.face`'s field on CUDA in one pass: both eyes' magnifiers and the outline's inward shifts, per cell.

In torch (`face.eyes_field`, `face.outline_field`) the outline's term is built over an (N, h, w) stack, one plane
per outline point (N = 36 for the face mesh's oval, h x w = 270 x 480 cells at 4K): a dozen elementwise passes over
~19 MB each, then a contraction, then the eyes' (2, 2, h, w) terms, a sum and the confidence gate. On a mid-range GPU
(~360 GB/s) that traffic alone is about a millisecond a frame. Here one thread a cell loops over the eyes and the
outline points (read from a few hundred bytes that every thread shares) and writes the cell's two offsets once: the
same sums as the torch form, in float32, in the same order of terms per point.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from muse.graph.compiled import gpu_function
from muse.graph.devices import device_index

log = logging.getLogger("muse.node.warp")

__all__ = ["face_field_cuda"]

_SOURCE = r"""
// field (2, h, w): cell (i, j) sits at x = (j + 0.5) * sx - 0.5, y = (i + 0.5) * sy - 0.5 in full-picture pixels.
// Eyes (E of them, E = 0 or 2): p = cell - centre; k = max(0, 1 - |p|^2 / r^2)^2; field += -eye_scale * p * k.
// Outline (N points, N = 0 when off): k_j = max(0, (exp(-|cell - pt_j|^2 / (2 sigma^2)) - floor) / (1 - floor));
// field += sum_j (-shift_j) k_j / max(1, sum_j k_j). Then, with a confidence, field = conf >= min_conf ? field : 0.
extern "C" __global__ void face_field(float* __restrict__ out, int w, int h, float sx, float sy,
                                      const float* __restrict__ centres, const float* __restrict__ radii, int E,
                                      float eye_scale, const float* __restrict__ pts, const float* __restrict__ shifts,
                                      int N, const float* __restrict__ sigma, float floor_,
                                      const float* __restrict__ conf, float min_conf)
{
    int j = blockIdx.x * blockDim.x + threadIdx.x, i = blockIdx.y * blockDim.y + threadIdx.y;
    if (j >= w || i >= h) return;
    float x = ((float)j + 0.5f) * sx - 0.5f, y = ((float)i + 0.5f) * sy - 0.5f;
    float fx = 0.f, fy = 0.f;
    if (E > 0) {
        float ex = 0.f, ey = 0.f;
        for (int e = 0; e < E; ++e) {
            float px = x - centres[2 * e], py = y - centres[2 * e + 1];
            float r = radii[e];
            float rho2 = (px * px + py * py) / (r * r);
            float k = fmaxf(1.f - rho2, 0.f);
            k = k * k;
            ex += px * k;
            ey += py * k;
        }
        fx = ex * -eye_scale;
        fy = ey * -eye_scale;
    }
    if (N > 0) {
        float s = sigma[0];
        float two_s2 = 2.f * s * s;
        float ox = 0.f, oy = 0.f, norm = 0.f;
        for (int n = 0; n < N; ++n) {
            float dx = x - pts[2 * n], dy = y - pts[2 * n + 1];
            float g = expf(-(dx * dx + dy * dy) / two_s2);
            float k = fmaxf((g - floor_) / (1.f - floor_), 0.f);
            ox -= shifts[2 * n] * k;
            oy -= shifts[2 * n + 1] * k;
            norm += k;
        }
        norm = fmaxf(norm, 1.f);
        fx += ox / norm;
        fy += oy / norm;
    }
    if (conf != nullptr && !(conf[0] >= min_conf)) { fx = 0.f; fy = 0.f; }
    long long o = (long long)i * w + j;
    out[o] = fx;
    out[(long long)h * w + o] = fy;
}
"""

_FUNCTIONS: dict[int, Any] = {}
_BROKEN: list[str] = []
FLOOR = math.exp(-4.5)  # fields.compact_gaussian's cut at 3 sigma


def _function(device: torch.device) -> Any:
    return gpu_function(_FUNCTIONS, _BROKEN, log, device_index(device), _SOURCE, "face_field",
                        "face field kernel unavailable ({exc}): the face field is built by torch ops")


def _f32(t: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    if t is None:
        return None
    return t.detach().to(device=device, dtype=torch.float32).contiguous()


def face_field_cuda(image_size: tuple[int, int], grid_hw: tuple[int, int], device: torch.device,
                    eyes: tuple[torch.Tensor, torch.Tensor, float] | None,
                    outline: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
                    conf: torch.Tensor | None, min_conf: float) -> torch.Tensor | None:
    """The (2, h, w) float32 field `FaceWarp` builds, or None where the kernel cannot run (the torch steps then).

    `image_size` (width, height) of the picture, `grid_hw` the field's (h, w) (`fields.field_points`); `eyes`:
    centres (E, 2), radii (E,) and the magnifier's scale; `outline`: points (N, 2), shifts (N, 2) and sigma (a 0-d
    tensor); `conf`: the face's 0-d confidence tensor (None: no gate)."""
    if device.type != "cuda" or (eyes is None and outline is None):
        return None
    fn = _function(device)
    if fn is None:
        return None
    import cupy

    h, w = grid_hw
    width, height = image_size
    out = torch.empty((2, h, w), device=device, dtype=torch.float32)
    centres = radii = pts = shifts = sigma = None
    scale = 0.0
    if eyes is not None:
        centres, radii, scale = _f32(eyes[0], device), _f32(eyes[1], device), float(eyes[2])
    if outline is not None:
        pts, shifts, sigma = (_f32(t, device) for t in outline)
    gate = _f32(conf, device)
    i32, u64, f32 = np.int32, np.uint64, np.float32

    def ptr(t: torch.Tensor | None) -> np.uint64:
        return u64(0 if t is None else t.data_ptr())

    block = (32, 8, 1)
    grid = ((w + 31) // 32, (h + 7) // 8, 1)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream)
    with stream:
        fn(grid, block, (ptr(out), i32(w), i32(h), f32(width / w), f32(height / h),
                         ptr(centres), ptr(radii), i32(0 if centres is None else centres.shape[0]), f32(scale),
                         ptr(pts), ptr(shifts), i32(0 if pts is None else pts.shape[0]), ptr(sigma), f32(FLOOR),
                         ptr(gate), f32(min_conf)))
    return out
