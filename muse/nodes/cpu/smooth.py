"""CPU `landmarks.smooth`: the same One-Euro filter in numpy on the host.

A few hundred points a frame: the torch path's thirty small ops cost 0.7-0.8 ms p50 and
4-7 ms p95 on a loaded machine (thread-pool wake-ups); numpy does them without a pool.
Time comes from the payload's own timestamp, not the runtime's shared frame clock: with two
frames in flight on the CPU (muse/graph/cpu_pipeline.py) the clock may already hold the next
frame's time when this node runs in the tail stage; the payload's is exact for its frame.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch

from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.nodes.cpu import as_numpy

__all__ = ["OneEuroCPU", "SmoothCPU"]


def _alpha(cutoff, dt):
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


def _extent(xy: np.ndarray, valid: np.ndarray | None) -> np.float32:
    """smooth._extent: the larger side of the box of valid points, never below 1."""
    if valid is not None:
        if not valid.any():
            return np.float32(1.0)
        xy = xy[valid]
    return max(np.float32((xy.max(0) - xy.min(0)).max()), np.float32(1.0))


class OneEuroCPU:
    """smooth.OneEuro over (N, D) float32 numpy points; state on the host."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t = 0.0

    def __call__(self, x: np.ndarray, t: float, scale: np.float32, valid: np.ndarray | None, default_dt: float) -> np.ndarray:
        if self.x is None or self.dx is None or self.x.shape != x.shape:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), float(t)
            return x
        step = float(t) - self.t
        dt64 = step if step > 0 else default_dt
        dt = np.float32(dt64)
        speed = (x - self.x) / dt / scale
        dx = self.dx + np.float32(_alpha(self.d_cutoff, dt)) * (speed - self.dx)
        magnitude = np.sqrt((dx[..., :2] ** 2).sum(-1, keepdims=True))
        a = _alpha(self.min_cutoff + self.beta * magnitude, dt).astype(np.float32)
        out = self.x + a * (x - self.x)
        if valid is not None:
            keep = valid.reshape(-1, *([1] * (x.ndim - 1)))
            out = np.where(keep, out, x)
            dx = np.where(keep, dx, np.float32(0))
        self.x, self.dx = out, dx
        self.t += dt64
        return out


class SmoothCPU:
    """Uses the node for params; filters keyed as the torch path's."""

    def __init__(self, node) -> None:
        self.node = node
        self.filters: dict[str, OneEuroCPU] = {}

    def update(self, params) -> None:
        for f in self.filters.values():
            f.min_cutoff, f.beta, f.d_cutoff = params.min_cutoff, params.beta, params.d_cutoff

    def _filter(self, key: str) -> OneEuroCPU:
        f = self.filters.get(key)
        if f is None:
            p = self.node.params
            f = self.filters[key] = OneEuroCPU(p.min_cutoff, p.beta, p.d_cutoff)
        return f

    def process(self, keypoints: Keypoints | None = None, face: FaceLandmarks | None = None) -> dict[str, Keypoints | FaceLandmarks]:
        node = self.node
        p = node.params
        default_dt = 1 / node._fps()
        out: dict[str, Keypoints | FaceLandmarks] = {}
        if keypoints is not None:
            pts = as_numpy(keypoints.points.float())
            valid = as_numpy(keypoints.confidence.float()) >= p.min_confidence
            res = self._filter("keypoints")(pts, keypoints.timestamp, _extent(pts[:, :2], valid), valid, default_dt)
            out["smoothed_keypoints"] = replace(keypoints, points=torch.from_numpy(res).to(keypoints.points.dtype))
        if face is not None:
            pts = as_numpy(face.points.float())
            conf = float(face.confidence.item()) if isinstance(face.confidence, torch.Tensor) else float(face.confidence)
            valid = np.full(pts.shape[0], conf >= p.min_confidence)
            res = self._filter("face")(pts, face.timestamp, _extent(pts[:, :2], None), valid, default_dt)
            out["smoothed_face"] = replace(face, points=torch.from_numpy(res).to(face.points.dtype))
        return out
