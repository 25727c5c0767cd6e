"""CPU `segment.fused` (issue 13): the torch path's maths (`muse.nodes.segment.fused.FusedMatte`) in
numpy/OpenCV at the working resolution, then one full-resolution edge pass.

Kept step for step in line with the torch path: each method here has the torch method's name
(`_shift`, `_translate`, `_light_field`, `_gain`, `step`, `keep_out`, `refine_full`) and the same
order of operations, so a change to the torch algorithm maps onto one place here.
`tests/test_cpu_fused.py` holds the two together on real photos.

What differs, and why it is exact or within float rounding:
- images are (h, w, C) float32 arrays, not (1, C, h, w) tensors;
- without a plate the plate difference is skipped: the torch path multiplies it by `known`
  (all zeros until a plate is set) and learns nothing (`has_plate` is 0), so it adds exactly 0;
- `_dilate`/`_erode` are `cv2.dilate`/`cv2.erode` (both ignore pixels outside, as max_pool2d's padding);
- `box_filter` counts only pixels inside the picture (torch's count_include_pad=False);
- the camera-shake shift is a whole number of pixels (an FFT peak), so `_translate` is an integer
  shift with replicated edges (what grid_sample does for it);
- torch.median is the lower median, torch.quantile interpolates linearly: both reproduced;
- the full-resolution pass folds the edge contrast (`edge_sharpness`, `edge_offset`) into the guided
  filter's coefficients at the working size when that cannot change a clipped value, so the frame is read
  once: A.I + b, then one clip.
"""

from __future__ import annotations

from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import as_numpy
from muse.nodes.cpu.composite import adaptive_mean
from muse.nodes.cpu.refine import box_mean, guided_colour

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
    t = np.clip((x - lo) / max(float(hi - lo), 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x))).astype(np.float32)


def _luma(x: np.ndarray) -> np.ndarray:
    return cv2.transform(x, LUMA[None, :])


