"""Quantiles of the matte's difference maps over the pixels whose clean plate is known, in two kernels.

`segment.fused` reads six robust statistics a frame (camera shift medians, the light's gain, the noise floor,
whether the camera is still): each is the q-quantile (linear interpolation, as `torch.quantile`) of every 7th
value of a working-resolution map, counting only pixels whose plate is known. Written as torch ops, that is a
sort of each row: on the H200 (2026-12-03, stream_4k with the compiled matte) CUB's radix sort ran 27 kernels and
0.22 ms of GPU time a frame, the costliest work of the matte after its convolutions.

On CUDA with CuPy this is two CuPy kernels a call: the whole GPU gathers every 7th value as an ordered key into a
contiguous buffer (the strided reads are what one block alone could not do fast: a first version read them in
the select and took 0.09 ms a call, H200), then one block a row counts the known pixels and selects the two order
statistics the interpolation needs by radix, 8 bits a pass, from L2. The numbers are those of the
sort (the same order statistics; the count and position rounded as torch rounds them). Elsewhere (the CPU, no
CuPy, a first call inside a CUDA graph recording, where no kernel may be built) the sort runs.

`known_quantiles` is a torch custom op (`muse::known_quantiles`), so `torch.compile` keeps it as one call in the
compiled matte instead of tracing into it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

__all__ = ["SUBSAMPLE", "UNKNOWN", "known_quantiles", "known_quantiles_sorted", "usable"]

log = logging.getLogger("muse.segment")

SUBSAMPLE = 7  # every 7th pixel: the statistics of a 288-line map need no more
UNKNOWN = 1e3  # where the plate is unknown: a value above every difference, sorted to the end

_SOURCE = r"""
__device__ __forceinline__ unsigned int key_of(float v) {
    if (v != v) v = __int_as_float(0x7fc00000);  // every NaN last, as torch.sort puts them
    unsigned int b = __float_as_uint(v);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);  // unsigned order = float order
}

