"""`studio.dataset_writer`: the sink of the labeling graph (file -> teachers ->
dataset). Writes each labelled frame into a MUSE Studio profile's dataset in
the same layout as `muse studio label`, so `muse studio filter/train` follow."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from muse.graph.node import In, Node, NodeError, NodeParams
from muse.graph.paths import graph_dir, resolve_output_path
from muse.graph.payloads import Frame, Keypoints, Mask


class StudioDatasetWriter(Node):
    node_type = "studio.dataset_writer"
    display_name = "Studio dataset writer"
    category = "studio"
    description = "Writes frames and teacher labels into a MUSE Studio profile's dataset (other masks vote; resumable)."

    output_paths = {"profile": False}  # checked at validation: allowed folders (several writers may share a profile)

    frame: In[Frame]
    mask: In[Mask] = In(description="The label (best teacher)")
    votes: In[Mask] = In(optional=True, multiple=True, description="Other teachers' masks: their IoU with the label is the agreement")
    keypoints: In[Keypoints] = In(optional=True, description="Body keypoints (checked against the mask by the filter)")

    class Params(NodeParams):
        profile: str = Field("", description="Profile folder (holds profile.yaml); the dataset goes to its dataset/ folder")
        recording: str = Field("graph", description="Name the frames are filed under (frame ids are <recording>_<index>)")
        teacher: str = Field("graph", description="Name of the teacher that made the label, stored with each frame")

    params: Params

    def open(self, ctx: Any) -> None:
        super().open(ctx)
        root = resolve_output_path(self.params.profile, graph_dir(getattr(ctx, "graph_file", None)))
        if not self.params.profile or not (root / "profile.yaml").is_file():
            raise NodeError(f"node {self.name!r}: field 'profile' must be a MUSE Studio profile folder with profile.yaml (got {self.params.profile!r}); create one with `muse studio new NAME`")
        from muse.studio.records import done_ids

        self._ds = root / "dataset"
        self._out = self._ds / "records" / f"{self.params.recording}.graph.jsonl"
        self._done = done_ids(self._ds / "records") if (self._ds / "records").is_dir() else set()
        self._written = 0

    def process(self, frame: Frame, mask: Mask, votes: list[Mask] | None = None, keypoints: Keypoints | None = None) -> None:
        from muse.studio.label import write_labelled_clip
        from muse.studio.teachers.base import iou
        from muse.studio.teachers.combine import Label

        fid = f"{self.params.recording}_{frame.index:06d}"
        if fid in self._done:  # a re-run resumes: frames already on disk are kept
            return None
        # Offline labeling: host copies are the point of this sink (it runs in its own thread).
        rgb = frame.hwc_uint8().cpu().numpy()
        label = _to_frame_size(mask.alpha.float().cpu().numpy(), rgb.shape)
        ious = {f"vote{i}": iou(label, _to_frame_size(v.alpha.float().cpu().numpy(), rgb.shape)) for i, v in enumerate(votes or [])}
        kps = None
        if keypoints is not None and keypoints.present:
            pts = keypoints.points.float().cpu().numpy()
            sx, sy = rgb.shape[1] / keypoints.image_size[0], rgb.shape[0] / keypoints.image_size[1]
            kps = np.concatenate([pts * np.array([sx, sy], np.float32), keypoints.confidence.float().cpu().numpy()[:, None]], 1)
        lab = Label(label, min(ious.values(), default=1.0), ious, kps, keypoints.skeleton if keypoints is not None else None, self.params.teacher)
        self._written += write_labelled_clip(self._ds, self.params.recording, [(frame.index, rgb)], [lab], self._out)
        if self.ctx is not None:
            self.report("frames_written", self._written)
        return None

    def close(self) -> None:
        if getattr(self, "_ds", None) is not None and (self._ds / "records").is_dir():
            from muse.studio.records import merge_records

            merge_records(self._ds)


def _to_frame_size(alpha: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if alpha.shape == tuple(shape[:2]):
        return alpha
    import cv2

    return cv2.resize(alpha, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
