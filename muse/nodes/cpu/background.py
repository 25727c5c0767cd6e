"""CPU `background.adaptive`: the clean plate, with the per-frame bookkeeping at block
resolution and the full-resolution plate update only every Nth frame.

Why this is the same plate: with a wide safety margin (>= 8 px, the default 3% of the
height is 22 px at 720p) the torch path dilates the mask on 4x4 blocks and upsamples it
nearest, so "person here", "clear for n frames" and "seen" are constant on 4x4 blocks;
they are kept at that resolution here, every frame, exactly. Only the plate itself (the
room's pixels) needs full resolution. It drifts with a 3 s time constant, so it is
updated every N-th frame (about 10 times a second) with the rate of N frames compounded
(exact while the room is still) and its uint8 picture is reused in between; blocks seen
for the first time are still taken on the frame they clear, as on the torch path. The coverage
output is the block plane itself (consumers sample it at their size).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import as_numpy

__all__ = ["BackgroundCPU", "UPDATE_HZ"]

UPDATE_HZ = 10.0  # full-resolution plate updates per second (at most one per frame)
_UNIT = (np.arange(256, dtype=np.float32) / 255.0).astype(np.float32)


def _block_max(alpha: np.ndarray, step: int) -> np.ndarray:
    """max_pool2d(step, stride=step, ceil_mode=True) of a [0, 1] plane (zero padding cannot win a max)."""
    h, w = alpha.shape
    hq, wq = -(-h // step), -(-w // step)
    if (hq * step, wq * step) == (h, w):  # OpenCV's max filter over each block's corner, then the corners
        return np.ascontiguousarray(cv2.dilate(alpha, np.ones((step, step), np.uint8), anchor=(0, 0))[::step, ::step])
    alpha = np.pad(alpha, ((0, hq * step - h), (0, wq * step - w)))
    rows = np.maximum.reduce([alpha[i::step] for i in range(step)])
    return np.maximum.reduce([rows[:, i::step] for i in range(step)])


def _expand(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest upsampling, torch's index rule floor(i * in / out) (OpenCV's INTER_NEAREST is the same)."""
    if plane.shape == (height, width):
        return plane
    return cv2.resize(plane, (width, height), interpolation=cv2.INTER_NEAREST)


