"""CPU `segment.fused` (issue 13): the torch path's maths (`muse.nodes.segment.fused.FusedMatte`) in
numpy/OpenCV at the working resolution, then one full-resolution edge pass.

Kept step for step in line with the torch path: each method here has the torch method's name
(`_shift`, `_translate`, `_light_field`, `_gain`, `_follow`, `step`, `edge_alpha`, `keep_out`; `refine_full` is the
torch path's `refine_coefficients` then `refine_apply`) and the same order of operations, so a change to the torch algorithm maps onto one place here.
`tests/test_cpu_fused.py` holds the two together on real photos.

What differs, and why it is exact or within float rounding:
- images are (h, w, C) float32 arrays, not (1, C, h, w) tensors;
- while nothing of the plate is known (no recorded plate, the own plate not grown yet or just dropped)
  the plate difference is skipped: the torch path multiplies it by `known` (all zeros), its `pp` is 0 and
  its gain is not used (`g_ok` is 0), so it adds exactly 0;
- the previous matte carried along the motion (`_follow`): the same block matching at quarter size
  (49 candidate costs as planes of one tall picture, one box filter call, the argmin as the first plane
  reaching the minimum, as torch's argmin takes the first of equal costs); the bilinear resampling
  (`_sample`) is torch's grid_sample itself (OpenCV's remap rounds the position to 1/32 pixel), on the
  last frame as it was, scaled by the exposure ratio afterwards (the torch path scales first: sampling
  is linear, so only rounding differs);
- `_known_quantile` picks the same order statistics with np.partition instead of a sort;
- the envelope's choice (`envelope_choice`): `tight` is a float, the difference from the plate itself is worked
  out on the sampled pixels alone for its evidence, and over the whole plane only while `tight` is above 0
  (the torch path blends with 0 then);
- `_dilate`/`_erode` are `cv2.dilate`/`cv2.erode` (both ignore pixels outside, as max_pool2d's padding);
- `box_filter` counts only pixels inside the picture (torch's count_include_pad=False);
- the camera-shake shift is a whole number of pixels (an FFT peak), so `_translate` is an integer
  shift with replicated edges (what grid_sample does for it);
- torch.median is the lower median, torch.quantile interpolates linearly: both reproduced;
- the full-resolution pass folds the edge contrast (`edge_sharpness`, `edge_offset`) into the guided
  filter's coefficients at the working size when that cannot change a clipped value, so the frame is read
  once: A.I + b, then one clip;
- the edge's anti-aliasing (`edge_softness`) is OpenCV's separable filter with the torch path's taps, then the
  same clamp to each pixel's side of 0.5 (`edge_aa`).
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import as_numpy, edge_aa, kernels
from muse.nodes.cpu.refine import box_mean, guided_colour
from muse.nodes.segment.envelope_choice import TIGHT_QUANTILE, tight_update_host
from muse.nodes.segment.fused import (CAMERA_STILL, COLOUR_BINS, COLOUR_STEP, FIT_STEP, GAIN_STEP, MODEL_HOLE,
                                     MOTION_VOTE_MIN, MOTION_VOTE_RADIUS, SHIFT_SOFTEN, UNCOVERED_SECONDS)
from muse.nodes.segment.holes import BAY_EVIDENCE, enclosed_host

__all__ = ["FusedCPU", "working_picture"]

LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_UNIT = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)
_KERNELS: dict[int, np.ndarray] = {}


def _kernel(r: int) -> np.ndarray:
    k = _KERNELS.get(r)
    if k is None:
        k = _KERNELS[r] = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    return k


def _dilate(x: np.ndarray, r: int) -> np.ndarray:
    return x if r <= 0 else cv2.dilate(x, _kernel(r))


def _erode(x: np.ndarray, r: int) -> np.ndarray:
    return x if r <= 0 else cv2.erode(x, _kernel(r))


def _logit(p: np.ndarray, lo: float = 0.02) -> np.ndarray:
    p = np.clip(p, lo, 1.0 - lo)
    return np.log(p) - np.log1p(-p)


def _smoothstep(lo, hi, x: np.ndarray) -> np.ndarray:
    # in x's own type, in place: a numpy float64 bound (a threshold from a quantile) made every plane float64, and
    # the plate's faint-difference evidence cost 0.9 ms a 512x288 frame instead of 0.1
    lo, scale = float(lo), 1.0 / max(float(hi) - float(lo), 1e-6)
    t = np.subtract(x, lo, dtype=x.dtype if x.dtype.kind == "f" else np.float32)
    t *= scale
    np.clip(t, 0.0, 1.0, out=t)
    out = np.multiply(t, -2.0, dtype=t.dtype)
    out += 3.0
    out *= t
    out *= t
    return out


def _close(x: np.ndarray, r: int) -> np.ndarray:
    """fused._close: a half-size plane closed for a full-size radius r."""
    return _erode(_dilate(x, -(-r // 2)), -(-r // 2))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _luma(x: np.ndarray) -> np.ndarray:
    return cv2.transform(x, LUMA[None, :])


_ONES3 = np.ones((1, 3), np.float32)


def _chsum(x: np.ndarray) -> np.ndarray:
    """x.sum(2) of (h, w, 3) float32 (numpy's reduction over a 3-long last axis is slow)."""
    return cv2.transform(x, _ONES3)


def _chmax(x: np.ndarray) -> np.ndarray:
    return np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2])


def _chmin(x: np.ndarray) -> np.ndarray:
    return np.minimum(np.minimum(x[..., 0], x[..., 1]), x[..., 2])


def _resize(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=False) without antialiasing."""
    return x if x.shape[:2] == (h, w) else cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b by torch's kernel: numpy's OpenBLAS starts its own threads for these skinny products and spins
    them on a busy two-core machine (3.7 ms of CPU against 0.4 for the light field's (N, 6) @ (6, 3))."""
    return torch.from_numpy(a).mm(torch.from_numpy(b)).numpy()