__device__ __forceinline__ float value_of(unsigned int k) {
    return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Pass 1, the whole GPU: every step-th value of each row (B rows of row_len floats) as an ordered key (unknown
// pixels as `unknown`), and whether it is known, into contiguous (B, n) arrays. grid (ceil(n / 256), B).
extern "C" __global__ void known_keys(const float* __restrict__ d, const float* __restrict__ known,
                                      unsigned int* __restrict__ keys, unsigned char* __restrict__ flags,
                                      const unsigned int row_len, const unsigned int step, const unsigned int n,
                                      const float unknown) {
    const unsigned int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const size_t src = (size_t)blockIdx.y * row_len + (size_t)i * step;
    const bool k = known[src] > 0.5f;
    keys[(size_t)blockIdx.y * n + i] = key_of(k ? d[src] : unknown);
    flags[(size_t)blockIdx.y * n + i] = k ? 1 : 0;
}

// Inclusive prefix sum of one value per thread over the first 256 threads (8 warps); all threads call it.
__device__ __forceinline__ unsigned int scan256(unsigned int c, unsigned int* warp_sums) {
    const unsigned int lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    for (unsigned int o = 1; o < 32; o <<= 1) {
        unsigned int up = __shfl_up_sync(0xffffffffu, c, o);
        if (lane >= o) c += up;
    }
    if (lane == 31u && warp < 8u) warp_sums[warp] = c;
    __syncthreads();
    unsigned int before = 0;
    for (unsigned int w = 0; w < warp && w < 8u; ++w) before += warp_sums[w];
    __syncthreads();
    return c + before;
}

// Pass 2, one block (a multiple of 32 threads, at least 256) per row of n keys: the q-quantile over the known
// values, interpolated linearly between the two order statistics around q * kf * (n - 1) (unknown ones count as
// `unknown`, sorted to the end), found by a radix select, 8 bits a pass; each warp adds its lanes of one digit
// with one atomic (the first passes see few distinct digits).
extern "C" __global__ void select_quantiles(const unsigned int* __restrict__ keys,
                                            const unsigned char* __restrict__ flags, float* __restrict__ out,
                                            const unsigned int n, const float q) {
    __shared__ unsigned int hist[2][256];
    __shared__ unsigned int warp_sums[8];
    __shared__ unsigned int s_count;
    __shared__ unsigned int s_prefix[2], s_rank[2];
    const unsigned int tid = threadIdx.x, lane = tid & 31u;
    const unsigned int* kr = keys + (size_t)blockIdx.x * n;
    const unsigned char* fr = flags + (size_t)blockIdx.x * n;

    if (tid == 0) s_count = 0;
    __syncthreads();
    unsigned int mine = 0;
    for (unsigned int i = tid; i < n; i += blockDim.x) mine += fr[i];
    for (unsigned int o = 16; o > 0; o >>= 1) mine += __shfl_down_sync(0xffffffffu, mine, o);
    if (lane == 0) atomicAdd(&s_count, mine);
    __syncthreads();

    // As torch: kf = count * (1/n) (a mean), pos = (q * kf) * (n - 1) clamped, lo = floor, hi = lo + 1 capped.
    const float kf = (float)s_count * (1.0f / (float)n);
    const float last = (float)(n - 1u);
    const float pos = fminf(fmaxf((q * kf) * last, 0.0f), last);
    const unsigned int lo = (unsigned int)floorf(pos);
    const unsigned int hi = lo + 1u < n ? lo + 1u : n - 1u;
    const float f = pos - (float)lo;

    unsigned int prefix[2] = {0u, 0u}, rank[2] = {lo, hi}, mask = 0u;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (unsigned int i = tid; i < 512u; i += blockDim.x) (&hist[0][0])[i] = 0u;
        __syncthreads();
        for (unsigned int base = 0; base < n; base += blockDim.x) {  // warp-uniform: every lane takes part
            const unsigned int i = base + tid;
            const unsigned int k = i < n ? kr[i] : 0u;
            const unsigned int digit = (k >> shift) & 255u;
            for (int s = 0; s < 2; ++s) {
                const bool in = i < n && (k & mask) == prefix[s];
                const unsigned int peers = __match_any_sync(0xffffffffu, in ? digit : 256u + lane);
                if (in && (__ffs(peers) - 1) == (int)lane) atomicAdd(&hist[s][digit], (unsigned int)__popc(peers));
            }
        }
        __syncthreads();
        for (int s = 0; s < 2; ++s) {
            const unsigned int c = tid < 256u ? hist[s][tid] : 0u;
            const unsigned int incl = scan256(c, warp_sums);
            if (tid < 256u && c > 0u && incl - c <= rank[s] && rank[s] < incl) {
                s_prefix[s] = prefix[s] | (tid << shift);
                s_rank[s] = rank[s] - (incl - c);
            }
        }
        __syncthreads();
        for (int s = 0; s < 2; ++s) { prefix[s] = s_prefix[s]; rank[s] = s_rank[s]; }
        mask |= 255u << shift;
        __syncthreads();
    }
    if (tid == 0) {
        const float a = value_of(prefix[0]), b = value_of(prefix[1]);
        out[blockIdx.x] = f < 0.5f ? a + f * (b - a) : b - (b - a) * (1.0f - f);  // torch.lerp's two forms
    }
}
"""

_THREADS = 1024  # the select's block: one row of ~21k keys a block
_MODULE: Any = None
_FUNCTIONS: dict[int, tuple[Any, Any]] = {}  # device index -> (known_keys, select_quantiles)
_BROKEN: list[str] = []  # why the kernel cannot be built here (then the sort runs)


def _function(index: int) -> Any:
    global _MODULE
    fn = _FUNCTIONS.get(index)
    if fn is None:
        import cupy

        if _MODULE is None:
            _MODULE = cupy.RawModule(code=_SOURCE, options=("--std=c++14",))
        with cupy.cuda.Device(index):
            fn = _FUNCTIONS[index] = (_MODULE.get_function("known_keys"), _MODULE.get_function("select_quantiles"))
    return fn


def usable(d: torch.Tensor) -> bool:
    """Whether the kernel runs for `d` here: float32 on CUDA, CuPy importable, the kernel built or buildable now
    (never built inside a CUDA graph recording, nor while another thread records or compiles)."""
    if not d.is_cuda or d.dtype != torch.float32 or _BROKEN:
        return False
    from muse.nodes.warp.kernels import cupy_available

    if not cupy_available():
        return False
    index = d.device.index if d.device.index is not None else torch.cuda.current_device()
    if index in _FUNCTIONS:
        return True
    if torch.cuda.is_current_stream_capturing():
        return False
    from muse.graph.compiled import GPU_CODE

    if not GPU_CODE.acquire(blocking=False):
        return False
    try:
        _function(index)
    except Exception as exc:  # NVRTC missing or failing: the sort runs, said once
        _BROKEN.append(str(exc))
        log.warning("quantile kernel unavailable (%s): the matte's statistics run as a sort", exc)
        return False
    finally:
        GPU_CODE.release()
    return True


def known_quantiles_sorted(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    """The same numbers as torch ops (B,): a sort of each row with the unknown values pushed to the end; no
    boolean indexing, no host read."""
    b = d.shape[0]
    dk = torch.where(known > 0.5, d, torch.full_like(d, UNKNOWN)).reshape(b, -1)[:, ::SUBSAMPLE]
    v = dk.sort(dim=1).values
    n = v.shape[1]
    kf = (known > 0.5).float().reshape(b, -1)[:, ::SUBSAMPLE].mean(dim=1)
    pos = (q * kf * (n - 1)).clamp(0.0, n - 1.0)  # linear interpolation, as torch.quantile
    lo = pos.floor().long()
    hi = (lo + 1).clamp_max(n - 1)
    f = pos - lo.float()
    return torch.lerp(v.gather(1, lo[:, None]), v.gather(1, hi[:, None]), f[:, None])[:, 0]


def known_quantiles_cupy(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    """The two kernels on torch's current stream (B,); `usable(d)` must hold. Allocates its output and the keys'
    scratch (inside a recording: from the recording's memory pool); reads nothing back."""
    import cupy

    b = int(d.shape[0])
    dr = d.reshape(b, -1).contiguous()
    kr = known.to(torch.float32).reshape(b, -1).contiguous()
    row_len = int(dr.shape[1])
    if tuple(kr.shape) != (b, row_len):
        raise ValueError(f"known_quantiles: known {tuple(known.shape)} does not fit d {tuple(d.shape)}")
    out = torch.empty(b, dtype=torch.float32, device=d.device)
    if b == 0:
        return out
    if row_len == 0:
        return out.fill_(float("nan"))  # torch's quantile of nothing
    index = d.device.index if d.device.index is not None else torch.cuda.current_device()
    keys_fn, select_fn = _function(index)
    n = (row_len + SUBSAMPLE - 1) // SUBSAMPLE
    keys = torch.empty(b * n, dtype=torch.int32, device=d.device)  # 32-bit keys, read as unsigned by the kernels
    flags = torch.empty(b * n, dtype=torch.uint8, device=d.device)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(d.device).cuda_stream)
    u32 = np.uint32
    with cupy.cuda.Device(index), stream:
        keys_fn(((n + 255) // 256, b), (256,), (np.uint64(dr.data_ptr()), np.uint64(kr.data_ptr()),
                                                np.uint64(keys.data_ptr()), np.uint64(flags.data_ptr()),
                                                u32(row_len), u32(SUBSAMPLE), u32(n), np.float32(UNKNOWN)))
        select_fn((b,), (_THREADS,), (np.uint64(keys.data_ptr()), np.uint64(flags.data_ptr()),
                                      np.uint64(out.data_ptr()), u32(n), np.float32(q)))
    return out


@torch.library.custom_op("muse::known_quantiles", mutates_args=())
def _known_quantiles_op(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    if usable(d):
        return known_quantiles_cupy(d, known, q)
    return known_quantiles_sorted(d, known, q)


@_known_quantiles_op.register_fake
def _(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    return d.new_empty((d.shape[0],))


def known_quantiles(d: torch.Tensor, known: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile of each d[i] over the pixels where known[i] > 0.5, every SUBSAMPLE-th pixel (B,), d and
    known (B, ...) alike. One kernel a call on CUDA (see the module docstring); the sort elsewhere. Under
    autograd (never on the stream) the sort, which torch can differentiate."""
    if torch.is_grad_enabled() and d.requires_grad:
        return known_quantiles_sorted(d, known, q)
    if d.dtype != torch.float32:
        return known_quantiles_sorted(d, known, q)
    return _known_quantiles_op(d, known, float(q))