def _pool(x: np.ndarray, k: int) -> np.ndarray:
    """avg_pool2d(k, ceil_mode=True): the last window is partial and averages only what it covers."""
    h, w = x.shape[:2]
    hq, wq = -(-h // k), -(-w // k)
    if (hq * k, wq * k) == (h, w):
        return cv2.resize(x, (wq, hq), interpolation=cv2.INTER_AREA)
    pad = ((0, hq * k - h), (0, wq * k - w)) + (((0, 0),) if x.ndim == 3 else ())
    s = cv2.resize(np.pad(x, pad), (wq, hq), interpolation=cv2.INTER_AREA)
    n = cv2.resize(np.pad(np.ones((h, w), np.float32), pad[:2]), (wq, hq), interpolation=cv2.INTER_AREA)
    return s / (n[..., None] if x.ndim == 3 else n)


def fill_low(plate: np.ndarray, known: np.ndarray, levels: int = 7, known_blocks: np.ndarray | None = None,
             plate_blocks: np.ndarray | None = None) -> np.ndarray:
    """`background.fill_unknown` before its final upsample: the pull-push fill at quarter resolution,
    from (H, W, 3) float32 + (H, W) float32. `known_blocks`: `known` on the 4x4 blocks when it is
    constant on them and they tile the frame; then the quarter-resolution sums come from the plate's
    block means times it (the same values, without two full-resolution passes); `plate_blocks`: those
    block means when the caller has them."""
    if known_blocks is not None:
        den = known_blocks
        num = (_pool(plate, 4) if plate_blocks is None else plate_blocks) * den[..., None]
    else:
        num = _pool(plate * known[..., None], 4)
        den = _pool(known, 4)
    pyramid = [(num, den)]
    for _ in range(levels):
        if min(num.shape[:2]) < 4:
            break
        num, den = _pool(num, 2), _pool(den, 2)
        pyramid.append((num, den))
    fill = num / np.maximum(den, 1e-6)[..., None]
    for num, den in reversed(pyramid[:-1]):
        up = cv2.resize(fill, (num.shape[1], num.shape[0]), interpolation=cv2.INTER_LINEAR)
        fill = num + (1 - den)[..., None] * up
    return fill


def fill_unknown(plate: np.ndarray, known: np.ndarray, levels: int = 7) -> np.ndarray:
    """`background.fill_unknown` (pull-push at quarter resolution) on (H, W, 3) float32 + (H, W) float32."""
    return cv2.resize(fill_low(plate, known, levels), (plate.shape[1], plate.shape[0]), interpolation=cv2.INTER_LINEAR)


def upsample_box(low: np.ndarray, height: int, width: int, box: tuple[int, int, int, int]) -> np.ndarray:
    """`cv2.resize(low, (width, height), INTER_LINEAR)[y0:y1, x0:x1]` (bilinear on cell centres, edges
    clamped): where the frame is a whole multiple of `low`, only the cells around the box (one cell of
    margin, so no clamped edge reaches inside) are resized, which gives the same taps."""
    y0, y1, x0, x1 = box
    h, w = low.shape[:2]
    if height % h or width % w:
        return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)[y0:y1, x0:x1]
    sy, sx = height // h, width // w
    c0, c1 = max(0, y0 // sy - 1), min(h, -(-y1 // sy) + 1)
    k0, k1 = max(0, x0 // sx - 1), min(w, -(-x1 // sx) + 1)
    part = cv2.resize(np.ascontiguousarray(low[c0:c1, k0:k1]), ((k1 - k0) * sx, (c1 - c0) * sy), interpolation=cv2.INTER_LINEAR)
    return part[y0 - c0 * sy : y1 - c0 * sy, x0 - k0 * sx : x1 - k0 * sx]


class BackgroundCPU:
    def __init__(self, node) -> None:
        self.node = node
        self.plate: np.ndarray | None = None  # (H, W, 3) float32 sRGB values in [0, 1]
        self._since = 0  # frames since the last full-resolution update

    def reset(self) -> None:
        self.plate = None

    def _init(self, height: int, width: int, start: torch.Tensor | None) -> None:
        from muse.nodes.background import fit_image

        p = self.node.params
        radius = max(0, round(p.margin * height))
        self.step = 4 if radius >= 8 else 1  # the torch path's dilation grid
        self.radius_q = -(-radius // self.step) if self.step > 1 else radius
        hq, wq = -(-height // self.step), -(-width // self.step)
        self.occupied = np.zeros((hq, wq), bool)
        self.clear_for = np.full((hq, wq), p.settle_frames, np.int16)
        if start is not None:
            img = fit_image(start.permute(2, 0, 1).float() / 255.0, height, width)
            self.plate = np.ascontiguousarray(img.permute(1, 2, 0).numpy(), np.float32)
            self.known = np.ones((hq, wq), np.float32)
        else:
            self.plate = np.zeros((height, width, 3), np.float32)
            self.known = np.zeros((hq, wq), np.float32)
        self._since = 10**9  # the first frame updates
        self._out: tuple[torch.Tensor, torch.Tensor] | None = None
        self._plate_q: np.ndarray | None = None  # the plate's block means, kept with it (None: to recompute)
        self._updates = 0

    # the plate's 4x4 block means are kept beside it (scaled and stepped with it), taken afresh from the
    # plate every REFRESH updates and after anything else wrote into it: two full-resolution passes
    # (3 ms) less an update; the gain and the fill read them
    REFRESH = 64

    def _block_means(self, img: np.ndarray) -> np.ndarray:
        hq, wq = self.known.shape
        return cv2.resize(img, (wq, hq), interpolation=cv2.INTER_AREA)

    def _plate_means(self, plate: np.ndarray) -> np.ndarray:
        if self._plate_q is None:
            self._plate_q = self._block_means(plate)
        return self._plate_q

    def process(self, frame: Frame, mask: Mask, recorded: Frame | None = None) -> dict[str, object]:
        node, p, ctx = self.node, self.node.params, self.node.ctx
        height, width = frame.height, frame.width
        if recorded is not None and id(recorded.image) != node._recorded_id:
            node._recorded_id = id(recorded.image)
            self._init(height, width, recorded.hwc_uint8())
        elif self.plate is None or self.plate.shape[:2] != (height, width):
            self._init(height, width, node._file_plate)

        # every frame, at block resolution: where the person is (with the margin), how long each block is clear
        alpha = as_numpy(mask.alpha.float())
        if alpha.shape != (height, width):
            alpha = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_LINEAR)
        near = _block_max(alpha, self.step) if self.step > 1 else alpha
        if self.radius_q > 0:
            k = 2 * self.radius_q + 1
            near = cv2.dilate(near, np.ones((k, k), np.uint8))
        self.occupied = np.where(near > p.person_on, True, np.where(near < p.person_off, False, self.occupied))
        self.clear_for = np.where(self.occupied, 0, np.minimum(self.clear_for + 1, 10_000)).astype(np.int16)

        fps = ctx.fps
        every = max(1, round(fps / UPDATE_HZ))
        self._since += 1
        if self._since >= every or self._out is None:
            self._update(frame, min(self._since, every), fps)
            self._since = 0
        else:
            self._learn_new(frame)
        assert self._out is not None  # _update ran on the first frame
        plate_u8, coverage = self._out
        return {
            "plate": Frame(plate_u8, timestamp=frame.timestamp, index=frame.index, layout="hwc"),
            "coverage": Mask(coverage, frame.timestamp, frame.index),
        }

    def _learn_new(self, frame: Frame) -> None:
        """Never-seen blocks that just became clear are taken at once, every frame (as the torch path
        does): deferring them to the next update would learn them from a later frame."""
        new_q = (self.clear_for >= self.node.params.settle_frames) & (self.known == 0)
        if not new_q.any():
            return
        assert self.plate is not None and self._out is not None
        height, width = frame.height, frame.width
        m = _expand(new_q.astype(np.uint8), height, width)
        src = as_numpy(frame.hwc_uint8())
        # only the pixels of the new blocks' bounding box are converted (a whole 720p frame through the table
        # every frame a block clears: 1.5-3 ms; block r holds the pixels i with floor(i hq / height) = r)
        hq, wq = new_q.shape
        rows, cols = np.flatnonzero(new_q.any(1)), np.flatnonzero(new_q.any(0))
        y0, y1 = -(-int(rows[0]) * height // hq), -(-(int(rows[-1]) + 1) * height // hq)
        x0, x1 = -(-int(cols[0]) * width // wq), -(-(int(cols[-1]) + 1) * width // wq)
        box = (slice(y0, y1), slice(x0, x1))
        cv2.copyTo(cv2.LUT(src[box], _UNIT), m[box], self.plate[box])
        self._plate_q = None  # some blocks changed: their means are taken afresh at the next update
        out = self._out[0].numpy().copy()  # the last picture may still be read downstream: a new one
        cv2.copyTo(src[box], m[box], out[box])
        self.known = np.maximum(self.known, new_q.astype(np.float32))
        self._out = (torch.from_numpy(out), torch.from_numpy(self.known.copy()))  # coverage on blocks, as on the GPU

    def _update(self, frame: Frame, n: int, fps: float) -> None:
        """n frames' worth of the torch path's update, at full resolution."""
        p = self.node.params
        height, width = frame.height, frame.width
        plate = self.plate
        assert plate is not None
        img = cv2.LUT(as_numpy(frame.hwc_uint8()), _UNIT)
        clear_q = (self.clear_for >= p.settle_frames).astype(np.float32)
        self._updates += 1
        if self._updates % self.REFRESH == 0:
            self._plate_q = None  # taken afresh from the plate now and then: no drift of float rounding
        tiled = self.step > 1 and (clear_q.shape[0] * self.step, clear_q.shape[1] * self.step) == (height, width)
        img_q = self._block_means(img) if tiled else None
        if p.follow_exposure:
            # w = clear * known is constant on blocks: the sums come from block means, exactly
            w = clear_q * self.known
            if img_q is not None:  # sums from block means
                plate_q = self._plate_means(plate)
                wsum = float(w.sum()) * self.step * self.step
            else:  # blocks do not tile the frame (or no blocks): the sums at full resolution
                plate_q, w = plate, _expand(w, height, width)
                wsum = float(w.sum())
            if wsum > 0.02 * height * width:
                # the weighted channel sums as one matrix product each (numpy's multiply-and-sum over two
                # axes cost 1.7 ms at 320x180 blocks)
                dt = np.float64 if img_q is not None else np.float32  # (full-resolution sums: no float64 copies)
                wv = w.reshape(-1).astype(dt)
                num = (wv @ (img if img_q is None else img_q).reshape(-1, 3).astype(dt)).astype(np.float64)
                den = (wv @ plate_q.reshape(-1, 3).astype(dt)).astype(np.float64)
                gain = np.clip(num / np.maximum(den, 1e-6), 0.5, 2.0)
                g_rate = 1.0 - math.exp(-1.0 / max(1e-3, fps * p.exposure_seconds))
                factor = (1 + g_rate * (gain - 1)) ** n
                cv2.multiply(plate, tuple(float(v) for v in factor) + (0.0,), dst=plate)
                if self._plate_q is not None:  # the means scale with the plate (a per-channel gain is linear)
                    cv2.multiply(self._plate_q, tuple(float(v) for v in factor) + (0.0,), dst=self._plate_q)
        rate = 1.0 - math.exp(-1.0 / max(1e-3, fps * p.adapt_seconds))
        rate_n = 1.0 - (1.0 - rate) ** n  # n still frames in one step
        # the step is rate_n on clear blocks seen before and 1 on clear blocks seen for the first time:
        # one masked running average and one masked copy (no full-size step planes)
        clear = clear_q > 0
        for blocks, take in ((clear & (self.known > 0), False), (clear & (self.known <= 0), True)):
            if blocks.any():
                m = _expand(blocks.view(np.uint8), height, width)
                if take:
                    cv2.copyTo(img, m, plate)
                else:
                    cv2.accumulateWeighted(img, plate, rate_n, mask=m)
                if self._plate_q is not None and img_q is not None:
                    # the same step on the block means: the mask is constant on blocks, so a block's mean
                    # moves exactly as its pixels do (float rounding aside)
                    bm = blocks.view(np.uint8)
                    if take:
                        cv2.copyTo(img_q, bm, self._plate_q)
                    else:
                        cv2.accumulateWeighted(img_q, self._plate_q, rate_n, mask=bm)
        self.known = np.maximum(self.known, clear_q)
        out = cv2.convertScaleAbs(plate, alpha=255.0)  # rounds and clamps to 0..255
        unknown_q = self.known <= 0
        if unknown_q.any():
            # the pull-push fill, shown only where the room was never seen: computed at quarter resolution
            # and upsampled only over the unseen blocks' bounding box (the same values as the whole plane)
            tiled = self.step == 4 and (self.known.shape[0] * 4, self.known.shape[1] * 4) == (height, width)
            low = fill_low(plate, _expand(self.known, height, width) if not tiled else None,
                           known_blocks=self.known if tiled else None, plate_blocks=self._plate_means(plate) if tiled else None)
            rows = np.flatnonzero(unknown_q.any(axis=1))
            cols = np.flatnonzero(unknown_q.any(axis=0))
            s_ = self.step
            box = (int(rows[0]) * s_, min(height, (int(rows[-1]) + 1) * s_), int(cols[0]) * s_, min(width, (int(cols[-1]) + 1) * s_))
            y0, y1, x0, x1 = box
            fill = cv2.convertScaleAbs(upsample_box(low, height, width, box), alpha=255.0)
            gap = _expand(unknown_q.astype(np.uint8), height, width)[y0:y1, x0:x1]
            cv2.copyTo(fill, gap, out[y0:y1, x0:x1])
        self._out = (torch.from_numpy(out), torch.from_numpy(self.known.copy()))  # coverage on blocks, as on the GPU
