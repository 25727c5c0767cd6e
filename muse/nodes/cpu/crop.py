"""CPU `landmarks.roi.crop` straight from the uint8 frame: OpenCV's `warpAffine` per ROI.

The torch path converts the whole frame to float (2.7 M values at 720p) for pose and again
for face, then samples taps x taps bilinear grids. Here the same sample positions come from
one `warpAffine` of the uint8 picture at taps x the model size (bilinear, the ROI's affine
map inverted, the border replicated or black), averaged down by taps with the area filter,
then scaled to [0, 1]: only the crop is ever converted.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

__all__ = ["crop_uint8"]


def crop_uint8(image: torch.Tensor, roi: torch.Tensor, out_h: int, out_w: int, border: str = "zeros",
               flip: torch.Tensor | None = None, taps: int = 1) -> torch.Tensor:
    """image (3, H, W) uint8 on the CPU (any strides; a permuted HWC frame is read in place),
    roi (N, 5) -> (N, 3, out_h, out_w) float32 in [0, 1], as `roi.crop` of the float frame."""
    hwc = image.permute(1, 2, 0)
    src = hwc.numpy() if hwc.is_contiguous() else np.ascontiguousarray(hwc.numpy())
    rois = roi.detach().double().numpy()
    flips = flip.detach().numpy() if flip is not None else np.zeros(len(rois), bool)
    t = max(1, int(taps))
    big_w, big_h = out_w * t, out_h * t
    mode = cv2.BORDER_REPLICATE if border == "border" else cv2.BORDER_CONSTANT
    out = np.empty((len(rois), 3, out_h, out_w), np.float32)
    for n, (cx, cy, rw, rh, angle) in enumerate(rois):
        cos, sin = math.cos(angle), math.sin(angle)
        sx = -rw if flips[n] else rw
        # output pixel (i, j) of the big crop samples the frame at (pixel centres, align_corners=False):
        # x = cx - 0.5 + (cos*sx*u - sin*rh*v) / 2, u = (2i+1)/big_w - 1 (v likewise)
        m = np.array([
            [cos * sx / big_w, -sin * rh / big_h, cx - 0.5 + (cos * sx * (1.0 / big_w - 1) - sin * rh * (1.0 / big_h - 1)) / 2],
            [sin * sx / big_w, cos * rh / big_h, cy - 0.5 + (sin * sx * (1.0 / big_w - 1) + cos * rh * (1.0 / big_h - 1)) / 2],
        ])
        warped = cv2.warpAffine(src, m, (big_w, big_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                borderMode=mode, borderValue=(0, 0, 0))
        small = warped.astype(np.float32)
        if t > 1:
            small = cv2.resize(small, (out_w, out_h), interpolation=cv2.INTER_AREA)  # the taps x taps average
        out[n] = small.transpose(2, 0, 1) * np.float32(1.0 / 255.0)
    return torch.from_numpy(out)
