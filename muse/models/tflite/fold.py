"""Load-time rewrites of a converted TFLite graph that cut the kernels each call launches.

On a GPU these small convnets are launch-bound (a 4K frame replays ~3,000 kernels, about 1 us of host time
each), so every step that only moves data is worth removing. The maths stay the same; only float rounding
may differ (a zero tap added to a convolution's sum):

- a zero `PAD` read only by convolutions becomes their own padding (pose models: 5 and 8 a call);
- TFLite's uneven SAME padding (the odd pixel after) stops being a separate pad: the kernel grows by zero
  taps so the padding is even and goes inside the convolution (face mesh: 7 a call, iris, detectors);
- a `PAD` of channels feeding an `ADD` (BlazeFace/BlazeBlock residuals: zeros appended to the shortcut's
  channels) becomes one in-place add into the first channels of the other operand;
- a convolution with the activation, per-channel PReLU and residual ADD (or channel PAD + ADD) after it becomes
  one `ConvEpilogue` (`muse.models.tflite.epilogue`): on CUDA the convolution without bias (a plain GEMM with
  cuDNN off: no bias fill) and one in-place CuPy kernel y = act2(act1(y + bias) + residual); the CPU, torch.compile
  and the ONNX export run the original steps. Only where each dropped intermediate has one reader and is no model
  output, and where it saves kernels: a non-depthwise convolution with one step after it, a depthwise one with two.

`fold_for_inference` is applied by `muse.models.bundled.load_model`; the saved artifact, the ONNX export and
`convert_tflite` keep the graph as TFLite wrote it.
"""

from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn.functional as F
from torch import nn

from muse.models.tflite.builder import TFLiteModule
from muse.models.tflite.epilogue import ConvEpilogue
from muse.models.tflite.ops import Binary, Conv, Pad, PRelu, Unary, activation


class ChannelPadAdd(nn.Module):
    """`ADD(PAD(x, channels after), y)` as `y[:, :C] += x`: no padded copy of x, one kernel instead of two.

    `y` must be a fresh tensor that nothing else reads (checked by the fold)."""

    def __init__(self, act: str) -> None:
        super().__init__()
        self.act_name = act
        self._act = activation(act)

    def finish(self, y: torch.Tensor) -> torch.Tensor:
        return self._act(y) if self._act is not None else y

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # an exporter sees the plain form (no in-place update of a slice)
            return self.finish(F.pad(x, (0, 0, 0, 0, 0, y.shape[1] - x.shape[1])) + y)
        y.narrow(1, 0, x.shape[1]).add_(x)
        return self.finish(y)


# Steps whose output is a tensor of their own (never a view of an input): safe to update in place.
_FRESH = (Conv, Binary, Unary, PRelu, ConvEpilogue)

# Unary ops the epilogue kernel computes (muse.models.tflite.epilogue.ACT_CODES).
_EPILOGUE_UNARY = ("RELU", "RELU6", "RELU_N1_TO_1", "TANH", "HARD_SWISH", "LOGISTIC")


def _epilogue_act(step: nn.Module, channels: int) -> bool:
    """A step the epilogue can take as an activation: a supported Unary, or a PReLU with one slope per channel."""
    if isinstance(step, Unary):
        return step.kind in _EPILOGUE_UNARY
    if isinstance(step, PRelu):
        return step.channel_alpha is not None and step.channel_alpha.numel() == channels
    return False


def _spatial_zero_pad(step: nn.Module) -> tuple[int, int, int, int] | None:
    """(left, right, top, bottom) of a zero PAD over H and W only, else None."""
    if not isinstance(step, Pad) or step.value != 0.0 or len(step.pads) != 8 or any(step.pads[4:]):
        return None
    l, r, t, b = step.pads[:4]
    return l, r, t, b


def _channel_zero_pad(step: nn.Module) -> int | None:
    """How many zero channels a PAD appends after the others (and nothing else), else None."""
    if not isinstance(step, Pad) or step.value != 0.0 or len(step.pads) != 8:
        return None
    l, r, t, b, c0, c1, n0, n1 = step.pads
    if l or r or t or b or c0 or n0 or n1 or c1 <= 0:
        return None
    return c1


