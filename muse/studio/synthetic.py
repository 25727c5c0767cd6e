"""A synthetic studio session from real photos: a person cut out of a real
portrait moves over a real room picture. The room alone is the clean plate and
the cut-out alpha is the ground truth, so tests and benches can score labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

from muse.app_paths import demo_media

ASSETS = demo_media("")  # assets/demo: in the repository and inside the packaged app


@lru_cache(maxsize=1)
def person_cutout() -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (H,W,3), alpha float32 (H,W)) of the astronaut portrait's person, cut out with GrabCut.

    Cached as an RGBA PNG in assets/demo so benches need neither scikit-image nor a second GrabCut.
    """
    import cv2

    cached = ASSETS / "person_rgba.png"
    if cached.is_file():
        bgra = cv2.imread(str(cached), cv2.IMREAD_UNCHANGED)
        return np.ascontiguousarray(bgra[:, :, 2::-1]), bgra[:, :, 3].astype(np.float32) / 255.0
    from skimage import data

    rgb = data.astronaut()
    small = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    gc = np.zeros(small.shape[:2], np.uint8)
    bgd, fgd = np.zeros((1, 65)), np.zeros((1, 65))
    cv2.grabCut(small[:, :, ::-1].copy(), gc, (20, 10, 210, 246), bgd, fgd, 5, cv2.GC_INIT_WITH_RECT)
    hard = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    hard = cv2.morphologyEx(hard, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(hard)
    if n > 1:  # keep the person, drop speckles
        hard = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    alpha = cv2.resize(hard.astype(np.float32), rgb.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    alpha = cv2.GaussianBlur(alpha, (3, 3), 0)
    return rgb, np.clip(alpha, 0, 1)


@lru_cache(maxsize=1)
def room_picture() -> np.ndarray:
    """A real indoor-ish background picture (scikit-image's coffee photo), RGB uint8."""
    import cv2

    cached = ASSETS / "room.jpg"
    if cached.is_file():
        return np.ascontiguousarray(cv2.imread(str(cached))[:, :, ::-1])
    from skimage import data

    return data.coffee()


@dataclass
class SyntheticScene:
    """Deterministic person-over-room frames at (width, height)."""

    width: int = 320
    height: int = 180
    fps: float = 30.0
    person_height: float = 0.9  # share of the picture height

    def clean_plate(self) -> np.ndarray:
        import cv2

        return cv2.resize(room_picture(), (self.width, self.height), interpolation=cv2.INTER_AREA)

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8, ground-truth alpha float32) of frame i."""
        import cv2

        rgb, alpha = person_cutout()
        t = i / self.fps
        scale = self.person_height * self.height / rgb.shape[0] * (1.0 + 0.06 * math.sin(0.7 * t))
        pw, ph = max(2, int(rgb.shape[1] * scale)), max(2, int(rgb.shape[0] * scale))
        person = cv2.resize(rgb, (pw, ph), interpolation=cv2.INTER_AREA).astype(np.float32)
        a = cv2.resize(alpha, (pw, ph), interpolation=cv2.INTER_LINEAR)
        # Sway left-right and bob a little, like someone talking to the camera.
        cx = self.width * (0.5 + 0.22 * math.sin(0.9 * t))
        top = self.height - ph + int(0.04 * self.height * (1 + math.sin(2.1 * t)))
        x0 = int(cx - pw / 2)
        plate = self.clean_plate().astype(np.float32)
        out_a = np.zeros((self.height, self.width), np.float32)
        out_p = np.zeros_like(plate)
        sx0, sy0 = max(0, -x0), max(0, -top)
        dx0, dy0 = max(0, x0), max(0, top)
        w = min(pw - sx0, self.width - dx0)
        h = min(ph - sy0, self.height - dy0)
        if w > 0 and h > 0:
            out_a[dy0 : dy0 + h, dx0 : dx0 + w] = a[sy0 : sy0 + h, sx0 : sx0 + w]
            out_p[dy0 : dy0 + h, dx0 : dx0 + w] = person[sy0 : sy0 + h, sx0 : sx0 + w]
        # Light flicker so the clean-plate teacher has to cope with exposure drift.
        gain = 1.0 + 0.03 * math.sin(1.3 * t)
        comp = (out_p * out_a[..., None] + plate * (1 - out_a[..., None])) * gain
        return np.clip(comp, 0, 255).astype(np.uint8), out_a

    def frames(self, count: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(count):
            yield self.frame(i)


def write_recording(path: str | Path, scene: SyntheticScene, count: int) -> np.ndarray:
    """Encode `count` frames to an H.264 file atomically; return the ground-truth alphas (N,H,W)."""
    from muse.studio.files import VideoWriter

    writer = VideoWriter(path, scene.width, scene.height, scene.fps)
    alphas = []
    try:
        for rgb, alpha in scene.frames(count):
            writer.write(rgb)
            alphas.append(alpha)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return np.stack(alphas)
