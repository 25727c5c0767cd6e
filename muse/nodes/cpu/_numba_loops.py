"""The numba loops behind `muse.nodes.cpu.kernels` (imported only when numba is there).

At module level so numba's on-disk cache finds them again in the next process: the cache keys a
closure by its cells' pickled contents, and a closure over other compiled functions got a new key
(and a fresh compile) every start.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["variant", "encode_all"]

jit = njit(nogil=True, cache=True, fastmath=False, error_model="numpy")


@njit(nogil=True, cache=True, inline="always")
def encode(x, t, g):
    # clamped to [0, 1], guessed from the table (the level of the 1/4096 step below x: x's own or the one
    # under it, no step being as wide as a level; one too high where x * 4096 rounds up), settled by one
    # comparison each way without a branch (the loop's mispredicted branches cost ~40 % of the pass)
    x = min(max(x, np.float32(0.0)), np.float32(1.0))
    k = np.intp(g[np.intp(x * np.float32(4096.0))])
    k += np.intp(x >= t[k + 1])
    k -= np.intp(x < t[k])
    return k


@njit(nogil=True, cache=True, inline="always")
def rows(low, y0, y1, wy, dst):
    # the low-resolution plane's two source rows of an output row, blended once (a pixel then takes one
    # horizontal lerp a channel: a full bilinear tap a pixel cost half again as much)
    for i in range(low.shape[1]):
        for c in range(low.shape[2]):
            dst[i, c] = low[y0, i, c] + wy * (low[y1, i, c] - low[y0, i, c])


def variant(mode: int, glow: bool):
    """One loop per background kind and glow (numba folds the constants: one general loop with
    run-time branches cost half again as much). mode 0: the flat linear `colour`; 1: `out`'s own
    uint8 background; 2: the low-resolution linear `room`, upsampled as the torch path does (in
    linear light; `out` holds it upsampled in sRGB for the pixels that show the room alone)."""

    @jit
    def over(fg, a, out, dec, t, g, lo, hi, colour, room, by0, by1, bwy, bx0, bx1, bwx,
             wrap, soft, inside, ry0, ry1, rwy, rx0, rx1, rwx):
        height, width = a.shape
        zero, one = np.float32(0.0), np.float32(1.0)  # float32 throughout (float64 cost a third more)
        room_row = np.empty((room.shape[1], 3), np.float32)
        soft_row = np.empty((soft.shape[1], 3), np.float32)
        inside_row = np.empty((inside.shape[1], 1), np.float32)
        for y in range(height):
            ar, fr, orow = a[y], fg[y], out[y]
            room_ready = glow_ready = False
            for x in range(width):
                v = ar[x]
                if not v > lo:
                    continue  # the background stays
                ab = min(v, one)
                w = zero
                if glow:
                    if not glow_ready:
                        rows(inside, ry0[y], ry1[y], rwy[y], inside_row)
                        rows(soft, ry0[y], ry1[y], rwy[y], soft_row)
                        glow_ready = True
                    x0, x1, wx = rx0[x], rx1[x], rwx[x]
                    w = (one - (inside_row[x0, 0] + wx * (inside_row[x1, 0] - inside_row[x0, 0]))) * ab * wrap
                if v >= hi and w <= lo:
                    orow[x, 0] = fr[x, 0]
                    orow[x, 1] = fr[x, 1]
                    orow[x, 2] = fr[x, 2]
                    continue
                # the taps read once a pixel (the stores below may alias them for the compiler)
                if mode == 2:
                    if not room_ready:
                        rows(room, by0[y], by1[y], bwy[y], room_row)
                        room_ready = True
                    b0, b1, bw = bx0[x], bx1[x], bwx[x]
                if glow:
                    s0, s1, sw = rx0[x], rx1[x], rwx[x]
                for c in range(3):
                    f = dec[fr[x, c]]
                    if glow:
                        lo_s = soft_row[s0, c]
                        f = f + w * (lo_s + sw * (soft_row[s1, c] - lo_s) - f)
                    if mode == 0:
                        b = colour[c]
                    elif mode == 2:
                        r0 = room_row[b0, c]
                        b = r0 + bw * (room_row[b1, c] - r0)
                    else:
                        b = dec[orow[x, c]]
                    orow[x, c] = encode(b + ab * (f - b), t, g)

    return over


@jit
def encode_all(lin, t, g, out):
    flat, dst = lin.ravel(), out.ravel()
    for i in range(flat.size):
        dst[i] = encode(flat[i], t, g)


@jit
def guided_full_gray(gray, a_rows, b_rows, y0s, y1s, wys, out):
    """segment.refine's one full-resolution step with the brightness guide: out = clip(A I + b, 0, 1), A and b
    upsampled bilinearly (their rows already upsampled across, `a_rows` and `b_rows` (h, W); each output row
    blends two of them by the tables y*), I the (H, W) uint8 brightness / 255 (a loop that vectorises)."""
    height, width = out.shape
    inv = np.float32(1.0 / 255.0)
    zero, one = np.float32(0.0), np.float32(1.0)
    for y in range(height):
        y0, y1, wy = y0s[y], y1s[y], wys[y]
        a0, a1, b0, b1, g, o = a_rows[y0], a_rows[y1], b_rows[y0], b_rows[y1], gray[y], out[y]
        for x in range(width):
            v = (a0[x] + wy * (a1[x] - a0[x])) * np.float32(g[x]) * inv + (b0[x] + wy * (b1[x] - b0[x]))
            o[x] = min(max(v, zero), one)


@jit
def guided_full_colour(img, a_rows, b_rows, y0s, y1s, wys, out):
    """The same with the colour guide: A (h, W, 3) rows, I the (H, W, 3) uint8 picture / 255."""
    height, width = out.shape
    inv = np.float32(1.0 / 255.0)
    zero, one = np.float32(0.0), np.float32(1.0)
    for y in range(height):
        y0, y1, wy = y0s[y], y1s[y], wys[y]
        a0, a1, b0, b1, px, o = a_rows[y0], a_rows[y1], b_rows[y0], b_rows[y1], img[y], out[y]
        for x in range(width):
            v = b0[x] + wy * (b1[x] - b0[x])
            for c in range(3):
                v += (a0[x, c] + wy * (a1[x, c] - a0[x, c])) * (np.float32(px[x, c]) * inv)
            o[x] = min(max(v, zero), one)


@jit
def lerp_known(fg, plate, k_rows, y0s, y1s, wys, out):
    """composite.over's background over a plate: round(fg + k (plate - fg)) per channel (the torch path's
    8-bit lerp), k the plate's known weight upsampled bilinearly (its rows already upsampled across,
    `k_rows` (h, W); each output row blends two of them by the tables y*)."""
    height, width = fg.shape[:2]
    for y in range(height):
        y0, y1, wy = y0s[y], y1s[y], wys[y]
        k0, k1, f, p, o = k_rows[y0], k_rows[y1], fg[y].ravel(), plate[y].ravel(), out[y].ravel()
        for x in range(width):
            k = k0[x] + wy * (k1[x] - k0[x])
            for c in range(3):
                i = 3 * x + c
                v = np.float32(f[i])
                o[i] = np.uint8(np.rint(v + k * (np.float32(p[i]) - v)))