def fold_for_inference(module: TFLiteModule, *, grow: bool = True, epilogue: bool = True) -> dict[str, int]:
    """Rewrite `module` in place (see the module docstring); returns how many of each rewrite happened.
    `grow=False` leaves uneven padding as a pad of its own (no kernel grown by zero taps: cuDNN may pick another
    algorithm for the grown shape; bench/bench_model_variants.py times both). `epilogue=False` keeps the
    convolutions' activations and residual adds as steps of their own."""
    steps: list[nn.Module] = list(module.steps)
    wiring: list[tuple[list[int], int]] = [(list(dyn), out) for dyn, out in module._wiring]
    keep = set(module.output_indices) | {module.input_index}
    done: dict[str, int] = defaultdict(int)

    def readers() -> dict[int, list[int]]:
        r: dict[int, list[int]] = defaultdict(list)
        for s, (dyn, _) in enumerate(wiring):
            for i in dyn:
                r[i].append(s)
        return r

    producer = {out: s for s, (_, out) in enumerate(wiring)}
    removed: set[int] = set()

    # 1. zero spatial PADs read only by convolutions (all of them able to take the padding)
    read = readers()
    for s, step in enumerate(steps):
        pads = _spatial_zero_pad(step)
        out = wiring[s][1]
        if pads is None or out in keep or not read[out]:
            continue
        convs = [c for c in (steps[r] for r in read[out]) if isinstance(c, Conv)]
        if len(convs) != len(read[out]):
            continue
        totals = [(pads[0] + l, pads[1] + r, pads[2] + t, pads[3] + b) for l, r, t, b in (c.pads() for c in convs)]
        uneven = any(not (l == r and t == b) for l, r, t, b in totals)
        if uneven and (not grow or any(c.dilation != (1, 1) for c in convs)):
            continue
        for c, (l, r, t, b) in zip(convs, totals):
            c.set_pads(l, r, t, b)
        src = wiring[s][0][0]
        for rd in read[out]:
            wiring[rd] = ([src if i == out else i for i in wiring[rd][0]], wiring[rd][1])
        removed.add(s)
        done["pad_into_conv"] += 1

    # 2. the convolutions' own uneven SAME padding
    for s, step in enumerate(steps):
        if grow and isinstance(step, Conv) and step.pre_pad is not None and step.set_pads(*step.pads()):
            done["uneven_pad_into_conv"] += 1

    # 3. channel PAD + ADD -> in-place add into the other operand's first channels
    read = readers()
    for s, step in enumerate(steps):
        if s in removed or _channel_zero_pad(step) is None:
            continue
        out = wiring[s][1]
        if out in keep or len(read[out]) != 1:
            continue
        a = read[out][0]
        add = steps[a]
        if not (isinstance(add, Binary) and add.kind == "ADD" and add.const is None) or len(wiring[a][0]) != 2:
            continue
        other = [i for i in wiring[a][0] if i != out]
        if len(other) != 1 or other[0] in keep or len(read[other[0]]) != 1:
            continue
        if other[0] not in producer or not isinstance(steps[producer[other[0]]], _FRESH):
            continue
        steps[a] = ChannelPadAdd(add.act_name)
        wiring[a] = ([wiring[s][0][0], other[0]], wiring[a][1])
        removed.add(s)
        done["channel_pad_add"] += 1

    if removed:
        steps = [st for s, st in enumerate(steps) if s not in removed]
        wiring = [w for s, w in enumerate(wiring) if s not in removed]
        removed = set()

    # 4. convolution + activation / PReLU / residual ADD -> one ConvEpilogue at the last step of the chain
    if epilogue:
        _fold_epilogues(steps, wiring, readers(), keep, removed, done)

    changed = len(steps) != len(module.steps) or removed
    if changed:
        module.steps = nn.ModuleList(st for s, st in enumerate(steps) if s not in removed)
        module._wiring = [w for s, w in enumerate(wiring) if s not in removed]
        module.plan_release()
    return dict(done)


def _fold_epilogues(steps: list[nn.Module], wiring: list[tuple[list[int], int]], read: dict[int, list[int]],
                    keep: set[int], removed: set[int], done: dict[str, int]) -> None:
    """Fold 4, in place on `steps`/`wiring`; the steps it absorbs go into `removed`.

    The fused step takes the place of the chain's last step (the residual may be computed after the convolution)
    and reads the convolution's input and the residual; the intermediates it drops had that chain as sole reader."""

    def sole_reader(s: int) -> int | None:
        out = wiring[s][1]
        r = read[out]
        return r[0] if out not in keep and len(r) == 1 else None

    for s, conv in enumerate(steps):
        if not isinstance(conv, Conv) or len(wiring[s][0]) != 1:
            continue
        cout = int(conv.weight.shape[0])
        first = add = second = residual = None
        residual_first = channel_pad = False
        last = s
        if conv.act_name == "NONE":
            n = sole_reader(last)
            if n is not None and _epilogue_act(steps[n], cout):
                first = last = n
        n = sole_reader(last)
        if n is not None:
            cur, st, dyn = wiring[last][1], steps[n], wiring[n][0]
            if isinstance(st, Binary) and st.kind == "ADD" and st.const is None and len(dyn) == 2 and dyn.count(cur) == 1:
                add = last = n
                residual_first = dyn[1] == cur
                residual = dyn[0] if residual_first else dyn[1]
            elif isinstance(st, ChannelPadAdd) and len(dyn) == 2 and dyn[1] == cur and dyn[0] != cur:
                add = last = n  # the chain is the in-place target, the shortcut its residual
                residual, channel_pad = dyn[0], True
        if add is not None and steps[add].act_name == "NONE":
            n = sole_reader(last)
            if n is not None and _epilogue_act(steps[n], cout):
                second = last = n
        # Kernels after the convolution that the epilogue replaces (a fused activation is a kernel of its own).
        # Non-depthwise: the bias fill goes too, so one is enough; torch's depthwise kernel adds the bias itself.
        after = ((conv.act_name != "NONE") + (first is not None) + (add is not None) + (second is not None)
                 + (add is not None and steps[add].act_name != "NONE"))
        if after < (1 if conv.groups == 1 else 2):
            continue
        fused = ConvEpilogue(conv, None if first is None else steps[first], None if add is None else steps[add],
                             None if second is None else steps[second], residual_first=residual_first,
                             channel_pad=channel_pad)
        wiring[last] = ([wiring[s][0][0]] + ([residual] if residual is not None else []), wiring[last][1])
        steps[last] = fused
        removed.update(i for i in (s, first, add, second) if i is not None and i != last)
        done["conv_epilogue"] += 1
