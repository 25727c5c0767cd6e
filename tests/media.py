"""Real test pictures: scikit-image's astronaut and Debian opencv-doc samples.

opencv-doc is fetched once with `apt-get download` and unpacked with `dpkg -x`
into the user cache (CI does the same on a fresh machine)."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("MUSE_TEST_MEDIA", Path.home() / ".cache" / "muse" / "test-media"))


def astronaut() -> np.ndarray:
    """512x512 RGB uint8 portrait."""
    from skimage import data

    return data.astronaut()


def opencv_doc_dir() -> Path:
    root = CACHE / "opencv-doc"
    marker = root / ".complete"
    if not marker.exists():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(["apt-get", "download", "opencv-doc"], cwd=tmp, check=True, capture_output=True)
            deb = next(Path(tmp).glob("opencv-doc*.deb"))
            subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        marker.touch()
    return root


def opencv_sample_path(name: str) -> Path:
    """Path of a sample file (`messi5.jpg`, `basketball1.png`, `vtest.avi`)."""
    root = opencv_doc_dir()
    hits = sorted(root.rglob(name))
    if not hits:
        raise FileNotFoundError(f"{name} not found in opencv-doc under {root}")
    return hits[0]


def opencv_sample(name: str) -> np.ndarray:
    """An opencv-doc sample picture as RGB uint8 (H, W, 3)."""
    import cv2

    bgr = cv2.imread(str(opencv_sample_path(name)), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(name)
    return np.ascontiguousarray(bgr[:, :, ::-1])
