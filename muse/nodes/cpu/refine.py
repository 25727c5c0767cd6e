"""CPU `segment.refine`: the fast guided filter and the temporal steadying at the mask's
resolution (numpy/OpenCV on about 40 k pixels), then one edge-aware upsample.

Same maths as `muse.models.matte_refine` (the torch path): the window statistics, the
linear coefficients and the motion-adaptive EMA are computed at the mask's size; only
"upsample A and b, A . I + b" touches full resolution (OpenCV, float32, in place).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from muse.graph.payloads import Frame, Mask
from muse.models.matte_refine import symmetric_adjugate3
from muse.nodes.cpu import as_numpy, kernels, shrunk_uint8

__all__ = ["RefineCPU", "box_mean", "guided_coefficients"]

LUMA = np.array([[0.299, 0.587, 0.114]], np.float32)
_UNIT = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)


_INV_COUNTS: dict[tuple[int, int, int, int], np.ndarray] = {}


def box_mean(x: np.ndarray, r: int) -> np.ndarray:
    """Mean over a (2r+1)^2 window counting only pixels inside the image (torch's count_include_pad=False);
    all channels of (h, w, C) in one OpenCV call. The window sums are scaled by a cached 1/count array of
    the same shape (a broadcast division cost 4x the filter itself)."""
    if r <= 0:
        return x
    k = (2 * r + 1, 2 * r + 1)
    s = cv2.boxFilter(x, -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
    c = 1 if x.ndim == 2 else x.shape[2]
    key = (x.shape[0], x.shape[1], r, c)
    inv = _INV_COUNTS.get(key)
    if inv is None:
        n = cv2.boxFilter(np.ones(x.shape[:2], np.float32), -1, k, normalize=False, borderType=cv2.BORDER_CONSTANT)
        inv = 1.0 / n
        inv = _INV_COUNTS[key] = np.ascontiguousarray(np.repeat(inv[..., None], c, 2) if x.ndim == 3 else inv, np.float32)
    return np.multiply(s, inv, out=s)


def _box_planes(r: int, *planes: np.ndarray) -> list[np.ndarray]:
    """box_mean of each (h, w) plane (one OpenCV call a plane: cheaper than merging into channels and
    splitting back)."""
    return [box_mean(q, r) for q in planes]


def guided_colour(p: np.ndarray, g: np.ndarray, r: int, eps: float) -> list[np.ndarray]:
    """The colour guided filter's box-averaged coefficients as four (h, w) planes: A_r, A_g, A_b, b.

    Works on contiguous (h, w) planes (numpy on interleaved channel slices was 2-3x slower); each product
    is formed in one scratch plane and its window mean corrected in place (fewer live planes, ~20 % less CPU)."""
    R, G, B = (np.ascontiguousarray(g[..., i]) for i in range(3))
    if kernels.available() and r > 0:
        # the 13 window means into one stack, the algebra between them in one numba pass (some 60 numpy passes)
        means = np.empty((13, *p.shape), np.float32)
        planes = (p, R, G, B)
        for i, q in enumerate(planes):
            means[i] = box_mean(q, r)
        t = np.empty_like(p)
        for i, (a, b) in enumerate(((R, p), (G, p), (B, p), (R, R), (R, G), (R, B), (G, G), (G, B), (B, B))):
            means[4 + i] = box_mean(np.multiply(a, b, out=t), r)
        return _box_planes(r, *kernels.guided_solve(means, eps))
    mp, mr, mg, mb = _box_planes(r, p, R, G, B)
    t = np.empty_like(mp)

    def cov(a: np.ndarray, b: np.ndarray, ma: np.ndarray, mb_: np.ndarray, add: float = 0.0) -> np.ndarray:
        s = box_mean(np.multiply(a, b, out=t), r)  # mean(a b) - mean(a) mean(b) (+ eps)
        if s is t:  # radius 0: no filter, the scratch plane itself
            s = t.copy()
        s -= ma * mb_
        if add:
            s += add
        return s

    c_r, c_g, c_b = cov(R, p, mr, mp), cov(G, p, mg, mp), cov(B, p, mb, mp)
    s_rr, s_rg, s_rb = cov(R, R, mr, mr, eps), cov(R, G, mr, mg), cov(R, B, mr, mb)
    s_gg, s_gb, s_bb = cov(G, G, mg, mg, eps), cov(G, B, mg, mb), cov(B, B, mb, mb, eps)
    # the 3x3 covariance inverse by cofactors (symmetric)
    i_rr, i_rg, i_rb, i_gg, i_gb, i_bb, det = symmetric_adjugate3(s_rr, s_rg, s_rb, s_gg, s_gb, s_bb)
    inv = 1.0 / det
    a_r = (i_rr * c_r + i_rg * c_g + i_rb * c_b) * inv
    a_g = (i_rg * c_r + i_gg * c_g + i_gb * c_b) * inv
    a_b = (i_rb * c_r + i_gb * c_g + i_bb * c_b) * inv
    b = mp - a_r * mr - a_g * mg - a_b * mb
    return _box_planes(r, a_r, a_g, a_b, b)


def guided_coefficients(p: np.ndarray, g: np.ndarray, r: int, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """mask p (h, w), guide g (h, w, C) -> A (h, w, C), b (h, w), box-averaged (He et al.)."""
    p = np.ascontiguousarray(p, np.float32)
    if g.shape[2] == 3:
        a_r, a_g, a_b, b = guided_colour(p, np.ascontiguousarray(g, np.float32), r, eps)
        return cv2.merge((a_r, a_g, a_b)), b
    g1 = np.ascontiguousarray(g[..., 0], np.float32)
    mp, mg, mgp, mgg = _box_planes(r, p, g1, g1 * p, g1 * g1)
    a = (mgp - mg * mp) / (mgg - mg * mg + eps)
    b = mp - a * mg
    a, b = _box_planes(r, a, b)
    return a[..., None], b


class TemporalCPU:
    """`matte_refine.TemporalStabilizer` in numpy (same maths, same state rules)."""

    def __init__(self, stability: float, motion_threshold: float, mask_jump: float = 0.5) -> None:
        self.stability, self.motion_threshold, self.mask_jump = stability, motion_threshold, mask_jump
        self.reset()

    def reset(self) -> None:
        self._state: np.ndarray | None = None
        self._prev: np.ndarray | None = None

    def __call__(self, m: np.ndarray, g: np.ndarray) -> np.ndarray:
        if self._state is None or self._state.shape != m.shape or self._prev is None or self._prev.shape != g.shape:
            self._state, self._prev = m, g
            return m
        # the channels' mean absolute change in one OpenCV pass (numpy's mean over the last axis of 3 cost
        # 0.6 ms at 256x144, most of this filter; the same values within float rounding)
        c = g.shape[2]
        frame_motion = cv2.transform(cv2.absdiff(g, self._prev), np.full((1, c), 1.0 / c, np.float32))
        frame_motion = cv2.dilate(frame_motion, np.ones((3, 3), np.uint8)) / self.motion_threshold
        lo = self.mask_jump / 3.0
        mask_motion = (np.abs(m - self._state) - lo) / max(1e-6, self.mask_jump - lo)
        motion = np.clip(np.maximum(frame_motion, mask_motion), 0.0, 1.0)
        k = (1.0 - self.stability) + self.stability * motion
        out = (self._state + k * (m - self._state)).astype(np.float32)
        self._state, self._prev = out, g
        return out


class RefineCPU:
    """Holds the temporal state; `params` is the node's live Params object."""

    def __init__(self, params) -> None:
        self.params = params
        kernels.warm_up()
        self.temporal = TemporalCPU(params.stability, params.motion_threshold)

    def update(self, params) -> None:
        self.params = params
        self.temporal.stability, self.temporal.motion_threshold = params.stability, params.motion_threshold

    def process(self, frame: Frame, mask: Mask) -> dict[str, Mask]:
        p = self.params
        low = as_numpy(mask.alpha.float())
        h, w = low.shape
        img = as_numpy(frame.hwc_uint8())
        colour = p.guide == "colour"
        full = None  # (H, W, 3) float32 in [0, 1]: the guide resized for an output scale below 1
        if p.scale < 1.0:
            out_h, out_w = max(1, round(frame.height * p.scale)), max(1, round(frame.width * p.scale))
            full = cv2.resize(cv2.LUT(img, _UNIT), (out_w, out_h), interpolation=cv2.INTER_AREA)
        H, W = full.shape[:2] if full is not None else img.shape[:2]
        if (W, H) == (w, h):
            small = full if full is not None else cv2.LUT(img, _UNIT)
        else:  # torch's uint8 antialiased filter (0.4 ms), as the torch path filters (OpenCV's area filter moved edges);
            # at scale 1 the segmenter of this frame usually made the same already (`shrunk_uint8`)
            src = frame.hwc_uint8() if p.scale >= 1.0 else torch.from_numpy(np.rint(full * 255.0).astype(np.uint8))
            t = shrunk_uint8(src, h, w)
            small = cv2.LUT(np.ascontiguousarray(t.permute(1, 2, 0).numpy()), _UNIT)
        if p.temporal and p.stability > 0:
            low = self.temporal(low, small)
        else:
            self.temporal.reset()
        guide = small if colour else cv2.transform(small, LUMA)[..., None]
        a, b = guided_coefficients(low, guide, p.radius, p.eps)
        if full is None and kernels.available():
            # the one full-resolution step fused (muse/nodes/cpu/kernels.py): the same maths as below
            out = kernels.guided_upsample(img, a, b)
            return {"refined": Mask(torch.from_numpy(out), frame.timestamp, frame.index)}
        # the one full-resolution step: A and b upsampled (bilinear on cell centres), then A . I + b
        up_b = cv2.resize(b, (W, H), interpolation=cv2.INTER_LINEAR)
        if colour:
            up_a = cv2.resize(a, (W, H), interpolation=cv2.INTER_LINEAR)
            # A . I read straight from the uint8 picture at full scale (no float copy of the frame first)
            prod = cv2.multiply(up_a, full) if full is not None else cv2.multiply(up_a, img, scale=1.0 / 255.0, dtype=cv2.CV_32F)
            out = cv2.transform(prod, np.ones((1, 3), np.float32))
        else:
            up_a = cv2.resize(np.ascontiguousarray(a[..., 0]), (W, H), interpolation=cv2.INTER_LINEAR)
            if full is None:
                # the brightness guide straight from the uint8 picture (one pass, no float copy of the frame;
                # OpenCV rounds it to whole levels: within 0.5/255 of the torch path's float gray)
                gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
                out = cv2.multiply(up_a, gray, scale=1.0 / 255.0, dtype=cv2.CV_32F)
            else:
                out = cv2.multiply(up_a, cv2.transform(full, LUMA))
        cv2.add(out, up_b, dst=out)
        np.clip(out, 0.0, 1.0, out=out)
        return {"refined": Mask(torch.from_numpy(out), frame.timestamp, frame.index)}
