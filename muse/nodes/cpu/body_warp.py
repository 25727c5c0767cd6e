"""CPU `warp.body` and the person gate of the warps, in numpy/OpenCV on the field's coarse grid.

The torch path is a chain of about forty small ops on a (90, 160) grid plus pooling a
full-resolution mask; on a loaded CPU each op costs a thread-pool wake-up. Here the same
maths runs as a few vector passes: the lateral field on separable axes, the mask's
max over cells by a reshape (or torch's own windows where cells do not tile), the
dilation and the box average with OpenCV.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from muse.graph.payloads import Displacement, Keypoints, Mask
from muse.nodes.cpu import as_numpy
from muse.nodes.cpu.face_warp import grid_axes

__all__ = ["BodyWarpCPU", "mask_gate_np", "shrink_max_np"]


def shrink_max_np(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """`fields.shrink_max` of (H, W) float32: the same windows (strided with a partial last cell
    where a whole-number cell fits, torch's adaptive windows otherwise)."""
    (H, W), (h, w) = m.shape, size
    kh, kw = -(-H // h), -(-W // w)
    if -(-H // kh) == h and -(-W // kw) == w:
        if H != h * kh or W != w * kw:  # the partial last cell: pad with -inf (it never wins a max)
            m = cv2.copyMakeBorder(m, 0, h * kh - H, 0, w * kw - W, cv2.BORDER_CONSTANT, value=-np.inf)
        # rows, then columns: numpy reduces a middle axis of rows 10x faster than two axes at once
        return m.reshape(h, kh, w * kw).max(axis=1).reshape(h, w, kw).max(axis=2)
    # adaptive windows [floor(i*H/h), ceil((i+1)*H/h)): a max is separable, columns then rows
    x0, x1 = (np.arange(w) * W) // w, -((-(np.arange(w) + 1) * W) // w)
    y0, y1 = (np.arange(h) * H) // h, -((-(np.arange(h) + 1) * H) // h)
    cols = np.stack([m[:, a:b].max(axis=1) for a, b in zip(x0, x1)], axis=1)
    return np.stack([cols[a:b].max(axis=0) for a, b in zip(y0, y1)])


def mask_gate_np(alpha: np.ndarray, size_hw: tuple[int, int], margin_cells: float) -> np.ndarray:
    """`fields.mask_gate`: 1 on the person, falling to 0 at `margin_cells` beyond the outline, at grid size."""
    h, w = size_hw
    m = alpha.astype(np.float32, copy=False)
    H, W = m.shape
    if H >= h and W >= w and H % h == 0 and W % w == 0 and (H // h) * (W // w) <= 255:
        # (max over a cell > 0.05) is (any pixel of the cell > 0.05): a uint8 test, then the area mean of
        # whole cells, non-zero as soon as one pixel is set (at most 255 pixels a cell: 255/n >= 1): the
        # same cells without a float max over the full-size mask (720p: 0.95 -> 0.43 ms)
        hit = cv2.compare(m, 0.05, cv2.CMP_GT)
        m = (cv2.resize(hit, (w, h), interpolation=cv2.INTER_AREA) > 0).astype(np.float32)
    else:
        if H >= h and W >= w:
            m = shrink_max_np(m, (h, w))
        else:
            m = cv2.resize(m, (w, h), interpolation=cv2.INTER_LINEAR)
        m = (m > 0.05).astype(np.float32)
    r = max(1, int(round(margin_cells / 2)))
    size = 2 * r + 1
    # max_pool with -inf padding = dilation with the border never winning
    m = cv2.dilate(m, np.ones((size, size), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0.0)
    # avg_pool, count_include_pad=False: the sum over the window's inside cells / their count
    total = cv2.boxFilter(m, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    count = cv2.boxFilter(np.ones_like(m), -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    return total / count


def _bump(x: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    u = np.clip((x - centre) / half_width, -1, 1)
    return np.cos(u * (math.pi / 2)) ** 2


def body_field_np(xs: np.ndarray, ys: np.ndarray, torso: np.ndarray, *, waist: float, hips: float, shoulders: float) -> np.ndarray:
    """`warp.body.body_field` on the axes of the grid (xs (w,), ys (h,)) -> (2, h, w) float32."""
    from muse.nodes.warp.body import HIPS_MAX, SHOULDERS_MAX, WAIST_AT, WAIST_MAX

    top = (torso[0] + torso[1]) / 2
    bottom = (torso[2] + torso[3]) / 2
    axis = bottom - top
    length = max(np.float32(np.linalg.norm(axis)), np.float32(1.0))
    down = axis / length
    across = np.array((-down[1], down[0]), np.float32)
    shoulder_width = max(np.float32(np.linalg.norm(torso[0] - torso[1])), np.float32(1.0))
    rx, ry = (xs - top[0])[None, :], (ys - top[1])[:, None]
    t = (rx * down[0] + ry * down[1]) / length
    s = rx * across[0] + ry * across[1]
    k = (np.float32(WAIST_MAX * waist) * _bump(t, WAIST_AT, 0.32)
         - np.float32(HIPS_MAX * hips) * _bump(t, 1.0, 0.3)
         - np.float32(SHOULDERS_MAX * shoulders) * _bump(t, 0.0, 0.3))
    reach = (np.abs(s) / shoulder_width - np.float32(0.9)) / np.float32(0.6)
    taper = 1 - _bump(np.clip(reach, 0, 1), 1.0, 1.0)
    amount = s * k * taper
    return np.stack((amount * across[0], amount * across[1])).astype(np.float32, copy=False)


class BodyWarpCPU:
    """Uses the node for its params and errors; the maths as `muse.nodes.warp.body`."""

    def __init__(self, node) -> None:
        self.node = node

    def process(self, keypoints: Keypoints | None = None, mask: Mask | None = None) -> dict[str, Displacement]:
        from muse.graph.node import NodeError
        from muse.nodes.warp.body import TORSO
        from muse.nodes.warp.fields import zero_field

        node, p = self.node, self.node.params
        ctx = node.ctx
        if keypoints is not None:
            size = (int(keypoints.image_size[0]), int(keypoints.image_size[1]))
        elif mask is not None:
            size = mask.size
        else:
            size = (int(ctx.resolution[0]), int(ctx.resolution[1]))
        stamp = keypoints or mask
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        zero = Displacement(zero_field(size, p.cell, torch.device("cpu")), size, ts, idx)
        if keypoints is None or (p.waist == 0 and p.hips == 0 and p.shoulders == 0):
            return {"field": zero}
        ids = TORSO.get(keypoints.skeleton)
        if ids is None:
            raise NodeError(
                f"node {node.name!r}: keypoints skeleton {keypoints.skeleton!r} is not supported; "
                f"connect a pose node giving one of {sorted(TORSO)}"
            )
        index = np.asarray(ids)
        if float(as_numpy(keypoints.confidence.float())[index].min()) < p.min_confidence:  # host read: the CPU path
            return {"field": zero}
        xs, ys = grid_axes(size, p.cell)
        torso = as_numpy(keypoints.points[:, :2].float())[index]
        field = body_field_np(xs, ys, torso, waist=p.waist, hips=p.hips, shoulders=p.shoulders)
        if mask is not None:
            field *= mask_gate_np(as_numpy(mask.alpha.float()), (ys.size, xs.size), p.margin * ys.size)[None]
        return {"field": Displacement(torch.from_numpy(field), size, ts, idx)}
