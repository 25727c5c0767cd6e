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
def blend_points(out, ys, xs, colours, wa, wb, oy, ox, sy0, sy1, sx0, sx1):
    """capture.demo's soft edge: at each listed point (ys, xs) of her square inside [sy0, sy1) x [sx0, sx1), the
    frame's pixel at (y + oy, x + ox) blended with her colour as cv2.blendLinear does, to the bit
    ((c w1 + f w2) / (w1 + w2 + 1e-5) in float32, rounded half to even)."""
    tiny = np.float32(1e-5)
    zero, top = np.float32(0.0), np.float32(255.0)
    for k in range(ys.size):
        y, x = ys[k], xs[k]
        if y < sy0 or y >= sy1 or x < sx0 or x >= sx1:
            continue
        w1, w2 = wa[k], wb[k]
        den = w1 + w2 + tiny
        py, px = y + oy, x + ox
        for c in range(3):
            v = (np.float32(colours[k, c]) * w1 + np.float32(out[py, px, c]) * w2) / den
            out[py, px, c] = np.uint8(min(max(np.rint(v), zero), top))


@jit
def decoded_mean(img, dec, f, out):
    """The f x f block means of the uint8 picture `img` (H, W, 3) decoded through `dec` (sRGB -> linear light),
    into `out` (H / f, W / f, 3) float32: composite.over's blurred room at its reduced size in one pass
    (the table and OpenCV's area filter were two full-size passes and a 16-bit copy). A block row's f rows
    are summed value by value first (independent adds: the loop vectorises), then across each block."""
    h, w = out.shape[:2]
    n = img.shape[1] * 3
    acc = np.empty(n, np.float32)
    inv = 1.0 / (f * f)
    for i in range(h):
        acc[:] = 0.0
        for y in range(i * f, i * f + f):
            row = img[y].ravel()
            for k in range(n):
                acc[k] += dec[row[k]]
        for j in range(w):
            for c in range(3):
                total = 0.0
                for x in range(j * f, j * f + f):
                    total += acc[3 * x + c]
                out[i, j, c] = np.float32(total * inv)


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
    """The same with the colour guide: A (h, W, 3) rows, I the (H, W, 3) uint8 picture / 255. Each output row's
    coefficients are blended from their two rows first (flat loops that vectorise: a pixel's lerps inside its
    channel loop cost 2.5x)."""
    height, width = out.shape
    inv = np.float32(1.0 / 255.0)
    zero, one = np.float32(0.0), np.float32(1.0)
    arow = np.empty(width * 3, np.float32)
    brow = np.empty(width, np.float32)
    for y in range(height):
        y0, y1, wy = y0s[y], y1s[y], wys[y]
        a0, a1, b0, b1 = a_rows[y0].ravel(), a_rows[y1].ravel(), b_rows[y0], b_rows[y1]
        for i in range(width * 3):
            arow[i] = a0[i] + wy * (a1[i] - a0[i])
        for i in range(width):
            brow[i] = b0[i] + wy * (b1[i] - b0[i])
        px, o = img[y].ravel(), out[y]
        for x in range(width):
            v = brow[x]
            v += arow[3 * x] * (np.float32(px[3 * x]) * inv)
            v += arow[3 * x + 1] * (np.float32(px[3 * x + 1]) * inv)
            v += arow[3 * x + 2] * (np.float32(px[3 * x + 2]) * inv)
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


@njit(nogil=True, cache=True, inline="always")
def _clamp_tap(v, n):
    # a sample position clamped to [0, n - 1] (the border rule): its cell, the next one, the weight
    v = min(max(v, np.float32(0.0)), np.float32(n - 1))
    i0 = np.intp(v)
    return i0, min(i0 + 1, n - 1), v - np.float32(i0)


