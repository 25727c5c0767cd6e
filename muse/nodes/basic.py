"""Tiny built-in nodes that make the framework testable on its own:
a test-pattern source, a null sink, and simple image operations."""

from __future__ import annotations

import time

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame, Mask


class TestPattern(Node):
    node_type = "basic.test_pattern"
    display_name = "Test pattern"
    description = "Colour bars with a moving square; paced to `fps` (0 = as fast as possible)."
    on_demand = True

    frame: Out[Frame]

    class Params(NodeParams):
        width: int = Field(640, ge=16, le=7680, description="Width in pixels")
        height: int = Field(360, ge=16, le=4320, description="Height in pixels")
        fps: float = Field(30.0, ge=0, le=240, description="Frames per second; 0 = unpaced")
        frames: int = Field(0, ge=0, description="Stop after this many frames; 0 = endless")

    params: Params

    def open(self, ctx) -> None:
        super().open(ctx)
        p = self.params
        bars = torch.tensor(
            [[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]],
            dtype=torch.uint8,
        )
        cols = (torch.arange(p.width) * len(bars) // p.width).clamp(max=len(bars) - 1)
        self._base = bars[cols].unsqueeze(0).expand(p.height, -1, -1).contiguous().to(ctx.device)
        self._index = 0
        self._t0 = time.perf_counter()

    def process(self) -> dict[str, Frame] | None:
        p = self.params
        if p.frames and self._index >= p.frames:
            return None
        if p.fps > 0:  # pace like a camera would
            due = self._t0 + self._index / p.fps
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        img = self._base.clone()
        side = max(8, p.height // 6)
        x = (self._index * 7) % max(1, p.width - side)
        y = (p.height - side) // 2
        img[y : y + side, x : x + side] = 128
        frame = Frame(img, timestamp=self._index / (p.fps or 30.0), index=self._index)
        self._index += 1
        return {"frame": frame}


class NullSink(Node):
    node_type = "basic.null"
    display_name = "Null sink"
    description = "Consumes frames and throws them away (benchmarks, tests)."

    frame: In[Frame]

    class Params(NodeParams):
        delay_ms: float = Field(0.0, ge=0, le=10_000, description="Pretend each frame takes this long (tests)")

    params: Params

    def open(self, ctx) -> None:
        super().open(ctx)
        self.count = 0

    def process(self, frame: Frame) -> None:
        if self.params.delay_ms:
            time.sleep(self.params.delay_ms / 1000.0)
        self.count += 1
        return None


class Invert(Node):
    node_type = "basic.invert"
    display_name = "Invert"
    description = "Inverts a frame's colours, blended by `amount`."
    capturable = True

    frame: In[Frame]
    out: Out[Frame]

    class Params(NodeParams):
        amount: float = Field(1.0, ge=0.0, le=1.0, description="0 = unchanged, 1 = fully inverted")

    params: Params

    def process(self, frame: Frame) -> dict[str, Frame]:
        a = self.params.amount
        img = frame.chw(torch.float32)
        out = img + a * (1.0 - 2.0 * img)
        return {"out": frame.with_image(out, layout="chw")}


class LumaMask(Node):
    node_type = "basic.luma_mask"
    display_name = "Luma mask"
    description = "A mask from brightness above a threshold (a stand-in segmenter for tests)."
    capturable = True

    frame: In[Frame]
    mask: Out[Mask]

    class Params(NodeParams):
        threshold: float = Field(0.5, ge=0.0, le=1.0, description="Brightness above which a pixel counts")

    params: Params

    def process(self, frame: Frame) -> dict[str, Mask]:
        img = frame.chw(torch.float32)
        luma = 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]
        return {"mask": Mask((luma > self.params.threshold).float(), frame.timestamp, frame.index)}
