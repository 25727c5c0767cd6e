"""One CUDA source snippet the CuPy kernels share: a bilinear tap of a float plane on cell centres.

It samples like torch's bilinear `interpolate` (align_corners=False) with the edges clamped, so a
kernel that reads a low-resolution plane at full resolution agrees with its torch twin.
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