@jit
def exposure_change(x, prev, ratio, unclipped, clip, contrast, out):
    """segment.fused's picture change: the luma (0.299, 0.587, 0.114) of |x - prev ratio| (prev ratio clipped to [0, 1]
    when `clip`), times `unclipped`, divided by `contrast` where one is given (contrast.shape[0] > 1)."""
    height, width = out.shape
    lr, lg, lb = np.float32(0.299), np.float32(0.587), np.float32(0.114)
    zero, one = np.float32(0.0), np.float32(1.0)
    divide = contrast.shape[0] > 1
    for y in range(height):
        xr, pr, ur, orow = x[y], prev[y], unclipped[y], out[y]
        for i in range(width):
            p0, p1, p2 = pr[i, 0] * ratio, pr[i, 1] * ratio, pr[i, 2] * ratio
            if clip:
                p0, p1, p2 = min(max(p0, zero), one), min(max(p1, zero), one), min(max(p2, zero), one)
            v = (lr * abs(xr[i, 0] - p0) + lg * abs(xr[i, 1] - p1) + lb * abs(xr[i, 2] - p2)) * ur[i]
            if divide:
                v = v / contrast[y, i]
            orow[i] = v


@jit
def envelope_distance(xs, lo, hi, seen, out):
    """segment.fused's plate difference: the length of xs - clip(xs, lo, hi) over the three channels (the distance
    from the frame to the plate's envelope [lo, hi]), 0 where not `seen`."""
    height, width = out.shape
    for y in range(height):
        xr, lr, hr, sr, orow = xs[y], lo[y], hi[y], seen[y], out[y]
        for i in range(width):
            total = np.float32(0.0)
            for c in range(3):
                v = xr[i, c]
                e = v - min(max(v, lr[i, c]), hr[i, c])
                total += e * e
            orow[i] = np.sqrt(total) if sr[i] else np.float32(0.0)


@jit
def flow_pick(sums, inv, cand_cost, cy, cx, n, r, q, out_y, out_x):
    """segment.fused's block matching, its choice: per pixel, the candidate of least cost (sums[i] * inv +
    cand_cost[i]; the first of equals, as torch's argmin), refined by a parabola through the costs of its
    neighbours across (step 1) and down (step n) where it is not on the search's edge; shifts times q.
    `sums` (k, hq + 1, wq): the 3 x 3 window sums of each candidate's differences (its last row unused)."""
    k = sums.shape[0]
    hq, wq = out_y.shape
    half, tiny = np.float32(0.5), np.float32(1e-6)
    for y in range(hq):
        for x in range(wq):
            w = inv[y, x]
            best = sums[0, y, x] * w + cand_cost[0]
            at = 0
            for i in range(1, k):
                c = sums[i, y, x] * w + cand_cost[i]
                if c < best:
                    best, at = c, i
            vy, vx = cy[at], cx[at]
            ox = np.float32(0.0)
            if vx > -r and vx < r:
                lo = sums[max(at - 1, 0), y, x] * w + cand_cost[max(at - 1, 0)]
                hi = sums[min(at + 1, k - 1), y, x] * w + cand_cost[min(at + 1, k - 1)]
                curv = max(lo - np.float32(2.0) * best + hi, tiny)
                ox = min(max((lo - hi) / (np.float32(2.0) * curv), -half), half)
            oy = np.float32(0.0)
            if vy > -r and vy < r:
                lo = sums[max(at - n, 0), y, x] * w + cand_cost[max(at - n, 0)]
                hi = sums[min(at + n, k - 1), y, x] * w + cand_cost[min(at + n, k - 1)]
                curv = max(lo - np.float32(2.0) * best + hi, tiny)
                oy = min(max((lo - hi) / (np.float32(2.0) * curv), -half), half)
            out_x[y, x] = (vx + ox) * q
            out_y[y, x] = (vy + oy) * q


