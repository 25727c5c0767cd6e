"""CPU `segment.selfie`: the bundled selfie model through ONNX Runtime.

The uint8 frame is shrunk once (uint8, antialiased) and written straight into the model's
letterboxed input buffer (float32, NCHW, reused every frame); the mask comes back at
the model's resolution, cropped to the frame's aspect like the torch path.
"""

from __future__ import annotations

import numpy as np
import torch

from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import as_numpy, ort_session, shrunk_uint8

__all__ = ["SelfieCPU"]


class SelfieCPU:
    def __init__(self, onnx_path: str, model_size: tuple[int, int], layout, auto_exposure=lambda: False) -> None:  # layout: (frame_w, frame_h) -> (x0, y0, w, h)
        self.auto_exposure = auto_exposure  # reads the node's live param
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
            # the torch path's `brighten`: a dark picture scaled so its 98th percentile of the brightest
            # channel reaches 0.9 (gain 1 to 4)
            peak = float(np.quantile(region.max(0).ravel()[::4], 0.98))
            gain = min(max(0.9 / max(peak, 1e-3), 1.0), 4.0)
            if gain > 1.0:
                np.multiply(region, np.float32(gain), out=region)
                np.clip(region, 0.0, 1.0, out=region)
        out = self.session.run(None, {self.input: self._batch})[0]  # (1, mh, mw, 1)
        alpha = np.ascontiguousarray(out[0, y0 : y0 + h, x0 : x0 + w, 0])
        return {"mask": Mask(torch.from_numpy(alpha), frame.timestamp, frame.index)}

    def close(self) -> None:
        self.session = None