def _resize(x: np.ndarray, w: int, h: int) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=False) without antialiasing."""
    return x if x.shape[:2] == (h, w) else cv2.resize(x, (w, h), interpolation=cv2.INTER_LINEAR)


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

    # -- state ------------------------------------------------------------
    def _alloc(self, w: int, h: int) -> None:
        self.size = (w, h)
        z1 = lambda: np.zeros((h, w), np.float32)  # noqa: E731
        self.plate = np.zeros((h, w, 3), np.float32)
        self.known = z1()
        self.alpha, self.conf, self.clear_for = z1(), z1(), z1()
        self.prev = np.zeros((h, w, 3), np.float32)
        self.primed = False
        self.has_plate = False
        yn = (np.arange(h, dtype=np.float32) / max(1, h - 1) * 2 - 1)[:, None] * np.ones((1, w), np.float32)
        xn = (np.arange(w, dtype=np.float32) / max(1, w - 1) * 2 - 1)[None, :] * np.ones((h, 1), np.float32)
        by, bx = yn[::2, ::2], xn[::2, ::2]
        self._basis = np.stack((np.ones_like(by), bx, by, bx * bx, bx * by, by * by)).reshape(6, -1)
        self._basis_full = np.stack((np.ones_like(yn), xn, yn, xn * xn, xn * yn, yn * yn)).reshape(6, -1)
        wy = torch.hann_window(h, periodic=False).numpy()
        wx = torch.hann_window(w, periodic=False).numpy()
        self._window = (wy[:, None] * wx[None, :]).astype(np.float32)
        ms = max(1.0, self.s.max_shift * h)
        yy, xx = np.arange(h)[:, None], np.arange(w)[None, :]
        dy, dx = np.minimum(yy, h - yy), np.minimum(xx, w - xx)
        self._shift_ok = ((dy <= ms) & (dx <= ms)).astype(np.float32) if self.s.max_shift > 0 else None
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
    def _shift(self, x: np.ndarray, bgw: np.ndarray) -> tuple[int, int]:
        """Whole-pixel translation (dy, dx) taking the plate onto the frame, by phase correlation on the background."""
        if self._shift_ok is None or not float(self.known.mean()) > 0.3:  # no plate yet: no shift
            return 0, 0
        a, b = _luma(x), _luma(self.plate)
        win = self._window * (0.2 + 0.8 * bgw)  # the person moves: count the room more
        a = (a - a.mean()) * win
        b = (b - b.mean()) * win
        fa, fb = np.fft.rfft2(a), np.fft.rfft2(b)
        r = fa * np.conj(fb)
        corr = np.fft.irfft2(r / np.maximum(np.abs(r), 1e-8), s=a.shape)
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
        xs, ps, ws = x[::2, ::2], plate[::2, ::2], bgw[::2, ::2]
        basis = self._basis  # (6, N)
        ratio = (xs / np.maximum(ps, 0.04)).reshape(-1, 3).T  # (3, N)
        base = (ws * (ps.min(2) > 0.04)).reshape(1, -1).astype(np.float32)
        n = ratio.shape[1]
        flat = np.partition(ratio, (n - 1) // 2, axis=1)[:, (n - 1) // 2 : (n - 1) // 2 + 1]  # torch.median: the lower median
        fit = np.broadcast_to(flat, ratio.shape)
        eye = 1e-3 * np.eye(6, dtype=np.float32)
        theta = np.zeros((3, 6), np.float32)
        for _ in range(3):
            res = ratio - fit
            wt = base / (1.0 + np.square(res / 0.08))  # (3, N)
            norm = np.maximum(wt.sum(1), 1.0)
            a = np.einsum("cn,in,jn->cij", wt, basis, basis, optimize=True) / norm[:, None, None]
            b = np.einsum("cn,in,cn->ci", wt, basis, ratio, optimize=True) / norm[:, None]
            theta = np.linalg.solve(a + eye, b[..., None])[..., 0].astype(np.float32)
            fit = theta @ basis
        h, w = x.shape[:2]
        return np.clip((theta @ self._basis_full).T.reshape(h, w, 3), 0.2, 5.0)

    def _gain(self, x: np.ndarray, plate: np.ndarray, bgw: np.ndarray) -> np.ndarray:
        """Per-tile, per-channel gain mapping the plate's light onto the frame's, fitted on background pixels."""
        h, w = x.shape[:2]
        rows = max(1, self.s.tiles)
        cols = max(1, round(rows * w / h))
        pb = plate * bgw[..., None]
        stack = np.concatenate((x * pb, plate * pb, plate * plate), 2)
        t = adaptive_mean(np.ascontiguousarray(stack, np.float32), (rows, cols))
        num, den, full = t[..., 0:3], t[..., 3:6], t[..., 6:9]
        beta = 0.3  # tiles the person covers keep the smooth field
        gain = (num + beta * full) / np.maximum(den + beta * full, 1e-6)
        gain = cv2.blur(np.ascontiguousarray(gain, np.float32), (3, 3), borderType=cv2.BORDER_REPLICATE)
        return _resize(np.clip(gain, 0.2, 5.0), w, h)

    # -- one frame --------------------------------------------------------
    def step(self, x: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
        """x (h, w, 3) frame at working size in [0, 1]; prior (h, w) model probability or None.
        Returns the new matte (h, w) (also kept in self.alpha); self.conf holds its confidence."""
        s = self.s
        h, w = x.shape[:2]
        pm = np.clip(prior, 0, 1) if prior is not None else self.alpha
        margin = max(1, round(0.03 * h))
        last = self.alpha if self.primed else pm
        bgw = 1.0 - _dilate(last, margin)

        # 2. lighting-invariant, shake-tolerant plate difference (adds exactly 0 without a plate)
        shift, gain, plate_logit = (0, 0), None, None
        if self.has_plate:
            shift = self._shift(x, bgw)
            plate = self._translate(self.plate, shift)
            known = self._translate(self.known, shift)
            xs = box_mean(x, s.denoise)
            ps = box_mean(plate, s.denoise)
            wk = bgw * known
            light = self._light_field(xs, ps, wk)
            lps = light * ps
            off = np.abs(xs - lps).sum(2)
            w_light = wk / (1.0 + np.square(off / 0.06))
            d = tau = None
            for _ in range(2):
                w_fit = w_light if d is None else w_light * (d < 2.0 * tau)
                gain = light * self._gain(xs, lps, w_fit)
                pc = np.clip(gain * ps, 0.0, 1.0)
                r = s.envelope
                e = np.maximum(xs - _dilate(pc, r), 0) + np.maximum(_erode(pc, r) - xs, 0)
                d = np.sqrt(np.square(e).sum(2))
                noise = np.quantile(d.ravel()[::7], 0.3)
                tau = max(s.threshold, s.noise_factor * float(noise))
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
                small = pp2.reshape(pp2.shape[0] // 2, 2, pp2.shape[1] // 2, 2).max((1, 3))
                small = _erode(_dilate(small, -(-rc // 2)), -(-rc // 2))
                pp = np.maximum(pp, _resize(small, w, h))
            plate_logit = np.clip(_logit(pp), -s.plate_background, 6.0) * known * s.plate_weight

        # 3. fusion of the evidence
        fused_logit = _logit(pm) * s.model_weight if prior is not None else np.zeros_like(pm)
        if plate_logit is not None:
            fused_logit = fused_logit + plate_logit
        fused = _sigmoid(fused_logit)

        # 4. motion-aware blend with the previous matte (exposure changes are not motion)
        if self.primed:
            # cv2.mean accumulates in float64 (numpy's float32 mean over the outer axes drifts by 1e-3)
            ratio = np.array(cv2.mean(x)[:3]) / np.maximum(np.array(cv2.mean(self.prev)[:3]), 1e-4)
            change = _luma(np.abs(x - self.prev * ratio.astype(np.float32)))
            motion = np.clip(_dilate(box_mean(change, 1), 2) / s.motion_threshold, 0.0, 1.0)
            jump = np.clip((np.abs(fused - self.alpha) - 0.4) / 0.3, 0.0, 1.0)
            k = (1.0 - s.stability) + s.stability * np.maximum(motion, jump)
            self.alpha += k * (fused - self.alpha)
        else:
            self.alpha[...] = fused
        self.prev[...] = x
        self.primed = True
        self.conf[...] = np.abs(2.0 * self.alpha - 1.0) * (1.0 - 0.5 * np.abs(fused - self.alpha))

        # learning: a pixel surely background for learn_seconds follows the room
        sure_bg = ((1.0 - _dilate(self.alpha, margin)) > 0.95) & (self.conf > 0.9)
        if prior is not None:
            sure_bg &= _dilate(pm, margin) < 0.2
        sb = sure_bg.astype(np.float32)
        self.clear_for *= sb
        self.clear_for += sb
        if self.has_plate and abs(shift[0]) + abs(shift[1]) < 0.5:
            settle = max(1.0, s.learn_seconds * self.fps)
            learn = (self.clear_for >= settle).astype(np.float32) * s.learn_rate
            back = np.clip(x / np.maximum(gain, 0.05), 0, 1)  # no shift here, so no translate
            self.plate += learn[..., None] * (back - self.plate)
        return self.alpha

    def keep_out(self) -> np.ndarray:
        """1 where the room must not be learned by `background.adaptive`: person, or not surely background."""
        return np.maximum(self.alpha, 1.0 - self.conf)


def refine_full(alpha: np.ndarray, frame: Frame, small: np.ndarray, s) -> np.ndarray:
    """`fused.refine_full`: the working-size matte to the frame's size along its edges, crisp contrast.
    Coefficients at the working size; one full-resolution pass A.I + b reading the uint8 frame."""
    a_r, a_g, a_b, b = guided_colour(alpha, small, s.refine_radius, s.refine_eps)
    sharp, off = s.edge_sharpness, s.edge_offset
    contrast = sharp != 1.0 or off != 0.0
    # clip(f(clip(v))) == clip(f(v)) for f(v) = (v - 0.5 - off) * sharp + 0.5 when f(0) <= 0 and f(1) >= 1:
    # then the contrast folds into A and b and the full-size result is clipped once
    fold = contrast and (0.5 + off) * sharp >= 0.5 and (0.5 - off) * sharp >= 0.5
    if fold:
        a_r, a_g, a_b = a_r * sharp, a_g * sharp, a_b * sharp
        b = b * sharp + (0.5 - (0.5 + off) * sharp)
    img = as_numpy(frame.hwc_uint8())
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
        out -= 0.5 + off
        out *= sharp
        out += 0.5
        np.clip(out, 0.0, 1.0, out=out)
    return out


class FusedRunner:
    """What `FusedSegment.process` does, on the CPU: the node's plate_file, its params, one engine."""

    def __init__(self, node) -> None:
        self.node = node
        self.engine = FusedCPU(node.params, node.ctx.fps if node.ctx is not None else 30.0)

    def update(self, params) -> None:
        self.engine.s = params

    def process(self, frame: Frame, prior: Mask | None, plate: Frame | None) -> dict[str, Mask]:
        from muse.nodes.segment.fused import working_size

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
        alpha = eng.step(x, pm)
        full = refine_full(alpha, frame, x, node.params)
        ts, i = frame.timestamp, frame.index
        dtype = node.ctx.dtype if node.ctx is not None else torch.float32
        return {"mask": Mask(torch.from_numpy(full).to(dtype), ts, i),
                "confidence": Mask(torch.from_numpy(eng.conf.copy()).to(dtype), ts, i),
                "keep_out": Mask(torch.from_numpy(eng.keep_out()).to(dtype), ts, i)}
