"""`landmarks.smooth`'s One-Euro step for body keypoints and face landmarks together, on CUDA in one launch.

The torch form (`smooth.OneEuro` on the stacked points, after `_extent` of each payload, a `cat` and a pad) is ~30
kernels over a few hundred floats: on a recorded frame each is a node of the graph, and together they are a chain of
launch latencies in the frame's tail, where the face and body warps wait for it. Here one block of threads does it
all: the body's extent over its confident keypoints and the face's over all its points (a reduction in shared
memory), then one thread a point filters every coordinate of it, updates the filter's state in place (value, speed,
time) and writes both payloads' points. The maths and the order of operations are `OneEuro.__call__`'s, so the two
agree to float32 rounding.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch

from muse.graph.compiled import gpu_function
from muse.graph.devices import device_index

log = logging.getLogger("muse.node.landmarks")

__all__ = ["one_euro_both_cuda"]

_THREADS = 512

_SOURCE = r"""
#define THREADS 512
__device__ __forceinline__ float lerp_(float a, float b, float w) {  // torch.lerp's two forms
    return w < 0.5f ? a + w * (b - a) : b - (b - a) * (1.f - w);
}

// rows 0..k-1: body keypoints kp (k, n), confidence kp_conf (k); rows k..k+m-1: face points face (m, nf), one
// confidence (face_conf, a device scalar). State X, DX (k + m, d) float32 and T (float64) updated in place.
extern "C" __global__ void one_euro_both(const float* __restrict__ kp, int k, int n, const float* __restrict__ kp_conf,
                                         const float* __restrict__ face, int m, int nf, const float* __restrict__ face_conf,
                                         float* __restrict__ X, float* __restrict__ DX, double* __restrict__ T,
                                         const double* __restrict__ now, double default_dt, int d, float min_cutoff,
                                         float beta, float d_cutoff, float min_conf, float two_pi,
                                         float* __restrict__ kp_out, float* __restrict__ face_out)
{
    __shared__ float lo[4][THREADS];
    __shared__ float hi[4][THREADS];
    int tid = threadIdx.x, rows = k + m;
    double t_prev = T[0];
    bool face_ok = face_conf[0] >= min_conf;
    // extents: [0, 1] body x, y over confident rows; [2, 3] face x, y over every row
    const float inf = __int_as_float(0x7f800000);  // (NVRTC has no math.h: no INFINITY)
    float l0 = inf, l1 = inf, l2 = inf, l3 = inf;
    float h0 = -inf, h1 = -inf, h2 = -inf, h3 = -inf;
    for (int r = tid; r < rows; r += THREADS) {
        if (r < k) {
            if (kp_conf[r] >= min_conf) {
                float x = kp[r * n], y = kp[r * n + 1];
                l0 = fminf(l0, x); h0 = fmaxf(h0, x); l1 = fminf(l1, y); h1 = fmaxf(h1, y);
            }
        } else {
            float x = face[(r - k) * nf], y = face[(r - k) * nf + 1];
            l2 = fminf(l2, x); h2 = fmaxf(h2, x); l3 = fminf(l3, y); h3 = fmaxf(h3, y);
        }
    }
    lo[0][tid] = l0; lo[1][tid] = l1; lo[2][tid] = l2; lo[3][tid] = l3;
    hi[0][tid] = h0; hi[1][tid] = h1; hi[2][tid] = h2; hi[3][tid] = h3;
    __syncthreads();
    for (int s = THREADS / 2; s > 0; s >>= 1) {
        if (tid < s) {
            #pragma unroll
            for (int c = 0; c < 4; ++c) {
                lo[c][tid] = fminf(lo[c][tid], lo[c][tid + s]);
                hi[c][tid] = fmaxf(hi[c][tid], hi[c][tid + s]);
            }
        }
        __syncthreads();
    }
    // no confident body point: lo = +inf, hi = -inf, so the size is -inf and the clamp gives 1 (as _extent)
    float kp_scale = fmaxf(fmaxf(hi[0][0] - lo[0][0], hi[1][0] - lo[1][0]), 1.f);
    float face_scale = fmaxf(fmaxf(hi[2][0] - lo[2][0], hi[3][0] - lo[3][0]), 1.f);
    double step = now[0] - t_prev;
    double dt64 = step > 0.0 ? step : default_dt;
    float dt = (float)dt64;
    float kk = dt * two_pi;
    float kd = kk * d_cutoff;
    float wd = kd / (kd + 1.f);
    for (int r = tid; r < rows; r += THREADS) {
        bool body = r < k;
        float scale = body ? kp_scale : face_scale;
        bool valid = body ? kp_conf[r] >= min_conf : face_ok;
        float den = dt * scale;
        float* xr = X + (long long)r * d;
        float* dr = DX + (long long)r * d;
        float in0 = 0.f, in1 = 0.f;
        // the speed's first two coordinates set the point's cutoff
        float sp[2], dxy[2];
        for (int c = 0; c < 2 && c < d; ++c) {
            float x = body ? (c < n ? kp[r * n + c] : 0.f) : (c < nf ? face[(r - k) * nf + c] : 0.f);
            if (c == 0) in0 = x; else in1 = x;
            sp[c] = (x - xr[c]) / den;
            dxy[c] = lerp_(dr[c], sp[c], wd);
        }
        float mag = sqrtf(dxy[0] * dxy[0] + (d > 1 ? dxy[1] * dxy[1] : 0.f));
        float kc = kk * min_cutoff + beta * (kk * mag);
        float wc = kc / (kc + 1.f);
        for (int c = 0; c < d; ++c) {
            float x = c == 0 ? in0 : c == 1 ? in1
                    : (body ? (c < n ? kp[r * n + c] : 0.f) : (c < nf ? face[(r - k) * nf + c] : 0.f));
            float dx = c < 2 ? dxy[c] : lerp_(dr[c], (x - xr[c]) / den, wd);
            float out = lerp_(xr[c], x, wc);
            if (!valid) { out = x; dx = 0.f; }  // a lost point restarts from its raw value
            xr[c] = out;
            dr[c] = dx;
            if (body) { if (c < n) kp_out[r * n + c] = out; }
            else if (c < nf) face_out[(r - k) * nf + c] = out;
        }
    }
    __syncthreads();
    if (tid == 0) T[0] = t_prev + dt64;
}
"""

_FUNCTIONS: dict[int, Any] = {}
_BROKEN: list[str] = []


def _function(device: torch.device) -> Any:
    return gpu_function(_FUNCTIONS, _BROKEN, log, device_index(device), _SOURCE, "one_euro_both",
                        "landmark smoothing kernel unavailable ({exc}): smoothed by torch ops")


def one_euro_both_cuda(state: Any, kp: torch.Tensor, kp_conf: torch.Tensor, face: torch.Tensor, face_conf: torch.Tensor,
                       now: torch.Tensor, min_conf: float, default_dt: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One filter step of `state` (a `smooth.OneEuro` already holding (k + m, d) float32 values, their speeds and a
    float64 time) on body points `kp` (k, n) with confidences `kp_conf` (k,) and face points `face` (m, nf) with one
    0-d confidence, all float32 CUDA tensors, at time `now` (a float64 device scalar): the smoothed body and face
    points, new tensors; None where the kernel cannot run (the torch steps then)."""
    k, n = kp.shape
    m, nf = face.shape
    d = max(n, nf)
    x, dx, t = state.x, state.dx, state.t
    tensors = (kp, kp_conf, face, face_conf, x, dx)
    if (x is None or dx is None or t is None or not kp.is_cuda or x.shape != (k + m, d) or d < 2
            or any(v.dtype != torch.float32 or not v.is_contiguous() or v.device != kp.device for v in tensors)
            or t.dtype != torch.float64 or now.dtype != torch.float64 or face_conf.numel() != 1 or kp_conf.shape != (k,)):
        return None
    fn = _function(kp.device)
    if fn is None:
        return None
    import cupy

    kp_out = torch.empty_like(kp)
    face_out = torch.empty_like(face)
    i32, u64, f32 = np.int32, np.uint64, np.float32
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(kp.device).cuda_stream)
    fn((1,), (_THREADS,),
       (u64(kp.data_ptr()), i32(k), i32(n), u64(kp_conf.data_ptr()), u64(face.data_ptr()), i32(m), i32(nf),
        u64(face_conf.data_ptr()), u64(x.data_ptr()), u64(dx.data_ptr()), u64(t.data_ptr()), u64(now.data_ptr()),
        np.float64(default_dt), i32(d), f32(state.min_cutoff), f32(state.beta), f32(state.d_cutoff), f32(min_conf),
        f32(2 * math.pi), u64(kp_out.data_ptr()), u64(face_out.data_ptr())), stream=stream)
    return kp_out, face_out
