"""Small helpers shared by the segmentation nodes: frames to model batches, user paths."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from muse.graph.node import NodeContext
from muse.graph.payloads import Frame
from muse.nodes.segment.shrink import shrink_u8


def frame_batch(frame: Frame, size: tuple[int, int] | None, dtype: torch.dtype) -> torch.Tensor:
    """The frame as (1, 3, h, w) floats in [0, 1], resized (antialiased) to size=(w, h) when given."""
    if size is not None and tuple(size) != (frame.width, frame.height) and uint8_on_cpu(frame):
        # CPU: shrink the uint8 picture first (torch's channels-last uint8 resize is far cheaper than
        # converting the whole frame to float), then convert the small result.
        small = F.interpolate(frame.image.permute(2, 0, 1).unsqueeze(0), size=(size[1], size[0]), mode="bilinear",
                              align_corners=False, antialias=True)
        return small.to(dtype).div_(255.0)
    if size is not None and tuple(size) != (frame.width, frame.height) and frame.layout == "hwc":
        # CUDA: two passes straight from the uint8 bytes (shrink.py), no full-size float copy
        small = shrink_u8(frame.image, (int(size[0]), int(size[1])), dtype)
        if small is not None:
            return small
    x = frame.chw(dtype).unsqueeze(0)
    if size is not None and (frame.width, frame.height) != tuple(size):
        x = F.interpolate(x, size=(size[1], size[0]), mode="bilinear", align_corners=False, antialias=True)
    return x


def uint8_on_cpu(frame: Frame) -> bool:
    return frame.layout == "hwc" and frame.image.dtype == torch.uint8 and frame.image.device.type == "cpu"


def user_path(raw: str, ctx: NodeContext | None) -> Path:
    """A path from a param: `~` expanded; relative paths are tried from the working directory, then next to the graph file."""
    p = Path(raw).expanduser()
    if p.is_absolute() or p.exists() or ctx is None or not ctx.graph_file:
        return p
    beside = Path(ctx.graph_file).parent / p
    return beside if beside.exists() else p
