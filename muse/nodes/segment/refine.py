"""`segment.refine`: a low-resolution mask brought to full frame size along the frame's real edges,
and steadied over time (no flicker on still pixels, no lag where something moves).

Fast guided filter on the device (coefficients at the mask's resolution, applied at full
resolution) plus a motion-adaptive EMA; the maths lives in `muse.models.matte_refine`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.models.matte_refine import TemporalStabilizer, downsample, fast_guided_upsample
from muse.nodes.cpu import wanted

__all__ = ["RefineMask"]


class RefineMask(Node):
    node_type = "segment.refine"
    capturable = True
    display_name = "Refine mask"
    description = "Upsamples a mask to the frame's resolution following its edges (fast guided filter) and removes flicker."

    frame: In[Frame]
    mask: In[Mask]
    refined: Out[Mask]

    class Params(NodeParams):
        radius: int = Field(1, ge=0, le=16, description="Guided-filter window radius, in pixels of the input mask")
        eps: float = Field(1e-4, ge=1e-6, le=1.0, description="Edge sensitivity: smaller follows weaker picture edges")
        guide: Literal["colour", "gray"] = Field("colour", description="Follow colour edges (best) or brightness edges (cheaper)")
        temporal: bool = Field(True, description="Steady the mask over time")
        stability: float = Field(0.7, ge=0.0, le=0.98, description="How much still pixels keep of the past (0 = off)")
        motion_threshold: float = Field(0.04, ge=0.001, le=1.0, description="Picture change (0-1) that counts as full motion")
        scale: float = Field(1.0, ge=0.125, le=1.0, description="Output size as a fraction of the frame (1 = full resolution)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self._temporal = TemporalStabilizer(p.stability, p.motion_threshold)
        self._cpu = None
        if wanted(ctx):  # issue 13: the CPU path
            from muse.nodes.cpu.refine import RefineCPU

            self._cpu = RefineCPU(p)

    def update_params(self, params: Params) -> bool:
        self.params = params
        self._temporal.stability = params.stability
        self._temporal.motion_threshold = params.motion_threshold
        if getattr(self, "_cpu", None) is not None:
            self._cpu.update(params)
        return True

    def process(self, frame: Frame, mask: Mask) -> dict[str, Mask]:
        if self._cpu is not None:
            return self._cpu.process(frame, mask)
        ctx, p = self.ctx, self.params
        assert ctx is not None
        low = mask.alpha.to(ctx.device).float()[None, None]
        size = tuple(low.shape[-2:])
        on_gpu_raw = (frame.layout == "hwc" and frame.image.dtype == torch.uint8 and p.scale >= 1.0
                      and frame.image.device.type == "cuda")
        if on_gpu_raw:
            # GPU: the uint8 picture is read as is (a channels-last view): half the bytes of fp16, no full-size
            # copy. (Not on CPU: mixed-type strided maths is slow there, and a uint8-resized small guide is
            # quantised, which the guided filter's small eps notices.)
            image = frame.image.permute(2, 0, 1).unsqueeze(0)
            small = downsample(image.to(ctx.dtype), size).float().div_(255.0)
            full_scale = 1.0 / 255.0
        else:
            image = frame.chw(ctx.dtype).unsqueeze(0)
            if p.scale < 1.0:
                out_h, out_w = max(1, round(frame.height * p.scale)), max(1, round(frame.width * p.scale))
                image = downsample(image, (out_h, out_w))
            full_scale = 1.0
            # One small copy of the picture at the mask's size serves both motion detection and the filter.
            small = downsample(image, size).float()
        if p.temporal and p.stability > 0:
            low = self._temporal(low, small)
        else:
            self._temporal.reset()
        out = fast_guided_upsample(low, image, radius=p.radius, eps=p.eps, colour=p.guide == "colour",
                                   guide_small=small, full_scale=full_scale, out_dtype=ctx.dtype)
        return {"refined": Mask(out[0, 0], frame.timestamp, frame.index)}
