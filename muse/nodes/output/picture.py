"""What output nodes share: taking exactly one of a `frame` or a `mask` input,
turning it into uint8 pixels, and fitting it to an output size on the device."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Mask

Fit = Literal["letterbox", "crop", "stretch"]


def one_picture(node_name: str, frame: Frame | None, mask: Mask | None) -> tuple[torch.Tensor, bool]:
    """(H, W, 3) uint8 for a frame, or (H, W) uint8 grey for a mask; and whether it was a mask."""
    if (frame is None) == (mask is None):
        which = "both" if frame is not None else "neither"
        raise NodeError(
            f"node {node_name!r}: connect exactly one of the inputs `frame` or `mask` ({which} given); "
            "use two output nodes to record both"
        )
    if frame is not None:
        return frame.hwc_uint8(), False
    assert mask is not None
    alpha = mask.alpha
    grey = alpha if alpha.dtype == torch.uint8 else alpha.float().clamp(0, 1).mul(255.0).round_().to(torch.uint8)
    return grey, True


def as_rgb(img: torch.Tensor) -> torch.Tensor:
    """Grey (H, W) to (H, W, 3); RGB stays as it is."""
    return img[..., None].expand(-1, -1, 3) if img.dim() == 2 else img


def fit(img: torch.Tensor, width: int, height: int, how: Fit = "letterbox") -> torch.Tensor:
    """Resize (H, W, 3) or (H, W) uint8 to width x height on its device.

    letterbox keeps the whole picture (black bars), crop fills the frame
    (cuts the overflow), stretch ignores the aspect ratio."""
    h, w = int(img.shape[0]), int(img.shape[1])
    if (w, h) == (width, height):
        return img
    grey = img.dim() == 2
    if how == "stretch":
        tw, th = width, height
    else:
        scale = (min if how == "letterbox" else max)(width / w, height / h)
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
    down = tw < w or th < h
    if img.device.type == "cpu":
        import cv2  # OpenCV's area resize is far faster than torch's antialiased one on the CPU

        small = cv2.resize(img.contiguous().numpy(), (tw, th), interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
        out = torch.from_numpy(small)
        out = out[None] if grey else out.permute(2, 0, 1)
    else:
        chw = (img[None] if grey else img.permute(2, 0, 1)).float()[None]
        out = F.interpolate(chw, size=(th, tw), mode="bilinear", align_corners=False, antialias=down)[0]
        out = out.round_().clamp_(0, 255).to(torch.uint8)
    if how != "stretch":
        canvas = torch.zeros((out.shape[0], height, width), dtype=torch.uint8, device=img.device)
        y, x = (height - th) // 2, (width - tw) // 2
        sy, sx = max(0, -y), max(0, -x)
        dy, dx = max(0, y), max(0, x)
        hh, ww = min(th - sy, height), min(tw - sx, width)
        canvas[:, dy : dy + hh, dx : dx + ww] = out[:, sy : sy + hh, sx : sx + ww]
        out = canvas
    return out[0] if grey else out.permute(1, 2, 0).contiguous()
