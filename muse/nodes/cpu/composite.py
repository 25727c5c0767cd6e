"""CPU `composite.over`: the person over the background in linear light, in one
full-resolution pass that does arithmetic only where it changes the result.

The torch path decodes, blends and re-encodes every pixel in float32. Here the
background is prepared at the resolution it needs (a blurred room is 1/10 of the
frame), then the output starts as the background in uint8 (upsampled once), the person
is copied over where alpha is 1 and no light wraps, and only the remaining band (the
soft edge, the light-wrap rim) is blended exactly, in linear light, over its bounding
box (decode through a table, OpenCV's blend and vector pow to encode). Pixels whose alpha is within EPS of 0 or 1 are taken as is: the error that
causes is below half an sRGB level.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from muse.graph.payloads import Frame, Mask
from muse.nodes.composite import cell_factor, reduced_size
from muse.nodes.cpu import as_numpy, decode_lut, encode, kernels

__all__ = ["CompositeCPU", "EPS"]

_REMAP_ROWS = 32000  # cv2.remap's limit is SHRT_MAX rows and columns
# 1.5e-4 of linear light is at most 0.5 sRGB level (the steepest part of the curve, near black)
EPS = 1.5e-4
_UNIT = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)


_DECODE16: np.ndarray | None = None


def _decode16() -> np.ndarray:
    """uint8 sRGB -> linear light * 65535, rounded, uint16 (cv2.LUT)."""
    global _DECODE16
    if _DECODE16 is None:
        _DECODE16 = np.rint(decode_lut().astype(np.float64) * 65535.0).astype(np.uint16)
    return _DECODE16


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.power(x, 1.0 / 2.4) - 0.055).astype(np.float32)


def _kernel(sigma: float, limit: int) -> np.ndarray | None:
    """The torch path's Gaussian taps (`composite.gaussian_blur`), or None when it does nothing."""
    if sigma <= 0.05:
        return None
    radius = min(max(1, int(math.ceil(3 * sigma))), limit)
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    k = np.exp(-(x * x) / (2 * sigma * sigma))
    return (k / k.sum()).astype(np.float32)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian of (h, w) or (h, w, C) float32, reflected edges (= composite.gaussian_blur)."""
    k = _kernel(sigma, min(img.shape[0], img.shape[1]) - 1)
    if k is None:
        return img
    return cv2.sepFilter2D(img, -1, k, k, borderType=cv2.BORDER_REFLECT_101)


def adaptive_mean(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """torch's adaptive_avg_pool2d to size=(bh, bw): OpenCV's area filter where the size divides
    (the same windows), else windows [floor(i*h/bh), ceil((i+1)*h/bh)) summed from an integral image."""
    h, w = img.shape[:2]
    bh, bw = size
    if h % bh == 0 and w % bw == 0:
        return cv2.resize(img, (bw, bh), interpolation=cv2.INTER_AREA)
    s = cv2.integral(img, sdepth=cv2.CV_64F)
    s = s if s.ndim == 3 else s[..., None]
    y0 = (np.arange(bh) * h) // bh
    y1 = -((-(np.arange(bh) + 1) * h) // bh)
    x0 = (np.arange(bw) * w) // bw
    x1 = -((-(np.arange(bw) + 1) * w) // bw)
    total = s[y1][:, x1] - s[y0][:, x1] - s[y1][:, x0] + s[y0][:, x0]
    area = ((y1 - y0)[:, None] * (x1 - x0)[None, :])[..., None]
    out = (total / area).astype(np.float32)
    return out if img.ndim == 3 else out[..., 0]


def shrink(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w[, C]) to size=(bh, bw): area average when shrinking, bilinear when growing (= composite.resample)."""
    h, w = img.shape[:2]
    if (h, w) == tuple(size):
        return img
    if h >= size[0] and w >= size[1]:
        return adaptive_mean(img, size)
    return cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def upsample(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear on cell centres, edges clamped (the kernels' `tap`, F.interpolate align_corners=False)."""
    if img.shape[:2] == (height, width):
        return img
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)


def upsample_box(low: np.ndarray, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """`upsample(low, height, width)[y0:y1, x0:x1]`: where the cells tile the frame by a whole factor,
    only the cells around the box (one of margin: no clamped edge reaches inside) are upsampled, the
    same taps as the whole plane."""
    y0, y1, x0, x1 = box
    h, w = low.shape[:2]
    if height % h or width % w:
        return upsample(low, height, width)[y0:y1, x0:x1]
    sy, sx = height // h, width // w
    c0, c1 = max(0, y0 // sy - 1), min(h, -(-y1 // sy) + 1)
    k0, k1 = max(0, x0 // sx - 1), min(w, -(-x1 // sx) + 1)
    part = cv2.resize(np.ascontiguousarray(low[c0:c1, k0:k1]), ((k1 - k0) * sx, (c1 - c0) * sy), interpolation=cv2.INTER_LINEAR)
    return part[y0 - c0 * sy : y1 - c0 * sy, x0 - k0 * sx : x1 - k0 * sx]


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, y1, x0, x1) bounding the non-zero pixels of a uint8 mask, or None."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask[rows[0] : rows[-1] + 1].any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class _Tiles:
    """The TxT tiles a mask touches, gathered into one tall contiguous picture (n*T, T[, C]) so
    OpenCV's vector loops run over them; where the frame does not divide into tiles, its
    bounding box as a single tile."""

    T = 16

    def __init__(self, shape: tuple[int, int], ti: np.ndarray | None, tj: np.ndarray | None, box=None) -> None:
        self.shape, self.ti, self.tj, self.box = shape, ti, tj, box

    @classmethod
    def of(cls, mask: np.ndarray) -> "_Tiles | None":
        h, w = mask.shape
        t = cls.T
        if h % t or w % t:
            box = _box(mask)
            return None if box is None else cls((h, w), None, None, box)
        # a tile's mean of 0/255 values is non-zero as soon as one pixel is set (INTER_AREA rounds 255/256 up)
        ti, tj = np.nonzero(cv2.resize(mask, (w // t, h // t), interpolation=cv2.INTER_AREA))
        return None if ti.size == 0 else cls((h, w), ti, tj)

    def gather(self, img: np.ndarray) -> np.ndarray:
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            return np.ascontiguousarray(img[y0:y1, x0:x1])
        h, w = self.shape
        t, rest = self.T, img.shape[2:]
        tiles = img.reshape(h // t, t, w // t, t, *rest)[self.ti, :, self.tj]  # (n, t, t[, C])
        return tiles.reshape(len(self.ti) * t, t, *rest)

    def gather_upsampled(self, low: np.ndarray, height: int, width: int) -> np.ndarray:
        """`gather(upsample(low, height, width))` without the full-resolution picture: the bilinear taps
        (cell centres, edges clamped) of only the gathered pixels, through `cv2.remap` (its weights are
        quantised to 1/32: on a smooth low-resolution plane, far below a level)."""
        h, w = low.shape[:2]
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            ys, xs = np.arange(y0, y1), np.arange(x0, x1)
            map_y = np.broadcast_to(((ys + 0.5) * (h / height) - 0.5).astype(np.float32)[:, None], (ys.size, xs.size))
            map_x = np.broadcast_to(((xs + 0.5) * (w / width) - 0.5).astype(np.float32)[None, :], (ys.size, xs.size))
        else:
            t, n = self.T, len(self.ti)
            rows = ((self.ti[:, None] * t + np.arange(t) + 0.5) * (h / height) - 0.5).astype(np.float32)  # (n, t)
            cols = ((self.tj[:, None] * t + np.arange(t) + 0.5) * (w / width) - 0.5).astype(np.float32)
            map_y = np.broadcast_to(rows[:, :, None], (n, t, t)).reshape(n * t, t)
            map_x = np.broadcast_to(cols[:, None, :], (n, t, t)).reshape(n * t, t)
        map_x, map_y = np.ascontiguousarray(map_x), np.ascontiguousarray(map_y)
        # cv2.remap refuses pictures of 32767 rows or more (2048 tiles: a soft band over a quarter of a
        # 1080p frame's tiles): the tall picture in slices below that
        step = (_REMAP_ROWS // self.T) * self.T
        parts = [cv2.remap(low, map_x[i : i + step], map_y[i : i + step], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                 for i in range(0, map_x.shape[0], step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def scatter(self, dst: np.ndarray, tiles: np.ndarray) -> None:
        if self.box is not None:
            y0, y1, x0, x1 = self.box
            dst[y0:y1, x0:x1] = tiles
            return
        h, w = self.shape
        t, rest = self.T, dst.shape[2:]
        dst.reshape(h // t, t, w // t, t, *rest)[self.ti, :, self.tj] = tiles.reshape(len(self.ti), t, t, *rest)


def _known_plane(coverage: Mask | None, confidence: Mask | None) -> np.ndarray | None:
    """`composite._known` in numpy: where the plate may be shown, on the finer of the two grids (bilinear,
    cell centres), clipped to [0, 1]; None where all of it is (nothing to mix)."""
    planes = [np.clip(as_numpy(m.alpha.float()), 0.0, 1.0) for m in (confidence, coverage) if m is not None]
    if not planes or min(float(q.min()) for q in planes) >= 1.0:
        return None
    if len(planes) == 1:
        return planes[0]
    size = max((q.shape for q in planes), key=lambda sh: sh[0] * sh[1])
    conf, cov = (q if q.shape == size else cv2.resize(q, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for q in planes)
    return cov * conf


def lerp_known(fg: np.ndarray, room: np.ndarray, known: np.ndarray) -> np.ndarray:
    """round(fg + known * (room - fg)) per pixel, uint8, computed only where it is neither: below 0.5/255
    it rounds to the live frame and above 1 - 0.5/255 to the room whatever the two values (the matte's
    confidence is at either end over nine tenths of a stream_4k frame): two copies, and a blend over
    the 16x16 tiles of the mixed pixels (one dense blend of the frame cost 3 ms)."""
    lo, hi = 0.5 / 255.0, 1.0 - 0.5 / 255.0
    out = room.copy()
    cv2.copyTo(fg, cv2.compare(known, lo, cv2.CMP_LT), out)
    mixed = cv2.inRange(known, lo, hi)
    tiles = _Tiles.of(mixed)
    if tiles is not None:
        k = tiles.gather(known)
        blended = cv2.blendLinear(tiles.gather(room), tiles.gather(fg), k, 1.0 - k)
        region = tiles.gather(out)
        cv2.copyTo(blended, tiles.gather(mixed), region)
        tiles.scatter(out, region)
    return out


def encode_dense(lin: np.ndarray) -> np.ndarray:
    """float32 linear light -> uint8 sRGB, rounded (IEC 61966-2-1), with OpenCV's vector pow.

    The power branch everywhere (scaled, shifted, rounded and saturated in one pass), then the
    linear toe written over the few pixels at or below 0.0031308."""
    x = np.clip(lin, 0.0, 1.0, out=lin)
    out = cv2.convertScaleAbs(cv2.pow(x, 1.0 / 2.4), alpha=1.055 * 255.0, beta=-0.055 * 255.0)
    toe = np.flatnonzero(x <= 0.0031308)
    if toe.size:
        out.reshape(-1)[toe] = np.rint(x.reshape(-1)[toe] * (12.92 * 255.0)).astype(np.uint8)
    return out


class CompositeCPU:
    """Uses the node for what is not per-pixel work (files, warnings, the live params)."""

    def __init__(self, node) -> None:
        self.node = node
        kernels.warm_up()
        self._colour: tuple[tuple, tuple[float, float, float]] | None = None

    def _linear_colour(self, srgb: tuple) -> tuple[float, float, float]:
        """The key colour in linear light, converted again only when it changes (0.35 ms a frame through torch)."""
        from muse.nodes.warp.kernels import srgb_to_linear

        if self._colour is None or self._colour[0] != srgb:
            lin = srgb_to_linear(torch.tensor(srgb, dtype=torch.float64) / 255.0)
            self._colour = (srgb, (float(lin[0]), float(lin[1]), float(lin[2])))
        return self._colour[1]

    # -- backgrounds -----------------------------------------------------
    def _background(self, fg: np.ndarray, alpha: np.ndarray, plate: Frame | None, coverage: Mask | None,
                    confidence: Mask | None = None):
        """(kind, bg, colour): kind 1 = full-size uint8 sRGB, 3 = the same made for this frame (the caller's to write
        into), 2 = low-resolution float32 linear (h, w, 3), 0 = colour."""
        from muse.nodes.composite import fit_uint8

        node, p = self.node, self.node.params
        height, width = fg.shape[:2]
        colour = self._linear_colour(tuple(p.colour))
        mode = p.background
        if mode == "plate" and plate is None:
            node._warn_once("plate", "background 'plate' but no clean plate arrived; showing a blurred room")
            mode = "blur"
        if mode == "colour":
            return 0, None, colour
        if mode == "plate":
            room = as_numpy(fit_uint8(plate.hwc_uint8(), height, width))
            known = _known_plane(coverage, confidence)
            if known is not None:
                # A plate pixel never seen is a guess, and where the matte is unsure the plate may be the
                # room behind the person: there the live frame is shown (the torch path's rule and maths:
                # the product on the finer grid, upsampled once, lerp rounded to uint8)
                room = kernels.lerp_known(fg, room, known) if kernels.available() else lerp_known(fg, room, upsample(known, height, width))
                return 3, room, colour  # (a fresh picture: the output may be drawn into it)
            return 1, room, colour
        if mode in ("image", "video"):
            bg, _, _ = node._background(torch.from_numpy(fg), torch.from_numpy(alpha), plate, coverage)
            return 1, as_numpy(bg), colour
        # blur: a low-resolution linear picture of the room
        sigma = max(0.5, p.blur * height)
        factor = cell_factor(height, width, int(sigma // 2))
        size = reduced_size(height, width, factor)
        if plate is not None:
            room = cv2.LUT(as_numpy(fit_uint8(plate.hwc_uint8(), height, width)), decode_lut())
            return 2, blur(shrink(room, size), sigma / factor), colour
        if kernels.available() and height % factor == 0 and width % factor == 0:
            room = kernels.decoded_mean(fg, factor)  # the table and the area mean in one pass
        else:
            # decoded to 16-bit fixed point (half the bytes of floats through the table and the area mean;
            # 0.5/65535 of linear light, far below a level), then floats at the reduced size only
            room = shrink(cv2.LUT(fg, _decode16()), size).astype(np.float32) * np.float32(1.0 / 65535.0)
        weight = np.clip(1.0 - shrink(alpha, size), 0.0, 1.0) ** 2
        both = blur(np.dstack((room * weight[..., None], weight, room)), sigma / factor)
        num, den, plain = both[..., :3], both[..., 3:4], both[..., 4:]
        eps = 1e-3  # where the person covers a whole blur footprint, the plain blur (as the torch path)
        return 2, ((num + eps * plain) / (den + eps)).astype(np.float32), colour

    # -- the frame -------------------------------------------------------
    def process(self, frame: Frame, mask: Mask, plate: Frame | None = None, coverage: Mask | None = None,
                confidence: Mask | None = None) -> dict[str, Frame]:
        p = self.node.params
        fg = as_numpy(frame.hwc_uint8())
        height, width = fg.shape[:2]
        alpha = as_numpy(mask.alpha.float())
        if p.feather > 0:  # as the torch path: at a reduced size when the mask is large (sampled bilinearly below)
            sigma = p.feather * alpha.shape[0]
            factor = cell_factor(alpha.shape[0], alpha.shape[1], int(sigma // 1.5))
            if factor > 1:
                alpha = blur(shrink(alpha, reduced_size(alpha.shape[0], alpha.shape[1], factor)), sigma / factor)
            else:
                alpha = blur(alpha, sigma)
        kind, bg, colour = self._background(fg, alpha, plate, coverage, confidence)
        own_bg = kind == 3  # a full-size picture made for this frame (no copy needed to draw the output into)
        kind = 1 if own_bg else kind

        wrap, inside, soft = 0.0, None, None
        if p.light_wrap > 0:
            sigma = max(0.5, p.wrap_size * height)
            factor = cell_factor(height, width, int(sigma // 2))
            size = reduced_size(height, width, factor)
            inside = blur(shrink(alpha, size), sigma / factor)
            if kind == 0:
                soft = np.broadcast_to(np.array(colour, np.float32), (*size, 3))
            elif kind == 1:
                # pooled before decoding, as the torch path (in uint8 here: the glow is within 0.2 of a level)
                # (the mixed background: the torch path pools the live frame and the plate and mixes them at
                # low resolution; the same where the confidence is smooth over a cell, and within a level of
                # glow on stream_4k's real inputs, for one pass over the frame instead of two)
                pooled = shrink(bg, size).astype(np.float32) / 255.0
                soft = blur(np.where(pooled <= 0.04045, pooled / 12.92, ((pooled + 0.055) / 1.055) ** 2.4).astype(np.float32),
                            sigma / factor)
            else:
                soft = blur(shrink(bg, size), sigma / factor)
            wrap = p.light_wrap

        a = upsample(alpha, height, width)
        # the output starts as the background ...
        if kind == 1:
            # (the light wrap read bg above; the fused pass below reads only `out` for kind 1, the fallback reads
            # bg's band tiles after the person is copied over: there a copy stays)
            out = bg if own_bg and kernels.available() else bg.copy()
        elif kind == 2:
            # encoded at low resolution, upsampled in 16 bits: the room is smooth there, so this is within
            # half a level of upsampling in linear light (at half the bytes of floats)
            low = np.rint(_linear_to_srgb(bg) * 65535.0).astype(np.uint16)
            out = cv2.convertScaleAbs(upsample(low, height, width), alpha=1.0 / 257.0)
        else:
            out = np.empty_like(fg)
            out[:] = encode(np.array(colour, np.float32))
        if kernels.available():
            # the rest in one fused pass (muse/nodes/cpu/kernels.py): the same rules and maths as below
            kernels.composite_over(fg, a, out, EPS, colour=colour if kind == 0 else None, room=bg if kind == 2 else None, wrap=wrap,
                                   soft=soft if wrap > 0 else None, inside=inside if wrap > 0 else None)
            return {"out": frame.with_image(torch.from_numpy(out), layout="hwc")}
        # ... the person is copied where nothing blends ...
        w_full = None
        solid = cv2.compare(a, 1.0 - EPS, cv2.CMP_GE)  # uint8 0/255
        if wrap > 0:
            person = cv2.compare(a, EPS, cv2.CMP_GT)
            box = _box(person)
            if box is not None:
                # the glow's weight is 0 where alpha is: computed over the person's box only (a third of a
                # stream_4k frame), zero elsewhere
                y0, y1, x0, x1 = box
                w_full = np.zeros((height, width), np.float32)
                w_box = w_full[y0:y1, x0:x1]
                np.subtract(1.0, upsample_box(inside, height, width, box), out=w_box)
                w_box *= np.clip(a[y0:y1, x0:x1], 0.0, 1.0)
                w_box *= np.float32(wrap)
                cv2.bitwise_and(solid[y0:y1, x0:x1], cv2.compare(w_box, EPS, cv2.CMP_LE), dst=solid[y0:y1, x0:x1])
            band = cv2.bitwise_and(cv2.bitwise_not(solid), person)
        else:  # EPS < a < 1 - EPS in one pass
            band = cv2.inRange(a, float(np.nextafter(np.float32(EPS), np.float32(1))), float(np.nextafter(np.float32(1.0 - EPS), np.float32(0))))
        tiles = _Tiles.of(band)
        room = None
        if tiles is not None and kind == 2:
            room = tiles.gather(out)  # the upsampled room, before the person is copied over it
        cv2.copyTo(fg, solid, out)
        # ... and the band in between (soft edge, light-wrap rim) is blended exactly, in linear light,
        # densely over the 16x16 tiles it touches (OpenCV's vector loops beat gathering scattered pixels)
        if tiles is not None:
            dec = decode_lut()
            f = cv2.LUT(tiles.gather(fg), dec)
            if w_full is not None:
                s = tiles.gather_upsampled(np.ascontiguousarray(soft), height, width)
                w = tiles.gather(w_full)
                f = cv2.blendLinear(s, f, w, 1.0 - w)  # f + w (soft - f)
            if kind == 0:
                b = np.empty_like(f)
                b[:] = np.array(colour, np.float32)
            else:  # kind 1 is exact; kind 2 reads the upsampled room back (within half a level)
                b = cv2.LUT(tiles.gather(bg) if kind == 1 else room, dec)
            ab = np.clip(tiles.gather(a), 0.0, 1.0)
            blended = encode_dense(cv2.blendLinear(f, b, ab, 1.0 - ab))
            region = tiles.gather(out)
            cv2.copyTo(blended, tiles.gather(band), region)
            tiles.scatter(out, region)
        return {"out": frame.with_image(torch.from_numpy(out), layout="hwc")}
