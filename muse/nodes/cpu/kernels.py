"""Fused per-pixel loops for the CPU path, compiled by numba (issue 13: "a numba/cv2 kernel").

OpenCV and numpy run one pass over memory per operation; where a pixel's result needs a
dozen operations (decode, blend, encode, a branch on alpha), the chain of full-size
temporaries costs more than the arithmetic. These loops read each input once and write
the output once, and release the GIL (the CPU pipeline's other stage runs meanwhile).

numba is optional at run time: `available()` is False where it cannot be imported (a frozen
app built without it, a platform without wheels) or MUSE_CPU_NUMBA=0, and the nodes then use
their OpenCV implementations (same results within a level; tests/test_cpu_kernels.py holds
them together). Compiled code is cached on disk (numba's cache), so only the first start
on a machine pays the compile (about a second a kernel).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import numpy as np

from muse.graph.compiled import background_work

log = logging.getLogger("muse.nodes.cpu.kernels")

__all__ = ["available", "why_not", "warm_up", "srgb_thresholds", "composite_over", "encode_srgb", "guided_upsample", "lerp_known", "warp_box", "decoded_mean", "blend_points", "compiled", "quadratic_field", "exposure_change", "envelope_distance", "flow_pick", "motion_blend", "guided_solve", "gain_tiles", "learn_plate", "motion_planes", "divide_clip", "taps_mean", "light_weights", "lit_plate", "plate_evidence", "relative_edge", "frame_planes", "both_below", "colour_bins", "floor_unknown", "sample_change"]

_LOCK = threading.Lock()
_KERNELS: dict[str, Any] | None = None
_WHY_NOT: str | None = None

# sRGB encoding, rounded to nearest, without pow: level k is the output for linear values in
# [T[k], T[k+1]) (T[0] = -inf, T[256] = +inf); a 4096-entry guess table puts a value within one
# level of its answer (the curve's narrowest level, near black, is wider than 1/4096), then one
# comparison each way settles it. Exact to float32 (the torch path's pow is within 1 ulp of it).
GUESS_STEPS = 4096


def srgb_thresholds() -> tuple[np.ndarray, np.ndarray]:
    """(T, G): T (257,) float32 linear-light thresholds between the 256 sRGB levels, G (GUESS_STEPS + 1,)
    uint8 the level of each 1/GUESS_STEPS step of linear light."""
    k = np.arange(1, 256, dtype=np.float64)
    v = (k - 0.5) / 255.0
    lin = np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4)
    t32 = lin.astype(np.float32)
    # the smallest float32 at or above each exact threshold: a float32 value x encodes to k exactly when x >= it
    t32 = np.where(t32.astype(np.float64) < lin, np.nextafter(t32, np.float32(np.inf)), t32).astype(np.float32)
    t = np.empty(257, np.float32)
    t[0], t[1:256], t[256] = -np.inf, t32, np.inf
    steps = (np.arange(GUESS_STEPS + 1, dtype=np.float64) / GUESS_STEPS).astype(np.float32)
    g = (np.searchsorted(t, steps, side="right") - 1).clip(0, 255).astype(np.uint8)
    return t, g


def why_not() -> str | None:
    """Why the fused kernels are not used (None when they are)."""
    available()
    return _WHY_NOT


def available() -> bool:
    """Whether the numba kernels can be used (compiled lazily, once per process)."""
    return _kernels() is not None


def _kernels() -> dict[str, Any] | None:
    global _KERNELS, _WHY_NOT
    if _KERNELS is not None or _WHY_NOT is not None:
        return _KERNELS
    with _LOCK:
        if _KERNELS is not None or _WHY_NOT is not None:
            return _KERNELS
        if os.environ.get("MUSE_CPU_NUMBA", "1") == "0":
            _WHY_NOT = "MUSE_CPU_NUMBA=0"
            return None
        try:
            _KERNELS = _build()
        except Exception as exc:  # ImportError, or a numba that refuses this numpy
            _WHY_NOT = f"numba not usable ({type(exc).__name__}: {exc})"
            log.info("CPU path: %s; OpenCV implementations instead", _WHY_NOT)
        return _KERNELS


def _build() -> dict[str, Any]:
    from muse.models.bundled import cache_root

    # compiled code beside MUSE's other caches, not in the installed package's folders (numba reads the
    # variable when it is first imported; where something imported it before, its config is set directly)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(cache_root() / "numba"))
    import numba.core.config

    if not numba.core.config.CACHE_DIR:
        numba.core.config.CACHE_DIR = str(cache_root() / "numba")
    from muse.nodes.cpu import numba_loops

    return {"variant": numba_loops.variant, "over": {}, "encode_all": numba_loops.encode_all, "guided_gray": numba_loops.guided_full_gray,
            "guided_colour": numba_loops.guided_full_colour, "lerp_known": numba_loops.lerp_known, "decoded_mean": numba_loops.decoded_mean,
            "blend_points": numba_loops.blend_points,
            "quadratic_field": numba_loops.quadratic_field, "exposure_change": numba_loops.exposure_change,
            "envelope_distance": numba_loops.envelope_distance, "flow_pick": numba_loops.flow_pick,
            "motion_blend": numba_loops.motion_blend, "guided_solve": numba_loops.guided_solve,
            "gain_tiles": numba_loops.gain_tiles, "learn_plate": numba_loops.learn_plate,
            "motion_planes": numba_loops.motion_planes, "divide_clip": numba_loops.divide_clip, "taps_mean": numba_loops.taps_mean,
            "light_weights": numba_loops.light_weights, "lit_plate": numba_loops.lit_plate,
            "plate_evidence": numba_loops.plate_evidence, "relative_edge": numba_loops.relative_edge,
            "frame_planes": numba_loops.frame_planes, "both_below": numba_loops.both_below, "colour_bins": numba_loops.colour_bins,
            "floor_unknown": numba_loops.floor_unknown, "sample_change": numba_loops.sample_change,
            "warp_box": numba_loops.warp_box}


def _taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bilinear taps on cell centres with clamped edges (OpenCV's INTER_LINEAR, F.interpolate with
    align_corners=False): for each output index, the two input indices and the second one's weight."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    i0 = np.floor(pos).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (pos - i0).astype(np.float32)


_TAPS: dict[tuple[int, int, int, int], tuple] = {}


def _taps_for(height: int, width: int, h: int, w: int) -> tuple:
    key = (height, width, h, w)
    taps = _TAPS.get(key)
    if taps is None:
        if len(_TAPS) > 16:
            _TAPS.clear()
        taps = _TAPS[key] = (*_taps(height, h), *_taps(width, w))
    return taps


def composite_over(fg: np.ndarray, alpha: np.ndarray, out: np.ndarray, eps: float, *, colour: tuple[float, float, float] | None = None,
                   room: np.ndarray | None = None, wrap: float = 0.0, soft: np.ndarray | None = None,
                   inside: np.ndarray | None = None) -> np.ndarray:
    """`out` (H, W, 3) uint8 holding the background, with the person `fg` (H, W, 3) uint8 over it by
    `alpha` (H, W) float32, in place; the background blended with is `colour` (linear light) when given,
    else `room` (h, w, 3) float32 linear light, upsampled bilinearly, when given, else `out`'s; see `over`."""
    from muse.nodes.cpu import decode_lut

    k = _kernels()
    assert k is not None, "composite_over without numba: check available() first"
    height, width = alpha.shape
    if wrap > 0.0:
        assert soft is not None and inside is not None and soft.shape[:2] == inside.shape[:2]
        h, w = inside.shape[:2]
        taps = _taps_for(height, width, h, w)
        soft3 = np.ascontiguousarray(soft, np.float32).reshape(h, w, -1)
        inside3 = np.ascontiguousarray(inside, np.float32).reshape(h, w, 1)
    else:
        taps = _EMPTY_TAPS
        soft3 = inside3 = _EMPTY_PLANE
    if room is not None and colour is None:
        room_taps = _taps_for(height, width, room.shape[0], room.shape[1])
        room3 = np.ascontiguousarray(room, np.float32).reshape(room.shape[0], room.shape[1], 3)
    else:
        room_taps, room3 = _EMPTY_TAPS, _EMPTY_PLANE
    t, g = _tables()
    col = np.zeros(3, np.float32) if colour is None else np.asarray(colour, np.float32)
    mode = 0 if colour is not None else 2 if room is not None else 1
    glow = wrap > 0.0
    with _LOCK:
        fn = k["over"].get((mode, glow))
        if fn is None:
            fn = k["over"][(mode, glow)] = k["variant"](mode, glow)
    fn(fg, np.ascontiguousarray(alpha, np.float32), out, decode_lut(), t, g, np.float32(eps), np.float32(1.0 - eps),
       col, room3, *room_taps, np.float32(wrap), soft3, inside3, *taps)
    return out