def _known_quantile(d: np.ndarray, known: np.ndarray, q: float, step: int = 7) -> float:
    """fused._known_quantile: the q-quantile of d over the pixels where known > 0.5 (every 7th pixel;
    step=1 when the caller took them already), unknown ones pushed to the end (1e3), linear
    interpolation between the two order statistics."""
    k = known.ravel()[::step] > 0.5
    dk = np.where(k, d.ravel()[::step], np.float32(1e3))
    n = dk.size
    pos = min(max(q * float(k.mean()) * (n - 1), 0.0), n - 1.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v = np.partition(dk, (lo, hi))
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def _lerp(a, b, w: float):
    """torch.lerp's formula (a + w (b - a) below w = 0.5, b - (1 - w) (b - a) from it), in float32."""
    w = np.float32(w)
    return a + w * (b - a) if w < 0.5 else b - (np.float32(1.0) - w) * (b - a)


def _median(d: np.ndarray, step: int = 7) -> float:
    """`_known_quantile(d, ones, 0.5)` without the plane of ones: the median of every 7th value (the lower and upper
    order statistics around it, interpolated)."""
    dk = d.ravel()[::step]
    n = dk.size
    pos = min(max(0.5 * (n - 1), 0.0), n - 1.0)
    lo = int(np.floor(pos))
    hi = min(lo + 1, n - 1)
    v = np.partition(dk, (lo, hi))
    return float(v[lo] + (pos - lo) * (v[hi] - v[lo]))


def _pool(x: np.ndarray, q: int) -> np.ndarray:
    """F.avg_pool2d(x, q, ceil_mode=True) of (h, w) or (h, w, C): q x q block means, a last partial block
    averaged over what it holds."""
    h, w = x.shape[:2]
    hq, wq = -(-h // q), -(-w // q)
    if (hq * q, wq * q) == (h, w):  # OpenCV's area resize at a whole factor is the block mean (a numpy mean over two axes cost 4x)
        return cv2.resize(x, (wq, hq), interpolation=cv2.INTER_AREA)
    tail = x.shape[2:]
    p = np.zeros((hq * q, wq * q, *tail), np.float32)
    p[:h, :w] = x
    c = np.zeros((hq * q, wq * q), np.float32)
    c[:h, :w] = 1.0
    n = c.reshape(hq, q, wq, q).sum((1, 3))
    return p.reshape(hq, q, wq, q, *tail).sum((1, 3)) / (n[..., None] if tail else n)


def _sample(img: np.ndarray, fy: np.ndarray, fx: np.ndarray) -> np.ndarray:
    """grid_sample(bilinear, border, align_corners=False) at (y + fy, x + fx): img (h, w, C) float32.
    torch's own CPU kernel on a channels-last view (the same op as the torch path; 2.5x faster than
    gathering the four neighbours with OpenCV, whose bilinear remap rounds the position to 1/32 pixel)."""
    h, w = img.shape[:2]
    grid = np.empty((1, h, w, 2), np.float32)
    grid[0, ..., 0] = (2.0 * np.arange(w, dtype=np.float32) + 1.0) / w - 1.0 + fx * np.float32(2.0 / w)
    grid[0, ..., 1] = ((2.0 * np.arange(h, dtype=np.float32) + 1.0) / h - 1.0)[:, None] + fy * np.float32(2.0 / h)
    t = torch.from_numpy(img).permute(2, 0, 1)[None]
    out = F.grid_sample(t, torch.from_numpy(grid), mode="bilinear", padding_mode="border", align_corners=False)
    return np.ascontiguousarray(out[0].permute(1, 2, 0).numpy())


def working_picture(frame: Frame, w: int, h: int) -> np.ndarray:
    """`frame_batch(frame, (w, h))` as (h, w, 3) float32 in [0, 1]: torch's antialiased uint8 resize
    (the torch path's own filter, 0.4 ms at 720p), then a table to floats."""
    img = frame.hwc_uint8()
    if (frame.width, frame.height) != (w, h):
        t = F.interpolate(img.permute(2, 0, 1).unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        img = t[0].permute(1, 2, 0)
    return cv2.LUT(np.ascontiguousarray(as_numpy(img)), _UNIT)


class FusedCPU:
    """`FusedMatte` with numpy state; `s` is the node's live settings object."""

    def __init__(self, settings, fps: float = 30.0) -> None:
        self.s = settings
        self.fps = fps
        self.size: tuple[int, int] | None = None
        self._plate_key: object = None
        self._tile_key: object = None

    # -- state ------------------------------------------------------------
    def _alloc(self, w: int, h: int) -> None:
        self.size = (w, h)
        z1 = lambda: np.zeros((h, w), np.float32)  # noqa: E731
        self.plate = np.zeros((h, w, 3), np.float32)
        self.known = z1()
        self.alpha, self.conf, self.clear_for = z1(), z1(), z1()
        self.still_for = z1()  # frames still and background for the model (own plate, its coordinates)
        self.since_uncovered = z1()  # frames since a person moved off (own plate, its coordinates)
        self.anchor = z1()  # luma of the frame that set the own plate's coordinates
        self.last_shift = (0, 0)
        # the last frame, contiguous (its exposure-scaled difference is taken twice a frame: on a strided view of
        # a four-channel buffer those products cost 1-2 ms each at the working size)
        self.prev = np.zeros((h, w, 3), np.float32)
        self.prev_max, self.prev_luma = z1(), z1()  # of the last frame (read again this frame)
        self.primed = False
        self.has_plate = False
        yn = (np.arange(h, dtype=np.float32) / max(1, h - 1) * 2 - 1)[:, None] * np.ones((1, w), np.float32)
        xn = (np.arange(w, dtype=np.float32) / max(1, w - 1) * 2 - 1)[None, :] * np.ones((h, 1), np.float32)
        by, bx = yn[::FIT_STEP, ::FIT_STEP], xn[::FIT_STEP, ::FIT_STEP]
        self._basis = np.stack((np.ones_like(by), bx, by, bx * bx, bx * by, by * by)).reshape(6, -1)
        # (N, 6): the light field is basis_full @ theta.T, already in (h, w, 3) order
        self._xn, self._yn = np.ascontiguousarray(xn[0]), np.ascontiguousarray(yn[:, 0])
        self._basis_full = np.ascontiguousarray(np.stack((np.ones_like(yn), xn, yn, xn * xn, xn * yn, yn * yn)).reshape(6, -1).T)
        # the 21 distinct products basis_i * basis_j: the normal matrix of a weighted fit is one product
        iu = np.triu_indices(6)
        self._pairs = iu
        self._basis_pairs = np.ascontiguousarray((self._basis[iu[0]] * self._basis[iu[1]]).T)  # (N, 21)
        wy = torch.hann_window(h, periodic=False).numpy()
        wx = torch.hann_window(w, periodic=False).numpy()
        self._window = (wy[:, None] * wx[None, :]).astype(np.float32)
        ms = max(1.0, self.s.max_shift * h)
        yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
        dy, dx = np.minimum(yy, h - yy), np.minimum(xx, w - xx)
        self._shift_ok = ((dy <= ms) & (dx <= ms)).astype(np.float32) if self.s.max_shift > 0 else None
        # motion search: candidate shifts at quarter size, in the torch path's order (dy outer, dx inner)
        r = max(1, round(self.s.motion_search * h / 4))
        cy, cx = np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1), indexing="ij")
        self._cands = (cy.ravel().astype(np.float32), cx.ravel().astype(np.float32))
        self._cand_cost = (1e-3 * np.sqrt(np.square(cy) + np.square(cx)).astype(np.float32)).ravel().astype(np.float32)
        self._flow_r = r
        self._flow_inv: np.ndarray | None = None
        self._flow_tall: np.ndarray | None = None
        nk = len(self._cand_cost)  # k - i for candidate i (the widest search, 109 x 109, needs 16 bits)
        self._flow_rank = (nk - np.arange(nk)).astype(np.uint8 if nk < 256 else np.int32)[:, None, None]
        self.fit_ok = np.ones((h, w), np.float32)  # 0 where the last frame's plate difference found a person
        self.tight = 0.0  # envelope_choice: 1 = the plate sits exactly (no envelope), 0 = envelope
        self._fit_bool = np.empty((h, w), bool)
        self._plate_key = None

    def reset(self) -> None:
        self.size = None

    def set_plate(self, make: Callable[[], np.ndarray], key: object) -> None:
        """A recorded plate: `make()` gives it as (h, w, 3) float32 in [0, 1] at working size, called only
        when `key` tells a new plate from the one already here."""
        if key is self._plate_key or (key is not None and key == self._plate_key):
            return
        self._plate_key = key
        self.plate[...] = make()
        self.known.fill(1.0)
        self.has_plate = True

    # -- pieces -----------------------------------------------------------
    def _shift(self, a: np.ndarray, b: np.ndarray, bgw: np.ndarray) -> tuple[int, int]:
        """Whole-pixel translation (dy, dx) taking luma b (the plate's, or the own plate's anchor frame) onto
        the frame's luma a, by phase correlation on the background."""
        if self._shift_ok is None:
            return 0, 0
        soft = box_mean(bgw.copy(), max(1, round(SHIFT_SOFTEN * a.shape[0])))  # no shared hard edge (SHIFT_SOFTEN)
        win = self._window * (0.2 + 0.8 * soft)  # the person moves: count the room more
        a = (a - a.mean()) * win
        b = (b - b.mean()) * win
        # torch's float32 FFT: the torch path's own op, and twice as fast as numpy's float64 one
        fa, fb = torch.fft.rfft2(torch.from_numpy(a)), torch.fft.rfft2(torch.from_numpy(b))
        r = fa * fb.conj()
        corr = torch.fft.irfft2(r / r.abs().clamp_min(1e-8), s=a.shape).numpy()
        corr = corr * self._shift_ok - (1 - self._shift_ok)
        h, w = a.shape
        iy, ix = divmod(int(corr.argmax()), w)
        return (iy - h if iy > h / 2 else iy), (ix - w if ix > w / 2 else ix)

    @staticmethod
    def _translate(img: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
        """img shifted by (dy, dx) whole pixels (content moves by +shift), edges replicated."""
        dy, dx = shift
        if dy == 0 and dx == 0:
            return img
        h, w = img.shape[:2]
        ys = np.clip(np.arange(h) - dy, 0, h - 1)
        xs = np.clip(np.arange(w) - dx, 0, w - 1)
        return np.ascontiguousarray(img[ys][:, xs])

    def _light_field(self, x: np.ndarray, plate: np.ndarray, bgw: np.ndarray) -> np.ndarray:
        """Smooth per-channel gain (quadratic in x, y), fitted robustly (IRLS, Cauchy) to frame / plate."""
        f = FIT_STEP
        xs, ps, ws = x[::f, ::f], plate[::f, ::f], bgw[::f, ::f]
        basis = self._basis  # (6, N)
        ratio = np.ascontiguousarray((xs / np.maximum(ps, 0.04)).reshape(-1, 3).T)  # (3, N)
        base = (ws * (_chmin(ps) > 0.04)).reshape(1, -1).astype(np.float32)
        n = ratio.shape[1]
        flat = np.partition(ratio, (n - 1) // 2, axis=1)[:, (n - 1) // 2 : (n - 1) // 2 + 1]  # torch.median: the lower median
        fit = np.broadcast_to(flat, ratio.shape)
        eye = 1e-3 * np.eye(6, dtype=np.float32)
        theta = np.zeros((3, 6), np.float32)
        iu = self._pairs
        for _ in range(3):
            res = ratio - fit
            res *= 1.0 / 0.08
            np.square(res, out=res)
            res += 1.0
            wt = np.divide(base, res, out=res)  # (3, N): Cauchy weights
            norm = np.maximum(wt.sum(1), 1.0)
            # the normal equations by two BLAS products: sum_n w b_i b_j from the 21 pair products, sum_n w r b_i
            pairs = _mm(wt, self._basis_pairs)  # (3, 21)
            a = np.empty((3, 6, 6), np.float32)
            a[:, iu[0], iu[1]] = pairs
            a[:, iu[1], iu[0]] = pairs
            a /= norm[:, None, None]
            b = _mm(wt * ratio, basis.T) / norm[:, None]
            theta = torch.linalg.solve(torch.from_numpy(a + eye), torch.from_numpy(b)).numpy()
            fit = _mm(theta, basis)
        h, w = x.shape[:2]
        if kernels.available():  # the quadratic evaluated per pixel, clipped, in one pass (a 6-long BLAS product: 0.9 ms)
            return kernels.quadratic_field(np.ascontiguousarray(theta, np.float32), self._xn, self._yn, 0.2, 5.0)
        light = _mm(self._basis_full, np.ascontiguousarray(theta.T)).reshape(h, w, 3)
        return np.clip(light, 0.2, 5.0, out=light)

    def _tile_means(self, img: np.ndarray, rows: int, cols: int) -> np.ndarray:
        """adaptive_avg_pool2d to (rows, cols) of (h, w, C): windows [floor(i h / rows), ceil((i + 1) h / rows));
        rows by a reshape when they divide the height, else (and columns) from running sums."""
        h, w, c = img.shape
        key = (h, w, rows, cols)
        if self._tile_key != key:
            def bounds(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
                i = np.arange(m)
                return (i * n) // m, -(-((i + 1) * n) // m)

            self._tile_key, self._tile_rows, self._tile_cols = key, bounds(h, rows), bounds(w, cols)
        if h % rows == 0:
            r = cv2.resize(img.reshape(h, w * c), (w * c, rows), interpolation=cv2.INTER_AREA)  # block means of rows
        else:
            cs = np.zeros((h + 1, w * c), np.float64)
            np.cumsum(img.reshape(h, w * c), 0, out=cs[1:])
            y0, y1 = self._tile_rows
            r = (cs[y1] - cs[y0]) / (y1 - y0)[:, None]
        cs = np.zeros((rows, w + 1, c), np.float64)
        np.cumsum(r.reshape(rows, w, c), 1, out=cs[:, 1:])
        x0, x1 = self._tile_cols
        return ((cs[:, x1] - cs[:, x0]) / (x1 - x0)[None, :, None]).astype(np.float32)

    def _gain(self, x: np.ndarray, plate: np.ndarray, bgw: np.ndarray) -> np.ndarray:
        """Per-tile, per-channel gain mapping the plate's light onto the frame's, fitted on background pixels."""
        h, w = x.shape[:2]
        rows = max(1, self.s.tiles)
        cols = max(1, round(rows * w / h))
        g = GAIN_STEP
        if kernels.available():  # the three products and their tile means in one pass over the sub-grid (1.5 ms)
            hs, ws = -(-h // g), -(-w // g)

            def bounds(n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
                i = np.arange(m)
                return (i * n) // m, -(-((i + 1) * n) // m)

            num, den, tf = kernels.gain_tiles(x, plate, bgw, g, bounds(hs, rows), bounds(ws, cols))
        else:
            x, plate, bgw = x[::g, ::g], plate[::g, ::g], bgw[::g, ::g]
            pb = plate * bgw[..., None]
            # one tile mean a product (concatenating them first cost more than the means)
            num, den = self._tile_means(x * pb, rows, cols), self._tile_means(plate * pb, rows, cols)
            tf = self._tile_means(plate * plate, rows, cols)
        beta = 0.3  # tiles the person covers keep the smooth field
        gain = (num + beta * tf) / np.maximum(den + beta * tf, 1e-6)
        gain = cv2.blur(np.ascontiguousarray(gain, np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)
        return _resize(np.clip(gain, 0.2, 5.0), w, h)

    def _follow(self, cur: np.ndarray, prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The shift (fy, fx) per working pixel with cur(p) ~ prev(p + v): block matching on quarter-size
        luma, candidates within motion_search, sub-pixel by a parabola through the best cost."""
        q, r = 4, self._flow_r
        h, w = cur.shape
        a = _pool(cur, q)
        b = cv2.copyMakeBorder(_pool(prev, q), r, r, r, r, cv2.BORDER_REPLICATE)
        hq, wq = a.shape
        n = 2 * r + 1
        k = n * n
        # the k absolute differences as planes of one tall picture with a zero row after each, so one box
        # filter call sums them all (its 3x3 window never reaches past a zero row into the next plane)
        tall = self._flow_tall
        if tall is None or tall.shape != (k, hq + 1, wq):  # kept: only the planes are written, the zero rows stay
            tall = self._flow_tall = np.zeros((k, hq + 1, wq), np.float32)
        for i in range(k):
            dy, dx = divmod(i, n)
            cv2.absdiff(b[dy:dy + hq, dx:dx + wq], a, dst=tall[i, :hq])
        sums = cv2.boxFilter(tall.reshape(k * (hq + 1), wq), -1, (3, 3), normalize=False, borderType=cv2.BORDER_CONSTANT)
        inv = self._flow_inv
        if inv is None or inv.shape != (hq, wq):  # 1 / the count of pixels inside each 3x3 window
            inv = self._flow_inv = 1.0 / cv2.boxFilter(np.ones((hq, wq), np.float32), -1, (3, 3), normalize=False,
                                                       borderType=cv2.BORDER_CONSTANT)
        if kernels.available():  # the choice and its sub-pixel refinement in one loop over the sums (2 ms of numpy)
            vy, vx = kernels.flow_pick(sums.reshape(k, hq + 1, wq), inv, self._cand_cost, self._cands[0], self._cands[1], n, r, q)
            return _resize(vy, w, h), _resize(vx, w, h)
        cost = sums.reshape(k, hq + 1, wq)[:, :hq] * inv
        cost += self._cand_cost[:, None, None]
        # argmin over the planes, the first of equal costs (as torch's): the minimum, then the largest of
        # (k - i) where a plane reaches it (numpy's argmin along the first axis cost 4x)
        c0 = cost.min(0)
        rank = self._flow_rank
        first = (cost == c0).view(np.uint8) if rank.dtype == np.uint8 else (cost == c0).astype(rank.dtype)
        first *= rank
        idx = (k - first.max(0).astype(np.intp))[None]
        vy, vx = self._cands[0][idx], self._cands[1][idx]

        def vertex(step: int, v: np.ndarray) -> np.ndarray:
            inside = (v > -r) & (v < r)
            lo = np.take_along_axis(cost, np.clip(idx - step, 0, k - 1), 0)
            hi = np.take_along_axis(cost, np.clip(idx + step, 0, k - 1), 0)
            curv = np.maximum(lo - 2.0 * c0 + hi, 1e-6)
            return np.clip((lo - hi) / (2.0 * curv), -0.5, 0.5) * inside

        vx = (vx + vertex(1, vx))[0] * q
        vy = (vy + vertex(n, vy))[0] * q
        return _resize(vy, w, h), _resize(vx, w, h)

    def _sample_last(self, fy: np.ndarray, fx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The last matte and the last frame at (y + fy, x + fx) (bilinear, edges clamped: grid_sample's border rule),
        by `_sample` of the two stacked (without numba; with it `kernels.sample_change` carries the matte and compares
        the carried frame in one pass)."""
        both = _sample(np.dstack((self.alpha, self.prev)), fy, fx)
        return np.ascontiguousarray(both[..., 0]), np.ascontiguousarray(both[..., 1:])

    def _colour_vote(self, x: np.ndarray, last: np.ndarray, bgw: np.ndarray) -> np.ndarray:
        """fused.FusedMatte._colour_vote: half the log-likelihood ratio of the colour of every COLOUR_STEP-th pixel of
        every COLOUR_STEP-th row under the person's (last matte > 0.8) and the room's (bgw > 0.8) colour
        histograms of those pixels, within +-colour_vote, bilinearly to the working size. The bins floor(16 x),
        clamped to 15, by OpenCV's saturating conversion of x (16 - 1/256) - 0.5: it rounds, and x is k / 255,
        whose 16 x is never within 1/255 of a bin's edge but at 0 and 1 (numpy's clamp of three channels cost
        twice that conversion); x[::g, ::g] by OpenCV's nearest resize where g divides the size (it takes pixel
        g i: a third of the copy's cost); the histograms by np.bincount of the labelled bins (a third of
        weighting them all)."""
        nb, g = COLOUR_BINS, COLOUR_STEP
        h, w = x.shape[:2]
        if kernels.available():  # the bins and both histograms in one pass over the sampled pixels (eight: 0.6 ms)
            idx, hp, hr = kernels.colour_bins(x, last, bgw, g, nb)
        else:
            if h % g or w % g:
                xs = np.ascontiguousarray(x[::g, ::g])
            else:
                xs = cv2.resize(x, (w // g, h // g), interpolation=cv2.INTER_NEAREST) if g > 1 else x
            q = cv2.convertScaleAbs(xs, alpha=nb - 1.0 / 256.0, beta=-0.5).astype(np.uint16)
            idx = (q[..., 0] * nb + q[..., 1]) * nb + q[..., 2]
            flat = idx.ravel()
            hp = np.bincount(flat[(last[::g, ::g] > 0.8).ravel()], minlength=nb ** 3)
            hr = np.bincount(flat[(bgw[::g, ::g] > 0.8).ravel()], minlength=nb ** 3)
        eps = 10.0 / idx.size
        llr = np.log((hp / max(hp.sum(), 1.0) + eps) / (hr / max(hr.sum(), 1.0) + eps)).astype(np.float32)
        llr *= 0.5
        np.clip(llr, -self.s.colour_vote, self.s.colour_vote, out=llr)
        return _resize(np.take(llr, idx), w, h)

    def _motion_vote(self, fy: np.ndarray, fx: np.ndarray, last: np.ndarray, bgw: np.ndarray) -> np.ndarray:
        """fused.FusedMatte._motion_vote: the person's and the room's motion as medians of the block-matched motion
        (every 4th pixel of every 4th row, last matte > 0.8 / bgw > 0.8); each pixel votes person in proportion to
        (distance to the room's - distance to the person's) / their separation, within +-1, gated by that
        separation (MOTION_VOTE_MIN px, fully from 1 px more) and 50 sampled pixels of each; on the sampled grid,
        averaged over MOTION_VOTE_RADIUS of it, bilinearly to the working size, times motion_vote."""
        sp = last[::4, ::4] > 0.8
        sr = bgw[::4, ::4] > 0.8
        if sp.sum() <= 50 or sr.sum() <= 50:
            return np.zeros_like(fx)
        vx, vy = fx[::4, ::4], fy[::4, ::4]
        px, py = _known_quantile(vx, sp, 0.5), _known_quantile(vy, sp, 0.5)
        rx, ry = _known_quantile(vx, sr, 0.5), _known_quantile(vy, sr, 0.5)
        sep = float(np.hypot(px - rx, py - ry))
        gate = min(max(sep - MOTION_VOTE_MIN, 0.0), 1.0)
        if gate <= 0.0:
            return np.zeros_like(fx)
        to_room = np.hypot(vx - np.float32(rx), vy - np.float32(ry))
        to_person = np.hypot(vx - np.float32(px), vy - np.float32(py))
        v = to_room
        v -= to_person
        v *= np.float32(1.0 / max(sep, 1e-3))
        np.clip(v, -1.0, 1.0, out=v)
        v = box_mean(np.ascontiguousarray(v), MOTION_VOTE_RADIUS)
        v *= np.float32(gate * self.s.motion_vote)
        h, w = fx.shape
        return _resize(v, w, h)

    @staticmethod
    def _envelope_distance(xs: np.ndarray, pc: np.ndarray, seen: np.ndarray, r: int) -> np.ndarray:
        """The distance from xs to the envelope [erode(pc, r), dilate(pc, r)] where `seen` (0 elsewhere); r = 0: to
        pc itself. (relu(xs - hi) + relu(lo - xs) as xs - clip(xs, lo, hi): the same squares, two three-channel
        passes fewer.)"""
        lo, hi = _erode(pc, r), _dilate(pc, r)
        if kernels.available():  # one pass instead of five three-channel ones (1.5 ms)
            return kernels.envelope_distance(xs, lo, hi, seen)
        e = np.maximum(xs, lo)
        np.minimum(e, hi, out=e)
        np.subtract(xs, e, out=e)
        return np.sqrt(_chsum(np.square(e, out=e))) * seen

    def _picture_change(self, x: np.ndarray, xmax: np.ndarray, lx: np.ndarray, bgw: np.ndarray, contrast: np.ndarray,
                        delta: tuple[int, int]) -> tuple:
        """fused.FusedMatte._picture_change: the picture change since the last frame moved by delta (the camera's
        shake since then), exposure changes taken out (the gain is the median luma ratio over the room's
        unclipped, not-too-dark pixels). Returns (unclipped, ratio, change, still, cm, room)."""
        s = self.s
        prev, prev_max, lp = self.prev, self.prev_max, self.prev_luma
        if delta != (0, 0):
            prev, prev_max, lp = (self._translate(a, delta) for a in (prev, prev_max, lp))
        if kernels.available():
            unclipped = kernels.both_below(xmax, prev_max, 0.97)
        else:
            unclipped = ((xmax < 0.97) & (prev_max < 0.97)).astype(np.float32)
        # (_known_quantile reads every 7th pixel: only those are computed)
        sub = slice(None, None, 7)
        lxs, lps_, uns, bgs = lx.ravel()[sub], lp.ravel()[sub], unclipped.ravel()[sub], bgw.ravel()[sub]
        wr = bgs * uns * (lxs > 0.04) * (lps_ > 0.04)
        log_gain = _known_quantile(np.log(np.maximum(lxs, 0.02)) - np.log(np.maximum(lps_, 0.02)), wr, 0.5, step=1)
        ratio = np.float32(np.exp(np.float32(min(max(log_gain, -1.5), 1.5))))
        if kernels.available():  # one pass (the products, differences and luma below: five passes, 1.5 ms)
            change = kernels.exposure_change(x, prev, ratio, unclipped, False)
        else:
            change = np.multiply(prev, ratio)
            np.subtract(x, change, out=change)
            change = _luma(np.abs(change, out=change)) * unclipped
        cm = box_mean(change, 1)
        # camera noise is no motion for the own plate's stillness gate (low light): a floor of motion_noise x the median
        floor = min(s.motion_noise * _median(cm), 0.5 * s.motion_threshold) if s.motion_noise > 0 else 0.0
        if kernels.available():  # the floor and the room's change in one pass, the stillness in another (seven passes: 1.2 ms)
            cm, room = kernels.motion_planes(cm, floor, contrast, s.motion_threshold)
            still = kernels.divide_clip(_dilate(cm, 2), s.motion_threshold)
            return unclipped, ratio, change, still, cm, room
        if floor:
            cm = np.maximum(cm - floor, 0.0)
        still = np.clip(_dilate(cm, 2) / s.motion_threshold, 0.0, 1.0)
        room = np.clip(cm / contrast / s.motion_threshold, 0.0, 1.0)
        return unclipped, ratio, change, still, cm, room

    # -- one frame --------------------------------------------------------
    def step(self, x: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        """x (h, w, 3) frame at working size in [0, 1]; prior (h, w) model probability or None.
        Returns the new matte (h, w) (also kept in self.alpha); self.conf holds its confidence."""
        s = self.s
        h, w = x.shape[:2]
        pm = np.clip(prior, 0, 1) if prior is not None else self.alpha
        margin = max(1, round(0.03 * h))
        last = self.alpha if self.primed else pm
        # (the last matte's person, before the blend below overwrites it: the own plate's uncovered room)
        was_person = last > 0.5 if prior is not None and s.own_plate and not self.has_plate else None
        bgw = 1.0 - _dilate(last, margin)
        pm_grown = _dilate(pm, margin) if prior is not None else None  # the model's person with a margin

        lx = _luma(x)
        own = not self.has_plate
        # local contrast: half a pixel of misregistration on a sharp edge is a large difference, no motion
        if kernels.available():  # the channel maximum and the gradient in one pass (seven: 0.6 ms)
            xmax, grad = kernels.frame_planes(x, lx)
        else:
            xmax = _chmax(x)
            grad = np.zeros_like(lx)
            grad[:, :-1] = np.abs(lx[:, 1:] - lx[:, :-1])
            grad[:-1, :] += np.abs(lx[1:, :] - lx[:-1, :])
        contrast = box_mean(grad, 1)  # 1 + mean / motion_threshold, in place (no temporaries)
        contrast /= s.motion_threshold
        contrast += 1.0
        # where the plate sits in this frame (camera shake): a recorded plate by phase correlation once most
        # of it is known; an own plate against its anchor frame; then the picture change since the last frame
        search = (own and self.primed) or (not own and float(self.known.mean()) > 0.3)
        if search:
            # the room against the last frame as it sat: unchanged (the camera did not move), the shift is the
            # last frame's and the phase correlation is not run (a still webcam, most frames: 3 ms at 720p)
            m = self._picture_change(x, xmax, lx, bgw, contrast, (0, 0))
            if _known_quantile(m[-1], bgw, 0.99) < CAMERA_STILL:
                shift = self.last_shift
            else:
                shift = self._shift(lx, self.anchor, bgw) if own else self._shift(lx, _luma(self.plate), bgw)
                if shift != self.last_shift:
                    m = self._picture_change(x, xmax, lx, bgw, contrast, (shift[0] - self.last_shift[0], shift[1] - self.last_shift[1]))
        else:
            shift = (0, 0)
            m = self._picture_change(x, xmax, lx, bgw, contrast, (-self.last_shift[0], -self.last_shift[1]))
        unclipped, ratio, change, still, cm, room = m
        # an own plate holds while the room moves only as the shake explains; else the frame is the new anchor
        room_moved = self.primed and float((room * bgw).sum()) / max(float(bgw.sum()), 1.0) > 0.25
        if own and room_moved:
            self.known.fill(0.0)
        restart = own and (room_moved or not self.primed)
        if restart:
            self.anchor[...] = lx
            shift = (0, 0)

        # 2. lighting-invariant, shake-tolerant plate difference (adds exactly 0 while nothing is known)
        gain, plate_logit, pp = None, None, None
        known = self.known  # in this frame's coordinates below
        compare = self.has_plate or self.known.any()
        if not compare:  # the torch path's d is 0 here: nothing is left out of the next fit
            self.fit_ok.fill(1.0)
            self.tight = 0.0  # (the torch path: no known room, too little to tell)
        if compare:
            plate = self._translate(self.plate, shift)
            known = self._translate(self.known, shift)
            seen = known > 0.5
            plate = plate.copy() if plate is self.plate else plate
            cv2.copyTo(x, (~seen).view(np.uint8), plate)  # unknown: the frame itself, no difference
            xs = box_mean(x, s.denoise)
            ps = box_mean(plate, s.denoise)
            wk = bgw * known
            light = self._light_field(xs, ps, wk)
            fast = kernels.available()  # (each pair of steps below in one pass: eight three-channel passes, 1.5 ms)
            if fast:
                lps, w_fit = kernels.light_weights(xs, ps, light, wk, self.fit_ok)
            else:
                lps = light * ps
                off = np.subtract(xs, lps)
                off = _chsum(np.abs(off, out=off))
                w_fit = wk / (1.0 + np.square(off / 0.06)) * self.fit_ok
            # one tile fit a frame, leaving out what the last frame's comparison found different
            gain = self._gain(xs, lps, w_fit)
            if fast:
                pc = kernels.lit_plate(gain, light, ps)
            else:
                gain *= light
                pc = np.multiply(gain, ps)
                np.clip(pc, 0.0, 1.0, out=pc)
            # the difference from the plate's envelope and, where the room backs it, from the plate itself
            # (fused.FusedMatte.step, envelope_choice)
            d = self._envelope_distance(xs, pc, seen, s.envelope)
            noise = _known_quantile(d, known, 0.3)
            # (on every 7th pixel, as _known_quantile reads them: the model's room, the difference from the plate)
            room = ((pm_grown.ravel()[::7] if prior is not None else 1.0 - bgw.ravel()[::7]) < 0.2) * known.ravel()[::7]
            e7 = xs.reshape(-1, 3)[::7] - pc.reshape(-1, 3)[::7]
            e7 *= e7
            exact7 = np.sqrt(e7[:, 0] + e7[:, 1] + e7[:, 2])
            levels = (noise, 0.0, _known_quantile(exact7, room, TIGHT_QUANTILE, step=1),
                      _known_quantile(d.ravel()[::7], room, TIGHT_QUANTILE, step=1))
            self.tight = tight_update_host(self.tight, levels, s.threshold, s.noise_factor, float((room > 0.5).mean()))
            if self.tight > 0.0:
                exact = self._envelope_distance(xs, pc, seen, 0)
                noise_exact = _known_quantile(exact, known, 0.3)
                if self.tight == 1.0:  # (torch.lerp at 1 is the end itself: no blend pass)
                    d, noise = exact, noise_exact
                else:
                    d = _lerp(d, exact, self.tight)
                    noise = float(_lerp(np.float32(noise), np.float32(noise_exact), self.tight))
            tau = max(s.threshold, s.noise_factor * noise)
            if fast:  # (eleven passes in two: 1 ms)
                pp, rel = kernels.plate_evidence(d, _dilate(d, 2) if s.relative_edge else None, tau, self.fit_ok)
                if rel is not None:
                    kernels.relative_edge(pp, _erode(pp, 2), rel)
            else:
                np.less(d, 2.0 * tau, out=self._fit_bool)
                self.fit_ok[...] = self._fit_bool
                pp = _smoothstep(tau, 2.5 * tau, d)
                if s.relative_edge:
                    a_est = d / np.maximum(_dilate(d, 2), 2.5 * tau)
                    rel = _smoothstep(0.25, 0.75, a_est)
                    band = 1.0 - _erode(pp, 2)
                    pp = pp * (1.0 - band * (1.0 - rel))
            rc = round(s.close_radius * h)
            if rc > 0:  # holes where clothes match the room; at quarter size
                if h % 2 or w % 2:  # ceil_mode: the last row/column pools alone (pp >= 0, so 0 padding is neutral)
                    pp2 = np.pad(pp, ((0, h % 2), (0, w % 2)))
                else:
                    pp2 = pp
                # (numpy's max over two reshaped axes cost 2.4 ms; four strided views 0.1)
                small = np.maximum(np.maximum(pp2[0::2, 0::2], pp2[0::2, 1::2]), np.maximum(pp2[1::2, 0::2], pp2[1::2, 1::2]))
                # the wide closing's fill in full where enclosed, in a bay of room as far as the plate sees a faint
                # difference there (fused.FusedMatte.step, segment/holes.py)
                wide = _close(small, rc)
                holes = _resize(np.minimum(wide, enclosed_host(small, 2 * -(-rc // 2))), w, h)
                faint = _smoothstep(BAY_EVIDENCE[0] * tau, BAY_EVIDENCE[1] * tau, _erode(box_mean(d, 1), 1))
                closed = holes + (_resize(wide, w, h) - holes) * faint
                if prior is not None:  # beyond small_hole_radius only where the model calls it person
                    rs = round(s.small_hole_radius * h)
                    sure = _resize(_close(small, rs), w, h) if rs > 0 else pp
                    closed = np.maximum(sure, closed * _smoothstep(*MODEL_HOLE, pm))  # fused._model_says_person
                pp = np.maximum(pp, closed)
            weight = s.plate_weight if self.has_plate else s.own_plate_weight  # a recorded plate / the node's own
            plate_logit = np.clip(_logit(pp), -s.plate_background, 6.0) * known * weight

        # 3. fusion of the evidence
        fused_logit = _logit(pm) * s.model_weight if prior is not None else np.zeros_like(pm)
        # (a recorded plate is known everywhere; the first frame has no matte yet to tell the colours apart)
        if prior is not None and s.colour_vote > 0 and not self.has_plate and self.primed:
            fused_logit += self._colour_vote(x, last, bgw) * (1.0 - known)
        # the picture's motion (the previous matte is carried along it below); where no plate is known it votes too
        if self.primed and s.follow_motion:
            fy, fx = self._follow(lx, self.prev_luma * ratio)
            if prior is not None and s.motion_vote > 0 and not self.has_plate:
                fused_logit += self._motion_vote(fy, fx, last, bgw) * (1.0 - known)
        if plate_logit is not None:
            fused_logit = fused_logit + plate_logit
        fused = _sigmoid(fused_logit)

        # 4. motion-aware blend with the previous matte, carried along the picture's motion first
        if self.primed:
            last_alpha = self.alpha
            if s.follow_motion:
                # the last frame in this frame's exposure (the torch path scales before sampling: the same up to
                # rounding, sampling is linear) clips as the camera does; a clipped pixel says nothing
                # (what the motion leaves is judged against the local contrast)
                if kernels.available():  # carried and compared in one pass (the carried frame never written)
                    last_alpha, change = kernels.sample_change(self.alpha, self.prev, fy, fx, x, ratio, unclipped, contrast)
                else:
                    last_alpha, moved = self._sample_last(fy, fx)
                    change = np.multiply(moved, ratio)
                    np.clip(change, 0.0, 1.0, out=change)
                    np.subtract(x, change, out=change)
                    change = _luma(np.abs(change, out=change)) * unclipped
                    change = change / contrast
            cb = box_mean(change, 1)
            if s.motion_noise > 0:  # where no plate is known, camera noise is no motion
                floor = min(s.motion_noise * _median(cb), 0.5 * s.motion_threshold)
                cb = kernels.floor_unknown(cb, floor, known) if kernels.available() else np.maximum(cb - floor * (1.0 - known), 0.0)
            grown = _dilate(cb, s.motion_reach)
            moved = kernels.divide_clip(grown, s.motion_threshold) if kernels.available() else np.clip(grown / s.motion_threshold, 0.0, 1.0)
            if kernels.available():  # the blend and the confidence below in one pass (nine, 1.8 ms)
                kernels.motion_blend(fused, last_alpha, moved, known, s.model_stability, s.stability, s.trust_jumps, self.alpha, self.conf)
            else:
                stab = s.model_stability + (s.stability - s.model_stability) * known
                if s.trust_jumps:
                    jump = np.clip((np.abs(fused - last_alpha) - 0.4) / 0.3, 0.0, 1.0) * known
                    moved = np.maximum(moved, jump)
                k = (1.0 - stab) + stab * moved
                self.alpha[...] = last_alpha + k * (fused - last_alpha)
                self.conf[...] = np.abs(2.0 * self.alpha - 1.0) * (1.0 - 0.5 * np.abs(fused - self.alpha))
        else:
            self.alpha[...] = fused
            self.conf[...] = np.abs(2.0 * self.alpha - 1.0) * (1.0 - 0.5 * np.abs(fused - self.alpha))
        self.prev[...] = x
        self.last_shift = shift
        self.prev_max[...] = xmax
        self.prev_luma[...] = lx
        self.primed = True

        # learning, in the plate's own light and alignment
        grown = _dilate(self.alpha, margin)
        if kernels.available() and shift == (0, 0):  # the camera where the plate was taken: one pass (fifteen, 2 ms)
            mode = 1 if self.has_plate else 2 if prior is not None and s.own_plate else 0
            seconds = s.learn_seconds if mode == 1 else s.own_plate_seconds
            g_ok = mode > 0 and float(self.known.mean()) > 0.1 and gain is not None
            kernels.learn_plate(grown, self.conf, pm_grown, self.clear_for, mode, still, not room_moved, self.still_for,
                                max(1.0, seconds * self.fps), x, gain if g_ok else None, self.known, s.learn_rate,
                                pp if own and pp is not None else None, self.plate,
                                # room a moving person has just uncovered (fused.FusedMatte.step)
                                was_person if mode == 2 else None, bool(restart), self.since_uncovered,
                                max(1.0, s.own_plate_uncovered_seconds * self.fps), UNCOVERED_SECONDS * self.fps)
            return self.alpha
        sure_bg = ((1.0 - grown) > 0.95) & (self.conf > 0.9)
        if prior is not None:
            model_bg = pm_grown < 0.2
            sure_bg &= model_bg
        sb = sure_bg.astype(np.float32)
        self.clear_for *= sb
        self.clear_for += sb
        learn = None
        if self.has_plate:
            if shift == (0, 0):  # only while the camera sits where the plate was taken
                learn = (self.clear_for >= max(1.0, s.learn_seconds * self.fps)).astype(np.float32)
        elif prior is not None and s.own_plate:
            # no recorded plate: a pixel still and model-background for own_plate_seconds is the room,
            # counted in the plate's coordinates
            calm = (model_bg & (still < 0.5)).astype(np.float32) * (not room_moved)
            calm = self._translate(calm, (-shift[0], -shift[1]))
            self.still_for *= calm
            self.still_for += calm
            learn = (self.still_for >= max(1.0, s.own_plate_seconds * self.fps)).astype(np.float32)
            # room a moving person has just uncovered (the picture changed where the last matte was person; the
            # first frame and a moved camera uncover everything) after own_plate_uncovered_seconds (fused.FusedMatte.step)
            off = ((still >= 0.5) & (was_person | restart)).astype(np.float32)
            off = self._translate(off, (-shift[0], -shift[1]))
            self.since_uncovered += 1.0
            self.since_uncovered *= 1.0 - off
            quick = (self.still_for >= max(1.0, s.own_plate_uncovered_seconds * self.fps)) & \
                (self.since_uncovered <= UNCOVERED_SECONDS * self.fps)
            np.maximum(learn, quick, out=learn)
        if learn is not None:
            g_ok = float(self.known.mean()) > 0.1 and gain is not None
            if g_ok:
                back = np.maximum(gain, 0.05)
                np.divide(x, back, out=back)
                np.clip(back, 0, 1, out=back)
            else:
                back = np.clip(x, 0, 1)
            back = self._translate(back, (-shift[0], -shift[1]))
            rate = s.learn_rate + (1.0 - s.learn_rate) * (1.0 - self.known)
            if own and pp is not None:  # an own plate a calm, model-background pixel contradicts is copied over
                rate = np.maximum(rate, self._translate(pp, (-shift[0], -shift[1])))
            rate *= learn
            back -= self.plate  # (in place: the lerp without three-channel temporaries)
            back *= rate[..., None]
            self.plate += back
            np.maximum(self.known, learn, out=self.known)
        return self.alpha

    def edge_alpha(self) -> np.ndarray:
        """fused.FusedMatte.edge_alpha: where no plate is known the edge sits at model_edge_offset and the matte's
        greys are stretched model_edge_contrast times around the level the edge step cuts at."""
        s = self.s
        unknown = 1.0 - self.known
        level = np.float32(0.5 + s.edge_offset)
        a = self.alpha + np.float32(s.edge_offset - s.model_edge_offset) * unknown
        return (a - level) * (1.0 + np.float32(s.model_edge_contrast - 1.0) * unknown) + level

    def keep_out(self) -> np.ndarray:
        """1 where the room must not be learned by `background.adaptive`: person, or not surely background."""
        return np.maximum(self.alpha, 1.0 - self.conf)


def refine_full(alpha: np.ndarray, frame: Frame, small: np.ndarray, s, step: int = 1) -> np.ndarray:
    """`fused.refine_coefficients` + `fused.refine_apply`: the working-size matte to the frame's size along its edges, crisp contrast,
    anti-aliased.
    Coefficients at the working size (on step x step block means for step > 1); one full-resolution pass
    A.I + b reading the uint8 frame."""
    radius = s.refine_radius
    if step > 1:
        alpha, small = _pool(np.ascontiguousarray(alpha, np.float32), step), _pool(small, step)
        radius = max(1, round(radius / step)) if radius > 0 else 0
    a_r, a_g, a_b, b = guided_colour(alpha, small, radius, s.refine_eps)
    sharp, off = s.edge_sharpness, s.edge_offset
    contrast = sharp != 1.0 or off != 0.0
    # clip(f(clip(v))) == clip(f(v)) for f(v) = (v - 0.5 - off) * sharp + 0.5 when f(0) <= 0 and f(1) >= 1:
    # then the contrast folds into A and b and the full-size result is clipped once
    fold = contrast and (0.5 + off) * sharp >= 0.5 and (0.5 - off) * sharp >= 0.5
    if fold:
        a_r, a_g, a_b = a_r * sharp, a_g * sharp, a_b * sharp
        b = b * sharp + (0.5 - (0.5 + off) * sharp)
    img = as_numpy(frame.hwc_uint8())
    if kernels.available():
        # one pass over the frame (numba: the coefficients upsampled, A . I + b, the clip): 9 -> 2.5 ms at 720p
        out = kernels.guided_upsample(img, cv2.merge((a_r, a_g, a_b)), b)
        if contrast and not fold:
            _sharpen(out, off, sharp)
        return edge_aa.antialias(out, s.edge_softness)  # fused.antialias: the same taps, each pixel kept on its side of 0.5
    H, W = img.shape[:2]
    # A . I + b on planes (each coefficient upsampled, times its uint8 channel, summed): OpenCV's
    # 4-channel multiply + channel sum (cv2.transform) took twice as long
    out = cv2.resize(b, (W, H), interpolation=cv2.INTER_LINEAR)
    up, term = np.empty_like(out), np.empty_like(out)
    for a, channel in zip((a_r, a_g, a_b), cv2.split(img)):
        cv2.resize(a, (W, H), dst=up, interpolation=cv2.INTER_LINEAR)
        cv2.multiply(up, channel, dst=term, scale=1.0 / 255.0, dtype=cv2.CV_32F)
        cv2.add(out, term, dst=out)
    np.clip(out, 0.0, 1.0, out=out)
    if contrast and not fold:
        _sharpen(out, off, sharp)
    return edge_aa.antialias(out, s.edge_softness)  # fused.antialias


def _sharpen(out: np.ndarray, off: float, sharp: float) -> None:
    """The edge's contrast stretch around 0.5 + off, in place, clipped to [0, 1] (when it was not folded into the
    coefficients)."""
    out -= 0.5 + off
    out *= sharp
    out += 0.5
    np.clip(out, 0.0, 1.0, out=out)


class FusedRunner:
    """What `FusedSegment.process` does, on the CPU: the node's plate_file, its params, one engine."""

    def __init__(self, node) -> None:
        self.node = node
        kernels.warm_up()  # the full-resolution pass's loop compiled (or loaded) before the first frame needs it
        edge_aa.warm_up()
        self.engine = FusedCPU(node.params, node.ctx.fps if node.ctx is not None else 30.0)

    def update(self, params) -> None:
        self.engine.s = params

    def process(self, frame: Frame, prior: Mask | None, plate: Frame | None) -> dict[str, Mask]:
        from muse.nodes.segment.fused import refine_step, working_size

        node = self.node
        w, h = working_size(frame, node.params.working_height)
        eng = self.engine
        if eng.size != (w, h):
            eng._alloc(w, h)
        x = working_picture(frame, w, h)
        plate = plate if plate is not None else node._file_plate
        if plate is not None:
            eng.set_plate(lambda: working_picture(plate, w, h), id(plate.image))
        pm = None
        if prior is not None:
            pm = _resize(np.ascontiguousarray(as_numpy(prior.alpha.float())), w, h)
        eng.step(x, pm)
        full = refine_full(eng.edge_alpha(), frame, x, node.params, refine_step(node.params, "cpu"))
        ts, i = frame.timestamp, frame.index
        dtype = node.ctx.dtype if node.ctx is not None else torch.float32
        return {"mask": Mask(torch.from_numpy(full).to(dtype), ts, i),
                "confidence": Mask(torch.from_numpy(eng.conf.copy()).to(dtype), ts, i),
                "keep_out": Mask(torch.from_numpy(eng.keep_out()).to(dtype), ts, i)}
