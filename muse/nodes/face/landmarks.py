"""`face.landmarks`: bundled MediaPipe face detector + 468-point face mesh +
iris refinement (478 points), tracked between frames like the pose: the next
frame's crop comes from this frame's mesh; the detector (or the body pose, if
connected) only seeds the track when it is lost.

Output `FaceLandmarks` carries named regions (see `regions.py`). Its
`confidence` (0-d) and `box` (4,) are device tensors so no frame waits on the
GPU; the only host read is the one-frame-late "still tracking" flag.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from muse.nodes.landmarks.tracking import TrackerInput
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import FaceLandmarks, Frame, Keypoints
from muse.nodes.cpu import wanted
from muse.nodes.face import regions as REG
from muse.nodes.face.tracker import FaceTracker
from muse.nodes.landmarks import ssd


def _tensor(value: torch.Tensor | bool) -> torch.Tensor:
    """A tracker result that is a tensor (the tracker's dict also holds plain flags)."""
    assert isinstance(value, torch.Tensor)
    return value


class FaceLandmarksNode(TrackerInput, Node):
    _model = "mesh"
    node_type = "face.landmarks"
    capturable = True
    display_name = "Face landmarks"
    description = "468-point face mesh + iris (478 points) with named regions, tracked between frames; seeded by the face detector or by body keypoints."

    frame: In[Frame]
    pose: In[Keypoints] = In(optional=True, description="Body keypoints: seed the face from the head (small or turned faces)")
    face: Out[FaceLandmarks]

    class Params(NodeParams):
        iris: bool = Field(True, description="Refine with the iris model: adds left_iris/right_iris (10 points)")
        seed: Literal["auto", "detector", "pose"] = Field("auto", description="What finds the face when tracking is lost: auto = pose if connected, else the face detector")
        min_detection: float = Field(0.5, ge=0.0, le=1.0, description="Face detector score needed to start tracking")
        min_tracking: float = Field(0.5, ge=0.0, le=1.0, description="Face presence below which the face counts as lost")
        redetect_every: int = Field(0, ge=0, le=10_000, description="Re-seed every N frames even while tracking; 0 = only when lost")
        predict_motion: bool = Field(True, description="Move the tracking crop by the last frame's motion (keeps up with fast head moves)")
        antialias: bool = Field(True, description="Box-filter big crops (a 4K body to 256 px) instead of plain bilinear sampling")
        backend: Literal["auto", "torch", "onnxruntime"] = Field("auto", description="auto = torch on a GPU, ONNX Runtime on the CPU (faster there)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._uint8 = wanted(ctx)  # issue 13: crops from the uint8 frame on the CPU path
        p = self.params
        self.tracker = FaceTracker(self.name, ctx.device, ctx.dtype, min_detection=p.min_detection, min_tracking=p.min_tracking, iris=p.iris, predict_motion=p.predict_motion, backend=p.backend, antialias=p.antialias)
        self.regions = REG.face_regions(p.iris)
        self._frames = 0

    def update_params(self, params: Params) -> bool:
        if params.iris != self.params.iris or params.backend != self.params.backend:
            return False  # other models to load: rebuild
        self.params = params
        if getattr(self, "tracker", None) is not None:
            self.tracker.min_tracking = params.min_tracking
            self.tracker.predict_motion = params.predict_motion
            self.tracker.antialias = params.antialias
            self.tracker.spec = ssd.DetectorSpec(**{**ssd.FACE_DETECTOR.__dict__, "min_score": params.min_detection})
        return True

    def frame_variant(self, seeded_by_pose: bool | None = None) -> tuple[bool, bool]:
        p = self.params
        force = bool(p.redetect_every) and self._frames % p.redetect_every == 0
        self._frames += 1
        self._planned = True
        if seeded_by_pose is None:
            seeded_by_pose = p.seed in ("auto", "pose")
        return self.tracker.plan(force_detect=force, seeded_by_pose=seeded_by_pose)

    def process(self, frame: Frame, pose: Keypoints | None = None) -> dict[str, FaceLandmarks]:
        p = self.params
        if p.seed == "pose" and pose is None:
            raise NodeError(f"node {self.name!r}: seed is 'pose' but the `pose` input is not connected; connect a pose node's keypoints or set seed: auto")
        use_pose = pose if p.seed in ("auto", "pose") else None
        if not getattr(self, "_planned", False):  # called directly, not by the runtime
            self.frame_variant(seeded_by_pose=use_pose is not None)
        self._planned = False
        r = self.tracker(self._picture(frame), use_pose)
        face = FaceLandmarks(
            points=r["points"],
            confidence=r["confidence"],  # 0-d device tensor: no sync here
            regions=self.regions,
            image_size=frame.size,
            box=_tensor(r["box"]),  # (4,) device tensor x0, y0, x1, y1
            timestamp=frame.timestamp,
            index=frame.index,
        )
        return {"face": face}