@jit
def motion_blend(fused, last, moved, known, model_stability, stability, jumps, alpha, conf):
    """segment.fused's motion-aware blend and confidence: stab = model_stability + (stability - model_stability)
    known; where `jumps`, moved = max(moved, clip((|fused - last| - 0.4) / 0.3, 0, 1) known); alpha = last +
    ((1 - stab) + stab moved) (fused - last); conf = |2 alpha - 1| (1 - 0.5 |fused - alpha|)."""
    height, width = alpha.shape
    zero, one, two, half = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)
    spread = stability - model_stability
    for y in range(height):
        fr, lr, mr, kr, ar, cr = fused[y], last[y], moved[y], known[y], alpha[y], conf[y]
        for i in range(width):
            f, l, kn = fr[i], lr[i], kr[i]
            stab = model_stability + spread * kn
            m = mr[i]
            if jumps:
                m = max(m, min(max((abs(f - l) - np.float32(0.4)) / np.float32(0.3), zero), one) * kn)
            a = l + ((one - stab) + stab * m) * (f - l)
            ar[i] = a
            cr[i] = abs(two * a - one) * (one - half * abs(f - a))


@jit
def guided_solve(means, eps, out):
    """The colour guided filter's per-pixel algebra (`refine.guided_colour`, the same formulas in the same order):
    `means` (13, h, w) the window means of p, R, G, B, Rp, Gp, Bp, RR, RG, RB, GG, GB, BB; out (4, h, w): A_r, A_g,
    A_b, b before their own window mean."""
    h, w = means.shape[1:]
    one = np.float32(1.0)
    for y in range(h):
        for x in range(w):
            mp, mr, mg, mb = means[0, y, x], means[1, y, x], means[2, y, x], means[3, y, x]
            c_r = means[4, y, x] - mr * mp
            c_g = means[5, y, x] - mg * mp
            c_b = means[6, y, x] - mb * mp
            s_rr = means[7, y, x] - mr * mr + eps
            s_rg = means[8, y, x] - mr * mg
            s_rb = means[9, y, x] - mr * mb
            s_gg = means[10, y, x] - mg * mg + eps
            s_gb = means[11, y, x] - mg * mb
            s_bb = means[12, y, x] - mb * mb + eps
            i_rr = s_gg * s_bb - s_gb * s_gb
            i_rg = s_gb * s_rb - s_rg * s_bb
            i_rb = s_rg * s_gb - s_gg * s_rb
            i_gg = s_rr * s_bb - s_rb * s_rb
            i_gb = s_rb * s_rg - s_rr * s_gb
            i_bb = s_rr * s_gg - s_rg * s_rg
            inv = one / (s_rr * i_rr + s_rg * i_rg + s_rb * i_rb)
            a_r = (i_rr * c_r + i_rg * c_g + i_rb * c_b) * inv
            a_g = (i_rg * c_r + i_gg * c_g + i_gb * c_b) * inv
            a_b = (i_rb * c_r + i_gb * c_g + i_bb * c_b) * inv
            out[0, y, x] = a_r
            out[1, y, x] = a_g
            out[2, y, x] = a_b
            out[3, y, x] = mp - a_r * mr - a_g * mg - a_b * mb


@jit
def gain_tiles(x, plate, bgw, g, y0s, y1s, x0s, x1s, out):
    """segment.fused's per-tile light sums: over every g-th pixel of every g-th row (sub-grid coordinates), the
    means within each tile's window [y0s[i], y1s[i]) x [x0s[j], x1s[j]) of x plate bgw, plate plate bgw and
    plate plate, per channel, into out (3, rows, cols, 3) (float64 sums)."""
    rows, cols = y0s.size, x0s.size
    for i in range(rows):
        for j in range(cols):
            n = (y1s[i] - y0s[i]) * (x1s[j] - x0s[j])
            for c in range(3):
                s_num = 0.0
                s_den = 0.0
                s_tf = 0.0
                for sy in range(y0s[i], y1s[i]):
                    y = sy * g
                    for sx in range(x0s[j], x1s[j]):
                        xx = sx * g
                        p = plate[y, xx, c]
                        pb = p * bgw[y, xx]
                        s_num += x[y, xx, c] * pb
                        s_den += p * pb
                        s_tf += p * p
                out[0, i, j, c] = s_num / n
                out[1, i, j, c] = s_den / n
                out[2, i, j, c] = s_tf / n


