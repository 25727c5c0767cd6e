"""Synthetic scenes with known geometry for the visual-engine tests (warp, background, composite).

A real photo is the room; a person of known outline stands in it, with
keypoints and landmarks placed where the geometry says they are.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch

from muse.graph.payloads import FaceLandmarks, Keypoints

BODY_W, BODY_H = 160, 240
SHOULDER_Y, HIP_Y, AXIS_X = 60, 160, 80
WAIST_Y = SHOULDER_Y + round(0.62 * (HIP_Y - SHOULDER_Y))  # 122


def room(width: int, height: int) -> np.ndarray:
    """A real picture (scikit-image astronaut, resized) with a straight vertical door edge drawn in."""
    from skimage import data

    img = cv2.resize(data.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    img[:, 8:10] = (250, 250, 250)  # a straight line of the room near the left edge
    return np.ascontiguousarray(img)


def body_half_width(y: np.ndarray) -> np.ndarray:
    """Half-width in pixels of the synthetic torso at row y: 30 at the shoulders, 22 at the waist, 27 at the hips."""
    y = np.asarray(y, dtype=np.float64)
    top = np.interp(y, [SHOULDER_Y - 15, SHOULDER_Y, WAIST_Y, HIP_Y, HIP_Y + 40], [18, 30, 22, 27, 25])
    return np.where((y >= SHOULDER_Y - 15) & (y <= HIP_Y + 40), top, 0.0)


def body_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray, Keypoints]:
    """(frame, plate, mask, keypoints): a striped torso over the room, exact mask, coco17 keypoints."""
    plate = room(BODY_W, BODY_H)
    ys, xs = np.mgrid[0:BODY_H, 0:BODY_W]
    half = body_half_width(ys[:, 0])[:, None]
    mask = (np.abs(xs + 0.5 - (AXIS_X + 0.5)) <= half).astype(np.float32)
    shirt = np.zeros_like(plate)
    shirt[..., 0] = 200
    shirt[..., 1] = np.where((ys // 6) % 2 == 0, 40, 90)  # horizontal stripes: lines that must stay straight
    shirt[..., 2] = 60
    frame = np.where(mask[..., None] > 0.5, shirt, plate).astype(np.uint8)
    pts = np.zeros((17, 2), np.float32)
    pts[5], pts[6] = (AXIS_X + 25, SHOULDER_Y), (AXIS_X - 25, SHOULDER_Y)  # left/right from the person's view
    pts[11], pts[12] = (AXIS_X + 18, HIP_Y), (AXIS_X - 18, HIP_Y)
    pts[0] = (AXIS_X, SHOULDER_Y - 35)
    conf = np.zeros(17, np.float32)
    conf[[0, 5, 6, 11, 12]] = 0.9
    kp = Keypoints(torch.from_numpy(pts), torch.from_numpy(conf), "coco17", (BODY_W, BODY_H))
    return frame, plate, mask, kp


def measured_width(mask_row: np.ndarray) -> float:
    """Width of the person along one row, sub-pixel: the sum of the soft mask."""
    return float(np.clip(mask_row, 0, 1).sum())


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


# Hand-placed on skimage's astronaut (512x512): pupils, eye corners, face outline.
ASTRONAUT_EYES = {"left": (202.5, 101.0, 10.0, 4.0), "right": (246.0, 103.0, 9.5, 4.0)}
ASTRONAUT_FACE = (226.0, 120.0, 47.0, 72.0)  # oval centre x, y, half-width, half-height


def astronaut_landmarks() -> FaceLandmarks:
    """A 468-point mesh stand-in with the named regions at the astronaut's real eyes and face outline."""
    parts: dict[str, np.ndarray] = {}
    for side, (cx, cy, rx, ry) in ASTRONAUT_EYES.items():
        parts[f"{side}_eye"] = _ellipse(cx, cy, rx, ry, 16)
        parts[f"{side}_iris"] = _ellipse(cx, cy, 4.0, 4.0, 5)
    fx, fy, frx, fry = ASTRONAUT_FACE
    parts["face_oval"] = _ellipse(fx, fy, frx, fry, 36)
    pts = np.zeros((468, 3), np.float32)
    regions: dict[str, list[int]] = {}
    start = 0
    for name, p in parts.items():
        pts[start : start + len(p), :2] = p
        regions[name] = list(range(start, start + len(p)))
        start += len(p)
    jaw = [i for i in regions["face_oval"] if pts[i, 1] > fy]
    regions["jaw"] = jaw
    return FaceLandmarks(torch.from_numpy(pts), 0.95, regions, (512, 512), box=(fx - frx, fy - fry, fx + frx, fy + fry))
