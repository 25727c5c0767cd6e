"""Real-picture scenes with an exact person mask, for the segmentation tests.

The astronaut (scikit-image) is cut out once with GrabCut and pasted over a real
background (opencv-doc `home.jpg`); the paste mask is the ground truth by construction,
and every edge of the composite is a real photo edge.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

import media


@lru_cache(maxsize=4)
def person_cutout(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 (size,size,3), mask bool (size,size)) of the astronaut, largest GrabCut region only."""
    rgb = cv2.resize(media.astronaut(), (size, size), interpolation=cv2.INTER_AREA)
    work = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
    labels = np.zeros((256, 256), np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(work[:, :, ::-1].copy(), labels, (40, 10, 200, 246), np.zeros((1, 65)), np.zeros((1, 65)), 3,
                cv2.GC_INIT_WITH_RECT)
    fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    count, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (comp == biggest).astype(np.float32)
    fg = cv2.resize(fg, (size, size), interpolation=cv2.INTER_LINEAR) > 0.5
    return rgb, fg


@lru_cache(maxsize=4)
def room(size: int = 256) -> np.ndarray:
    """A real background picture without people (opencv-doc home.jpg), (size,size,3) uint8."""
    return cv2.resize(media.opencv_sample("home.jpg"), (size, size), interpolation=cv2.INTER_AREA)


def composite(size: int = 256, shift: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The person pasted over the room, moved right by `shift` px: (rgb uint8, ground-truth mask bool)."""
    rgb, mask = person_cutout(size)
    if shift:
        rgb, mask = np.roll(rgb, shift, axis=1), np.roll(mask, shift, axis=1)
    out = np.where(mask[..., None], rgb, room(size))
    return np.ascontiguousarray(out), mask


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / max(1, (a | b).sum()))


def camera(rgb: np.ndarray, seed: int) -> np.ndarray:
    """`rgb` as a camera gives it: with its sensor's noise (sigma 2 levels)."""
    noise = np.random.default_rng(seed).normal(0.0, 2.0, rgb.shape)
    return np.clip(rgb.astype(np.float64) + noise, 0, 255).astype(np.uint8)


def frame(rgb: np.ndarray, i: int = 0) -> "Frame":
    """`rgb` as frame `i` of a 30 fps stream."""
    import torch

    from muse.graph.payloads import Frame

    return Frame(torch.from_numpy(np.ascontiguousarray(rgb)), timestamp=i / 30, index=i)