def decoded_mean(img: np.ndarray, factor: int) -> np.ndarray:
    """The factor x factor block means of (H, W, 3) uint8 sRGB in linear light, (H / factor, W / factor, 3) float32
    (factor must divide both sides): `shrink(cv2.LUT(img, decode_lut()), ...)` in one pass."""
    from muse.nodes.cpu import decode_lut

    k = _kernels()
    assert k is not None, "decoded_mean without numba: check available() first"
    height, width = img.shape[:2]
    assert height % factor == 0 and width % factor == 0, "decoded_mean: the factor must tile the picture"
    out = np.empty((height // factor, width // factor, 3), np.float32)
    k["decoded_mean"](np.ascontiguousarray(img), decode_lut(), factor, out)
    return out


def exposure_change(x: np.ndarray, prev: np.ndarray, ratio: float, unclipped: np.ndarray, clip: bool,
                    contrast: np.ndarray | None = None) -> np.ndarray:
    """(h, w) float32: luma(|x - prev * ratio|) * unclipped (prev * ratio clipped to [0, 1] when `clip`), / contrast
    when given; x, prev (h, w, 3), unclipped, contrast (h, w) float32."""
    k = _kernels()
    assert k is not None, "exposure_change without numba: check available() first"
    out = np.empty(x.shape[:2], np.float32)
    k["exposure_change"](np.ascontiguousarray(x, np.float32), np.ascontiguousarray(prev, np.float32), np.float32(ratio),
                         np.ascontiguousarray(unclipped, np.float32), bool(clip),
                         _EMPTY_2D if contrast is None else np.ascontiguousarray(contrast, np.float32), out)
    return out


def envelope_distance(xs: np.ndarray, lo: np.ndarray, hi: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """(h, w) float32: |xs - clip(xs, lo, hi)| over the channels of (h, w, 3) float32 planes, 0 where `seen` (bool) is not."""
    k = _kernels()
    assert k is not None, "envelope_distance without numba: check available() first"
    out = np.empty(xs.shape[:2], np.float32)
    k["envelope_distance"](*(np.ascontiguousarray(v, np.float32) for v in (xs, lo, hi)), np.ascontiguousarray(seen, np.bool_), out)
    return out


def flow_pick(sums: np.ndarray, inv: np.ndarray, cand_cost: np.ndarray, cy: np.ndarray, cx: np.ndarray, n: int, r: int,
              q: int) -> tuple[np.ndarray, np.ndarray]:
    """segment.fused's block-matching choice (see `numba_loops.flow_pick`): (vy, vx) (hq, wq) float32."""
    k = _kernels()
    assert k is not None, "flow_pick without numba: check available() first"
    hq, wq = inv.shape
    out_y, out_x = np.empty((hq, wq), np.float32), np.empty((hq, wq), np.float32)
    k["flow_pick"](sums, np.ascontiguousarray(inv, np.float32), cand_cost, cy, cx, int(n), np.float32(r), np.float32(q), out_y, out_x)
    return out_y, out_x


def motion_blend(fused: np.ndarray, last: np.ndarray, moved: np.ndarray, known: np.ndarray, model_stability: float,
                 stability: float, jumps: bool, alpha: np.ndarray, conf: np.ndarray) -> None:
    """segment.fused's blend of the new evidence with the last matte and its confidence, into `alpha` and `conf` (h, w)
    float32 (see `numba_loops.motion_blend`)."""
    k = _kernels()
    assert k is not None, "motion_blend without numba: check available() first"
    k["motion_blend"](*(np.ascontiguousarray(v, np.float32) for v in (fused, last, moved, known)), np.float32(model_stability),
                      np.float32(stability), bool(jumps), alpha, conf)


def guided_solve(means: np.ndarray, eps: float) -> np.ndarray:
    """The colour guided filter's per-pixel algebra (see `numba_loops.guided_solve`): (4, h, w) float32 from the
    (13, h, w) window means."""
    k = _kernels()
    assert k is not None, "guided_solve without numba: check available() first"
    out = np.empty((4, *means.shape[1:]), np.float32)
    k["guided_solve"](np.ascontiguousarray(means, np.float32), np.float32(eps), out)
    return out


def gain_tiles(x: np.ndarray, plate: np.ndarray, bgw: np.ndarray, step: int, rows: tuple[np.ndarray, np.ndarray],
               cols: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """segment.fused's tile means of x plate bgw, plate plate bgw and plate plate on the `step` sub-grid (see
    `numba_loops.gain_tiles`): (3, rows, cols, 3) float32."""
    k = _kernels()
    assert k is not None, "gain_tiles without numba: check available() first"
    out = np.empty((3, rows[0].size, cols[0].size, 3), np.float32)
    k["gain_tiles"](np.ascontiguousarray(x, np.float32), np.ascontiguousarray(plate, np.float32), np.ascontiguousarray(bgw, np.float32),
                    int(step), *(np.ascontiguousarray(v, np.int64) for v in (*rows, *cols)), out)
    return out


def learn_plate(alpha_grown: np.ndarray, conf: np.ndarray, pm_grown: np.ndarray | None, clear_for: np.ndarray, mode: int,
                still: np.ndarray | None, calm_ok: bool, still_for: np.ndarray, frames: float, x: np.ndarray,
                gain: np.ndarray | None, known: np.ndarray, learn_rate: float, pp: np.ndarray | None, plate: np.ndarray,
                was_person: np.ndarray | None = None, restart: bool = False, since_uncovered: np.ndarray | None = None,
                quick_frames: float = 1.0, uncovered_frames: float = 0.0) -> None:
    """segment.fused's learning step without a camera shift, in place on `clear_for`, `still_for`, `since_uncovered`,
    `known` and `plate` (see `numba_loops.learn_plate`; `was_person` None: no quick learning of uncovered room)."""
    k = _kernels()
    assert k is not None, "learn_plate without numba: check available() first"
    f32 = lambda v: _EMPTY_2D if v is None else np.ascontiguousarray(v, np.float32)  # noqa: E731
    k["learn_plate"](f32(alpha_grown), f32(conf), f32(pm_grown), clear_for, int(mode), f32(still), bool(calm_ok), still_for,
                     float(frames), np.ascontiguousarray(x, np.float32), _EMPTY_PLANE if gain is None else np.ascontiguousarray(gain, np.float32),
                     known, float(learn_rate), f32(pp), plate, f32(was_person), bool(restart),
                     _EMPTY_2D if since_uncovered is None else since_uncovered, float(quick_frames), float(uncovered_frames))


def motion_planes(cm: np.ndarray, floor: float, contrast: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """segment.fused's picture change less its noise floor, max(cm - floor, 0) (in place when `cm` is a contiguous
    float32 array), and the room's change clip(cm / contrast / threshold, 0, 1): (cm, room), (h, w) float32."""
    k = _kernels()
    assert k is not None, "motion_planes without numba: check available() first"
    cm = np.ascontiguousarray(cm, np.float32)
    room = np.empty_like(cm)
    k["motion_planes"](cm, float(floor), np.ascontiguousarray(contrast, np.float32), float(threshold), room)
    return cm, room


def divide_clip(x: np.ndarray, d: float) -> np.ndarray:
    """clip(x / d, 0, 1) of an (h, w) float32 plane, in one pass (numpy: two)."""
    k = _kernels()
    assert k is not None, "divide_clip without numba: check available() first"
    out = np.empty(x.shape, np.float32)
    k["divide_clip"](np.ascontiguousarray(x, np.float32), float(d), out)
    return out


def taps_mean(big: np.ndarray, taps: int, out: np.ndarray) -> None:
    """A landmark crop's taps x taps mean: `big` (h taps, w taps, C >= 3) uint8 -> `out` (3, h, w) float32 in [0, 1]
    (see `numba_loops.taps_mean`)."""
    k = _kernels()
    assert k is not None, "taps_mean without numba: check available() first"
    k["taps_mean"](np.ascontiguousarray(big), int(taps), out)


def light_weights(xs: np.ndarray, ps: np.ndarray, light: np.ndarray, wk: np.ndarray, fit_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """segment.fused's lit plate lps = light ps (h, w, 3) and the tile fit's weights (h, w) (see
    `numba_loops.light_weights`)."""
    k = _kernels()
    assert k is not None, "light_weights without numba: check available() first"
    c3 = lambda v: np.ascontiguousarray(v, np.float32)  # noqa: E731
    lps, wfit = np.empty(ps.shape, np.float32), np.empty(wk.shape, np.float32)
    k["light_weights"](c3(xs), c3(ps), c3(light), c3(wk), c3(fit_ok), lps, wfit)
    return lps, wfit


def lit_plate(gain: np.ndarray, light: np.ndarray, ps: np.ndarray) -> np.ndarray:
    """`gain` (h, w, 3) float32 times `light`, in place; returns clip(gain ps, 0, 1)."""
    k = _kernels()
    assert k is not None, "lit_plate without numba: check available() first"
    pc = np.empty(ps.shape, np.float32)
    k["lit_plate"](gain, np.ascontiguousarray(light, np.float32), np.ascontiguousarray(ps, np.float32), pc)
    return pc


def plate_evidence(d: np.ndarray, grown: np.ndarray | None, tau: float, fit_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """segment.fused's plate difference `d` (h, w) float32 as evidence (see `numba_loops.plate_evidence`): writes
    fit_ok (d < 2 tau, in place) and returns (pp, rel) (rel None without `grown`)."""
    k = _kernels()
    assert k is not None, "plate_evidence without numba: check available() first"
    d = np.ascontiguousarray(d, np.float32)
    pp = np.empty_like(d)
    rel = np.empty_like(d) if grown is not None else _EMPTY_2D
    k["plate_evidence"](d, _EMPTY_2D if grown is None else np.ascontiguousarray(grown, np.float32), float(tau), fit_ok, pp, rel)
    return pp, (rel if grown is not None else None)


def relative_edge(pp: np.ndarray, eroded: np.ndarray, rel: np.ndarray) -> None:
    """pp (h, w) float32, in place, times 1 - (1 - eroded) (1 - rel)."""
    k = _kernels()
    assert k is not None, "relative_edge without numba: check available() first"
    k["relative_edge"](pp, np.ascontiguousarray(eroded, np.float32), np.ascontiguousarray(rel, np.float32))


def frame_planes(x: np.ndarray, lx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(xmax, grad): the channel maximum of x (h, w, 3) and the gradient |right - here| + |below - here| of its luma
    lx (h, w) (see `numba_loops.frame_planes`)."""
    k = _kernels()
    assert k is not None, "frame_planes without numba: check available() first"
    xmax, grad = np.empty(lx.shape, np.float32), np.empty(lx.shape, np.float32)
    k["frame_planes"](np.ascontiguousarray(x, np.float32), np.ascontiguousarray(lx, np.float32), xmax, grad)
    return xmax, grad


def both_below(a: np.ndarray, b: np.ndarray, level: float) -> np.ndarray:
    """float32 (h, w): 1 where a < level and b < level, else 0."""
    k = _kernels()
    assert k is not None, "both_below without numba: check available() first"
    out = np.empty(a.shape, np.float32)
    k["both_below"](np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32), float(level), out)
    return out


def colour_bins(x: np.ndarray, last: np.ndarray, bgw: np.ndarray, step: int, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """segment.fused's colour vote, its counting (see `numba_loops.colour_bins`): (idx (ceil(h / step), ceil(w / step))
    int64, person's and room's histograms (bins^3,) int64)."""
    k = _kernels()
    assert k is not None, "colour_bins without numba: check available() first"
    h, w = last.shape
    idx = np.empty((-(-h // step), -(-w // step)), np.int64)
    hp, hr = np.zeros(bins ** 3, np.int64), np.zeros(bins ** 3, np.int64)
    k["colour_bins"](np.ascontiguousarray(x, np.float32), np.ascontiguousarray(last, np.float32), np.ascontiguousarray(bgw, np.float32),
                     int(step), int(bins), float(bins - 1.0 / 256.0), idx, hp, hr)
    return idx, hp, hr


def floor_unknown(cb: np.ndarray, floor: float, known: np.ndarray) -> np.ndarray:
    """max(cb - floor (1 - known), 0) of (h, w) float32 planes, in place when `cb` is contiguous float32; returned."""
    k = _kernels()
    assert k is not None, "floor_unknown without numba: check available() first"
    cb = np.ascontiguousarray(cb, np.float32)
    k["floor_unknown"](cb, float(floor), np.ascontiguousarray(known, np.float32))
    return cb


def sample_change(one: np.ndarray, three: np.ndarray, fy: np.ndarray, fx: np.ndarray, x: np.ndarray, ratio: float,
                  unclipped: np.ndarray, contrast: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """segment.fused's last matte `one` (h, w) and last frame `three` (h, w, 3) carried along the motion (bilinear at
    (y + fy, x + fx), positions clamped to the picture: grid_sample's border rule, align_corners=False), and the
    picture change against the carried frame as `exposure_change(x, <it>, ratio, unclipped, True, contrast)`, without
    writing the carried frame (see `numba_loops.sample_change`): (carried matte, change), (h, w) float32."""
    k = _kernels()
    assert k is not None, "sample_change without numba: check available() first"
    c = lambda v: np.ascontiguousarray(v, np.float32)  # noqa: E731
    out_one, change = np.empty(one.shape, np.float32), np.empty(one.shape, np.float32)
    k["sample_change"](c(one), c(three), c(fy), c(fx), c(x), np.float32(ratio), c(unclipped), c(contrast), out_one, change)
    return out_one, change


def quadratic_field(theta: np.ndarray, xn: np.ndarray, yn: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(h, w, 3) float32: per channel c, theta[c] . (1, x, y, x^2, x y, y^2) at (xn[x], yn[y]) (theta (3, 6) float32,
    xn (w,), yn (h,) float32), clipped to [lo, hi]."""
    k = _kernels()
    assert k is not None, "quadratic_field without numba: check available() first"
    out = np.empty((yn.shape[0], xn.shape[0], 3), np.float32)
    k["quadratic_field"](theta, xn, yn, np.float32(lo), np.float32(hi), out)
    return out


def compiled(name: str) -> bool:
    """Whether kernel `name` is compiled already (by the warm-up): a source that must not stall its first
    frames on a compile uses its other implementation until then."""
    k = _kernels()
    return k is not None and bool(getattr(k.get(name), "signatures", ()))


def blend_points(out: np.ndarray, ys: np.ndarray, xs: np.ndarray, colours: np.ndarray, wa: np.ndarray, wb: np.ndarray,
                 offset: tuple[int, int], inside: tuple[int, int, int, int]) -> None:
    """`out` (H, W, 3) uint8, in place: at each point (ys, xs) (int64) within `inside` (y0, y1, x0, x1), the pixel at
    (y, x) + `offset` becomes cv2.blendLinear(colour, pixel, wa, wb) of that point (`colours` (N, 3) uint8,
    `wa`, `wb` (N,) float32), to the bit."""
    k = _kernels()
    assert k is not None, "blend_points without numba: check available() first"
    k["blend_points"](out, ys, xs, colours, wa, wb, int(offset[0]), int(offset[1]), *(int(v) for v in inside))


_EMPTY_TAPS = (np.zeros(1, np.int64), np.zeros(1, np.int64), np.zeros(1, np.float32)) * 2
_EMPTY_PLANE = np.zeros((1, 1, 1), np.float32)
_EMPTY_2D = np.zeros((1, 1), np.float32)
_TABLES: tuple[np.ndarray, np.ndarray] | None = None


def _tables() -> tuple[np.ndarray, np.ndarray]:
    global _TABLES
    if _TABLES is None:
        _TABLES = srgb_thresholds()
    return _TABLES


def encode_srgb(lin: np.ndarray) -> np.ndarray:
    """float32 linear light (any shape, clamped to [0, 1]) -> uint8 sRGB rounded to nearest, by the kernels' rule."""
    k = _kernels()
    assert k is not None, "encode_srgb without numba: check available() first"
    lin = np.ascontiguousarray(lin, np.float32)
    out = np.empty(lin.shape, np.uint8)
    t, g = _tables()
    k["encode_all"](lin, t, g, out)
    return out


def guided_upsample(img: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """segment.refine's full-resolution step in one pass: clip(A . I + b, 0, 1) at the size of `img` (H, W, 3)
    uint8, A (h, w, C) (C = 1: the brightness guide; 3: colour) and b (h, w) the coefficients at the mask's
    size, upsampled bilinearly on cell centres (across by OpenCV on the h small rows, down in the loop)."""
    import cv2

    k = _kernels()
    assert k is not None, "guided_upsample without numba: check available() first"
    height, width = img.shape[:2]
    h, w = b.shape
    a_rows = cv2.resize(np.ascontiguousarray(a, np.float32), (width, h), interpolation=cv2.INTER_LINEAR).reshape(h, width, -1)
    b_rows = cv2.resize(np.ascontiguousarray(b, np.float32), (width, h), interpolation=cv2.INTER_LINEAR)
    y0, y1, wy = _taps_for(height, width, h, w)[:3]
    out = np.empty((height, width), np.float32)
    if a_rows.shape[2] == 3:
        k["guided_colour"](np.ascontiguousarray(img), a_rows, b_rows, y0, y1, wy, out)
    else:  # the brightness by OpenCV (vector code; the OpenCV implementation's very levels)
        k["guided_gray"](cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), np.ascontiguousarray(a_rows[..., 0]), b_rows, y0, y1, wy, out)
    return out


def lerp_known(fg: np.ndarray, plate: np.ndarray, known: np.ndarray) -> np.ndarray:
    """round(fg + k (plate - fg)) (H, W, 3) uint8, k the low-resolution `known` (h, w) plane in [0, 1]
    upsampled bilinearly on cell centres (across by OpenCV on its h rows, down in the loop)."""
    import cv2

    k = _kernels()
    assert k is not None, "lerp_known without numba: check available() first"
    height, width = fg.shape[:2]
    h, w = known.shape
    k_rows = cv2.resize(np.ascontiguousarray(known, np.float32), (width, h), interpolation=cv2.INTER_LINEAR)
    y0, y1, wy = _taps_for(height, width, h, w)[:3]
    out = np.empty_like(fg)
    k["lerp_known"](np.ascontiguousarray(fg), np.ascontiguousarray(plate), k_rows, y0, y1, wy, out)
    return out


def warp_box(src: np.ndarray, field: np.ndarray, box: tuple[int, int, int, int], mask: np.ndarray | None, a_full: np.ndarray | None,
             plate: np.ndarray | None, out: np.ndarray, warped_mask: np.ndarray | None) -> None:
    """warp.apply inside `box` in one pass (see `numba_loops.warp_box`): `out` and `warped_mask` hold the frame
    and the mask at the frame's size already and are written where the field moves; `field` (2, fh, fw)."""
    import cv2

    k = _kernels()
    assert k is not None, "warp_box without numba: check available() first"
    height, width = src.shape[:2]
    fh, fw = field.shape[1:]
    fx_rows, fy_rows = (cv2.resize(np.ascontiguousarray(field[i], np.float32), (width, fh), interpolation=cv2.INTER_LINEAR) for i in (0, 1))
    y0, y1, wy = _taps_for(height, width, fh, fw)[:3]
    none2 = np.zeros((1, 1), np.float32)
    k["warp_box"](np.ascontiguousarray(src), np.ascontiguousarray(plate) if plate is not None else np.zeros((1, 1, 3), np.uint8),
                  np.ascontiguousarray(mask, np.float32) if mask is not None else none2,
                  np.ascontiguousarray(a_full, np.float32) if a_full is not None else none2, fx_rows, fy_rows, y0, y1, wy,
                  np.asarray(box, np.int64), out, warped_mask if warped_mask is not None else none2)


_WARM: threading.Thread | None = None


def warm_up() -> None:
    """Compile (or load from the disk cache) every kernel on a background thread, once per process: the CPU
    nodes call this when they open, so a kernel first needed mid-stream (the glow switched on live, a field
    appearing) does not compile inside a frame (about a second a kernel on a cold cache)."""
    global _WARM
    if _WARM is not None or not available():
        return
    with _LOCK:
        if _WARM is not None:
            return
        _WARM = threading.Thread(target=_warm, name="muse-numba-warm", daemon=True)
        # `muse bench` and the soak wait for it: on a cold cache (a fresh install, CI) compiling takes tens of
        # seconds of CPU beside the stream, which is not the stream's own cost
        background_work(id(_WARM), "the CPU path's numba kernels")
    _WARM.start()


def _warm() -> None:
    try:
        fg = np.zeros((8, 8, 3), np.uint8)
        a = np.linspace(0.0, 1.0, 64, dtype=np.float32).reshape(8, 8)
        low = np.ones((2, 2, 3), np.float32) * np.float32(0.5)
        for colour, room in ((None, None), ((0.1, 0.2, 0.3), None), (None, low)):
            for wrap in (0.0, 0.3):
                composite_over(fg, a, fg.copy(), 1.5e-4, colour=colour, room=room, wrap=wrap,
                               soft=low if wrap else None, inside=low[..., 0] if wrap else None)
        decoded_mean(fg, 2)
        quadratic_field(np.zeros((3, 6), np.float32), a[0].copy(), a[:, 0].copy(), 0.2, 5.0)
        three = low.repeat(4, 0).repeat(4, 1)
        exposure_change(three, three, 1.0, a, False)
        exposure_change(three, three, 1.0, a, True, a)
        envelope_distance(three, three, three, a > 0.5)
        motion_blend(a, a, a, a, 0.5, 0.9, True, a.copy(), a.copy())
        motion_planes(a.copy(), 0.01, a + 1.0, 0.03)
        taps_mean(np.zeros((4, 4, 4), np.uint8), 2, np.empty((3, 2, 2), np.float32))
        light_weights(three, three, three, a, a)
        lit_plate(three.copy(), three, three)
        for grown in (a, None):
            pp, rel = plate_evidence(a, grown, 0.02, a.copy())
        relative_edge(pp, a, a)
        frame_planes(three, a)
        both_below(a, a, 0.97)
        colour_bins(three, a, a, 2, 16)
        floor_unknown(a.copy(), 0.01, a)
        sample_change(a, three, a, a, three, 1.0, a, a + 1.0)
        divide_clip(a, 0.03)
        for mode in (1, 2):
            learn_plate(a, a, a if mode == 2 else None, a.copy(), mode, a, True, a.copy(), 2.0, three, three if mode == 1 else None,
                        a.copy(), 0.1, a if mode == 2 else None, three.copy())
        guided_solve(np.ones((13, 2, 2), np.float32), 1e-3)
        bounds = (np.array([0, 1]), np.array([1, 2]))
        gain_tiles(three, three, a, 2, bounds, bounds)
        cands = np.zeros(9, np.float32)
        flow_pick(np.zeros((9, 3, 2), np.float32), np.ones((2, 2), np.float32), cands, cands, cands, 3, 1, 4)
        pts = np.arange(2, dtype=np.int64)
        blend_points(fg.copy(), pts, pts, fg[0, :2].copy(), a[0, :2].copy(), a[1, :2].copy(), (1, 1), (0, 8, 0, 8))
        coef = np.zeros((2, 2, 1), np.float32)
        guided_upsample(fg, coef, coef[..., 0])
        guided_upsample(fg, np.zeros((2, 2, 3), np.float32), coef[..., 0])
        lerp_known(fg, fg, coef[..., 0])
        field = np.ones((2, 2, 2), np.float32)
        for mask in (None, a, a[:4, :4].copy()):
            for plate in (None, fg):
                m_full = a if mask is not None else None
                warp_box(fg, field, (0, 8, 0, 8), mask, m_full, plate if mask is not None else None, fg.copy(),
                         a.copy() if mask is not None else None)
        encode_srgb(a)
    except Exception:  # a failure shows again, with its message, where the kernel is really called
        log.debug("numba warm-up", exc_info=True)
    finally:
        background_work(id(threading.current_thread()), None)
