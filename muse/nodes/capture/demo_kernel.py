"""`capture.demo`'s frame on CUDA in one pass: the plate, the person blended in, and her alpha.

The torch form (`Demo.render`'s GPU branch) clones the plate, zero-fills a full-size alpha and blends
her square in six ops and a dozen views: ~0.6 ms of the source thread's CPU a 4K frame on the H200, and
~330 MB of GPU traffic beside the frame it feeds. This kernel writes each pixel of the frame and of the
alpha once (one thread a pixel; plate read, person and alpha read only inside her square), launched with
raw pointers on the source's stream: one launch a frame. The blend is the CPU path's (float32 lerp,
rounded to nearest), so GPU and CPU frames agree within one level.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from muse.graph.compiled import GPU_CODE
from muse.graph.devices import device_index
from muse.graph.streams import raw_stream
from muse.models.cuda_tap import MASK_T

log = logging.getLogger("muse.node.demo")

__all__ = ["DemoKernel"]

_SOURCE = MASK_T + r"""
// out (H, W, 3) uint8 = plate, with the person's (S, S, 3) float picture (0..255) blended in by her (S, S) alpha
// where her square, top-left (x0, y0), covers the frame; mask (H, W) = her alpha there, 0 elsewhere (when given).
extern "C" __global__ void demo_render(const unsigned char* __restrict__ plate, const float* __restrict__ person,
                                       const float* __restrict__ alpha, unsigned char* __restrict__ out,
                                       mask_t* __restrict__ mask, int W, int H, int S, int x0, int y0)
{
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)W * H) return;
    int y = (int)(i / W), x = (int)(i - (long long)y * W);
    int sx = x - x0, sy = y - y0;
    float a = 0.f;
    long long s = 0;
    if (sx >= 0 && sx < S && sy >= 0 && sy < S) {
        s = (long long)sy * S + sx;
        a = alpha[s];
    }
    const unsigned char* p = plate + i * 3;
    unsigned char* o = out + i * 3;
    if (a <= 0.f) {
        o[0] = p[0]; o[1] = p[1]; o[2] = p[2];
    } else {
        const float* f = person + s * 3;
        #pragma unroll
        for (int c = 0; c < 3; ++c) {
            float b = (float)p[c];
            o[c] = (unsigned char)fminf(fmaxf(rintf(b + (f[c] - b) * a), 0.f), 255.f);
        }
    }
    if (mask) mask[i] = f2m(a);
}
"""

_BLOCK = 256
_FUNCTIONS: dict[tuple[int, bool], Any] = {}


def _function(device: torch.device, half_mask: bool) -> Any:
    import cupy

    index = device_index(device)
    key = (index, half_mask)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        options = ("--std=c++14",) + (("-DMASK_HALF",) if half_mask else ())
        # NVRTC and a module load: never while another thread records a CUDA graph (the lock recordings take)
        with GPU_CODE, cupy.cuda.Device(index):
            fn = _FUNCTIONS[key] = cupy.RawModule(code=_SOURCE, options=options).get_function("demo_render")
    return fn


class DemoKernel:
    """The demo's person and plate as the kernel reads them, and its launch.

    Built in `Demo.open` (the kernel is compiled there, never during a frame); `None` from `build` where it
    cannot run (CPU, no CuPy, no NVRTC): the torch form renders then."""

    def __init__(self, plate: torch.Tensor, person: torch.Tensor, alpha: torch.Tensor, mask_dtype: torch.dtype) -> None:
        self.plate = plate.contiguous()  # (H, W, 3) uint8
        self.person = person.float().contiguous()  # (S, S, 3) float32, 0..255
        self.alpha = alpha.float().contiguous()  # (S, S) float32, 0..1
        self.mask_dtype = mask_dtype
        self.side = int(alpha.shape[0])
        self._fn = _function(plate.device, mask_dtype == torch.float16)
        self._streams: dict[int, Any] = {}  # torch stream handle -> its CuPy wrapper (made once: a frame's host time)

    @classmethod
    def build(cls, plate: torch.Tensor, person: torch.Tensor, alpha: torch.Tensor, mask_dtype: torch.dtype) -> DemoKernel | None:
        if not plate.is_cuda or mask_dtype not in (torch.float16, torch.float32):
            return None
        try:
            import cupy  # noqa: F401

            return cls(plate, person, alpha, mask_dtype)
        except Exception as exc:  # no CuPy, no NVRTC: the torch ops render
            log.info("capture.demo: one-pass render kernel unavailable (%s); rendering with torch ops", exc)
            return None

    def render(self, x0: int, y0: int, with_mask: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A fresh (H, W, 3) uint8 frame with her top-left at (x0, y0) (anywhere, even off the frame) and her
        (H, W) alpha (None unless `with_mask`), made on torch's current stream."""
        import cupy

        height, width = int(self.plate.shape[0]), int(self.plate.shape[1])
        dev = self.plate.device
        out = torch.empty((height, width, 3), dtype=torch.uint8, device=dev)
        mask = torch.empty((height, width), dtype=self.mask_dtype, device=dev) if with_mask else None
        n = height * width
        i32, u64 = np.int32, np.uint64
        handle = raw_stream(dev)
        stream = self._streams.get(handle)
        if stream is None:
            stream = self._streams[handle] = cupy.cuda.ExternalStream(handle)
        # the stream given to the launch, not made current around it: no context entered and left a frame
        self._fn(((n + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
                 (u64(self.plate.data_ptr()), u64(self.person.data_ptr()), u64(self.alpha.data_ptr()),
                  u64(out.data_ptr()), u64(0 if mask is None else mask.data_ptr()),
                  i32(width), i32(height), i32(self.side), i32(x0), i32(y0)), stream=stream)
        return out, mask
