"""Which kernels run a small model's convolutions on CUDA: cuDNN's, or torch's own (cuDNN off).

The bundled models are small convnets (depthwise and 1x1 convolutions at 128-256 px). On the H200 (2026-12-02,
`bench/bench_model_variants.py`, each model replayed as a CUDA graph) torch's own kernels beat cuDNN's for every
one of them: face mesh fp16 0.40 -> 0.28 ms, iris fp16 0.76 -> 0.48 ms, body landmarks exact fp32
1.21 -> 0.89 ms, selfie fp16 0.47 -> 0.40 ms; cuDNN's generic fp16 convolution engine was the costliest kernel of
the 4K frame. Another GPU may rank them the other way, so `auto` times both once per model and input shape, on
the device in use, and keeps the faster (torch's own only when clearly faster). The choice is made before the
model's first CUDA graph is captured and never changes after it: a captured graph keeps the kernels it was
captured with, and a layout change would move the weights it reads.

`MUSE_CONV=auto|cudnn|native` overrides it for a whole process (benchmarks, a GPU that misbehaves).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from typing import Callable, Iterator, Literal

import torch

__all__ = ["ConvMode", "conv_flags", "conv_mode", "faster_engine", "remember", "remembered"]

log = logging.getLogger("muse.backends")

ConvMode = Literal["auto", "cudnn", "native"]
MODES = ("auto", "cudnn", "native")
MARGIN = 0.93  # torch's own kernels must take under 93 % of cuDNN's time: near-ties keep cuDNN (run-to-run noise)

# (model, shape, dtype, device name) -> cuDNN on; one answer a process, so two runners of one model agree
_CHOICE: dict[tuple, bool] = {}


def conv_mode(asked: str = "auto") -> ConvMode:
    """`asked`, unless `MUSE_CONV` says otherwise; an unknown value is an error naming the variable."""
    mode = os.environ.get("MUSE_CONV", "").strip().lower() or asked
    if mode not in MODES:
        raise ValueError(f"MUSE_CONV={mode!r}: use one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


@contextmanager
def conv_flags(cudnn: bool, tf32: bool) -> Iterator[None]:
    """cuDNN on or off and TF32 allowed or not while a model launches (kernels are picked at launch or capture,
    so the flags need to hold only then); the previous values come back after."""
    b = torch.backends
    keep = b.cudnn.enabled, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32
    b.cudnn.enabled = cudnn
    if not tf32:
        b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        b.cudnn.enabled, b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32 = keep


def remembered(key: tuple) -> bool | None:
    """The choice made for `key` in this process (True: cuDNN), or None."""
    return _CHOICE.get(key)


def remember(key: tuple, cudnn: bool) -> None:
    _CHOICE[key] = cudnn


def replay_ms(capture: Callable[[], "torch.cuda.CUDAGraph"], stream: "torch.cuda.Stream", reps: int = 10) -> float:
    """GPU ms of one replay of the graph `capture()` records: the best of two runs of `reps` replays (a model first
    called mid-stream, a detector when tracking is first lost, holds its frame up for these ~25 replays, once)."""
    graph = capture()
    best = float("inf")
    with torch.cuda.stream(stream):
        for _ in range(3):
            graph.replay()
        for _ in range(2):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            for _ in range(reps):
                graph.replay()
            end.record(stream)
            end.synchronize()  # once per model and shape, before its first frame
            best = min(best, start.elapsed_time(end) / reps)
    del graph
    return best


def faster_engine(cudnn_ms: float, native_ms: float) -> bool:
    """True (cuDNN) unless torch's own kernels are clearly faster."""
    return not native_ms < MARGIN * cudnn_ms
