"""The CPU twin of `segment.fused`'s edge anti-aliasing (`fused.antialias`): the full-size matte filtered by a
small separable Gaussian (`fused.antialias_taps`, replicated border), every pixel kept on its side of 0.5.

The filter is OpenCV's separable one (its SIMD passes: a numba loop doing both passes and the clamp cost 1.7 ms at
720p against 0.9 + 0.3); the clamp one numba loop where numba is there and the loop is compiled (`warm_up`, on a
background thread: a first compile inside a frame costs about a second), else two masked numpy passes.
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from muse.nodes.cpu import kernels

__all__ = ["antialias", "warm_up", "KEEP_IN"]

# What a pixel above 0.5 keeps at least (0.5 + 2^-9: exact in float16 as well, so the GPU's half-precision
# matte keeps the same decision)
KEEP_IN = np.float32(0.5 + 2.0 ** -9)
_LOOP = None
_WARM: threading.Thread | None = None
_LOCK = threading.Lock()
_TAPS: dict[float, np.ndarray] = {}


def _loop():
    """The clamp as a numba loop, compiled (or loaded from numba's disk cache) on first use."""
    global _LOOP
    if _LOOP is None:
        from numba import njit

        @njit(nogil=True, cache=True, fastmath=False, error_model="numpy")
        def keep_sides(src, dst, keep_in):  # pragma: no cover - compiled
            # branch-free, so LLVM vectorises it: above 0.5 -> [keep_in, 1], else [0, 0.5]
            h, w = src.shape
            half = np.float32(0.5)
            for y in range(h):
                s, d = src[y], dst[y]
                for x in range(w):
                    m = np.float32(s[x] > half)
                    d[x] = min(max(d[x], keep_in * m), half + half * m)

        _LOOP = keep_sides
    return _LOOP


def _compiled() -> bool:
    return _LOOP is not None and bool(getattr(_LOOP, "signatures", ()))


def warm_up() -> None:
    """Compile the loop on a background thread, once per process (the CPU node calls this when it opens)."""
    global _WARM
    if _WARM is not None or not kernels.available():  # available() also points numba's cache at MUSE's
        return
    with _LOCK:
        if _WARM is not None:
            return
        _WARM = threading.Thread(target=lambda: antialias(np.eye(8, dtype=np.float32), 1.0, wait=True),
                                 name="muse-numba-edge-aa", daemon=True)
    _WARM.start()


def taps_for(sigma: float) -> np.ndarray:
    """`fused.antialias_taps(sigma)` as float32, made once a value."""
    taps = _TAPS.get(sigma)
    if taps is None:
        from muse.nodes.segment.fused import antialias_taps

        taps = _TAPS[sigma] = np.array(antialias_taps(sigma), np.float32)
    return taps


def antialias(matte: np.ndarray, sigma: float, wait: bool = False) -> np.ndarray:
    """`fused.antialias` of an (H, W) float32 matte in [0, 1]: a new array (the matte itself for sigma 0). With
    `wait` the numba loop is compiled here if it is not yet (the warm-up's own call)."""
    taps = taps_for(sigma)
    if not taps.size:
        return matte
    src = np.ascontiguousarray(matte, np.float32)
    out = cv2.sepFilter2D(src, -1, taps, taps, borderType=cv2.BORDER_REPLICATE)
    if kernels.available() and (wait or _compiled()):
        _loop()(src, out, KEEP_IN)
        return out
    inside = src > 0.5
    np.maximum(out, KEEP_IN, out=out, where=inside)
    np.minimum(out, np.float32(0.5), out=out, where=~inside)
    return out
