"""The full-resolution passes of the visual engine, each as a CUDA kernel and a torch twin.

`warp_apply`: upsample the low-resolution Displacement, sample the source
bilinearly, warp the person mask and fill uncovered pixels from the clean
plate, in one pass. `composite_over`: the final person-over-background blend in
linear light. Each has a CuPy RawKernel (CUDA, zero-copy through DLPack on the
node's stream) and a torch twin (CPU, or CUDA without CuPy) with one contract.
This module imports only torch (CuPy lazily), so `bench/` can load it on a
machine without the project's other dependencies.

Contract of `warp_apply(src, field, mask, plate)`:
- `src` (H, W, 3) uint8; `field` (2, h, w) float32 offsets in pixels of `src`,
  on a grid of cell centres (bilinear, align_corners=False, edges clamped);
  the output pixel p samples `src` at p + field(p) (bilinear, border clamp).
- `mask` (mh, mw) float32/float16 person alpha at any resolution, or None.
- `plate` (H, W, 3) uint8 clean plate, or None.
- out(p) = src(p) exactly where field(p) == (0, 0); elsewhere
  wa = mask(p + d), a = mask(p), bg = lerp(src(p), plate(p), min(1, 4 a)) (or src(p + d)
  without a plate), out = wa * src(p + d) + (1 - wa) * bg.
  Without a mask, out = src(p + d). The warped mask is wa (a where d == 0).
"""

from __future__ import annotations

from typing import Any

import torch
from muse.graph.capture import device_constant
import torch.nn.functional as F

from muse.models.cuda_tap import MASK_T

# ---------------------------------------------------------------------------
# colour: sRGB <-> linear light (IEC 61966-2-1), shared by composite and relight


def srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    """sRGB-encoded values in [0, 1] to linear light."""
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055).clamp_min(0).pow(2.4))


def linear_to_srgb(x: torch.Tensor) -> torch.Tensor:
    """Linear light in [0, 1] to sRGB-encoded values."""
    x = x.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.pow(1.0 / 2.4) - 0.055)


_DECODE_LUT: torch.Tensor | None = None


def decode_uint8(img: torch.Tensor) -> torch.Tensor:
    """uint8 sRGB (any shape) to float32 linear light.

    On the CPU a 256-entry table (pow is the slowest step there); on the GPU
    arithmetic, which is bandwidth-bound anyway and needs no int64 index copy.
    """
    if img.is_cuda:
        return srgb_to_linear(img.float().div_(255.0))
    return torch.take(_decode_lut(), img.long())


def _decode_lut() -> torch.Tensor:
    """The 256 sRGB levels in linear light (float64 maths, float32 values), made once on the CPU."""
    global _DECODE_LUT
    if _DECODE_LUT is None:
        _DECODE_LUT = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float()
    return _DECODE_LUT


def encode_uint8(lin: torch.Tensor) -> torch.Tensor:
    """float linear light to uint8 sRGB (rounded to nearest)."""
    return linear_to_srgb(lin.float()).mul(255.0).round_().to(torch.uint8)


# ---------------------------------------------------------------------------
# torch fallback


def _sample_mask(mask: torch.Tensor, sx: torch.Tensor, sy: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """mask (mh, mw) sampled at full-resolution pixel positions (sx, sy), align_corners=False mapping."""
    gx = (sx + 0.5) * (2.0 / width) - 1.0
    gy = (sy + 0.5) * (2.0 / height) - 1.0
    grid = torch.stack((gx, gy), dim=-1).unsqueeze(0)
    m = mask.float()[None, None]
    return F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)[0, 0]