@jit
def quadratic_field(theta, xn, yn, lo, hi, out):
    """segment.fused's light field: per channel c, theta[c] . (1, x, y, x^2, x y, y^2) at each pixel's (xn[x], yn[y]),
    clipped to [lo, hi], into `out` (h, w, 3); per row as a + x (b + t3 x) (a, b the row's constants)."""
    height, width = out.shape[:2]
    for y in range(height):
        v = yn[y]
        a0 = theta[0, 0] + theta[0, 2] * v + theta[0, 5] * (v * v)
        a1 = theta[1, 0] + theta[1, 2] * v + theta[1, 5] * (v * v)
        a2 = theta[2, 0] + theta[2, 2] * v + theta[2, 5] * (v * v)
        b0, b1, b2 = theta[0, 1] + theta[0, 4] * v, theta[1, 1] + theta[1, 4] * v, theta[2, 1] + theta[2, 4] * v
        q0, q1, q2 = theta[0, 3], theta[1, 3], theta[2, 3]
        row = out[y]
        for x in range(width):
            u = xn[x]
            row[x, 0] = min(max(a0 + u * (b0 + q0 * u), lo), hi)
            row[x, 1] = min(max(a1 + u * (b1 + q1 * u), lo), hi)
            row[x, 2] = min(max(a2 + u * (b2 + q2 * u), lo), hi)


@jit
def warp_box(src, plate, mask, a_full, fx_rows, fy_rows, y0s, y1s, wys, box, out, warped_mask):
    """warp.apply inside `box` (y0, y1, x0, x1), as `kernels.warp_apply_torch`: the offset (dx, dy) upsampled
    bilinearly from the field (its rows already upsampled across, `fx_rows`/`fy_rows` (fh, W); rows blended
    by the tables y*); where it is exactly zero nothing changes (`out` and `warped_mask` hold the frame
    and the mask already); else the frame sampled bilinearly at (x + dx, y + dy) (edges clamped), and with
    a mask (mh, mw; `mask.shape[0] > 1`) its value there `wa` (cell-centre mapping): out = wa * warped +
    (1 - wa) * bg, bg the plate mixed in by min(1, 4 a) (a = `a_full`, the mask at the frame's size)
    where there is a plate (`plate.shape[0] > 1`), else the warped frame; rounded once."""
    height, width = src.shape[:2]
    by0, by1, bx0, bx1 = box[0], box[1], box[2], box[3]
    has_mask, has_plate = mask.shape[0] > 1, plate.shape[0] > 1
    mh, mw = mask.shape
    same = mh == height and mw == width  # the mask sampled at the frame's own taps
    sy_m, sx_m = np.float32(mh / height), np.float32(mw / width)
    half, zero, one, four = np.float32(0.5), np.float32(0.0), np.float32(1.0), np.float32(4.0)
    top_v = np.float32(255.0)
    flat = src.ravel()  # flat offsets: three-index loads cost a third of the pass
    for y in range(by0, by1):
        r0, r1, wy = y0s[y], y1s[y], wys[y]
        fx0, fx1, fy0, fy1 = fx_rows[r0], fx_rows[r1], fy_rows[r0], fy_rows[r1]
        orow, srow, prow = out[y], src[y], plate[y if has_plate else 0]
        for x in range(bx0, bx1):
            dx = fx0[x] + wy * (fx1[x] - fx0[x])
            dy = fy0[x] + wy * (fy1[x] - fy0[x])
            if dx == zero and dy == zero:
                continue
            sx, sy = np.float32(x) + dx, np.float32(y) + dy
            i0, i1, wx = _clamp_tap(sx, width)
            j0, j1, wj = _clamp_tap(sy, height)
            wa = one
            share = zero
            if has_mask:
                if same:
                    k0, k1, wk, l0, l1, wl = i0, i1, wx, j0, j1, wj
                else:
                    k0, k1, wk = _clamp_tap((sx + half) * sx_m - half, mw)
                    l0, l1, wl = _clamp_tap((sy + half) * sy_m - half, mh)
                top = mask[l0, k0] + wk * (mask[l0, k1] - mask[l0, k0])
                bot = mask[l1, k0] + wk * (mask[l1, k1] - mask[l1, k0])
                wa = top + wl * (bot - top)
                ax = a_full[y, x]
                if has_plate and wa == zero and ax == zero:
                    # the room's share and the warped frame's are both 0: out = the frame's own pixel, exactly, and
                    # the warped mask the mask's own 0 (both already there); most of the gate's margin outside her
                    continue
                warped_mask[y, x] = wa
                share = min(ax * four, one)
            o00, o01 = (j0 * width + i0) * 3, (j0 * width + i1) * 3
            o10, o11 = (j1 * width + i0) * 3, (j1 * width + i1) * 3
            for c in range(3):
                p00, p01 = np.float32(flat[o00 + c]), np.float32(flat[o01 + c])
                p10, p11 = np.float32(flat[o10 + c]), np.float32(flat[o11 + c])
                top = p00 + wx * (p01 - p00)
                w = top + wj * (p10 + wx * (p11 - p10) - top)
                if has_mask:
                    if has_plate:
                        f = np.float32(srow[x, c])
                        bg = f + share * (np.float32(prow[x, c]) - f)
                    else:
                        bg = w
                    w = wa * w + (one - wa) * bg
                orow[x, c] = np.uint8(min(max(np.rint(w), zero), top_v))


