"""`pose.blazepose`: MediaPipe's bundled BlazePose (detector + full landmark
model) with detect-then-track: the detector runs only when tracking is lost;
otherwise the landmark model follows the person from the last frame's ROI.

Everything stays on the device; the only host read is a one-frame-late copy of
the "still tracking" flag (see `HostFlag`), which picks detector or tracker.
"""

from __future__ import annotations

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame, Keypoints, Mask
from muse.nodes.landmarks import roi as R
from muse.nodes.landmarks import ssd
from muse.nodes.landmarks.tracking import HostFlag, load_bundled

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_POINTS = 33  # BlazePose-33; the model's 34th/35th points are the tracking ROI's centre and scale
# ROI margin: the 0.10.14 full model's alignment points settle at a radius of ~100/256 of its crop, so its
# training crops were 2 * radius * 1.25 wide; with the 1.5 of older graphs the tracked ROI grows ~15 %/frame.
ROI_SCALE = 1.25


class BlazePoseTracker:
    """The model work of `pose.blazepose`, usable without a graph (bench, hybrid)."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, *, min_detection: float = 0.5, min_tracking: float = 0.5, predict_motion: bool = True) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.min_tracking = min_tracking
        self.spec = ssd.DetectorSpec(**{**ssd.POSE_DETECTOR.__dict__, "min_score": min_detection})
        self.detector = load_bundled(name, "pose_detection", device, dtype)
        self.landmarks = load_bundled(name, "pose_landmark_full", device, dtype)
        self.anchors = ssd.anchors(self.spec).to(device)
        self.tracking = HostFlag(device)
        self.roi: torch.Tensor | None = None
        self.last_roi_seen: torch.Tensor | None = None  # where the person was (before motion prediction)
        self.predict_motion = predict_motion
        self.last_points: torch.Tensor | None = None
        self.detector_runs = 0

    def reset(self) -> None:
        self.tracking.reset()
        self.roi = self.last_roi_seen = None
        self.last_points = None

    @torch.inference_mode()
    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detector on the letterboxed frame -> (ROI (1, 5), score 0-d)."""
        h, w = image.shape[-2:]
        full = R.whole_frame_roi(w, h, image.device)
        x = R.crop(image, full, DETECTOR_SIZE) * 2 - 1  # the detector wants [-1, 1]
        raw_boxes, raw_scores = self.detector(x.to(self.dtype))[:2]
        boxes, kps, scores = ssd.decode(raw_boxes[0], raw_scores[0], self.anchors, self.spec)
        _, kp, score = ssd.best_detection(boxes, kps, scores, self.spec)
        kp = R.to_frame(kp[None] * DETECTOR_SIZE, full, DETECTOR_SIZE)[0]
        # keypoint 0 = mid hip, 1 = full-body size and rotation point
        roi = R.aligned_roi(kp[0][None], kp[1][None], 90.0, ROI_SCALE)
        self.detector_runs += 1
        return roi, score

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, *, force_detect: bool = False) -> dict[str, torch.Tensor]:
        """One frame, (3, H, W) float32 in [0, 1] on the device (float32 so ROI
        coordinates keep sub-pixel precision at 4K; the crops go to the model's dtype).

        Returns points (33, 3) in frame pixels (z relative), visibility (33,),
        present (0-d bool), mask_crop (1, 1, 256, 256) and the ROI it lives in.
        """
        tracking = self.roi is not None and self.tracking.read() and not force_detect
        previous_seen = self.last_roi_seen
        if tracking:
            roi, gate = self.roi, torch.ones((), device=image.device)
        else:
            roi, score = self.detect(image)
            gate = (score >= self.spec.min_score).float()
        crop = R.crop(image, roi, LANDMARK_SIZE, border="border")  # MediaPipe replicates the edge here (unspecified = replicate)
        out = self.landmarks(crop.to(self.dtype))
        raw = out[0].reshape(1, -1, 5).float()
        presence = out[1].reshape(()).float() * gate  # the flag is already a probability
        points = R.to_frame(raw[..., :3], roi.float(), float(LANDMARK_SIZE))[0]
        present = presence >= self.min_tracking
        if self.last_points is not None:
            points = torch.where(present, points, self.last_points)  # lost: hold the last good pose
        visibility = torch.sigmoid(raw[0, :NUM_POINTS, 3]) * present
        # The next frame's ROI comes from the model's own alignment points (33 = hip centre, 34 = scale).
        next_roi = R.aligned_roi(points[33, :2][None], points[34, :2][None], 90.0, ROI_SCALE)
        self.last_roi_seen = next_roi
        if tracking and self.predict_motion and previous_seen is not None:
            next_roi = R.predict(next_roi, previous_seen, present)
        self.roi = next_roi
        self.last_points = points
        self.tracking.publish(present)
        mask_crop = torch.sigmoid(out[2].float()).permute(0, 3, 1, 2) if len(out) > 2 else None
        return {
            "points": points[:NUM_POINTS],
            "visibility": visibility,
            "present": present,
            "presence": presence,
            "mask_crop": mask_crop,
            "roi": roi.float(),
            "tracked": tracking,
        }


class BlazePose(Node):
    node_type = "pose.blazepose"
    display_name = "Pose (BlazePose)"
    description = "33 body keypoints with visibility from the bundled MediaPipe pose models; detector only when tracking is lost; optional person mask."

    frame: In[Frame]
    keypoints: Out[Keypoints]
    mask: Out[Mask]

    class Params(NodeParams):
        min_detection: float = Field(0.5, ge=0.0, le=1.0, description="Detector score needed to start tracking a person")
        min_tracking: float = Field(0.5, ge=0.0, le=1.0, description="Landmark presence below which the person counts as lost (detector runs next frame)")
        redetect_every: int = Field(0, ge=0, le=10_000, description="Run the detector every N frames even while tracking; 0 = only when lost")
        mask_size: int = Field(512, ge=64, le=4096, description="Long side in pixels of the person mask output (0-1 alpha over the whole frame)")
        predict_motion: bool = Field(True, description="Move the tracking crop by the last frame's motion (keeps up with fast moves)")

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self.tracker = BlazePoseTracker(self.name, ctx.device, ctx.dtype, min_detection=p.min_detection, min_tracking=p.min_tracking, predict_motion=p.predict_motion)
        self._frames = 0

    def update_params(self, params: NodeParams) -> bool:
        self.params = params
        if getattr(self, "tracker", None) is not None:
            self.tracker.min_tracking = params.min_tracking  # type: ignore[attr-defined]
            self.tracker.predict_motion = params.predict_motion  # type: ignore[attr-defined]
            self.tracker.spec = ssd.DetectorSpec(**{**ssd.POSE_DETECTOR.__dict__, "min_score": params.min_detection})  # type: ignore[attr-defined]
        return True

    def process(self, frame: Frame) -> dict[str, Keypoints | Mask]:
        assert self.ctx is not None
        p = self.params
        force = bool(p.redetect_every) and self._frames % p.redetect_every == 0
        self._frames += 1
        r = self.tracker(frame.chw(torch.float32), force_detect=force)
        keypoints = Keypoints(
            points=r["points"][:, :2].contiguous(),
            confidence=r["visibility"],
            skeleton="blazepose33",
            image_size=frame.size,
            timestamp=frame.timestamp,
            index=frame.index,
        )
        scale = p.mask_size / max(frame.width, frame.height)
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        alpha = R.uncrop(r["mask_crop"], r["roi"], frame.size, size)[0, 0] * r["present"]
        return {"keypoints": keypoints, "mask": Mask(alpha, frame.timestamp, frame.index)}
