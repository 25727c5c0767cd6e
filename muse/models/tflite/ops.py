"""Torch modules for TFLite operators, built from a reader `Operator`.

Activations of rank 4 run in NCHW (torch's fast layout); TFLite's NHWC
weights, axes and paddings are converted once here. SAME padding follows
TFLite exactly (the extra pixel of an odd total goes after, not before).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muse.models.tflite.reader import Graph, Operator, TFLiteError

# NHWC axis -> NCHW axis, for activations of rank 4.
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


def nchw_constant(value: np.ndarray, rank: int = 4) -> torch.Tensor:
    """A constant that broadcasts against an NHWC tensor, rearranged to broadcast against NCHW."""
    t = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    while t.dim() < rank:
        t = t.unsqueeze(0)
    if t.dim() == 4:
        t = t.permute(0, 3, 1, 2)
    return t.contiguous()


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    if name == "NONE":
        return None
    if name == "RELU":
        return F.relu
    if name == "RELU6":
        return lambda x: x.clamp(0.0, 6.0)
    if name == "RELU_N1_TO_1":
        return lambda x: x.clamp(-1.0, 1.0)
    if name == "TANH":
        return torch.tanh
    raise TFLiteError(f"fused activation {name} is not supported")


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding (before, after) for one spatial dimension."""
    effective = (kernel - 1) * dilation + 1
    out = (size + stride - 1) // stride
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


class _Op(nn.Module):
    """Base: applies the fused activation after `compute`."""

    def __init__(self, act: str = "NONE") -> None:
        super().__init__()
        self.act_name = act
        self._act = activation(act)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        return self._act(y) if self._act is not None else y