def upsample_field(field: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(2, h, w) -> (2, H, W), bilinear on cell centres (what the CUDA kernel does inline)."""
    if field.shape[-2:] == (height, width):
        return field.float()
    return F.interpolate(field.float()[None], size=(height, width), mode="bilinear", align_corners=False)[0]


ROOM_SHARE = 4.0  # see room_share; the CUDA kernel and the CPU twin use the same number


def room_share(a: torch.Tensor) -> torch.Tensor:
    """How much of an uncovered pixel comes from the plate: min(1, 4 a). The frame at a soft edge (a = 0.3)
    still holds 0.3 of the person; blending it by a alone left a half-transparent copy of the old edge
    beside the reshaped one. Past a quarter of the person the frame is not used at all."""
    return (a * ROOM_SHARE).clamp_(max=1.0)


def warp_apply_torch(
    src: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor | None = None,
    plate: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The reference implementation (see the module docstring); returns (out uint8 HWC, warped mask or None)."""
    height, width = int(src.shape[0]), int(src.shape[1])
    d = upsample_field(field, height, width)
    xs = torch.arange(width, device=src.device, dtype=torch.float32).expand(height, width)
    ys = torch.arange(height, device=src.device, dtype=torch.float32)[:, None].expand(height, width)
    sx, sy = xs + d[0], ys + d[1]
    grid = torch.stack((sx * (2.0 / max(width - 1, 1)) - 1.0, sy * (2.0 / max(height - 1, 1)) - 1.0), dim=-1)
    img = src.permute(2, 0, 1).float()
    warped = F.grid_sample(img[None], grid[None], mode="bilinear", padding_mode="border", align_corners=True)[0]
    still = (d[0] == 0) & (d[1] == 0)
    warped_mask = None
    if mask is None:
        out = warped
    else:
        wa = _sample_mask(mask, sx, sy, width, height)
        same = tuple(mask.shape) == (height, width)
        a = mask.float() if same else _sample_mask(mask, xs, ys, width, height)
        bg = warped if plate is None else img + room_share(a) * (plate.permute(2, 0, 1).float() - img)
        out = wa * warped + (1.0 - wa) * bg
        warped_mask = torch.where(still, a, wa).to(mask.dtype)
    out = out.round_().clamp_(0, 255).to(torch.uint8)
    out = torch.where(still[None], src.permute(2, 0, 1), out)
    return out.permute(1, 2, 0).contiguous(), warped_mask


# ---------------------------------------------------------------------------
# CUDA kernel (CuPy RawKernel)

# Shared by both kernels: the mask element type (fp16 or fp32), a clamped bilinear tap and its loaders.
_CUDA_PRELUDE = MASK_T + r"""
// Bilinear tap of a single-channel plane at (x, y) in its own pixels, edges clamped.
template <typename T, typename Load>
__device__ __forceinline__ float tap(const T* p, int w, int h, float x, float y, Load load) {
    x = fminf(fmaxf(x, 0.f), (float)(w - 1));
    y = fminf(fmaxf(y, 0.f), (float)(h - 1));
    int x0 = (int)floorf(x), y0 = (int)floorf(y);
    int x1 = min(x0 + 1, w - 1), y1 = min(y0 + 1, h - 1);
    float fx = x - x0, fy = y - y0;
    float a = load(p[y0 * w + x0]), b = load(p[y0 * w + x1]);
    float c = load(p[y1 * w + x0]), d = load(p[y1 * w + x1]);
    return (a * (1.f - fx) + b * fx) * (1.f - fy) + (c * (1.f - fx) + d * fx) * fy;
}

struct LoadF { __device__ float operator()(float v) const { return v; } };
struct LoadM { __device__ float operator()(mask_t v) const { return m2f(v); } };

"""

_KERNEL_SOURCE = _CUDA_PRELUDE + r"""
extern "C" __global__ void warp_apply(
    const unsigned char* __restrict__ src, unsigned char* __restrict__ dst, int W, int H,
    const float* __restrict__ field, int fw, int fh,
    const mask_t* __restrict__ mask, int mw, int mh, mask_t* __restrict__ mask_out,
    const unsigned char* __restrict__ plate, int has_mask, int has_plate)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    int o = (y * W + x) * 3;

    // fused field upsampling: cell centres, align_corners=False
    float fxp = fmaxf(((float)fw / (float)W) * (x + 0.5f) - 0.5f, 0.f);
    float fyp = fmaxf(((float)fh / (float)H) * (y + 0.5f) - 0.5f, 0.f);
    float dx = tap(field, fw, fh, fxp, fyp, LoadF());
    float dy = tap(field + fw * fh, fw, fh, fxp, fyp, LoadF());

    float mscx = (float)mw / (float)W, mscy = (float)mh / (float)H;
    if (dx == 0.f && dy == 0.f) {  // outside the person's field: the exact source bytes
        dst[o] = src[o]; dst[o + 1] = src[o + 1]; dst[o + 2] = src[o + 2];
        if (has_mask) mask_out[y * W + x] = f2m(tap(mask, mw, mh, (x + 0.5f) * mscx - 0.5f, (y + 0.5f) * mscy - 0.5f, LoadM()));
        return;
    }
    float sx = fminf(fmaxf(x + dx, 0.f), (float)(W - 1));
    float sy = fminf(fmaxf(y + dy, 0.f), (float)(H - 1));
    int x0 = (int)floorf(sx), y0 = (int)floorf(sy);
    int x1 = min(x0 + 1, W - 1), y1 = min(y0 + 1, H - 1);
    float ax = sx - x0, ay = sy - y0;
    float w00 = (1.f - ax) * (1.f - ay), w01 = ax * (1.f - ay), w10 = (1.f - ax) * ay, w11 = ax * ay;
    int i00 = (y0 * W + x0) * 3, i01 = (y0 * W + x1) * 3, i10 = (y1 * W + x0) * 3, i11 = (y1 * W + x1) * 3;
    float wa = 1.f, a = 0.f;
    if (has_mask) {
        wa = tap(mask, mw, mh, (x + dx + 0.5f) * mscx - 0.5f, (y + dy + 0.5f) * mscy - 0.5f, LoadM());
        a = tap(mask, mw, mh, (x + 0.5f) * mscx - 0.5f, (y + 0.5f) * mscy - 0.5f, LoadM());
        mask_out[y * W + x] = f2m(wa);
    }
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        float warped = w00 * src[i00 + c] + w01 * src[i01 + c] + w10 * src[i10 + c] + w11 * src[i11 + c];
        float v = warped;
        if (has_mask) {
            float s = (float)src[o + c];
            float bg = has_plate ? s + fminf(1.f, a * 4.f) * ((float)plate[o + c] - s) : warped;  // ROOM_SHARE
            v = wa * warped + (1.f - wa) * bg;
        }
        dst[o + c] = (unsigned char)fminf(fmaxf(rintf(v), 0.f), 255.f);
    }
}
"""

_MODULES: dict[bool, Any] = {}


def _kernel(half_mask: bool) -> Any:
    import cupy  # only the CUDA path needs it

    mod = _MODULES.get(half_mask)
    if mod is None:
        options = ("--std=c++14",) + (("-DMASK_HALF",) if half_mask else ())
        mod = _MODULES[half_mask] = cupy.RawModule(code=_KERNEL_SOURCE, options=options)
    return mod.get_function("warp_apply")


def cupy_available() -> bool:
    try:
        import cupy  # noqa: F401
    except Exception:
        return False
    return True


def warp_apply_cupy(
    src: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor | None = None,
    plate: torch.Tensor | None = None,
    stream: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The CUDA twin of :func:`warp_apply_torch`, zero-copy on torch tensors.

    `stream` is a CuPy stream wrapping the caller's torch stream (the node's
    `ctx.cupy_stream()`); None means the current torch stream.
    """
    import cupy
    import numpy as np

    if stream is None:
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(src.device).cuda_stream)
    height, width = int(src.shape[0]), int(src.shape[1])
    src = src.contiguous()
    field = field.float().contiguous()
    out = torch.empty_like(src)
    if mask is not None and mask.dtype not in (torch.float16, torch.float32):
        mask = mask.float()
    mask_c = mask.contiguous() if mask is not None else None
    mask_out = torch.empty((height, width), dtype=mask.dtype, device=src.device) if mask is not None else None
    plate_c = plate.contiguous() if plate is not None else None
    with stream:
        c_src = cupy.from_dlpack(src)
        c_out = cupy.from_dlpack(out)
        c_field = cupy.from_dlpack(field)
        c_mask = cupy.from_dlpack(mask_c) if mask_c is not None else c_field  # unused pointer when absent
        c_mask_out = cupy.from_dlpack(mask_out) if mask_out is not None else c_field
        c_plate = cupy.from_dlpack(plate_c) if plate_c is not None else c_src
        mh, mw = (int(mask.shape[0]), int(mask.shape[1])) if mask is not None else (1, 1)
        block = (32, 8, 1)
        grid = ((width + block[0] - 1) // block[0], (height + block[1] - 1) // block[1], 1)
        i32 = np.int32
        _kernel(mask is not None and mask.dtype == torch.float16)(
            grid,
            block,
            (
                c_src, c_out, i32(width), i32(height),
                c_field, i32(field.shape[2]), i32(field.shape[1]),
                c_mask, i32(mw), i32(mh), c_mask_out,
                c_plate, i32(mask is not None), i32(plate is not None),
            ),
        )
    return out, mask_out


def warp_apply(
    src: torch.Tensor,
    field: torch.Tensor,
    mask: torch.Tensor | None = None,
    plate: torch.Tensor | None = None,
    *,
    backend: str = "auto",
    stream: Any = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Dispatch: CuPy kernel on CUDA when available (or asked), torch otherwise."""
    use_cupy = src.is_cuda and (backend == "cupy" or (backend == "auto" and cupy_available()))
    if use_cupy:
        return warp_apply_cupy(src, field, mask, plate, stream=stream)
    return warp_apply_torch(src, field, mask, plate)


# ---------------------------------------------------------------------------
# composite: the per-pixel "over" in linear light (composite.over's last step)
#
# Contract of `composite_over(fg, alpha, bg, colour, wrap, inside, soft)`:
# - `fg` (H, W, 3) uint8 sRGB; `alpha` (ah, aw) float plane at any resolution
#   (bilinear, align_corners=False, edges clamped; already feathered);
# - background: `bg` (H, W, 3) uint8 sRGB, or (3, bh, bw) float32 linear at any
#   resolution, or None for the flat linear `colour` (3 floats);
# - `known` (kh, kw) float plane or None: with a uint8 `bg`, the background is
#   round(lerp(fg, bg, known)) in 8-bit values (the live frame where the plate is not known);
# - light wrap: fg += wrap * a * (1 - inside) * (soft - fg), with `inside`
#   (ih, iw) and `soft` (3, ih, iw) float32 low-resolution planes;
# - out = encode_sRGB(a * fg + (1 - a) * bg), uint8 (H, W, 3).


def _up(plane: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(C, h, w) or (h, w) float -> full size, bilinear on cell centres (the kernel's `tap`)."""
    squeeze = plane.dim() == 2
    p = plane.float()[None, None] if squeeze else plane.float()[None]
    if tuple(p.shape[-2:]) != (height, width):
        p = F.interpolate(p, size=(height, width), mode="bilinear", align_corners=False)
    return p[0, 0] if squeeze else p[0]


def composite_over_torch(
    fg: torch.Tensor,
    alpha: torch.Tensor,
    bg: torch.Tensor | None,
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0),
    wrap: float = 0.0,
    inside: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
) -> torch.Tensor:
    height, width = int(fg.shape[0]), int(fg.shape[1])
    fgl = decode_uint8(fg).permute(2, 0, 1)
    a = _up(alpha, height, width).clamp(0, 1)
    if bg is None:
        bgl = device_constant(list(colour), fg.device, torch.float32)[:, None, None]
    elif bg.dtype == torch.uint8:
        if known is not None:
            k = _up(known, height, width).clamp(0, 1)[..., None]
            bg = torch.lerp(fg.float(), bg.float(), k).round_().to(torch.uint8)
        bgl = decode_uint8(bg).permute(2, 0, 1)
    else:
        bgl = _up(bg, height, width)
    if wrap > 0 and inside is not None and soft is not None:
        w = wrap * a * (1.0 - _up(inside, height, width))
        fgl = fgl + w * (_up(soft, height, width) - fgl)
    out = a * fgl + (1.0 - a) * bgl
    return encode_uint8(out).permute(1, 2, 0).contiguous()


_COMPOSITE_SOURCE = _CUDA_PRELUDE + r"""
__device__ __forceinline__ unsigned char srgb_encode(float x) {
    x = fminf(fmaxf(x, 0.f), 1.f);
    float v = x <= 0.0031308f ? x * 12.92f : 1.055f * powf(x, 1.f / 2.4f) - 0.055f;
    return (unsigned char)fminf(fmaxf(rintf(v * 255.f), 0.f), 255.f);
}

extern "C" __global__ void composite_over(
    const unsigned char* __restrict__ fg, unsigned char* __restrict__ out, int W, int H,
    const mask_t* __restrict__ alpha, int aw, int ah,
    int bg_kind, const unsigned char* __restrict__ bg_u8, const float* __restrict__ bg_low, int bw, int bh,
    float c0, float c1, float c2,
    float wrap, const float* __restrict__ inside, const float* __restrict__ soft, int iw, int ih,
    const float* __restrict__ known, int kw, int kh, const float* __restrict__ decode)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y;
    if (x >= W || y >= H) return;
    int o = (y * W + x) * 3;
    float a = tap(alpha, aw, ah, (x + 0.5f) * ((float)aw / W) - 0.5f, (y + 0.5f) * ((float)ah / H) - 0.5f, LoadM());
    a = fminf(fmaxf(a, 0.f), 1.f);
    float w = 0.f, ix = 0.f, iy = 0.f;
    if (wrap > 0.f) {
        ix = (x + 0.5f) * ((float)iw / W) - 0.5f;
        iy = (y + 0.5f) * ((float)ih / H) - 0.5f;
        w = wrap * a * (1.f - tap(inside, iw, ih, ix, iy, LoadF()));
    }
    float bx = (x + 0.5f) * ((float)bw / W) - 0.5f, by = (y + 0.5f) * ((float)bh / H) - 0.5f;
    float col[3] = {c0, c1, c2};
    // where the plate is not known, the live frame is the background (8-bit lerp, as the torch twin)
    float kn = known ? fminf(fmaxf(tap(known, kw, kh, (x + 0.5f) * ((float)kw / W) - 0.5f,
                                       (y + 0.5f) * ((float)kh / H) - 0.5f, LoadF()), 0.f), 1.f) : 1.f;
    // Most of a frame is all person or all room: there the result is that 8-bit value itself, since
    // encode(decode(v)) == v for every byte (decoded values sit within 3e-5 of a level, far from a rounding
    // edge; tests/test_composite_kernel.py). Only the edge and the light wrap pay for the pow of the encode.
    bool solid_fg = a >= 1.f && w == 0.f, solid_bg = a <= 0.f && bg_kind == 1;
    #pragma unroll
    for (int c = 0; c < 3; ++c) {
        float bu = (float)bg_u8[o + c];
        if (bg_kind == 1 && kn < 1.f) { float fu = (float)fg[o + c]; bu = rintf(fu + kn * (bu - fu)); }
        if (solid_fg) { out[o + c] = fg[o + c]; continue; }
        if (solid_bg) { out[o + c] = (unsigned char)bu; continue; }
        float f = decode[fg[o + c]];  // the 256 decoded levels (srgb_to_linear in float64, as the CPU's table)
        if (wrap > 0.f) f = f + w * (tap(soft + c * iw * ih, iw, ih, ix, iy, LoadF()) - f);
        float b = bg_kind == 1 ? decode[(int)bu]
                : bg_kind == 2 ? tap(bg_low + c * bw * bh, bw, bh, bx, by, LoadF())
                : col[c];
        out[o + c] = srgb_encode(a * f + (1.f - a) * b);
    }
}
"""

_COMPOSITE_MODULES: dict[bool, Any] = {}


_DECODE_TABLES: dict[torch.device, torch.Tensor] = {}


def _decode_table(device: torch.device) -> torch.Tensor:
    """The 256 sRGB levels in linear light on `device` (the CPU's decode table), made by the first (eager) call:
    a recorded frame cannot copy from the host."""
    table = _DECODE_TABLES.get(device)
    if table is None:
        table = _DECODE_TABLES[device] = _decode_lut().to(device)
    return table


def composite_over_cupy(
    fg: torch.Tensor,
    alpha: torch.Tensor,
    bg: torch.Tensor | None,
    colour: tuple[float, float, float] = (0.0, 0.0, 0.0),
    wrap: float = 0.0,
    inside: torch.Tensor | None = None,
    soft: torch.Tensor | None = None,
    known: torch.Tensor | None = None,
    stream: Any = None,
) -> torch.Tensor:
    """The CUDA twin of :func:`composite_over_torch` (one pass, zero-copy through DLPack)."""
    import cupy
    import numpy as np

    if stream is None:
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(fg.device).cuda_stream)
    height, width = int(fg.shape[0]), int(fg.shape[1])
    half = alpha.dtype == torch.float16
    alpha = alpha.contiguous() if alpha.dtype in (torch.float16, torch.float32) else alpha.float().contiguous()
    fg = fg.contiguous()
    out = torch.empty_like(fg)
    kind = 0 if bg is None else (1 if bg.dtype == torch.uint8 else 2)
    bg_c = bg.contiguous() if kind == 1 else None
    bg_low = bg.float().contiguous() if kind == 2 else None
    use_wrap = wrap > 0 and inside is not None and soft is not None
    inside_c = soft_c = None
    if wrap > 0 and inside is not None and soft is not None:
        inside_c = inside.float().contiguous()
        # The kernel indexes `soft` like `inside`; a broadcast plane (a flat colour's (3, 1, 1)) is spread out first.
        soft_c = soft.float().expand(3, *inside.shape).contiguous()
    mod = _COMPOSITE_MODULES.get(half)
    if mod is None:
        options = ("--std=c++14",) + (("-DMASK_HALF",) if half else ())
        mod = _COMPOSITE_MODULES[half] = cupy.RawModule(code=_COMPOSITE_SOURCE, options=options)
    i32, f32 = np.int32, np.float32
    with stream:
        c_fg, c_out, c_alpha = cupy.from_dlpack(fg), cupy.from_dlpack(out), cupy.from_dlpack(alpha)
        dummy = cupy.from_dlpack(alpha if alpha.dtype == torch.float32 else torch.zeros(1, device=fg.device))
        c_bg = cupy.from_dlpack(bg_c) if bg_c is not None else c_fg  # unused pointer when absent
        c_low = cupy.from_dlpack(bg_low) if bg_low is not None else dummy
        c_in = cupy.from_dlpack(inside_c) if inside_c is not None else dummy
        c_soft = cupy.from_dlpack(soft_c) if soft_c is not None else dummy
        known_c = known.float().contiguous() if known is not None and kind == 1 else None
        c_known = cupy.from_dlpack(known_c) if known_c is not None else None
        kh, kw = (int(known_c.shape[0]), int(known_c.shape[1])) if known_c is not None else (1, 1)
        bh, bw = (int(bg_low.shape[1]), int(bg_low.shape[2])) if bg_low is not None else (1, 1)
        ih, iw = (int(inside_c.shape[0]), int(inside_c.shape[1])) if inside_c is not None else (1, 1)
        block = (32, 8, 1)
        grid = ((width + block[0] - 1) // block[0], (height + block[1] - 1) // block[1], 1)
        mod.get_function("composite_over")(
            grid,
            block,
            (
                c_fg, c_out, i32(width), i32(height),
                c_alpha, i32(alpha.shape[1]), i32(alpha.shape[0]),
                i32(kind), c_bg, c_low, i32(bw), i32(bh),
                f32(colour[0]), f32(colour[1]), f32(colour[2]),
                f32(wrap if use_wrap else 0.0), c_in, c_soft, i32(iw), i32(ih),
                c_known if c_known is not None else np.uint64(0), i32(kw), i32(kh), cupy.from_dlpack(_decode_table(fg.device)),
            ),
        )
    return out


# ---------------------------------------------------------------------------
# separable Gaussian blur of (C, H, W) float32 planes with reflected edges (torch's 'reflect' padding)
#
# For planes too large for composite.gaussian_blur's matrix products (the feather at half size):
# cuDNN ran the depthwise 1-D convolutions as an implicit GEMM at ~300 us a 1080p plane (H200).

_BLUR_SOURCE = r"""
__device__ __forceinline__ int reflect(int i, int n) { return i < 0 ? -i : (i >= n ? 2 * (n - 1) - i : i); }

extern "C" __global__ void blur_rows(const float* __restrict__ src, float* __restrict__ dst, int W, int H, int C,
                                     const float* __restrict__ taps, int r, int horizontal)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y, c = blockIdx.z;
    if (x >= W || y >= H || c >= C) return;
    const float* p = src + (long long)c * W * H;
    float acc = 0.f;
    if (horizontal) {
        const float* row = p + (long long)y * W;
        for (int t = -r; t <= r; ++t) acc += taps[t + r] * row[reflect(x + t, W)];
    } else {
        for (int t = -r; t <= r; ++t) acc += taps[t + r] * p[(long long)reflect(y + t, H) * W + x];
    }
    dst[(long long)c * W * H + (long long)y * W + x] = acc;
}
"""
_BLUR_MODULE: Any = None


def gaussian_blur_cupy(img: torch.Tensor, taps: torch.Tensor, stream: Any = None) -> torch.Tensor:
    """(C, H, W) float32 on CUDA blurred by the 1-D `taps` (odd length, on the device) along x then y."""
    global _BLUR_MODULE
    import cupy
    import numpy as np

    if _BLUR_MODULE is None:
        _BLUR_MODULE = cupy.RawModule(code=_BLUR_SOURCE, options=("--std=c++14",))
    if stream is None:
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(img.device).cuda_stream)
    c, h, w = (int(v) for v in img.shape)
    src = img.float().contiguous()
    mid, out = torch.empty_like(src), torch.empty_like(src)
    r = (int(taps.shape[0]) - 1) // 2
    block = (32, 8, 1)
    grid = ((w + 31) // 32, (h + 7) // 8, c)
    fn = _BLUR_MODULE.get_function("blur_rows")
    i32 = np.int32
    with stream:
        k = cupy.from_dlpack(taps.float().contiguous())
        fn(grid, block, (cupy.from_dlpack(src), cupy.from_dlpack(mid), i32(w), i32(h), i32(c), k, i32(r), i32(1)))
        fn(grid, block, (cupy.from_dlpack(mid), cupy.from_dlpack(out), i32(w), i32(h), i32(c), k, i32(r), i32(0)))
    return out
