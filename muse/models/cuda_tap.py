"""CUDA source snippets the CuPy kernels share.

`TAP_F32`: a bilinear tap of a float plane on cell centres. It samples like torch's bilinear `interpolate`
(align_corners=False) with the edges clamped, so a kernel that reads a low-resolution plane at full
resolution agrees with its torch twin.

`MASK_T`: a mask's element type, fp16 when compiled with `-DMASK_HALF` (else fp32), and its conversions
`m2f` / `f2m` (round to nearest) to and from float.
"""

MASK_T = r"""
#ifdef MASK_HALF
typedef unsigned short mask_t;
__device__ __forceinline__ float m2f(mask_t v) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f; }
__device__ __forceinline__ mask_t f2m(float f) { unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }
#else
typedef float mask_t;
__device__ __forceinline__ float m2f(mask_t v) { return v; }
__device__ __forceinline__ mask_t f2m(float f) { return f; }
#endif
"""

TAP_F32 = r"""
__device__ __forceinline__ float tap(const float* p, int w, int h, float x, float y) {
    x = fminf(fmaxf(x, 0.f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.f), (float)(h - 1));
    int x0 = (int)x, y0 = (int)y;
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float fx = x - x0, fy = y - y0;
    return (p[y0 * w + x0] * (1.f - fx) + p[y0 * w + x1] * fx) * (1.f - fy)
         + (p[y1 * w + x0] * (1.f - fx) + p[y1 * w + x1] * fx) * fy;
}
"""