@jit
def taps_mean(big, taps, out):
    """`roi.crop`'s taps x taps average: the big crop (h taps, w taps, C >= 3) uint8 -> `out` (3, h, w) float32 in
    [0, 1], each output pixel the mean of its taps x taps block of samples (the first three channels), as OpenCV's
    area resize of the float crop and the scale by 1 / 255 give it."""
    oh, ow = out.shape[1], out.shape[2]
    # OpenCV's two roundings (its area mean, x 1 / taps^2, then x 1 / 255): the same crops to the bit (the landmark
    # models, tracking from frame to frame, carry a last-bit difference of the detector's crop into pixels of keypoints)
    area, scale = np.float32(1.0 / (taps * taps)), np.float32(1.0 / 255.0)
    for y in range(oh):
        for x in range(ow):
            a0, a1, a2 = np.int32(0), np.int32(0), np.int32(0)
            for b in range(taps):
                row = big[y * taps + b]
                for a in range(taps):
                    p = row[x * taps + a]
                    a0 += np.int32(p[0])
                    a1 += np.int32(p[1])
                    a2 += np.int32(p[2])
            out[0, y, x] = (np.float32(a0) * area) * scale
            out[1, y, x] = (np.float32(a1) * area) * scale
            out[2, y, x] = (np.float32(a2) * area) * scale


