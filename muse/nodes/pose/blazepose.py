"""`pose.blazepose`: MediaPipe's bundled BlazePose (detector + full landmark
model) with detect-then-track: the detector runs only when tracking is lost;
otherwise the landmark model follows the person from the last frame's ROI.

The model work lives in `tracker.py` (no framework imports, so benchmarks can
use it); this module is the node: params, payloads, the person mask output.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from muse.nodes.landmarks.tracking import TrackerInput
from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame, Keypoints, Mask
from muse.nodes.cpu import unread, wanted
from muse.nodes.landmarks import roi as R
from muse.nodes.landmarks import ssd
from muse.nodes.pose.tracker import BlazePoseTracker  # noqa: F401  (re-exported)


class BlazePose(TrackerInput, Node):
    _model = "landmarks"
    node_type = "pose.blazepose"
    capturable = True
    display_name = "Pose (BlazePose)"
    description = "33 body keypoints with visibility from the bundled MediaPipe pose models; detector only when tracking is lost; optional person mask."

    frame: In[Frame]
    keypoints: Out[Keypoints]
    keypoints3d: Out[Keypoints] = Out(description="The same keypoints with depth: points (33, 3), z relative to the hips in pixels (same scale as x; smaller = nearer the camera)")
    mask: Out[Mask] = Out(description="The tracked person's mask over the whole frame, with `coverage`: where the landmark model's crop looked (0 elsewhere and while nobody is tracked)")

    class Params(NodeParams):
        min_detection: float = Field(0.5, ge=0.0, le=1.0, description="Detector score needed to start tracking a person")
        min_tracking: float = Field(0.5, ge=0.0, le=1.0, description="Landmark presence below which the person counts as lost (detector runs next frame)")
        redetect_every: int = Field(0, ge=0, le=10_000, description="Restart from the detector every N frames even while tracking; 0 = only when lost")
        confirm_every: int = Field(30, ge=0, le=10_000, description="While tracking, check with the detector every N frames that a person is still there (the crop is kept); 0 = never")
        mask_size: int = Field(512, ge=64, le=4096, description="Long side in pixels of the person mask output (0-1 alpha over the whole frame)")
        predict_motion: bool = Field(True, description="Move the tracking crop by the last frame's motion (keeps up with fast moves)")
        refine: bool = Field(True, description="Refine keypoints with the model's heatmaps (MediaPipe does; slightly more precise)")
        antialias: bool = Field(True, description="Box-filter big crops (a 4K body to 256 px) instead of plain bilinear sampling")
        backend: Literal["auto", "torch", "onnxruntime"] = Field("auto", description="auto = torch on a GPU, ONNX Runtime on the CPU (faster there)")
        mask_on_cpu: bool = Field(True, description="On the CPU path, compute the person mask when something reads it (the landmark model's mask half: ~10 ms a frame on two cores); off: the mask says nothing there (coverage 0), e.g. for segment.selfie's `person`, whose merge then leaves its own mask as it is")
        auto_exposure: bool = Field(True, description="Brighten dark crops before the models (in low light the person mask and the detector's score collapse otherwise)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._uint8 = wanted(ctx)  # issue 13: crops from the uint8 frame on the CPU path
        p = self.params
        # The CPU path skips the person mask (half the landmark model) while nothing reads `mask`
        self.tracker = BlazePoseTracker(self.name, ctx.device, ctx.dtype, min_detection=p.min_detection, min_tracking=p.min_tracking, predict_motion=p.predict_motion, backend=p.backend, refine=p.refine, antialias=p.antialias,
                                        mask=self._mask_wanted(), auto_exposure=p.auto_exposure)
        self._frames = 0
        self._nothing: torch.Tensor | None = None  # the empty mask while `mask_on_cpu` is off

    def _mask_wanted(self) -> bool:
        return not self._uint8 or (self.params.mask_on_cpu and not unread(self.ctx, "mask"))

    def update_params(self, params: Params) -> bool:
        if params.backend != self.params.backend:
            return False  # other model objects: rebuild
        self.params = params
        if getattr(self, "tracker", None) is not None:
            self.tracker.min_tracking = params.min_tracking
            self.tracker.predict_motion = params.predict_motion
            self.tracker.antialias = params.antialias
            self.tracker.refine = params.refine
            self.tracker.auto_exposure = params.auto_exposure
            self.tracker.spec = ssd.DetectorSpec(**{**ssd.POSE_DETECTOR.__dict__, "min_score": params.min_detection})
        return True

    def frame_variant(self) -> tuple[bool, bool, bool]:
        p = self.params
        force = bool(p.redetect_every) and self._frames % p.redetect_every == 0
        confirm = bool(p.confirm_every) and self._frames % p.confirm_every == 0
        self._frames += 1
        self._planned = True
        return self.tracker.plan(force_detect=force, confirm=confirm)

    def process(self, frame: Frame) -> dict[str, Keypoints | Mask]:
        assert self.ctx is not None
        p = self.params
        if not getattr(self, "_planned", False):  # called directly, not by the runtime
            self.frame_variant()
        self._planned = False
        mask_wanted = self._mask_wanted()
        self.tracker.want_mask(mask_wanted)  # a tap on `mask` (the editor's preview) brings it back
        r = self.tracker(self._picture(frame))
        keypoints = Keypoints(
            points=r["points"][:, :2].contiguous(),
            confidence=r["visibility"],
            skeleton="blazepose33",
            image_size=frame.size,
            timestamp=frame.timestamp,
            index=frame.index,
        )
        keypoints3d = Keypoints(r["points"][:, :3].contiguous(), r["visibility"], "blazepose33", frame.size, frame.timestamp, frame.index)
        scale = p.mask_size / max(frame.width, frame.height)
        size = (max(1, round(frame.width * scale)), max(1, round(frame.height * scale)))
        if not mask_wanted:
            if self._uint8 and not p.mask_on_cpu and not unread(self.ctx, "mask"):  # read, but off on the CPU path
                nothing = self._nothing
                if nothing is None or nothing.shape != (size[1], size[0]):
                    nothing = self._nothing = torch.zeros(size[1], size[0])  # kept: it never changes
                return {"keypoints": keypoints, "keypoints3d": keypoints3d, "mask": Mask(nothing, frame.timestamp, frame.index, coverage=nothing)}
            return {"keypoints": keypoints, "keypoints3d": keypoints3d}
        # the crop's footprint with the mask: outside it (or while nobody is tracked) the mask says nothing
        crop = r["mask_crop"]
        both = R.uncrop(torch.cat((crop, torch.ones_like(crop)), 1), r["roi"], frame.size, size)[0] * r["present"]
        return {"keypoints": keypoints, "keypoints3d": keypoints3d, "mask": Mask(both[0], frame.timestamp, frame.index, coverage=both[1])}
