"""CPU `warp.apply`: the face and body fields applied only inside the rectangle where the
field moves anything: one numba pass (muse/nodes/cpu/kernels.py) where numba is there, else
OpenCV's `remap` and blends.

The summed field is low resolution and zero outside the person's dilated outline (the
gate), so the output starts as a copy of the frame and only the field's bounding box
is resampled: the field upsampled once (bilinear on cell centres), `remap` of the
frame (bilinear, edges clamped) and of the mask, then the plate blend for uncovered
pixels, as `kernels.warp_apply_torch` defines it.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from muse.graph.payloads import Displacement, Frame, Mask
from muse.nodes.cpu import as_numpy, kernels
from muse.nodes.cpu.composite import upsample_box
from muse.nodes.warp.kernels import ROOM_SHARE

__all__ = ["WarpCPU", "warp_apply_cpu"]


def _moving_box(field: np.ndarray, height: int, width: int) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) in frame pixels covering every pixel whose upsampled offset is non-zero."""
    moving = np.flatnonzero((field[0] != 0) | (field[1] != 0))
    if moving.size == 0:
        return None
    h, w = field.shape[1:]
    rows, cols = moving // w, moving % w
    # bilinear on cell centres: a cell influences frame pixels up to one cell around it
    sy, sx = height / h, width / w
    y0 = max(0, int(np.floor((rows.min() - 1 + 0.5) * sy - 0.5)))
    y1 = min(height, int(np.ceil((rows.max() + 1 + 0.5) * sy + 0.5)) + 1)
    x0 = max(0, int(np.floor((cols.min() - 1 + 0.5) * sx - 0.5)))
    x1 = min(width, int(np.ceil((cols.max() + 1 + 0.5) * sx + 0.5)) + 1)
    return y0, y1, x0, x1


def _field_in_box(field: np.ndarray, height: int, width: int, box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(dx, dy) of the field upsampled to the frame (bilinear on cell centres, edges clamped), only
    inside `box` (`upsample_box`: where the cells tile the frame by a whole factor, only the cells
    around the box), each offset plane on its own (no interleaving and splitting back)."""
    dx, dy = (np.ascontiguousarray(upsample_box(np.ascontiguousarray(plane), height, width, box)) for plane in field)
    return dx, dy


def warp_apply_cpu(src: np.ndarray, field: np.ndarray, mask: np.ndarray | None, plate: np.ndarray | None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """`kernels.warp_apply` on numpy: src (H, W, 3) uint8, field (2, h, w) float32 offsets in pixels,
    mask (mh, mw) float32 or None, plate (H, W, 3) uint8 or None -> (out uint8, warped mask or None)."""
    height, width = src.shape[:2]
    a_full = None
    if mask is not None:
        a_full = mask if mask.shape == (height, width) else cv2.resize(mask, (width, height), interpolation=cv2.INTER_LINEAR)
    box = _moving_box(field, height, width)
    out = src.copy()
    warped_mask = None if a_full is None else a_full.copy()
    if box is None:
        return out, warped_mask
    if kernels.available():
        # one pass over the box (muse/nodes/cpu/kernels.py): the torch path's maths, rounded once
        kernels.warp_box(src, field, box, mask if a_full is not None else None, a_full, plate if a_full is not None else None,
                         out, warped_mask)
        return out, warped_mask
    y0, y1, x0, x1 = box
    dx, dy = _field_in_box(field, height, width, box)
    still = (dx == 0) & (dy == 0)
    mx = dx + np.arange(x0, x1, dtype=np.float32)[None, :]
    my = dy + np.arange(y0, y1, dtype=np.float32)[:, None]
    warped = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    region = np.ascontiguousarray(src[y0:y1, x0:x1])
    still_u8 = still.view(np.uint8)  # where the field is exactly zero the frame is kept as is
    if a_full is None or mask is None or warped_mask is None:
        res = warped
    else:
        # the mask at the sampled point: its own resolution, cell-centre mapping, edges clamped
        if mask.shape == (height, width):
            wa = cv2.remap(mask, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        else:
            mh, mw = mask.shape
            wa = cv2.remap(mask, (mx + 0.5) * (mw / width) - 0.5, (my + 0.5) * (mh / height) - 0.5,
                           cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        wa = np.clip(wa, 0.0, 1.0, out=wa)
        a = np.ascontiguousarray(a_full[y0:y1, x0:x1])
        # uint8 blends (OpenCV rounds each): within a level of the torch twin's one rounding at the end
        if plate is None:
            bg = warped
        else:
            ac = np.clip(a * ROOM_SHARE, 0.0, 1.0)  # kernels.room_share: no half-transparent copy of the old edge
            bg = cv2.blendLinear(np.ascontiguousarray(plate[y0:y1, x0:x1]), np.ascontiguousarray(region), ac, 1.0 - ac)
        res = cv2.blendLinear(warped, bg, wa, 1.0 - wa)
        cv2.copyTo(a, still_u8, wa)  # the warped mask: the mask itself where nothing moves
        warped_mask[y0:y1, x0:x1] = wa
    cv2.copyTo(region, still_u8, res)
    out[y0:y1, x0:x1] = res
    return out, warped_mask


class WarpCPU:
    def __init__(self, node) -> None:
        self.node = node
        kernels.warm_up()

    def process(self, frame: Frame, face: Displacement | None = None, body: Displacement | None = None,
                mask: Mask | None = None, plate: Frame | None = None) -> dict[str, object]:
        from muse.nodes.warp.apply import combine_fields
        from muse.nodes.cpu.body_warp import mask_gate_np

        field = combine_fields([f for f in (face, body) if f is not None], frame.size)
        outputs: dict[str, object] = {}
        if field is None:  # nothing to warp: the frame passes through untouched
            outputs["out"] = frame
            if mask is not None:
                outputs["warped_mask"] = mask
            return outputs
        alpha = mask.alpha if mask is not None else None
        if alpha is not None:
            gate = mask_gate_np(as_numpy(alpha.float()), tuple(field.shape[-2:]), self.node.params.margin * field.shape[-2])
            field = field * torch.from_numpy(gate)
        src = as_numpy(frame.hwc_uint8())
        plate_img = None
        if plate is not None and alpha is not None:
            plate_img = as_numpy(plate.hwc_uint8())
            if plate_img.shape != src.shape:
                plate_img = cv2.resize(plate_img, (src.shape[1], src.shape[0]), interpolation=cv2.INTER_LINEAR)
        mask_np = as_numpy(alpha.float()) if alpha is not None else None
        img, warped = warp_apply_cpu(src, as_numpy(field.float()), mask_np, plate_img)
        outputs["out"] = frame.with_image(torch.from_numpy(img), layout="hwc")
        if warped is not None and mask is not None:
            outputs["warped_mask"] = Mask(torch.from_numpy(warped).to(mask.alpha.dtype), mask.timestamp, mask.index)
        return outputs