@jit
def learn_plate(alpha_grown, conf, pm_grown, clear_for, mode, still, calm_ok, still_for, frames, x, gain, known, learn_rate,
                pp, plate, was_person, restart, since_uncovered, quick_frames, uncovered_frames):
    """segment.fused's learning step where the camera sits where the plate was taken (no shift), in one pass: a pixel is
    surely background (1 - alpha_grown > 0.95, conf > 0.9 and, with a model (pm_grown.shape[0] > 1), pm_grown < 0.2);
    `clear_for` counts such frames. mode 0: nothing learned; 1 (a recorded plate): learned once clear for `frames`;
    2 (the own plate): learned once still (`still` < 0.5, model background, `calm_ok`) for `frames` (`still_for`
    counts them). Learning moves `plate` towards x (divided by max(gain, 0.05) where a gain is given
    (gain.shape[0] > 1), clipped to [0, 1]) by learn_rate (1 where not known; at least `pp` where one is given
    (pp.shape[0] > 1)), and marks the pixel known. In mode 2 with `was_person` given (was_person.shape[0] > 1: the last
    matte's person, 0/1), room a person has just moved off (picture changed, `still` >= 0.5, where it was person, or
    everywhere on a `restart`) resets `since_uncovered`, which counts frames since; such a pixel is learned once still
    for `quick_frames` while since_uncovered <= `uncovered_frames`. The same float32 operations, in the same order, as
    the numpy code."""
    height, width = clear_for.shape
    has_pm, has_gain, has_pp = pm_grown.shape[0] > 1, gain.shape[0] > 1, pp.shape[0] > 1
    zero, one = np.float32(0.0), np.float32(1.0)
    t_bg, t_conf, t_pm, t_still, floor = np.float32(0.95), np.float32(0.9), np.float32(0.2), np.float32(0.5), np.float32(0.05)
    lr, keep = np.float32(learn_rate), np.float32(1.0 - learn_rate)
    n = np.float32(frames)
    calm_f = np.float32(calm_ok)
    has_unc, restart_f = was_person.shape[0] > 1, np.float32(restart)
    nq, nu = np.float32(quick_frames), np.float32(uncovered_frames)
    # branch-free (the conditions as 0/1 factors): the loops vectorise; the mode and the optional planes are the
    # same for every pixel
    for y in range(height):
        for i in range(width):
            model_bg = np.float32(pm_grown[y, i] < t_pm) if has_pm else one
            sb = np.float32((one - alpha_grown[y, i]) > t_bg) * np.float32(conf[y, i] > t_conf) * model_bg
            cf = clear_for[y, i] * sb + sb
            clear_for[y, i] = cf
            if mode == 0:
                continue
            if mode == 1:
                learn = np.float32(cf >= n)
            else:
                calm = model_bg * np.float32(still[y, i] < t_still) * calm_f
                sf = still_for[y, i] * calm + calm
                still_for[y, i] = sf
                learn = np.float32(sf >= n)
                if has_unc:
                    off = np.float32(still[y, i] >= t_still) * max(was_person[y, i], restart_f)
                    su = (since_uncovered[y, i] + one) * (one - off)
                    since_uncovered[y, i] = su
                    learn = max(learn, np.float32(sf >= nq) * np.float32(su <= nu))
            k = known[y, i]
            rate = keep * (one - k) + lr
            if has_pp:
                rate = max(rate, pp[y, i])
            rate *= learn
            for c in range(3):
                v = x[y, i, c]
                if has_gain:
                    v = v / max(gain[y, i, c], floor)
                v = min(max(v, zero), one)
                p = plate[y, i, c]
                plate[y, i, c] = p + (v - p) * rate
            known[y, i] = max(k, learn)


@jit
def motion_planes(cm, floor, contrast, threshold, room):
    """segment.fused's picture change after its noise floor: `cm` (h, w), in place, becomes max(cm - floor, 0), and `room`
    clip(cm / contrast / threshold, 0, 1) (the numpy code's float32 operations, in its order)."""
    height, width = cm.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    f, t = np.float32(floor), np.float32(threshold)
    for y in range(height):
        for i in range(width):
            v = max(cm[y, i] - f, zero)
            cm[y, i] = v
            room[y, i] = min(max(v / contrast[y, i] / t, zero), one)


@jit
def divide_clip(x, d, out):
    """out = clip(x / d, 0, 1) (float32, d a number)."""
    height, width = x.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    dd = np.float32(d)
    for y in range(height):
        for i in range(width):
            out[y, i] = min(max(x[y, i] / dd, zero), one)


