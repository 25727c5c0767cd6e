"""CPU `warp.face`: the same eye magnifiers and outline shifts as the torch path, computed
in numpy only over the grid cells each one can reach.

The torch path evaluates every outline point's compact Gaussian over the whole grid
((36, 90, 160) exponentials a 720p frame, 11-22 ms on a loaded core). Each term is exactly
0 beyond its support (an eye's radius, 3 sigma around an outline point), so here the
landmarks are read on the host (allowed on the CPU path) and each term is evaluated over
the bounding box of its support only: a face a fifth of the frame wide touches about a
tenth of the grid.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from muse.graph.payloads import Displacement, FaceLandmarks, Frame
from muse.nodes.cpu import as_numpy

__all__ = ["FaceWarpCPU", "grid_axes"]

_FLOOR = math.exp(-4.5)  # fields.compact_gaussian's cut at 3 sigma


def grid_axes(image_size: tuple[int, int], cell: int) -> tuple[np.ndarray, np.ndarray]:
    """The x and y coordinates of `fields.field_grid`'s cell centres, as 1-D float32 axes."""
    width, height = image_size
    w, h = max(2, math.ceil(width / cell)), max(2, math.ceil(height / cell))
    xs = ((np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(width / w) - np.float32(0.5)).astype(np.float32)
    ys = ((np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(height / h) - np.float32(0.5)).astype(np.float32)
    return xs, ys


def _span(axis: np.ndarray, lo: float, hi: float) -> slice:
    """The indices of a sorted axis with lo < value < hi (a term is 0 at and beyond its support's edge)."""
    return slice(int(np.searchsorted(axis, lo, side="right")), int(np.searchsorted(axis, hi, side="left")))


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0, 1)
    return t * t * (3 - 2 * t)


def _bump(x: np.ndarray, centre: float, half_width: float) -> np.ndarray:
    u = np.clip((x - centre) / half_width, -1, 1)
    return np.cos(u * (math.pi / 2)) ** 2


class FaceWarpCPU:
    """Uses the node for its params and warnings; the field maths as `muse.nodes.warp.face`."""

    def __init__(self, node) -> None:
        self.node = node

    def process(self, landmarks: FaceLandmarks | None = None, frame: Frame | None = None) -> dict[str, Displacement]:
        from muse.nodes.warp.face import EYE_MAX_SCALE
        from muse.nodes.warp.fields import zero_field

        node, p = self.node, self.node.params
        ctx = node.ctx
        if landmarks is not None:
            size = tuple(landmarks.image_size)
        elif frame is not None:
            size = frame.size
        else:
            size = tuple(ctx.resolution)
        size = (int(size[0]), int(size[1]))
        stamp = landmarks or frame
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        conf = landmarks.confidence if landmarks is not None else 0.0
        conf = float(conf.item()) if isinstance(conf, torch.Tensor) else float(conf)  # a host read: fine on the CPU
        if landmarks is None or conf < p.min_confidence or (p.eyes == 0 and p.v_line == 0 and p.slim == 0):
            return {"field": Displacement(zero_field(size, p.cell, torch.device("cpu")), size, ts, idx)}
        xs, ys = grid_axes(size, p.cell)
        field = np.zeros((2, ys.size, xs.size), np.float32)
        pts = as_numpy(landmarks.points[:, :2].float())
        regions = landmarks.regions

        eyes = [self._eye(pts, regions, side) for side in ("left", "right")]
        if p.eyes > 0 and all(e is not None for e in eyes):
            (c0, r0), (c1, r1) = eyes  # type: ignore[misc]
            gap = np.float32(np.linalg.norm(c1 - c0))
            for c, r in ((c0, r0), (c1, r1)):
                radius = np.minimum(np.float32(r * p.eye_radius), np.float32(0.45) * gap)
                self._add_eye(field, xs, ys, c, radius, EYE_MAX_SCALE * p.eyes)

        outline_name = "face_oval" if "face_oval" in regions else ("jaw" if "jaw" in regions else None)
        if (p.v_line > 0 or p.slim > 0) and outline_name and all(e is not None for e in eyes):
            self._add_outline(field, xs, ys, pts[np.asarray(regions[outline_name])], eyes[0][0], eyes[1][0])  # type: ignore[index]
        elif (p.v_line > 0 or p.slim > 0) and "outline" not in node._warned:
            node._warned.add("outline")
            ctx.logger.warning("node %r: landmarks have no 'face_oval'/'jaw' or eye regions; v_line/slim are off", node.name)
        return {"field": Displacement(torch.from_numpy(field), size, ts, idx)}

    def _eye(self, pts: np.ndarray, regions: dict[str, list[int]], side: str) -> tuple[np.ndarray, np.float32] | None:
        node = self.node
        contour = regions.get(f"{side}_eye")
        if not contour:
            if f"{side}_eye" not in node._warned:
                node._warned.add(f"{side}_eye")
                node.ctx.logger.warning("node %r: landmarks have no %r region; eyes are off", node.name, f"{side}_eye")
            return None
        eye = pts[np.asarray(contour)]
        iris = regions.get(f"{side}_iris")
        centre = (pts[np.asarray(iris)] if iris else eye).mean(0, dtype=np.float32)
        half_width = np.float32(np.linalg.norm(eye[:, None, :] - eye[None, :, :], axis=-1).max() / 2)
        return centre, max(half_width, np.float32(1.0))

    @staticmethod
    def _add_eye(field: np.ndarray, xs: np.ndarray, ys: np.ndarray, centre: np.ndarray, radius: np.float32, scale: float) -> None:
        """fields' eye_field over the cells inside the radius (it is 0 from the radius on)."""
        cols = _span(xs, centre[0] - radius, centre[0] + radius)
        rows = _span(ys, centre[1] - radius, centre[1] + radius)
        px = xs[cols][None, :] - centre[0]
        py = ys[rows][:, None] - centre[1]
        if px.size == 0 or py.size == 0:
            return
        rho2 = (px * px + py * py) / (radius * radius)
        k = np.float32(scale) * np.maximum(1 - rho2, 0) ** 2
        field[0, rows, cols] -= px * k
        field[1, rows, cols] -= py * k

    def _add_outline(self, field: np.ndarray, xs: np.ndarray, ys: np.ndarray, outline: np.ndarray,
                     left: np.ndarray, right: np.ndarray) -> None:
        """FaceWarp._outline and fields.outline_field, over the cells within 3 sigma of an outline point."""
        from muse.nodes.warp.face import SLIM_MAX, V_LINE_MAX

        p = self.node.params
        eye_mid = (left + right) / 2
        across = right - left
        across = across / max(np.float32(np.linalg.norm(across)), np.float32(1e-6))
        down = np.array((-across[1], across[0]), np.float32)
        sign = np.sign((outline.mean(0) - eye_mid) @ down)
        down = down * (1 if sign == 0 else sign)
        rel = outline - eye_mid
        t = rel @ down
        t = t / max(t.max(), np.float32(1.0))
        s = rel @ across
        jaw_w = _smoothstep(0.35, 0.75, t) * (1 - _smoothstep(0.92, 1.05, t))
        cheek_w = _bump(t, 0.45, 0.45) * (t > 0)
        inward = -(s * (V_LINE_MAX * p.v_line * jaw_w + SLIM_MAX * p.slim * cheek_w))
        shifts = (inward[:, None] * across[None, :]).astype(np.float32)
        sigma = np.float32(0.15) * max(np.float32(s.max() - s.min()), np.float32(4.0))
        reach = 3 * sigma
        cols = _span(xs, outline[:, 0].min() - reach, outline[:, 0].max() + reach)
        rows = _span(ys, outline[:, 1].min() - reach, outline[:, 1].max() + reach)
        gx, gy = xs[cols], ys[rows]
        if gx.size == 0 or gy.size == 0:
            return
        dx = gx[None, None, :] - outline[:, 0, None, None]
        dy = gy[None, :, None] - outline[:, 1, None, None]
        k = np.exp(-(dx * dx + dy * dy) / (2 * sigma * sigma))
        k = np.maximum((k - np.float32(_FLOOR)) / np.float32(1 - _FLOOR), 0)  # (N, bh, bw)
        norm = np.maximum(k.sum(0), 1.0)
        k2 = k.reshape(len(outline), -1)
        field[0, rows, cols] -= (shifts[:, 0] @ k2).reshape(norm.shape) / norm
        field[1, rows, cols] -= (shifts[:, 1] @ k2).reshape(norm.shape) / norm
