"""A convolution and the elementwise steps after it as two kernels: the convolution without its bias, then one
in-place epilogue kernel y = act2(act1(y + bias[c]) + residual) on CUDA.

Unfused, a bundled model's convolution with bias costs a bias copy before torch's own GEMM (cuDNN off) or a bias
add after it (cuDNN on), and each activation, PReLU and residual ADD after it is a kernel of its own (an H200
profile of a frame: ~250 bias copies, 147 RELU6 clamps, 67 PReLUs, 108 ADDs). `ConvEpilogue` (made by `muse.models.tflite.fold`) keeps the
original steps as submodules and runs exactly them wherever the fused form is not wanted or cannot run: on the
CPU (bitwise the unfolded model), without CuPy, while torch.compile traces (Inductor fuses the plain ops itself),
during an ONNX export (the file keeps the graph as written) and while autograd records.

With cuDNN off, a non-depthwise convolution runs as cuBLAS's GEMM directly (on the input or on `F.unfold`'s
columns): torch's own `slow_conv2d` first fills its output (the bias, or zeros when there is none) and then
accumulates into it, so only a GEMM into a fresh tensor drops that kernel.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muse.graph.devices import device_index
from muse.models.tflite.ops import Conv, PRelu, Unary

__all__ = ["ACT_CODES", "ConvEpilogue", "epilogue", "epilogue_cupy", "epilogue_torch", "step_errors", "usable"]

log = logging.getLogger("muse.models")

# Activation codes of the kernel. PRELU takes one slope per channel.
ACT_CODES = {"NONE": 0, "RELU": 1, "RELU6": 2, "RELU_N1_TO_1": 3, "TANH": 4, "PRELU": 5, "HARD_SWISH": 6, "LOGISTIC": 7}

_SOURCE = r"""
// Half values travel as their 16 bits: no cuda_fp16.h needed at run time.
__device__ __forceinline__ float ld(const float* p, unsigned i) { return p[i]; }
__device__ __forceinline__ float ld(const unsigned short* p, unsigned i) {
    float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p[i])); return f;
}
__device__ __forceinline__ void st(float* p, unsigned i, float v) { p[i] = v; }
__device__ __forceinline__ void st(unsigned short* p, unsigned i, float v) {
    unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); p[i] = h;
}

// Comparisons written so that a NaN passes through as torch's clamp / relu / prelu let it.
template <typename T>
__device__ __forceinline__ float act(float v, int code, const T* slope, unsigned c) {
    switch (code) {
        case 1: return v < 0.f ? 0.f : v;
        case 2: return v < 0.f ? 0.f : (v > 6.f ? 6.f : v);
        case 3: return v < -1.f ? -1.f : (v > 1.f ? 1.f : v);
        case 4: return tanhf(v);
        case 5: return v > 0.f ? v : ld(slope, c) * v;
        case 6: return v * fminf(fmaxf(v + 3.f, 0.f), 6.f) / 6.f;
        case 7: return 1.f / (1.f + expf(-v));
        default: return v;
    }
}

// y (N, C, H, W) in place, contiguous (cl = 0) or channels_last (cl = 1); residual (N, Cr, H, W), Cr <= C, in
// the same layout, added to the first Cr channels (a channel-padded shortcut); null pointers: no bias / residual.
template <typename T>
__device__ __forceinline__ void body(T* y, const T* bias, const T* s1, const T* res, const T* s2, unsigned n,
                                     unsigned C, unsigned HW, unsigned Cr, int cl, int a1, int a2) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned c, r;
    if (cl) {
        c = i % C;
        r = (i / C) * Cr + c;
    } else {
        unsigned q = i / HW, p = i - q * HW;
        c = q % C;
        r = ((q / C) * Cr + c) * HW + p;
    }
    float v = ld(y, i);
    if (bias) v += ld(bias, c);
    v = act(v, a1, s1, c);
    if (res && c < Cr) v += ld(res, r);
    v = act(v, a2, s2, c);
    st(y, i, v);
}

extern "C" __global__ void epilogue_f32(float* y, const float* bias, const float* s1, const float* res,
                                        const float* s2, unsigned n, unsigned C, unsigned HW, unsigned Cr,
                                        int cl, int a1, int a2) {
    body(y, bias, s1, res, s2, n, C, HW, Cr, cl, a1, a2);
}

