"""CPU `landmarks.roi.crop` straight from the uint8 frame: OpenCV's `warpAffine` per ROI.

The torch path converts the whole frame to float (2.7 M values at 720p) for pose and again
for face, then samples taps x taps bilinear grids. Here the same sample positions come from
one `warpAffine` of the uint8 picture at taps x the model size (bilinear, the ROI's affine
map inverted, the border replicated or black), averaged down by taps with the area filter,
then scaled to [0, 1]: only the crop is ever converted.

OpenCV's bilinear `warpAffine` of three-channel bytes has no vector path; four channels have one
and run about 2x faster. A big crop (a body at 2 taps: 512 x 512 samples, ~3 ms of a 720p pose frame)
therefore samples a four-channel copy of just the frame region under the ROI (the copy costs less
than the time it saves; the same bytes and interpolation: the same crops but for the fixed-point
rounding of the shifted matrix, 1 level on ~0.01 % of samples).

With numba, the taps' mean, the scale to [0, 1] and the (3, h, w) planes are one loop over the warped bytes
(`kernels.taps_mean`) instead of a float copy, an area resize and a scaled transpose: the same crops to the bit
(OpenCV's two roundings kept: the landmark models carry a last-bit difference of a crop into keypoints).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from muse.nodes.cpu import kernels

__all__ = ["crop_uint8"]

# From this many output samples on, the four-channel copy of the region pays for itself (one core, 720p:
# a 512 x 512 crop call 2.5 -> 2.1 ms with the copy; a 256 x 256 one 0.9 -> 1.2 ms, slower).
FOUR_CHANNELS_FROM = 300 * 300


def _region(m: np.ndarray, big_w: int, big_h: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1): the frame pixels the crop's bilinear taps can read, clipped to the frame; None if empty."""
    corners = np.array([[0, 0, 1], [big_w - 1, 0, 1], [0, big_h - 1, 1], [big_w - 1, big_h - 1, 1]], np.float64)
    xy = corners @ m.T
    x0, y0 = np.floor(xy.min(0)).astype(int) - 1
    x1, y1 = np.ceil(xy.max(0)).astype(int) + 2
    x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


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
    # the numba loop once compiled (on the warm-up's background thread, never inside a frame): until then OpenCV's
    # passes, which give the same crops to the bit
    loop = kernels.available() and kernels.compiled("taps_mean")
    if kernels.available() and not loop:
        kernels.warm_up()
    for n, (cx, cy, rw, rh, angle) in enumerate(rois):
        cos, sin = math.cos(angle), math.sin(angle)
        sx = -rw if flips[n] else rw
        # output pixel (i, j) of the big crop samples the frame at (pixel centres, align_corners=False):
        # x = cx - 0.5 + (cos*sx*u - sin*rh*v) / 2, u = (2i+1)/big_w - 1 (v likewise)
        m = np.array([
            [cos * sx / big_w, -sin * rh / big_h, cx - 0.5 + (cos * sx * (1.0 / big_w - 1) - sin * rh * (1.0 / big_h - 1)) / 2],
            [sin * sx / big_w, cos * rh / big_h, cy - 0.5 + (sin * sx * (1.0 / big_w - 1) + cos * rh * (1.0 / big_h - 1)) / 2],
        ])
        region = _region(m, big_w, big_h, src.shape[1], src.shape[0]) if big_w * big_h >= FOUR_CHANNELS_FROM else None
        if region is not None:
            x0, y0, x1, y1 = region
            # clipped only at the frame's own edges, so the border rule reads the same pixels as on the frame
            rgba = cv2.cvtColor(src[y0:y1, x0:x1], cv2.COLOR_RGB2RGBA)
            shifted = m.copy()
            shifted[0, 2] -= x0
            shifted[1, 2] -= y0
            # the fourth channel goes at the small size: a strided slice of the big crop costs more than the warp saves
            warped = cv2.warpAffine(rgba, shifted, (big_w, big_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=mode, borderValue=(0, 0, 0, 0))
        else:
            warped = cv2.warpAffine(src, m, (big_w, big_h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                    borderMode=mode, borderValue=(0, 0, 0))
        if loop:  # the taps' mean, the scale to [0, 1] and the planes in one pass (four: 1.7-5 ms at 2 taps in the graph)
            kernels.taps_mean(warped, t, out[n])
            continue
        small = warped.astype(np.float32)
        if t > 1:
            small = cv2.resize(small, (out_w, out_h), interpolation=cv2.INTER_AREA)  # the taps x taps average
        out[n] = small[..., :3].transpose(2, 0, 1) * np.float32(1.0 / 255.0)
    return torch.from_numpy(out)
