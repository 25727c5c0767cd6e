"""The teacher interface: a mask teacher turns RGB frames into person
probabilities, a pose teacher turns frames (and person boxes) into keypoints."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np


class TeacherUnavailable(RuntimeError):
    """The teacher cannot run here (no checkpoint, package missing); the message says what to provide."""


class MaskTeacher(Protocol):
    name: str

    def masks(self, frames: Sequence[np.ndarray], hints: Sequence[dict] | None = None) -> list[np.ndarray]:
        """RGB uint8 (H,W,3) frames -> float32 (H,W) person probability in [0,1].

        `hints` (per frame, optional): {"mask": prior mask, "keypoints": (K,3) x,y,conf}
        for teachers that need prompts."""
        ...


class PoseTeacher(Protocol):
    name: str
    skeleton: str

    def keypoints(self, frames: Sequence[np.ndarray], boxes: Sequence[tuple[float, float, float, float] | None]) -> list[np.ndarray | None]:
        """Frames and person boxes (x0,y0,x1,y1 pixels) -> (K,3) arrays of x, y, confidence (None = nobody)."""
        ...


def mask_box(mask: np.ndarray, threshold: float = 0.5, pad: float = 0.05) -> tuple[float, float, float, float] | None:
    """Bounding box of a mask, padded by `pad` of its size; None if empty."""
    ys, xs = np.nonzero(mask > threshold)
    if xs.size == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    px, py = (x1 - x0) * pad, (y1 - y0) * pad
    h, w = mask.shape
    return (float(max(0, x0 - px)), float(max(0, y0 - py)), float(min(w, x1 + px)), float(min(h, y1 + py)))


def iou(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """IoU of two masks binarised at `threshold`; two empty masks agree fully."""
    ma, mb = a > threshold, b > threshold
    union = np.logical_or(ma, mb).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(ma, mb).sum() / union)