@jit
def light_weights(xs, ps, light, wk, fit_ok, lps, wfit):
    """segment.fused's plate in the frame's light and the light fit's weights, in one pass: lps = light ps, and
    wfit = wk / (1 + (|xs - lps| summed over the channels / 0.06)^2) x fit_ok (the numpy code's float32 operations)."""
    height, width = wk.shape
    one, scale = np.float32(1.0), np.float32(0.06)
    for y in range(height):
        for i in range(width):
            l0 = light[y, i, 0] * ps[y, i, 0]
            l1 = light[y, i, 1] * ps[y, i, 1]
            l2 = light[y, i, 2] * ps[y, i, 2]
            lps[y, i, 0], lps[y, i, 1], lps[y, i, 2] = l0, l1, l2
            off = (abs(xs[y, i, 0] - l0) + abs(xs[y, i, 1] - l1)) + abs(xs[y, i, 2] - l2)
            q = off / scale
            wfit[y, i] = wk[y, i] / (one + q * q) * fit_ok[y, i]


@jit
def lit_plate(gain, light, ps, pc):
    """segment.fused's plate comparison's plate: gain (h, w, 3), in place, times light; pc = clip(gain ps, 0, 1)."""
    height, width = pc.shape[:2]
    zero, one = np.float32(0.0), np.float32(1.0)
    for y in range(height):
        for i in range(width):
            for c in range(3):
                g = gain[y, i, c] * light[y, i, c]
                gain[y, i, c] = g
                pc[y, i, c] = min(max(g * ps[y, i, c], zero), one)


@njit(nogil=True, cache=True, inline="always")
def _smooth(x, lo, span):
    # fused._smoothstep with lo and the span max(hi - lo, 1e-6) as float32
    t = min(max((x - lo) / span, np.float32(0.0)), np.float32(1.0))
    return t * t * (np.float32(3.0) - np.float32(2.0) * t)


@jit
def plate_evidence(d, grown, tau, fit_ok, pp, rel):
    """segment.fused's plate difference d as evidence, in one pass: fit_ok = d < 2 tau, pp = smoothstep(tau, 2.5 tau, d)
    and (where `grown`, the dilated d, is given: grown.shape[0] > 1) rel = smoothstep(0.25, 0.75, d / max(grown,
    2.5 tau)) (the numpy code's float32 operations, in its order)."""
    height, width = d.shape
    has_rel = grown.shape[0] > 1
    t = np.float32(tau)
    two, wide = np.float32(2.0 * tau), np.float32(2.5 * tau)
    span = np.float32(max(2.5 * tau - tau, 1e-6))
    lo_r, span_r = np.float32(0.25), np.float32(max(0.75 - 0.25, 1e-6))
    for y in range(height):
        for i in range(width):
            v = d[y, i]
            fit_ok[y, i] = np.float32(v < two)
            pp[y, i] = _smooth(v, t, span)
            if has_rel:
                rel[y, i] = _smooth(v / max(grown[y, i], wide), lo_r, span_r)


@jit
def relative_edge(pp, eroded, rel):
    """pp, in place, times 1 - (1 - eroded) (1 - rel): the plate's evidence at its edge scaled by how far across the
    edge the difference reaches (the numpy code's float32 operations)."""
    height, width = pp.shape
    one = np.float32(1.0)
    for y in range(height):
        for i in range(width):
            pp[y, i] = pp[y, i] * (one - (one - eroded[y, i]) * (one - rel[y, i]))


@jit
def frame_planes(x, lx, xmax, grad):
    """segment.fused's per-frame planes of the working picture x (h, w, 3), in one pass: its channel maximum, and the
    local contrast's gradient of its luma lx: |right - here| + |below - here| (0 past the last column / row)."""
    height, width = lx.shape
    zero = np.float32(0.0)
    for y in range(height):
        for i in range(width):
            xmax[y, i] = max(max(x[y, i, 0], x[y, i, 1]), x[y, i, 2])
            across = abs(lx[y, i + 1] - lx[y, i]) if i + 1 < width else zero
            down = abs(lx[y + 1, i] - lx[y, i]) if y + 1 < height else zero
            grad[y, i] = across + down


