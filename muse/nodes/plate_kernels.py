"""The clean plate's per-frame passes on blocks: block sums of a uint8 picture, and the plate update.

`background.adaptive` keeps its bookkeeping (person here, frames clear, room seen) on blocks,
because its safety margin is dilated on blocks; only the plate's pixels need full resolution.
So one full-resolution pass a frame is enough: `plate_update` follows the exposure, drifts the
plate towards the frame where its block is clear, writes the uint8 picture (the plate where the
room was seen, the pull-push fill elsewhere) and the plate's block sums, which the next frame's
exposure gain and fill read. `block_sums_u8` gives a uint8 picture's block sums (the frame's, for
the gain; the composite's pooled pictures) without a full-resolution float copy.

Blocks follow nearest-neighbour upsampling's rule: pixel (y, x) belongs to block
(floor(y * bh / H), floor(x * bw / W)), so a (bh, bw) plane expanded with `mode="nearest"` lines up.
Each pass is a CuPy kernel on CUDA (one thread per block, zero-copy through DLPack on the node's
stream) and a torch twin (CPU, the capture emulation, CUDA without CuPy) with one contract.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from muse.models.cuda_tap import TAP_F32

__all__ = ["block_index", "block_counts", "block_sums", "block_sums_u8", "plate_update"]


def block_index(size: int, blocks: int, device: torch.device) -> torch.Tensor:
    """Block of each pixel along one axis: floor(i * blocks / size) (torch's nearest rule)."""
    return torch.div(torch.arange(size, device=device) * blocks, size, rounding_mode="floor")


def block_counts(height: int, width: int, bh: int, bw: int, device: torch.device) -> torch.Tensor:
    """(bh, bw) float32 pixels per block."""
    ry = torch.bincount(block_index(height, bh, device), minlength=bh).float()
    rx = torch.bincount(block_index(width, bw, device), minlength=bw).float()
    return ry[:, None] * rx[None, :]


def _flat_index(height: int, width: int, bh: int, bw: int, device: torch.device) -> torch.Tensor:
    iy, ix = block_index(height, bh, device), block_index(width, bw, device)
    return (iy[:, None] * bw + ix[None, :]).reshape(-1)


def block_sums(planes: torch.Tensor, bh: int, bw: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """(C, H, W) float -> (C, bh, bw) block sums."""
    c, height, width = planes.shape
    if height % bh == 0 and width % bw == 0:
        return planes.reshape(c, bh, height // bh, bw, width // bw).sum((2, 4))
    idx = index if index is not None else _flat_index(height, width, bh, bw, planes.device)
    out = torch.zeros((c, bh * bw), dtype=planes.dtype, device=planes.device)
    return out.index_add_(1, idx, planes.reshape(c, -1)).view(c, bh, bw)


_SOURCE = TAP_F32 + r"""
// Rows/columns of block b along an axis of `size` pixels cut into `blocks`: [ceil(b*size/blocks), ceil((b+1)*size/blocks)).
__device__ __forceinline__ int first_of(int b, int size, int blocks) { return (int)(((long long)b * size + blocks - 1) / blocks); }

extern "C" __global__ void block_sums_u8(const unsigned char* __restrict__ img, int W, int H, int bw, int bh,
                                         float* __restrict__ sums)
{
    int bx = blockIdx.x * blockDim.x + threadIdx.x, by = blockIdx.y * blockDim.y + threadIdx.y;
    if (bx >= bw || by >= bh) return;
    int y0 = first_of(by, H, bh), y1 = first_of(by + 1, H, bh);
    int x0 = first_of(bx, W, bw), x1 = first_of(bx + 1, W, bw);
    float s0 = 0.f, s1 = 0.f, s2 = 0.f;
    for (int y = y0; y < y1; ++y) {
        const unsigned char* row = img + ((long long)y * W) * 3;
        for (int x = x0; x < x1; ++x) {
            s0 += row[x * 3]; s1 += row[x * 3 + 1]; s2 += row[x * 3 + 2];
        }
    }
    int n = bh * bw, b = by * bw + bx;
    sums[b] = s0 / 255.f; sums[n + b] = s1 / 255.f; sums[2 * n + b] = s2 / 255.f;
}


extern "C" __global__ void plate_update(
    const unsigned char* __restrict__ frame, float* __restrict__ plate, unsigned char* __restrict__ out,
    int W, int H, int bw, int bh,
    const float* __restrict__ gain, const float* __restrict__ step, const float* __restrict__ known,
    const float* __restrict__ fill, int fw, int fh, float* __restrict__ plate_sums)
{
    int bx = blockIdx.x * blockDim.x + threadIdx.x, by = blockIdx.y * blockDim.y + threadIdx.y;
    if (bx >= bw || by >= bh) return;
    int b = by * bw + bx, n = bh * bw;
    int y0 = first_of(by, H, bh), y1 = first_of(by + 1, H, bh);
    int x0 = first_of(bx, W, bw), x1 = first_of(bx + 1, W, bw);
    float st = step[b];
    bool seen = known[b] > 0.f;
    float g[3] = {gain[0], gain[1], gain[2]};
    float s[3] = {0.f, 0.f, 0.f};
    long long hw = (long long)H * W;
    float sx = (float)fw / W, sy = (float)fh / H;
    for (int y = y0; y < y1; ++y) {
        for (int x = x0; x < x1; ++x) {
            long long i = (long long)y * W + x;
            #pragma unroll
            for (int c = 0; c < 3; ++c) {
                float p = plate[c * hw + i] * g[c];
                float f = frame[i * 3 + c] / 255.f;
                p = p + st * (f - p);
                plate[c * hw + i] = p;
                s[c] += p;
                float v = seen ? p : tap(fill + c * fh * fw, fw, fh, (x + 0.5f) * sx - 0.5f, (y + 0.5f) * sy - 0.5f);
                v = fminf(fmaxf(v, 0.f), 1.f);
                out[i * 3 + c] = (unsigned char)rintf(v * 255.f);
            }
        }
    }
    plate_sums[b] = s[0]; plate_sums[n + b] = s[1]; plate_sums[2 * n + b] = s[2];
}
"""

_MODULE: Any = None


def _function(name: str) -> Any:
    global _MODULE
    import cupy  # only the CUDA path needs it

    if _MODULE is None:
        _MODULE = cupy.RawModule(code=_SOURCE, options=("--std=c++14",))
    return _MODULE.get_function(name)


def _use_cupy(t: torch.Tensor, backend: str) -> bool:
    if not t.is_cuda or backend == "torch":
        return False
    from muse.nodes.warp.kernels import cupy_available

    return backend == "cupy" or cupy_available()


def _launch(name: str, t: torch.Tensor, bh: int, bw: int, args: tuple, stream: Any) -> None:
    import cupy

    if stream is None:
        stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(t.device).cuda_stream)
    block = (32, 4, 1)
    grid = ((bw + block[0] - 1) // block[0], (bh + block[1] - 1) // block[1], 1)
    with stream:
        conv = [cupy.from_dlpack(a) if isinstance(a, torch.Tensor) else a for a in args]
        _function(name)(grid, block, tuple(conv))


def block_sums_u8(img: torch.Tensor, bh: int, bw: int, *, out: torch.Tensor | None = None, backend: str = "auto",
                  stream: Any = None) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, bh, bw) float32 block sums of the values / 255."""
    import numpy as np

    height, width = int(img.shape[0]), int(img.shape[1])
    if out is None:
        out = torch.empty((3, bh, bw), dtype=torch.float32, device=img.device)
    if _use_cupy(img, backend):
        i32 = np.int32
        _launch("block_sums_u8", img, bh, bw, (img.contiguous(), i32(width), i32(height), i32(bw), i32(bh), out), stream)
        return out
    planes = img.permute(2, 0, 1).float() / 255.0
    return out.copy_(block_sums(planes, bh, bw))


def plate_update(
    frame: torch.Tensor,
    plate: torch.Tensor,
    out: torch.Tensor,
    gain: torch.Tensor,
    step: torch.Tensor,
    known: torch.Tensor,
    fill: torch.Tensor,
    plate_sums: torch.Tensor,
    *,
    backend: str = "auto",
    stream: Any = None,
) -> None:
    """One frame of the clean plate, in place.

    frame (H, W, 3) uint8; plate (3, H, W) float32 in [0, 1], updated in place:
    plate = plate * gain[c], then plate += step[block] * (frame / 255 - plate);
    out (H, W, 3) uint8 = the plate where known[block] > 0, else `fill` (3, fh, fw) sampled
    bilinearly; plate_sums (3, bh, bw) = the updated plate's block sums.
    """
    import numpy as np

    height, width = int(frame.shape[0]), int(frame.shape[1])
    bh, bw = int(step.shape[0]), int(step.shape[1])
    fh, fw = int(fill.shape[1]), int(fill.shape[2])
    if _use_cupy(frame, backend):
        i32 = np.int32
        args = (frame.contiguous(), plate, out, i32(width), i32(height), i32(bw), i32(bh),
                gain.float().contiguous(), step.float().contiguous(), known.float().contiguous(),
                fill.float().contiguous(), i32(fw), i32(fh), plate_sums)
        _launch("plate_update", frame, bh, bw, args, stream)
        return
    iy, ix = block_index(height, bh, frame.device), block_index(width, bw, frame.device)
    st = step[iy][:, ix]
    seen = known[iy][:, ix] > 0
    img = frame.permute(2, 0, 1).float() / 255.0
    plate.mul_(gain.view(3, 1, 1))
    plate.add_(st * (img - plate))
    f = fill if (fh, fw) == (height, width) else F.interpolate(fill[None], size=(height, width), mode="bilinear",
                                                               align_corners=False)[0]
    shown = torch.where(seen, plate, f)
    out.copy_(shown.clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0))
    plate_sums.copy_(block_sums(plate, bh, bw))