class Conv(_Op):
    """CONV_2D and DEPTHWISE_CONV_2D (groups = input channels)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, dilation, pads, groups: int, act: str) -> None:
        super().__init__(act)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride = tuple(stride)
        self.dilation = tuple(dilation)
        self.groups = groups
        (t, b), (l, r) = pads
        # Symmetric padding folds into the convolution; TFLite's odd SAME padding needs an explicit pad.
        if t == b and l == r:
            self.conv_pad, self.pre_pad = (t, l), None
        else:
            self.conv_pad, self.pre_pad = (0, 0), (l, r, t, b)

    def pads(self) -> tuple[int, int, int, int]:
        """The zero padding this convolution applies, (left, right, top, bottom)."""
        if self.pre_pad is not None:
            l, r, t, b = self.pre_pad
            return l, r, t, b
        t, l = self.conv_pad
        return l, l, t, t

    def set_pads(self, l: int, r: int, t: int, b: int) -> bool:
        """Apply this zero padding inside the convolution (no separate pad kernel); False where it cannot.

        Uneven padding (TFLite's SAME puts the odd pixel after) becomes even padding p = max(before, after)
        with a kernel grown by zero taps: p - before in front, p - after behind, so every real tap still
        meets the same input pixel and the output size is unchanged. Needs dilation 1."""
        if l == r and t == b:
            self.conv_pad, self.pre_pad = (t, l), None
            return True
        if self.dilation != (1, 1):
            self.conv_pad, self.pre_pad = (0, 0), (l, r, t, b)
            return False
        ph, pw = max(t, b), max(l, r)
        w = self.weight.data
        kh, kw = w.shape[-2:]
        grown = w.new_zeros(*w.shape[:-2], kh + 2 * ph - t - b, kw + 2 * pw - l - r)
        grown[..., ph - t : ph - t + kh, pw - l : pw - l + kw] = w
        self.weight = nn.Parameter(grown, requires_grad=False)
        self.conv_pad, self.pre_pad = (ph, pw), None
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        y = F.conv2d(x, self.weight, self.bias, self.stride, self.conv_pad, self.dilation, self.groups)
        return self.finish(y)


class TransposeConv(_Op):
    """MediaPipe's custom Convolution2DTransposeBias (and builtin TRANSPOSE_CONV): transposed conv + bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, crop, out_hw, act: str = "NONE") -> None:
        super().__init__(act)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.stride = tuple(stride)
        self.crop = tuple(crop)  # (top, left)
        self.out_hw = tuple(out_hw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv_transpose2d(x, self.weight, self.bias, self.stride)
        t, l = self.crop
        h, w = self.out_hw
        if y.shape[2] != h or y.shape[3] != w or t or l:
            y = y[:, :, t : t + h, l : l + w]
        return self.finish(y)


class Binary(_Op):
    """ADD / MUL / SUB / DIV, with an optional constant operand already in NCHW broadcast form."""

    def __init__(self, kind: str, const: torch.Tensor | None, const_first: bool, act: str) -> None:
        super().__init__(act)
        self.kind = kind
        self.const_first = const_first
        if const is not None:
            self.register_buffer("const", const)
        else:
            self.const = None

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        if self.const is not None:
            a, b = (self.const, a) if self.const_first else (a, self.const)
        assert b is not None
        if self.kind == "ADD":
            y = a + b
        elif self.kind == "MUL":
            y = a * b
        elif self.kind == "SUB":
            y = a - b
        else:
            y = a / b
        return self.finish(y)


class Unary(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k == "RELU":
            return F.relu(x)
        if k == "RELU6":
            return x.clamp(0.0, 6.0)
        if k == "RELU_N1_TO_1":
            return x.clamp(-1.0, 1.0)
        if k == "LOGISTIC":
            return torch.sigmoid(x)
        if k == "TANH":
            return torch.tanh(x)
        if k == "HARD_SWISH":
            return F.hardswish(x)  # x * relu6(x + 3) / 6, one fused kernel
        raise TFLiteError(f"unary op {k} is not supported")


class PRelu(nn.Module):
    def __init__(self, alpha: torch.Tensor) -> None:
        super().__init__()
        self.alpha = nn.Parameter(alpha, requires_grad=False)
        # One slope per channel (the face and iris models' 23 and 53 PReLUs): kept flat, as F.prelu takes it,
        # so a call is the one fused kernel and no reshape or cast of the slopes is dispatched every frame.
        per_channel = alpha.dim() == 1 or (alpha.dim() == 4 and alpha.numel() == alpha.shape[1])
        self.channel_alpha = nn.Parameter(alpha.reshape(-1).clone(), requires_grad=False) if per_channel else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.channel_alpha
        if a is not None and x.dim() == 4 and a.numel() == x.shape[1]:
            # One fused kernel instead of three (compare, multiply, select): ~150 launches a frame.
            return F.prelu(x, a if a.dtype == x.dtype else a.to(x.dtype))
        return torch.where(x >= 0, x, x * self.alpha)


class Pad(nn.Module):
    def __init__(self, pads: tuple[int, ...], value: float = 0.0) -> None:
        super().__init__()
        self.pads = pads  # F.pad order: last dimension first
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, self.pads, value=self.value)


class Pool(_Op):
    """AVERAGE_POOL_2D (padding excluded from the mean, as TFLite does) and MAX_POOL_2D."""

    def __init__(self, kind: str, kernel, stride, pads, in_hw, act: str) -> None:
        super().__init__(act)
        self.kind = kind
        self.kernel = tuple(kernel)
        self.stride = tuple(stride)
        (t, b), (l, r) = pads
        self.pads = (l, r, t, b) if (t or b or l or r) else None
        if kind == "AVERAGE_POOL_2D" and self.pads is not None:
            ones = torch.ones(1, 1, *in_hw)
            count = F.avg_pool2d(F.pad(ones, self.pads), self.kernel, self.stride)
            self.register_buffer("count", count)
        else:
            self.count = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "MAX_POOL_2D":
            if self.pads is not None:
                x = F.pad(x, self.pads, value=float("-inf"))
            y = F.max_pool2d(x, self.kernel, self.stride)
        elif self.pads is None and tuple(x.shape[-2:]) == self.kernel:
            # A global average (squeeze-and-excitation blocks): a reduction kernel; avg_pool2d gives each
            # output to one thread that walks the whole plane (60 us a call on an H200).
            y = x.mean((2, 3), keepdim=True)
        else:
            if self.pads is not None:
                x = F.pad(x, self.pads)
            y = F.avg_pool2d(x, self.kernel, self.stride)
            if self.count is not None:
                y = y / self.count
        return self.finish(y)


class Mean(nn.Module):
    def __init__(self, dims: tuple[int, ...], keep_dims: bool, to_nhwc_first: bool) -> None:
        super().__init__()
        self.dims = dims
        self.keep_dims = keep_dims
        self.to_nhwc_first = to_nhwc_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.to_nhwc_first:
            x = x.permute(0, 2, 3, 1)
        return x.mean(dim=self.dims, keepdim=self.keep_dims)


class ResizeBilinear(nn.Module):
    def __init__(self, out_hw, align_corners: bool, half_pixel_centers: bool, in_hw) -> None:
        super().__init__()
        self.out_hw = tuple(int(v) for v in out_hw)
        self.align_corners = align_corners
        self.legacy = not align_corners and not half_pixel_centers
        if self.legacy:
            # TF's original rule src = dst * in / out (no half-pixel shift): torch has no mode for it,
            # so precompute the two taps and weights per row and column.
            for axis, (n_in, n_out) in zip("hw", zip(in_hw, self.out_hw)):
                src = np.arange(n_out) * (n_in / n_out)
                lo = np.floor(src).astype(np.int64)
                hi = np.minimum(lo + 1, n_in - 1)
                self.register_buffer(f"lo_{axis}", torch.from_numpy(lo))
                self.register_buffer(f"hi_{axis}", torch.from_numpy(hi))
                self.register_buffer(f"w_{axis}", torch.from_numpy((src - lo).astype(np.float32)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.legacy:
            return F.interpolate(x, size=self.out_hw, mode="bilinear", align_corners=self.align_corners)
        w_h = self.w_h.to(x.dtype).view(1, 1, -1, 1)
        x = x.index_select(2, self.lo_h) * (1 - w_h) + x.index_select(2, self.hi_h) * w_h
        w_w = self.w_w.to(x.dtype).view(1, 1, 1, -1)
        return x.index_select(3, self.lo_w) * (1 - w_w) + x.index_select(3, self.hi_w) * w_w


class Concat(_Op):
    def __init__(self, dim: int, act: str) -> None:
        super().__init__(act)
        self.dim = dim

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return self.finish(torch.cat(xs, dim=self.dim))


class Reshape(nn.Module):
    """RESHAPE in TFLite's NHWC element order; the leading (batch) dimension follows the input."""

    def __init__(self, shape: tuple[int, ...], from_nchw: bool, to_nchw: bool) -> None:
        super().__init__()
        self.shape = shape
        self.from_nchw = from_nchw
        self.to_nchw = to_nchw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.from_nchw:
            x = x.permute(0, 2, 3, 1)
        y = x.reshape((x.shape[0], *self.shape[1:]))
        if self.to_nchw:
            y = y.permute(0, 3, 1, 2)
        return y.contiguous()


class DepthToSpace(nn.Module):
    """TFLite DEPTH_TO_SPACE (DCR order: the block offset is the slow part of the channel index),
    unlike torch's pixel_shuffle (CRD)."""

    def __init__(self, block: int) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        b = self.block
        y = x.reshape(n, b, b, c // (b * b), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (b * b), h * b, w * b)


# --------------------------------------------------------------------------------------
def build_op(op: Operator, graph: Graph, nchw: dict[int, bool]) -> tuple[nn.Module, list[int]]:
    """The torch module for `op` and the tensor indices it takes at run time (weights are baked in).

    `nchw[i]` says whether activation tensor i is held in NCHW (every rank-4 activation is)."""
    k = op.kind
    o = op.options
    T = graph.tensors

    def const(i: int) -> np.ndarray:
        data = T[i].data
        if data is None:
            raise TFLiteError(f"{k}: input {T[i].name!r} must be a constant (weights) for this converter")
        return data.astype(np.float32)

    def hw(i: int) -> tuple[int, int]:
        s = T[i].shape
        return int(s[1]), int(s[2])

    if k in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        x, w_i = op.inputs[0], op.inputs[1]
        b_i = op.inputs[2] if len(op.inputs) > 2 else -1
        w = const(w_i)  # CONV: (O, kh, kw, I); DEPTHWISE: (1, kh, kw, I*m)
        kh, kw = w.shape[1], w.shape[2]
        h, wd = hw(x)
        if k == "CONV_2D":
            weight = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 3, 1, 2)))
            groups = max(1, T[x].shape[3] // w.shape[3])
        else:
            weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 0, 1, 2)))
            groups = int(T[x].shape[3])
        bias = torch.from_numpy(const(b_i).reshape(-1)) if b_i >= 0 else None
        sh, sw = o["stride"]
        dh, dw = o["dilation"]
        if o["padding"] == "SAME":
            pads = (same_padding(h, kh, sh, dh), same_padding(wd, kw, sw, dw))
        else:
            pads = ((0, 0), (0, 0))
        return Conv(weight, bias, (sh, sw), (dh, dw), pads, groups, o["activation"]), [x]

    if k in ("CUSTOM:Convolution2DTransposeBias", "TRANSPOSE_CONV"):
        if k == "TRANSPOSE_CONV":  # inputs: output_shape, weights, input, [bias]
            x, w_i = op.inputs[2], op.inputs[1]
            b_i = op.inputs[3] if len(op.inputs) > 3 else -1
        else:  # inputs: input, weights, bias
            x, w_i, b_i = op.inputs[0], op.inputs[1], op.inputs[2]
        w = const(w_i)  # (O, kh, kw, I)
        weight = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 0, 1, 2)))  # (I, O, kh, kw)
        bias = torch.from_numpy(const(b_i).reshape(-1)) if b_i >= 0 else None
        sh, sw = o["stride"]
        out_h, out_w = hw(op.outputs[0])
        in_h, in_w = hw(x)
        full_h = (in_h - 1) * sh + w.shape[1]
        full_w = (in_w - 1) * sw + w.shape[2]
        if o["padding"] == "SAME":
            crop = (max(full_h - out_h, 0) // 2, max(full_w - out_w, 0) // 2)
        else:
            crop = (0, 0)
        return TransposeConv(weight, bias, (sh, sw), crop, (out_h, out_w), o.get("activation", "NONE")), [x]

    if k in ("ADD", "MUL", "SUB", "DIV"):
        a, b = op.inputs[0], op.inputs[1]
        a_const, b_const = T[a].constant, T[b].constant
        if a_const and b_const:
            raise TFLiteError(f"{k} of two constants ({T[a].name!r}, {T[b].name!r}) should have been folded")
        if a_const or b_const:
            c, d = (a, b) if a_const else (b, a)
            rank = 4 if nchw.get(d) else len(T[d].shape)
            value = const(c)
            cst = nchw_constant(value, rank) if nchw.get(d) else torch.from_numpy(np.ascontiguousarray(value))
            return Binary(k, cst, a_const, o["activation"]), [d]
        if bool(nchw.get(a)) != bool(nchw.get(b)):
            raise TFLiteError(f"{k}: mixing a rank-4 and a lower-rank activation ({T[a].name!r}, {T[b].name!r}) is not supported")
        return Binary(k, None, False, o["activation"]), [a, b]

    if k in ("RELU", "RELU6", "RELU_N1_TO_1", "LOGISTIC", "TANH", "HARD_SWISH"):
        return Unary(k), [op.inputs[0]]

    if k == "PRELU":
        x, a = op.inputs[0], op.inputs[1]
        alpha = nchw_constant(const(a)) if nchw.get(x) else torch.from_numpy(const(a))
        return PRelu(alpha), [x]

    if k in ("PAD", "PADV2"):
        x = op.inputs[0]
        p = T[op.inputs[1]].data
        if p is None:
            raise TFLiteError(f"{k}: paddings must be constant")
        p = p.astype(np.int64).reshape(-1, 2)
        if nchw.get(x):
            p = p[[0, 3, 1, 2]]  # NHWC rows -> NCHW rows
        flat: list[int] = []
        for before, after in p[::-1]:  # F.pad wants the last dimension first
            flat += [int(before), int(after)]
        value = float(T[op.inputs[2]].data.reshape(-1)[0]) if k == "PADV2" and len(op.inputs) > 2 else 0.0
        return Pad(tuple(flat), value), [x]

    if k in ("AVERAGE_POOL_2D", "MAX_POOL_2D"):
        x = op.inputs[0]
        h, w = hw(x)
        kh, kw = o["kernel"]
        sh, sw = o["stride"]
        pads = (same_padding(h, kh, sh), same_padding(w, kw, sw)) if o["padding"] == "SAME" else ((0, 0), (0, 0))
        return Pool(k, (kh, kw), (sh, sw), pads, (h, w), o["activation"]), [x]

    if k == "MEAN":
        x = op.inputs[0]
        axes = [int(v) for v in np.asarray(T[op.inputs[1]].data).reshape(-1)]
        rank = len(T[x].shape)
        axes = [a % rank for a in axes]
        keep = o.get("keep_dims", False)
        if nchw.get(x) and keep:
            return Mean(tuple(NHWC_TO_NCHW_AXIS[a] for a in axes), True, False), [x]
        return Mean(tuple(axes), keep, bool(nchw.get(x))), [x]

    if k == "RESIZE_BILINEAR":
        x = op.inputs[0]
        out_hw = hw(op.outputs[0])
        return ResizeBilinear(out_hw, o["align_corners"], o["half_pixel_centers"], hw(x)), [x]

    if k == "CONCATENATION":
        ins = list(op.inputs)
        rank = len(T[op.outputs[0]].shape)
        axis = o["axis"] % rank
        if nchw.get(ins[0]):
            axis = NHWC_TO_NCHW_AXIS[axis]
        return Concat(axis, o["activation"]), ins

    if k == "RESHAPE":
        x = op.inputs[0]
        shape = tuple(int(v) for v in T[op.outputs[0]].shape)
        return Reshape(shape, bool(nchw.get(x)), len(shape) == 4), [x]

    if k == "DEPTH_TO_SPACE":
        return DepthToSpace(int(o["block_size"])), [op.inputs[0]]

    raise TFLiteError(f"operator {k} is not supported by muse's TFLite converter")
