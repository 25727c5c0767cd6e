"""Real photos shipped inside the package (`muse/assets`, their one home), read by name.

The demo source, synthetic studio sessions and the bundled models' reference checks need
real pictures at run time; scikit-image (where they come from) is a test-only dependency.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from muse.app_paths import package_assets_dir

ASSETS = package_assets_dir()
PICTURES = {"astronaut": "astronaut.png", "brick": "brick.png", "chelsea": "chelsea.png", "coffee": "coffee.png", "rocket": "rocket.png"}


@lru_cache(maxsize=8)
def _read(name: str) -> np.ndarray:
    import cv2

    if name not in PICTURES:
        raise KeyError(f"no shipped picture {name!r}; known: {', '.join(sorted(PICTURES))}")
    path = ASSETS / PICTURES[name]
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FileNotFoundError(f"{path} is missing or unreadable; reinstall MUSE (the package ships it)")
    if img.ndim == 3:
        img = np.ascontiguousarray(img[:, :, 2::-1])  # OpenCV's BGR -> RGB
    img.setflags(write=False)  # cached and shared: callers copy before changing it
    return img


def picture(name: str) -> np.ndarray:
    """The shipped photo `name` as uint8: (H, W, 3) RGB, or (H, W) for the grey brick wall.

    The same pixels as `skimage.data.<name>()`; read-only (cached), copy it to change it."""
    return _read(name)
