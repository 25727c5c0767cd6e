"""CPU `segment.selfie`: the bundled selfie model through ONNX Runtime.

The uint8 frame is shrunk once (uint8, antialiased) and written straight into the model's
letterboxed input buffer (float32, NCHW, reused every frame); the mask comes back at
the model's resolution, cropped to the frame's aspect like the torch path. The second look at a crop
around the person (`crop`) runs the torch path's own steps (`muse.nodes.segment.selfie_crop`) on CPU
tensors, and skips the crop's model call while its weight is 0.
"""

from __future__ import annotations

import math
from typing import Callable

import cv2
import numpy as np
import torch

from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import as_numpy, ort_session, shrunk_uint8
from muse.nodes.exposure import brighten_in_place
from muse.nodes.segment.selfie_crop import SecondLook, source_size

__all__ = ["SelfieCPU"]


class SelfieCPU:
    def __init__(self, onnx_path: str, model_size: tuple[int, int], layout, auto_exposure=lambda: False,
                 look: Callable[[], SecondLook | None] = lambda: None) -> None:  # layout: (frame_w, frame_h) -> (x0, y0, w, h)
        self.auto_exposure = auto_exposure  # reads the node's live param
        self.look = look  # the node's crop state while `crop` is on
        self.session = ort_session(onnx_path)
        self.input = self.session.get_inputs()[0].name
        self.model_size = model_size
        self.layout = layout
        mw, mh = model_size
        self._batch = np.zeros((1, 3, mh, mw), np.float32)  # borders stay black (MediaPipe's BORDER_ZERO)

    def describe(self) -> str:
        return f"onnxruntime CPU ({self.session.get_session_options().intra_op_num_threads} threads)"

    def process(self, frame: Frame) -> dict[str, Mask]:
        x0, y0, w, h = self.layout(frame.width, frame.height)
        img = frame.hwc_uint8()
        if (img.shape[1], img.shape[0]) != (w, h):
            # torch's uint8 antialiased resize (0.4 ms at 720p, the torch path's very filter: same mask), shared
            # with the matte's refine of the same frame
            small = shrunk_uint8(img, h, w)
        else:
            small = img.permute(2, 0, 1)
        region = self._batch[0, :, y0 : y0 + h, x0 : x0 + w]
        np.multiply(as_numpy(small), np.float32(1.0 / 255.0), out=region)
        if self.auto_exposure():
            brighten_in_place(region)
        out = self.session.run(None, {self.input: self._batch})[0]  # (1, mh, mw, 1)
        alpha = torch.from_numpy(np.ascontiguousarray(out[0, y0 : y0 + h, x0 : x0 + w, 0]))
        look = self.look()
        if look is not None:
            fw, fh = frame.width, frame.height
            alpha = look(alpha, (fw, fh), self.model_size, min(w / fw, h / fh), lambda: _source(img, fw, fh, w, h),
                         self._crop_model, skip_idle=True, crop=_crop_region, lay=_lay)
        return {"mask": Mask(alpha, frame.timestamp, frame.index)}

    def _crop_model(self, crop: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(as_numpy(crop.float()))
        if self.auto_exposure():
            brighten_in_place(x[0])
        return torch.from_numpy(self.session.run(None, {self.input: x})[0][0, :, :, 0])

    def close(self) -> None:
        self.session = None


def _source(img: torch.Tensor, fw: int, fh: int, w: int, h: int) -> torch.Tensor:
    """The (3, H, W) uint8 picture the crop is sampled from (the torch path's `_source`, before its float conversion)."""
    sw, sh = source_size(fw, fh, w, h)
    return shrunk_uint8(img, sh, sw) if (sw, sh) != (fw, fh) else img.permute(2, 0, 1)


def _resample(img: np.ndarray, theta: torch.Tensor, src_wh: tuple[int, int], out_wh: tuple[int, int],
              origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """`F.grid_sample` (bilinear, zeros beyond the picture, align_corners=False) of the (H, W, C) float32 `img` over an
    `affine_grid(theta)` twice `out_wh`, then 2x2 means, by OpenCV: the picture is the part of a (src_wh) one that
    starts at `origin`."""
    (sw, sh), (ow, oh), (x0, y0) = src_wh, out_wh, origin
    t = theta[0].double().tolist()
    # output pixel j of the 2x grid: coordinate (j + 0.5) / o - 1 -> source pixel ((t c + t2 + 1) size - 1) / 2
    ax, ay = t[0][0] * sw / (2 * ow), t[1][1] * sh / (2 * oh)
    bx = ((t[0][2] + t[0][0] * (0.5 / ow - 1.0) + 1.0) * sw - 1.0) / 2.0 - x0
    by = ((t[1][2] + t[1][1] * (0.5 / oh - 1.0) + 1.0) * sh - 1.0) / 2.0 - y0
    fine = cv2.warpAffine(img, np.array([[ax, 0.0, bx], [0.0, ay, by]]), (2 * ow, 2 * oh),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    out = cv2.resize(fine, (ow, oh), interpolation=cv2.INTER_AREA)  # an exact 2x2 mean
    return out if out.ndim == 3 else out[..., None]


def _crop_region(source: torch.Tensor, to_crop: torch.Tensor, model_wh: tuple[int, int]) -> torch.Tensor:
    """`SecondLook.crop` of the (3, H, W) uint8 source, converting only the rectangle its taps read to floats (the
    torch path converts the whole picture, ~3 ms at 720p here)."""
    _, sh, sw = source.shape
    t = to_crop[0].double().tolist()
    # source pixels read (align_corners=False: pixel = ((coordinate + 1) * size - 1) / 2), one more on each side
    xa, xb = ((t[0][2] - t[0][0] + 1.0) * sw - 1.0) / 2.0, ((t[0][2] + t[0][0] + 1.0) * sw - 1.0) / 2.0
    ya, yb = ((t[1][2] - t[1][1] + 1.0) * sh - 1.0) / 2.0, ((t[1][2] + t[1][1] + 1.0) * sh - 1.0) / 2.0
    x0, x1 = max(0, math.floor(xa) - 1), min(sw, math.ceil(xb) + 2)
    y0, y1 = max(0, math.floor(ya) - 1), min(sh, math.ceil(yb) + 2)
    mw, mh = model_wh
    if x1 <= x0 or y1 <= y0:
        return torch.zeros(1, 3, mh, mw)
    region = as_numpy(source[:, y0:y1, x0:x1].permute(1, 2, 0)).astype(np.float32) * np.float32(1.0 / 255.0)
    out = _resample(region, to_crop, (sw, sh), model_wh, (x0, y0))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))[None]


def _lay(planes: torch.Tensor, to_frame: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """`SecondLook.lay` by OpenCV."""
    _, _, mh, mw = planes.shape
    out = _resample(np.ascontiguousarray(as_numpy(planes[0]).transpose(1, 2, 0)), to_frame, (mw, mh), (w, h))
    return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))
