"""The CPU twin of `segment.fused`'s edge anti-aliasing (`fused.antialias`): the full-size matte filtered by a
small separable Gaussian (`fused.antialias_taps`, replicated border), every pixel kept on its side of 0.5.

The filter is OpenCV's separable one into a scratch buffer (its SIMD passes: a numba loop doing both passes and
the clamp cost 1.7 ms at 720p against 0.5 + 0.3); the clamp back into the matte, in place, one numba loop where
numba is there and the loop is compiled (`warm_up`, on a background thread: a first compile inside a frame costs
about a second), else two masked numpy passes and a copy. Cost on one core: about 1 ms at 720p, 10-13 ms at 4K
(the whole frame is filtered; most of it is 0 or 1, so a loop over the edges' band alone would do far less).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

from muse.nodes.cpu import kernels
from muse.nodes.segment.fused import KEEP_IN as _KEEP_IN
from muse.nodes.segment.fused import antialias_taps

__all__ = ["antialias", "warm_up", "KEEP_IN"]

KEEP_IN = np.float32(_KEEP_IN)  # what a pixel above 0.5 keeps at least (fused.KEEP_IN, exact in float16)
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
        def keep_sides(matte, blurred, keep_in):  # pragma: no cover - compiled
            # matte, in place, becomes blurred kept on matte's side of 0.5: above -> [keep_in, 1], else
            # [0, 0.5]; branch-free, so LLVM vectorises it
            h, w = matte.shape
            half = np.float32(0.5)
            for y in range(h):
                s, b = matte[y], blurred[y]
                for x in range(w):
                    m = np.float32(s[x] > half)
                    s[x] = min(max(b[x], keep_in * m), half + half * m)

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
        _WARM = threading.Thread(target=_warm, name="muse-numba-edge-aa", daemon=True)
    _WARM.start()


def _warm() -> None:
    eye = np.eye(8, dtype=np.float32)
    antialias(eye.copy(), 1.0, wait=True)


def taps_for(sigma: float) -> np.ndarray:
    """`fused.antialias_taps(sigma)` as float32, made once a value."""
    taps = _TAPS.get(sigma)
    if taps is None:
        taps = _TAPS[sigma] = np.array(antialias_taps(sigma), np.float32)
    return taps


def antialias(matte: np.ndarray, sigma: float, wait: bool = False) -> np.ndarray:
    """`fused.antialias` of an (H, W) float32 matte in [0, 1], in place when it is a contiguous float32 array (the
    edge pass's own fresh output; else on a copy), returned. The filtered picture goes to a scratch buffer kept for
    the next frame of this size (a fresh 33 MB at 4K cost its page faults every frame). With `wait` the numba loop
    is compiled here if it is not yet (the warm-up's own call)."""
    taps = taps_for(sigma)
    if not taps.size:
        return matte
    out = np.ascontiguousarray(matte, np.float32)
    blurred = _scratch(out.shape)
    cv2.sepFilter2D(out, -1, taps, taps, dst=blurred, borderType=cv2.BORDER_REPLICATE)
    if kernels.available() and (wait or _compiled()):
        _loop()(out, blurred, KEEP_IN)
        return out
    inside = out > 0.5
    np.maximum(blurred, KEEP_IN, out=blurred, where=inside)
    np.minimum(blurred, np.float32(0.5), out=blurred, where=~inside)
    out[...] = blurred
    return out


_SCRATCH: dict[tuple[int, ...], np.ndarray] = {}
_SCRATCH_LOCK = threading.Lock()


def _scratch(shape: tuple[int, ...]) -> np.ndarray:
    """A float32 buffer of this shape for the calling thread (nodes run on their own threads)."""
    key = (threading.get_ident(), *shape)
    buf = _SCRATCH.get(key)
    if buf is None:
        with _SCRATCH_LOCK:
            if len(_SCRATCH) > 8:  # sizes and threads come and go: keep a few
                _SCRATCH.clear()
            buf = _SCRATCH[key] = np.empty(shape, np.float32)
    return buf