@jit
def both_below(a, b, level, out):
    """out = 1 where a < level and b < level, else 0 (float32)."""
    height, width = a.shape
    t = np.float32(level)
    for y in range(height):
        for i in range(width):
            out[y, i] = np.float32(a[y, i] < t and b[y, i] < t)


@jit
def colour_bins(x, last, bgw, g, nb, scale, idx, hp, hr):
    """segment.fused's colour vote, its counting: for every g-th pixel of every g-th row of x (h, w, 3) in [0, 1], its
    colour bin (each channel round(|x scale - 0.5|) as OpenCV's convertScaleAbs, saturated; (r nb + g) nb + b) into
    idx, counted in hp where last > 0.8 (the person's) and in hr where bgw > 0.8 (the room's)."""
    hs, ws = idx.shape
    a, half, top = np.float32(scale), np.float32(0.5), np.float32(255.0)
    t = np.float32(0.8)
    for i in range(hs):
        y = i * g
        for j in range(ws):
            xx = j * g
            q0 = np.intp(min(np.rint(abs(x[y, xx, 0] * a - half)), top))
            q1 = np.intp(min(np.rint(abs(x[y, xx, 1] * a - half)), top))
            q2 = np.intp(min(np.rint(abs(x[y, xx, 2] * a - half)), top))
            k = (q0 * nb + q1) * nb + q2
            idx[i, j] = k
            if last[y, xx] > t:
                hp[k] += 1
            if bgw[y, xx] > t:
                hr[k] += 1


@jit
def floor_unknown(cb, floor, known):
    """cb, in place, less floor where nothing of the plate is known: max(cb - floor (1 - known), 0) (float32)."""
    height, width = cb.shape
    zero, one = np.float32(0.0), np.float32(1.0)
    f = np.float32(floor)
    for y in range(height):
        for i in range(width):
            cb[y, i] = max(cb[y, i] - f * (one - known[y, i]), zero)


@jit
def sample_change(one, three, fy, fx, x, ratio, unclipped, contrast, out_one, change):
    """segment.fused's last matte (`one` -> `out_one`) and last frame (`three`) at (y + fy, x + fx): bilinear, the
    position clamped to the picture (grid_sample's border padding with align_corners=False, where a pixel's centre
    maps to itself); and straight from the carried frame `exposure_change` with its clip (luma of
    |x - clip(carried ratio, 0, 1)| x unclipped / contrast -> `change`): the carried frame is never written."""
    height, width = one.shape
    lr, lg, lb = np.float32(0.299), np.float32(0.587), np.float32(0.114)
    zero, unit = np.float32(0.0), np.float32(1.0)
    for y in range(height):
        for i in range(width):
            i0, i1, wx = _clamp_tap(np.float32(i) + fx[y, i], width)
            j0, j1, wy = _clamp_tap(np.float32(y) + fy[y, i], height)
            top = one[j0, i0] + wx * (one[j0, i1] - one[j0, i0])
            bot = one[j1, i0] + wx * (one[j1, i1] - one[j1, i0])
            out_one[y, i] = top + wy * (bot - top)
            v = zero
            for c in range(3):
                top = three[j0, i0, c] + wx * (three[j0, i1, c] - three[j0, i0, c])
                bot = three[j1, i0, c] + wx * (three[j1, i1, c] - three[j1, i0, c])
                p = min(max((top + wy * (bot - top)) * ratio, zero), unit)
                d = abs(x[y, i, c] - p)
                v = v + (lr if c == 0 else lg if c == 1 else lb) * d
            change[y, i] = v * unclipped[y, i] / contrast[y, i]