extern "C" __global__ void epilogue_f16(unsigned short* y, const unsigned short* bias, const unsigned short* s1,
                                        const unsigned short* res, const unsigned short* s2, unsigned n,
                                        unsigned C, unsigned HW, unsigned Cr, int cl, int a1, int a2) {
    body(y, bias, s1, res, s2, n, C, HW, Cr, cl, a1, a2);
}
"""

_NAMES = {torch.float32: "epilogue_f32", torch.float16: "epilogue_f16"}
_BLOCK = 256
_MODULE: Any = None
_FUNCTIONS: dict[tuple[int, torch.dtype], Any] = {}  # (device index, dtype) -> loaded kernel
_CUPY: list[Any] = []  # [cupy module or None], filled at the first look
_BROKEN: list[str] = []  # why the kernel cannot be built here (then the plain steps run)


def _cupy() -> Any:
    if not _CUPY:
        try:
            import cupy
        except Exception:  # not installed, or no CUDA driver it can load
            cupy = None
        _CUPY.append(cupy)
    return _CUPY[0]


def _function(device: torch.device, dtype: torch.dtype) -> Any:
    """The kernel for `dtype` loaded on `device`; compiled once a process (NVRTC), never during a capture."""
    global _MODULE
    key = (device_index(device), dtype)
    fn = _FUNCTIONS.get(key)
    if fn is None:
        cupy = _cupy()
        if _MODULE is None:
            _MODULE = cupy.RawModule(code=_SOURCE, options=("--std=c++14",))
        with cupy.cuda.Device(key[0]):
            fn = _FUNCTIONS[key] = _MODULE.get_function(_NAMES[dtype])
    return fn


def usable(y: torch.Tensor) -> bool:
    """Whether the CuPy kernel can update `y` here: CUDA, float32/float16, CuPy importable, the kernel built or
    buildable now (never built inside a CUDA graph capture: loading a module there is not allowed)."""
    if not y.is_cuda or y.dtype not in _NAMES or _BROKEN or _cupy() is None:
        return False
    key = (device_index(y.device), y.dtype)
    if key in _FUNCTIONS:
        return True
    from muse.graph.compiled import build_gpu_code

    # Loading a module while another thread records a CUDA graph can break that recording: not now, plain steps
    # this call.
    return build_gpu_code(_FUNCTIONS, key, lambda: _function(y.device, y.dtype), _BROKEN, log,
                          "convolution epilogue kernel unavailable ({exc}): the bundled models run unfused",
                          logging.WARNING) is not None


def _layout(y: torch.Tensor) -> int | None:
    """0: contiguous NCHW, 1: channels_last, None: neither."""
    if y.is_contiguous():
        return 0
    if y.is_contiguous(memory_format=torch.channels_last):
        return 1
    return None


def _ptr(t: torch.Tensor | None) -> np.uint64:
    return np.uint64(0 if t is None else t.data_ptr())


def epilogue_cupy(y: torch.Tensor, bias: torch.Tensor | None, act1: str = "NONE", slope1: torch.Tensor | None = None,
                  residual: torch.Tensor | None = None, act2: str = "NONE", slope2: torch.Tensor | None = None) -> torch.Tensor:
    """The CuPy kernel on torch's current stream, `y` updated in place (see `epilogue`). Allocates nothing and reads
    nothing back, so it can be recorded into a CUDA graph once `usable(y)` has built it."""
    cupy = _cupy()
    n, c, h, w = (int(v) for v in y.shape)
    cl = _layout(y)
    if cl is None:
        raise ValueError("epilogue: y must be contiguous or channels_last")
    cr = c
    if residual is not None:
        cr = int(residual.shape[1])
        if residual.dtype != y.dtype or tuple(residual.shape) != (n, cr, h, w) or cr > c:
            raise ValueError(f"epilogue: residual {tuple(residual.shape)} {residual.dtype} does not fit y {tuple(y.shape)} {y.dtype}")
        residual = residual.contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    for p in (bias, slope1, slope2):
        if p is not None and (p.dtype != y.dtype or p.numel() != c or not p.is_contiguous()):
            raise ValueError(f"epilogue: per-channel parameters must be {c} contiguous {y.dtype} values")
    total = n * c * h * w
    if total >= 2**31:
        raise ValueError("epilogue: tensor too large for 32-bit indexing")
    if total == 0:
        return y
    i32, u32 = np.int32, np.uint32
    fn = _function(y.device, y.dtype)
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(y.device).cuda_stream)
    with cupy.cuda.Device(device_index(y.device)), stream:
        fn(((total + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
           (_ptr(y), _ptr(bias), _ptr(slope1), _ptr(residual), _ptr(slope2), u32(total), u32(c), u32(h * w), u32(cr),
            i32(cl), i32(ACT_CODES[act1]), i32(ACT_CODES[act2])))
    return y


def _act_(y: torch.Tensor, name: str, slope: torch.Tensor | None) -> torch.Tensor:
    """An activation of the kernel as torch ops, in place on `y` (the maths of ops.activation, Unary and PRelu)."""
    if name == "NONE":
        return y
    if name == "RELU":
        return y.relu_()
    if name == "RELU6":
        return y.clamp_(0.0, 6.0)
    if name == "RELU_N1_TO_1":
        return y.clamp_(-1.0, 1.0)
    if name == "TANH":
        return y.tanh_()
    if name == "LOGISTIC":
        return y.sigmoid_()
    if name == "HARD_SWISH":
        return F.hardswish(y, inplace=True)
    if name == "PRELU":
        assert slope is not None
        return y.copy_(F.prelu(y, slope.reshape(-1).to(y.dtype)))
    raise ValueError(f"epilogue: unknown activation {name}")


def epilogue_torch(y: torch.Tensor, bias: torch.Tensor | None, act1: str = "NONE", slope1: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, act2: str = "NONE", slope2: torch.Tensor | None = None) -> torch.Tensor:
    """The torch twin of the kernel, in place on `y`: the same ops the unfused steps run after a convolution."""
    if bias is not None:
        y.add_(bias.view(1, -1, 1, 1).to(y.dtype))
    _act_(y, act1, slope1)
    if residual is not None:
        (y.narrow(1, 0, residual.shape[1]) if residual.shape[1] != y.shape[1] else y).add_(residual)
    return _act_(y, act2, slope2)


def epilogue(y: torch.Tensor, bias: torch.Tensor | None, act1: str = "NONE", slope1: torch.Tensor | None = None,
             residual: torch.Tensor | None = None, act2: str = "NONE", slope2: torch.Tensor | None = None, *,
             backend: str = "auto") -> torch.Tensor:
    """y = act2(act1(y + bias[c]) + residual) in place on a (N, C, H, W) tensor and returned.

    `act1`/`act2`: a key of ACT_CODES; PRELU takes `slope1`/`slope2` (one value per channel). `residual` has y's
    shape, or fewer channels (added to the first ones: a channel-padded shortcut). `backend`: "auto" (the CuPy
    kernel where `usable`, else torch), "cupy" or "torch"."""
    if backend == "cupy" or (backend == "auto" and usable(y) and _layout(y) is not None):
        return epilogue_cupy(y, bias, act1, slope1, residual, act2, slope2)
    return epilogue_torch(y, bias, act1, slope1, residual, act2, slope2)


def _step_act(step: nn.Module | None) -> tuple[str, torch.Tensor | None]:
    if step is None:
        return "NONE", None
    if isinstance(step, PRelu):
        return "PRELU", step.channel_alpha
    assert isinstance(step, Unary)
    return step.kind, None


class ConvEpilogue(nn.Module):
    """`conv` [-> `first`] [-> `add` with a residual] [-> `second`] as one step (made by the fold).

    `first`/`second`: a Unary or a per-channel PRelu (only where the step before has no fused activation);
    `add`: a Binary ADD of two activations (`residual_first`: the residual is its first operand) or a ChannelPadAdd
    (`channel_pad`; the conv's chain is its in-place target). forward(x[, residual])."""

    def __init__(self, conv: Conv, first: nn.Module | None = None, add: nn.Module | None = None,
                 second: nn.Module | None = None, *, residual_first: bool = False, channel_pad: bool = False) -> None:
        super().__init__()
        if (first is not None and conv.act_name != "NONE") or (second is not None and (add is None or add.act_name != "NONE")):
            raise ValueError("ConvEpilogue: one activation per slot (after the convolution, after the add)")
        self.conv, self.first, self.add, self.second = conv, first, add, second
        self.residual_first = residual_first
        self.channel_pad = channel_pad
        act1, _ = _step_act(first)
        self.act1 = conv.act_name if conv.act_name != "NONE" else act1
        act2, _ = _step_act(second)
        self.act2 = add.act_name if add is not None and add.act_name != "NONE" else act2

    def extra_repr(self) -> str:
        return f"act1={self.act1}, residual={'channel pad' if self.channel_pad else self.add is not None}, act2={self.act2}"

    def plain(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """Exactly the unfolded steps."""
        y = self.conv(x)
        if self.first is not None:
            y = self.first(y)
        if self.add is not None:
            assert residual is not None
            if self.channel_pad:
                y = self.add(residual, y)
            else:
                y = self.add(residual, y) if self.residual_first else self.add(y, residual)
        if self.second is not None:
            y = self.second(y)
        return y

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        """The convolution's output height and width for an input of h x w."""
        c = self.conv
        l, r, t, b = c.pads()
        (sh, sw), (dh, dw) = c.stride, c.dilation
        kh, kw = c.weight.shape[2], c.weight.shape[3]
        return (h + t + b - dh * (kh - 1) - 1) // sh + 1, (w + l + r - dw * (kw - 1) - 1) // sw + 1

    def _wants_plain(self, x: torch.Tensor, residual: torch.Tensor | None) -> bool:
        if torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export() or not x.is_cuda or x.dim() != 4:
            return True
        if torch.is_grad_enabled() and (x.requires_grad or (residual is not None and residual.requires_grad)):
            return True  # the kernel is invisible to autograd
        c = self.conv
        if c.weight.dtype != x.dtype or (c.bias is not None and c.bias.dtype != x.dtype):
            return True
        if residual is not None:
            # the kernel adds a residual of y's shape (or its first channels); a broadcasting ADD stays plain
            n, cout = x.shape[0], c.weight.shape[0]
            if residual.dim() != 4 or residual.dtype != x.dtype or residual.shape[0] != n:
                return True
            if tuple(residual.shape[2:]) != self._out_hw(x.shape[2], x.shape[3]):
                return True
            if residual.shape[1] > cout or (not self.channel_pad and residual.shape[1] != cout):
                return True
        return not usable(x)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        """The convolution without its bias (see the module docstring for the GEMM with cuDNN off)."""
        c = self.conv
        if c.pre_pad is not None:
            x = F.pad(x, c.pre_pad)
        w = c.weight
        if (c.groups != 1 or (torch.backends.cudnn.enabled and torch.backends.cudnn.is_available())
                or not x.is_contiguous() or not w.is_contiguous()):
            return F.conv2d(x, w, None, c.stride, c.conv_pad, c.dilation, c.groups)
        n, cin, h, wd = x.shape
        cout, kh, kw = w.shape[0], w.shape[2], w.shape[3]
        if (kh, kw) == (1, 1) and c.stride == (1, 1) and c.conv_pad == (0, 0):
            cols, ho, wo = x.view(n, cin, h * wd), h, wd
        else:
            (sh, sw), (ph, pw), (dh, dw) = c.stride, c.conv_pad, c.dilation
            ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
            wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
            cols = F.unfold(x, (kh, kw), c.dilation, c.conv_pad, c.stride)  # the im2col slow_conv2d runs too
        w2 = w.view(cout, -1)
        y = torch.mm(w2, cols[0]) if n == 1 else torch.bmm(w2.expand(n, -1, -1), cols)
        return y.view(n, cout, ho, wo)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if self._wants_plain(x, residual):
            return self.plain(x, residual)
        y = self._conv(x)
        _, s1 = _step_act(self.first)
        _, s2 = _step_act(self.second)
        if _layout(y) is None:  # no layout the kernel indexes (not seen): the same maths in torch
            return epilogue_torch(y, self.conv.bias, self.act1, s1, residual, self.act2, s2)
        return epilogue_cupy(y, self.conv.bias, self.act1, s1, residual, self.act2, s2)


def step_errors(model: nn.Module, *inputs: torch.Tensor) -> list[tuple[float, str]]:
    """Run `model` on `inputs` and check each of its ConvEpilogue steps against its plain steps on the same inputs:
    (largest difference relative to the plain output's scale, the step's name and form), in the order they ran.
    A fused step far above its dtype's rounding is a wrong kernel; the model as a whole may still move more,
    amplifying rounding (bench/fold_accuracy.py, tests/test_tflite_fold.py)."""
    found: list[tuple[float, str]] = []
    names = {m: name for name, m in model.named_modules() if isinstance(m, ConvEpilogue)}

    def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
        ref = mod.plain(*args)
        err = float((out.float() - ref.float()).abs().max()) / max(1e-6, float(ref.float().abs().max()))
        found.append((err, f"{names[mod]}: {mod.extra_repr()}"))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for h in handles:
            h.remove()
    return found
