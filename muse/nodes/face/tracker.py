"""Face mesh detect-then-track on the device, without the node framework (used
by `face.landmarks` and the benchmark): face detector (or body pose) seeds a
rotated crop, the 468-point mesh model runs on it, the iris model refines both
eyes, and the next frame's crop comes from this frame's mesh.

The only host read is the one-frame-late "still tracking" flag (`HostFlag`).
"""

from __future__ import annotations

import torch

from muse.graph.payloads import Keypoints
from muse.nodes.face import regions as REG
from muse.nodes.landmarks import roi as R
from muse.nodes.landmarks import ssd
from muse.nodes.landmarks.tracking import HostFlag, load_bundled
from muse.nodes.pose.tracker import keep_in_place

DETECTOR_SIZE = 128
MESH_SIZE = 192
IRIS_SIZE = 64
FACE_SCALE = 1.5  # MediaPipe's margin around the face box for the mesh model
IRIS_SCALE = 2.3  # and around the eye corners for the iris model


class FaceTracker:
    """The model work of `face.landmarks`, usable without a graph (bench)."""

    def __init__(self, name: str, device: torch.device, dtype: torch.dtype, *, min_detection: float = 0.5, min_tracking: float = 0.5, iris: bool = True, predict_motion: bool = True, backend: str = "auto", antialias: bool = True) -> None:
        self.name = name
        self.device = device
        self.dtype = dtype
        self.min_tracking = min_tracking
        self.iris = iris
        self.spec = ssd.DetectorSpec(**{**ssd.FACE_DETECTOR.__dict__, "min_score": min_detection})
        self.detector = load_bundled(name, "face_detection_short_range", device, dtype, backend)
        self.mesh = load_bundled(name, "face_landmark", device, dtype, backend)
        # Only the iris points are read: ONNX Runtime leaves the eye-contour head (output 0) out (-8 % a call)
        self.iris_model = load_bundled(name, "iris_landmark", device, dtype, backend, drop_outputs=(0,)) if iris else None
        self.anchors = ssd.anchors(self.spec).to(device)
        self.tracking = HostFlag(device)
        self.roi: torch.Tensor | None = None
        self.last_roi_seen: torch.Tensor | None = None  # where the face was (before motion prediction)
        self.predict_motion = predict_motion
        self.antialias = antialias
        self.last_points: torch.Tensor | None = None
        self.flip = torch.tensor([False, True], device=device)  # the iris model knows one eye; mirror the other
        # index tensors live on the device: indexing with a Python list would copy it over every frame
        self.eye_corners = torch.tensor([REG.RIGHT_EYE_CORNERS, REG.LEFT_EYE_CORNERS], device=device)
        self.detector_runs = 0
        self._plan: bool | None = None

    def reset(self) -> None:
        self.tracking.reset()
        self.roi = self.last_roi_seen = None
        self.last_points = None
        self._plan = None

    def plan(self, *, force_detect: bool = False, seeded_by_pose: bool = False) -> tuple[bool, bool]:
        """The host choice for the next call, from last frame's flag: (tracking, has state)."""
        tracking = self.roi is not None and self.tracking.is_set() and not force_detect
        self._plan = tracking
        if not tracking and not seeded_by_pose:
            self.detector_runs += 1
        return tracking, self.roi is not None

    def detect(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Face detector on the letterboxed frame -> (ROI (1, 5), score 0-d, box (4,) in frame pixels)."""
        h, w = image.shape[-2:]
        full = R.whole_frame_roi(w, h, image.device)
        taps = R.antialias_taps(max(w, h), DETECTOR_SIZE) if self.antialias else 1
        x = R.crop(image, full, DETECTOR_SIZE, taps=taps) * 2 - 1  # the detector wants [-1, 1]
        raw_boxes, raw_scores = self.detector(x.to(self.dtype))[:2]
        boxes, kps, scores = ssd.decode(raw_boxes[0], raw_scores[0], self.anchors, self.spec)
        box, kp, score = ssd.best_detection(boxes, kps, scores, self.spec)
        kp = R.to_frame(kp[None] * DETECTOR_SIZE, full, DETECTOR_SIZE)[0]
        corners = R.to_frame(box.reshape(1, 2, 2) * DETECTOR_SIZE, full, DETECTOR_SIZE)[0]
        centre, size = corners.mean(0), corners[1] - corners[0]
        # keypoints 0 and 1 are the person's right and left eye: they level the crop
        angle = R.rotation_towards(kp[0], kp[1], 0.0)
        roi = R.square_roi(centre[0:1], centre[1:2], size[0:1], size[1:2], angle[None], FACE_SCALE)
        return roi, score, corners.reshape(4)

    def seed_from_pose(self, pose: Keypoints) -> tuple[torch.Tensor, torch.Tensor]:
        """A face ROI from body keypoints (eyes, nose, ears), for faces too small
        or too turned for the short-range detector. Returns (ROI, confidence)."""
        from muse.nodes.pose.skeletons import index_of

        p = pose.points.float().to(self.device)
        c = pose.confidence.float().to(self.device)
        at = lambda n: index_of(pose.skeleton, n)  # noqa: E731
        eye_l, eye_r, nose = p[at("left_eye")], p[at("right_eye")], p[at("nose")]
        ears = torch.linalg.vector_norm(p[at("left_ear")] - p[at("right_ear")])
        side = torch.maximum(3.3 * torch.linalg.vector_norm(eye_l - eye_r), 1.7 * ears)
        angle = R.rotation_towards(eye_r, eye_l, 0.0)
        roi = torch.stack([nose[0], nose[1], side, side, angle])[None]
        conf = torch.stack([c[at("left_eye")], c[at("right_eye")], c[at("nose")]]).amin()
        return roi, conf

    def _mesh(self, image: torch.Tensor, roi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a streamer's face crop is about a third of the frame's height
        taps = R.antialias_taps(min(image.shape[-2:]) / 3, MESH_SIZE) if self.antialias else 1
        crop = R.crop(image, roi, MESH_SIZE, border="border", taps=taps)  # [0, 1], replicated border
        raw, flag = self.mesh(crop.to(self.dtype))[:2]
        points = R.to_frame(raw.reshape(1, -1, 3), roi, float(MESH_SIZE))[0]
        return points, torch.sigmoid(flag.reshape(()).float())

    def _irises(self, image: torch.Tensor, mesh: torch.Tensor) -> torch.Tensor:
        """(10, 3): right iris (centre + 4) then left iris, in frame pixels."""
        assert self.iris_model is not None
        eyes = mesh[self.eye_corners, :2]  # (2 eyes, 2 corners, 2)
        rois = R.box_roi(eyes, 0, 1, 0.0, IRIS_SCALE)
        taps = R.antialias_taps(min(image.shape[-2:]) / 10, IRIS_SIZE) if self.antialias else 1  # an eye crop ~ 1/10
        crops = R.crop(image, rois, IRIS_SIZE, border="border", flip=self.flip, taps=taps)
        out = self.iris_model(crops.to(self.dtype))
        iris = R.to_frame(out[1].reshape(2, 5, 3), rois, float(IRIS_SIZE), flip=self.flip)
        depth = mesh[self.eye_corners, 2].mean(-1)
        iris = torch.cat([iris[..., :2], iris[..., 2:] + depth[:, None, None]], dim=-1)  # iris depth is relative to its eye
        return iris.reshape(10, 3)

    @torch.inference_mode()
    def __call__(self, image: torch.Tensor, pose: Keypoints | None = None, *, force_detect: bool = False) -> dict[str, torch.Tensor | bool]:
        """One frame, (3, H, W) float32 in [0, 1]. Returns points (478 or 468, 3)
        in frame pixels, confidence (0-d), box (4,), present (0-d bool)."""
        if self._plan is None:  # called directly: choose now
            self.plan(force_detect=force_detect, seeded_by_pose=pose is not None)
        tracking, self._plan = bool(self._plan), None
        gate: torch.Tensor | None
        if tracking:
            assert self.roi is not None
            roi, gate = self.roi.clone(), None  # the state is overwritten below
        else:
            if pose is not None:
                roi, seed = self.seed_from_pose(pose)
                gate = (seed >= 0.5).float()
            else:
                roi, score, _ = self.detect(image)
                gate = (score >= self.spec.min_score).float()
            # A seed crop is rough: one mesh pass to recentre it, as tracking would next frame.
            points, _ = self._mesh(image, roi)
            roi = R.box_roi(points[None], REG.RIGHT_EYE_CORNERS[0], REG.LEFT_EYE_CORNERS[1], 0.0, FACE_SCALE)
        points, presence = self._mesh(image, roi)
        if gate is not None:
            presence = presence * gate
        present = presence >= self.min_tracking
        if self.iris_model is not None:
            points = torch.cat([points, self._irises(image, points)])
        if self.last_points is not None and self.last_points.shape == points.shape:
            points = torch.where(present, points, self.last_points)  # lost: hold the last good face
        seen = R.box_roi(points[None, : REG.MESH_POINTS], REG.RIGHT_EYE_CORNERS[0], REG.LEFT_EYE_CORNERS[1], 0.0, FACE_SCALE)
        next_roi = seen
        if tracking and self.predict_motion and self.last_roi_seen is not None:
            next_roi = R.predict(seen, self.last_roi_seen, present)
        # State is updated in place (a recorded frame replays into the same buffers).
        self.last_roi_seen = keep_in_place(self.last_roi_seen, seen)
        self.roi = keep_in_place(self.roi, next_roi)
        self.last_points = keep_in_place(self.last_points, points)
        self.tracking.publish(present)
        box = torch.cat(torch.aminmax(points[: REG.MESH_POINTS, :2], dim=0))
        return {"points": points, "confidence": presence, "box": box, "present": present, "roi": roi, "tracked": tracking}
