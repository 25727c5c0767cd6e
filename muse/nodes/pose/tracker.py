"""BlazePose detect-then-track on the device, without the node framework (used
by `pose.blazepose`, `pose.vitpose`'s person box and the benchmark): detector
on the letterboxed frame when lost, landmark model on a rotated ROI crop that
follows the person from the previous frame's alignment points.

Everything stays on the device; the only host read is a one-frame-late copy of
the "still tracking" flag (see `HostFlag`), which picks detector or tracker.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from muse.nodes.exposure import brighten
from muse.nodes.landmarks import roi as R
from muse.nodes.landmarks import ssd
from muse.nodes.landmarks.tracking import HostFlag, load_bundled

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
MASK_OUTPUT, WORLD_OUTPUT = 2, 4  # the landmark model's outputs: points, presence, person mask, heatmaps, world points (unused)
NUM_POINTS = 33  # BlazePose-33; the model's 34th/35th points are the tracking ROI's centre and scale
# ROI margin: the 0.10.14 full model's alignment points settle at a radius of ~100/256 of its crop, so its
# training crops were 2 * radius * 1.25 wide; with the 1.5 of older graphs the tracked ROI grows ~15 %/frame.
ROI_SCALE = 1.25


HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5


def refine_from_heatmaps(points: torch.Tensor, heatmaps: torch.Tensor, model_size: int) -> torch.Tensor:
    """MediaPipe's RefineLandmarksFromHeatmap on the device: each point moves to
    the confidence-weighted centre of a 7x7 window of its heatmap (sigmoid of the
    logits) around it, when the window's peak is >= 0.5.

    points (K, 2) in model pixels; heatmaps (1, h, w, K) logits as the model gives
    them. Cells count from 0 with no half-cell shift, as MediaPipe does (checked:
    that convention leaves refined minus regressed near zero on real photos).
    """
    k = points.shape[0]
    logits = heatmaps[0, ..., :k]  # (h, w, K), as the model gives them (no transpose of the whole map)
    h, w = logits.shape[:2]
    r = HEATMAP_KERNEL // 2
    c = _window(h, w, k, float(model_size), points.device)
    # -inf outside the map: zero weight there after the sigmoid, which then runs on the 7x7 windows only
    padded = torch.nn.functional.pad(logits.float(), (0, 0, r, r, r, r), value=-math.inf)
    cell = torch.floor(points * c.per_pixel)  # (K, 2): the heatmap cell (x, y) under each point
    # clamped as integers: a NaN or infinite point becomes some integer, clamped into the map (never an
    # out-of-bounds gather), and is not `inside` (NaN equals nothing)
    clamped = cell.long().clamp(0, w - 1) if w == h else torch.minimum(cell.long().clamp_min(0), c.last)
    inside = (cell == clamped).all(-1)
    corner = (clamped * c.strides).sum(-1) + c.channel  # flat index of each window's first cell
    window = torch.sigmoid(padded.view(-1)[corner[:, None] + c.cells])  # (K, 49)
    total = window.sum(-1, keepdim=True)
    peak = window.amax(-1)
    # the confidence-weighted centre: the centre cell plus the weighted mean of the cells' (dx, dy)
    centre = clamped + (window[:, :, None] * c.dxy).sum(1) / total.clamp(min=1e-9)
    use = inside & (peak >= HEATMAP_MIN_CONFIDENCE)  # a peak >= 0.5 makes the total > 0 too
    return torch.where(use[:, None], centre / c.per_pixel, points)


@dataclass(frozen=True)
class _Window:
    """Constants of `refine_from_heatmaps` for one map shape, made once (no per-frame arange or copies)."""

    per_pixel: torch.Tensor | float  # heatmap cells per model pixel, (x, y)
    last: torch.Tensor  # (w - 1, h - 1), int64
    strides: torch.Tensor  # flat strides of x and y in the padded (h + 2r, w + 2r, K) map, int64
    channel: torch.Tensor  # (K,) each point's own channel
    cells: torch.Tensor  # (49,) flat offsets of a window's cells from its first
    dxy: torch.Tensor  # (49, 2) the cells' offsets (dx, dy) from the centre cell


_WINDOWS: dict[tuple[int, int, int, float, str], _Window] = {}


def _window(h: int, w: int, k: int, model_size: float, device: torch.device) -> _Window:
    key = (h, w, k, model_size, str(device))
    found = _WINDOWS.get(key)
    if found is None:
        r = HEATMAP_KERNEL // 2
        pw = w + 2 * r
        d = torch.arange(-r, r + 1, dtype=torch.float32)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        per_pixel = w / model_size if w == h else torch.tensor([w / model_size, h / model_size], device=device)
        found = _WINDOWS[key] = _Window(
            per_pixel=per_pixel,
            last=torch.tensor([w - 1, h - 1], device=device),
            strides=torch.tensor([k, pw * k], device=device),
            channel=torch.arange(k, device=device),
            cells=(((dy + r) * pw + (dx + r)).reshape(-1).long() * k).to(device),
            dxy=torch.stack([dx, dy], -1).reshape(-1, 2).to(device),
        )
    return found


class BlazePoseTracker:
    """The model work of `pose.blazepose`, usable without a graph (bench, hybrid)."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, *, min_detection: float = 0.5, min_tracking: float = 0.5, predict_motion: bool = True, backend: str = "auto", refine: bool = True, antialias: bool = True, landmarks: bool = True, mask: bool = True, landmark_dtype: torch.dtype = torch.float32, auto_exposure: bool = False) -> None:
        self.name = name
        self.backend = backend
        self.device = device
        self.dtype = dtype
        self.min_tracking = min_tracking
        self.spec = ssd.DetectorSpec(**{**ssd.POSE_DETECTOR.__dict__, "min_score": min_detection})
        # Exact fp32 too: its box seeds every tracked crop, and a TF32/fp16 box moved the arm guesses by
        # 50-80 px three frames later (H100). It runs only when tracking is lost or to confirm (every 30 frames).
        self.detector = load_bundled(name, "pose_detection", device, torch.float32, backend, exact_fp32=True)
        # landmarks=False: only the person detector (ViTPose's person box)
        # The body landmark model drifts with reduced precision (H100, bench/check_pose_precision.py on the
        # astronaut: arms and legs up to 69 px off in fp16 and 82 px in fp32 with TF32 convolutions; exact
        # fp32 matches the CPU within 0.2 px), so it runs in exact fp32. `landmark_dtype` exists for the
        # precision bench only: fp16 through the tracking loop on the H200 (2026-12-01, bench/check_pose_precision.py
        # --sequence 200 at 4K) put visible keypoints a median 164 px (10 % of the body) from exact fp32.
        self.landmark_dtype = landmark_dtype if device.type == "cuda" else torch.float32
        self.mask = mask
        # Dark crops brightened before the models (muse.nodes.exposure): in low light the person mask and the
        # detector's score collapse otherwise (issue 14, twenty-second session)
        self.auto_exposure = auto_exposure
        self.landmarks = self._load_landmarks() if landmarks else None
        self.anchors = ssd.anchors(self.spec).to(device)
        self.tracking = HostFlag(device)
        self.roi: torch.Tensor | None = None
        self.last_roi_seen: torch.Tensor | None = None  # where the person was (before motion prediction)
        self.predict_motion = predict_motion
        self.refine = refine
        self.antialias = antialias
        self.last_points: torch.Tensor | None = None
        self.detector_runs = 0
        self._plan: tuple[bool, bool] | None = None

    def want_mask(self, wanted: bool) -> None:
        """Whether calls give the person mask (`mask_crop`). Without it, the ONNX Runtime landmark model
        leaves out its mask decoder: half its work (720p CPU: 15 -> 7 ms a frame). The torch module
        always computes the mask (its output is then just not used)."""
        from muse.nodes.landmarks.tracking import OrtModel

        if wanted == self.mask or self.landmarks is None:
            return
        self.mask = wanted
        if isinstance(self.landmarks, OrtModel):
            self.landmarks = self._load_landmarks()

    def _load_landmarks(self) -> Any:
        """The body landmark model, without its mask decoder and world points under ONNX Runtime unless `mask`."""
        return load_bundled(self.name, "pose_landmark_full", self.device, self.landmark_dtype, self.backend,
                            exact_fp32=True, drop_outputs=() if self.mask else (MASK_OUTPUT, WORLD_OUTPUT))

    def reset(self) -> None:
        self.tracking.reset()
        self.roi = self.last_roi_seen = None
        self.last_points = None
        self._plan = None

    def plan(self, *, force_detect: bool = False, confirm: bool = False) -> tuple[bool, bool, bool]:
        """The host choice for the next call, from last frame's flag: (tracking, confirm, has state).
        Called before a recorded frame; each answer is one variant of the recording."""
        tracking = self.roi is not None and self.tracking.is_set() and not force_detect
        confirm = confirm and tracking
        self._plan = (tracking, confirm)
        if not tracking or confirm:
            self.detector_runs += 1
        return tracking, confirm, self.roi is not None

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detector on the letterboxed frame -> (ROI (1, 5), score 0-d)."""
        h, w = image.shape[-2:]
        full = R.whole_frame_roi(w, h, image.device)
        taps = R.antialias_taps(max(w, h), DETECTOR_SIZE) if self.antialias else 1
        x = R.crop(image, full, DETECTOR_SIZE, taps=taps)
        if self.auto_exposure:
            x = brighten(x)
        x = x * 2 - 1  # the detector wants [-1, 1]
        raw_boxes, raw_scores = self.detector(x.float())[:2]
        boxes, kps, scores = ssd.decode(raw_boxes[0], raw_scores[0], self.anchors, self.spec)
        _, kp, score = ssd.best_detection(boxes, kps, scores, self.spec)
        kp = R.to_frame(kp[None] * DETECTOR_SIZE, full, DETECTOR_SIZE)[0]
        # keypoint 0 = mid hip, 1 = full-body size and rotation point
        roi = R.aligned_roi(kp[0][None], kp[1][None], 90.0, ROI_SCALE)
        return roi, score

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, *, force_detect: bool = False, confirm: bool = False) -> dict[str, torch.Tensor]:
        """One frame, (3, H, W) float32 in [0, 1] on the device (float32 so ROI
        coordinates keep sub-pixel precision at 4K; the crops go to the model's dtype).

        `confirm` runs the detector as a check while tracking (the crop is kept).
        Returns points (33, 3) in frame pixels (z relative), visibility (33,),
        present (0-d bool), mask_crop (1, 1, 256, 256) and the ROI it lives in.
        """
        if self._plan is None:  # called directly: choose now
            self.plan(force_detect=force_detect, confirm=confirm)
        assert self._plan is not None
        tracking, confirm = self._plan
        self._plan = None
        previous_seen = self.last_roi_seen
        gate: torch.Tensor | None
        if tracking:
            assert self.roi is not None
            roi, gate = self.roi.clone(), None  # the state is overwritten below
            if confirm:
                # The landmark model's presence flag also fires on walls and furniture, so a person
                # who left can stay "tracked": the detector confirms now and then (the crop stays).
                _, score = self.detect(image)
                gate = (score >= self.spec.min_score).float()
        else:
            roi, score = self.detect(image)
            gate = (score >= self.spec.min_score).float()
        # a body crop is about the frame's height
        taps = R.antialias_taps(min(image.shape[-2:]), LANDMARK_SIZE) if self.antialias else 1
        crop = R.crop(image, roi, LANDMARK_SIZE, border="border", taps=taps)  # MediaPipe replicates the edge here (unspecified = replicate)
        if self.auto_exposure:
            crop = brighten(crop)
        out = self.landmarks(crop.to(self.landmark_dtype))
        raw = out[0].reshape(1, -1, 5).float()
        if self.refine and len(out) > 3:
            raw = torch.cat([refine_from_heatmaps(raw[0, :, :2], out[3], LANDMARK_SIZE)[None], raw[..., 2:]], dim=-1)
        presence = out[1].reshape(()).float()  # the flag is already a probability
        if gate is not None:
            presence = presence * gate
        points = R.to_frame(raw[..., :3], roi.float(), float(LANDMARK_SIZE))[0]
        present = presence >= self.min_tracking
        if self.last_points is not None:
            points = torch.where(present, points, self.last_points)  # lost: hold the last good pose
        visibility = torch.sigmoid(raw[0, :NUM_POINTS, 3]) * present
        # The next frame's ROI comes from the model's own alignment points (33 = hip centre, 34 = scale).
        next_roi = R.aligned_roi(points[33, :2][None], points[34, :2][None], 90.0, ROI_SCALE)
        if tracking and self.predict_motion and previous_seen is not None:
            predicted = R.predict(next_roi, previous_seen, present)
        else:
            predicted = next_roi
        # State is updated in place (a recorded frame replays into the same buffers).
        self.last_roi_seen = keep_in_place(self.last_roi_seen, next_roi)
        self.roi = keep_in_place(self.roi, predicted)
        self.last_points = keep_in_place(self.last_points, points)
        self.tracking.publish(present)
        mask_crop = torch.sigmoid(out[2].float()).permute(0, 3, 1, 2) if self.mask and len(out) > 2 and out[2] is not None else None
        return {
            "points": points[:NUM_POINTS],
            "visibility": visibility,
            "present": present,
            "presence": presence,
            "mask_crop": mask_crop,
            "roi": roi.float(),  # a copy when tracking: the state moved on
            "tracked": tracking,
        }


def keep_in_place(state: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
    """`value` written into `state` in place (allocated on first use or a new shape)."""
    if state is None or state.shape != value.shape or state.dtype != value.dtype:
        return value.clone()
    return state.copy_(value)
