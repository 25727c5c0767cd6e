"""Real pictures for the avatar tests: a raised arm and open vs closed eyes.

- Raised arm: opencv-doc's messi5.jpg turned 60 degrees clockwise. His right
  arm, held out sideways and a little up in the original, then points up (the
  pose model finds him just as well; the test compares the avatar's bone with
  the keypoints' own direction, so the turn of the whole body does not matter).
- Eyes: the astronaut's face cropped and enlarged (open eyes), and the same
  crop with both eyes shut the way lids close: the skin of each upper lid is
  slid down onto the lower lid's line (a vertical remap per column, guided by
  the face mesh's lid contours), lashes included.
"""

from __future__ import annotations

import cv2
import numpy as np

import media

UPPER_LID = {"right": [33, 246, 161, 160, 159, 158, 157, 173, 133], "left": [362, 398, 384, 385, 386, 387, 388, 466, 263]}
LOWER_LID = {"right": [33, 7, 163, 144, 145, 153, 154, 155, 133], "left": [362, 382, 381, 380, 374, 373, 390, 249, 263]}


def rotated(img: np.ndarray, degrees: float) -> np.ndarray:
    """`img` turned by `degrees` (positive = counter-clockwise) on a canvas that holds all of it."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    c, s = abs(m[0, 0]), abs(m[0, 1])
    nw, nh = int(h * s + w * c), int(h * c + w * s)
    m[0, 2] += nw / 2 - w / 2
    m[1, 2] += nh / 2 - h / 2
    return cv2.warpAffine(img, m, (nw, nh), borderMode=cv2.BORDER_REFLECT)


def raised_arm() -> np.ndarray:
    """messi5.jpg turned so that his right upper arm points up (RGB)."""
    return rotated(media.opencv_sample("messi5.jpg"), -60)


def face_crop() -> np.ndarray:
    """The astronaut's face, enlarged to 440x440 (RGB, eyes open)."""
    img = media.astronaut()
    return cv2.resize(np.ascontiguousarray(img[20:240, 115:335]), (440, 440), interpolation=cv2.INTER_CUBIC)


def shut_eyes(img: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """`img` with both eyes closed, given its face mesh (478, 2+) in pixels."""
    h, w = img.shape[:2]
    mx = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    my = np.tile(np.arange(h, dtype=np.float32)[:, None], (1, w))
    for side in ("right", "left"):
        up, lo = mesh[UPPER_LID[side], :2], mesh[LOWER_LID[side], :2]
        up, lo = up[np.argsort(up[:, 0])], lo[np.argsort(lo[:, 0])]
        for x in range(int(np.floor(up[:, 0].min())), int(np.ceil(up[:, 0].max())) + 1):
            yu, yl = np.interp(x, up[:, 0], up[:, 1]), np.interp(x, lo[:, 0], lo[:, 1])
            top = yu - 2.5 * (yl - yu) - 4  # lid skin from above the eye slides down
            ys = np.arange(int(top), int(np.ceil(yl)) + 1)
            my[ys, x] = (top + (ys - top) * (yu - top) / max(yl - top, 1e-3)).astype(np.float32)
    return cv2.remap(img, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
