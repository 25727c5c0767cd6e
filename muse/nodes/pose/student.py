"""`pose.student`: the pose head a profile's student model was trained with
(MUSE Studio), run on the whole frame resized to its input size.

Assumed contract (muse/models/student.py): `load_student_pose(path, device)`
returns (StudentPose, meta with input_size [w, h]); forward takes (B,3,H,W)
floats in [0, 1] and returns (B,K,H/4,W/4) heatmap logits; K = 17 is COCO-17,
K = 33 BlazePose-33. A profile keeps it at `models/live/pose.pt`, or where
profile.yaml's `live_pose_model` says.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeAbsent, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Keypoints

DEFAULT_POSE_FILE = "models/live/pose.pt"


def student_pose_path(profile: str | Path) -> Path:
    """Where a profile keeps its live student pose head."""
    root = Path(profile).expanduser()
    cfg = root / "profile.yaml"
    if cfg.is_file():
        import yaml

        data = yaml.safe_load(cfg.read_text()) or {}
        if data.get("live_pose_model"):
            return root / str(data["live_pose_model"])
    return root / DEFAULT_POSE_FILE


def resolve_student_pose(model: str, profile: str) -> Path | None:
    """The configured student pose file, or None when neither param is set."""
    if model:
        return Path(model).expanduser()
    if profile:
        return student_pose_path(profile)
    return None


class StudentPoseNode(Node):
    node_type = "pose.student"
    display_name = "Pose (student)"
    description = "Keypoints from a profile's trained student pose head (personalized, fastest)."

    frame: In[Frame]
    keypoints: Out[Keypoints]

    class Params(NodeParams):
        profile: str = Field("", description="Profile folder; its live student pose head is used")
        model: str = Field("", description="Path of a student pose checkpoint (overrides profile)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        path = resolve_student_pose(self.params.model, self.params.profile)
        if path is None:
            raise NodeAbsent(f"node {self.name!r}: set field 'profile' (a MUSE Studio profile folder) or 'model' (a student pose checkpoint)")
        if not path.is_file():
            raise NodeAbsent(f"node {self.name!r}: no student pose model at {path}; train one with `muse studio train PROFILE` or use pose.blazepose")
        from muse.models.student import load_student_pose

        try:
            model, meta = load_student_pose(path, ctx.device)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise NodeError(f"node {self.name!r}: cannot load student pose {path}: {exc}") from exc
        self.model = model.to(ctx.dtype).eval()
        self.input_size = tuple(int(v) for v in meta["input_size"])
        keypoints = int(getattr(model, "arch", {}).get("num_keypoints", 17))
        skeletons = {17: "coco17", 33: "blazepose33"}
        if keypoints not in skeletons:
            raise NodeError(f"node {self.name!r}: student pose {path} has {keypoints} keypoints; MUSE reads 17 (COCO) or 33 (BlazePose)")
        self.skeleton = skeletons[keypoints]
        self.path = path

    @torch.inference_mode()
    def process(self, frame: Frame) -> dict[str, Keypoints]:
        assert self.ctx is not None
        w, h = self.input_size
        x = F.interpolate(frame.chw(torch.float32)[None], size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        heatmaps = self.model(x.to(self.ctx.dtype)).float()
        points, conf = self.model.decode(heatmaps, frame.size)
        return {"keypoints": Keypoints(points[0], conf[0], self.skeleton, frame.size, frame.timestamp, frame.index)}
