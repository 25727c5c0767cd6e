"""Build a profile's teachers and fuse their votes into one label per frame.

The first available mask teacher in `teachers.segment` gives the label; every
other one votes: the agreement (lowest IoU against the label) goes into the
frame's record so `filter_bad_data` can drop frames where teachers disagree.
Missing teachers are skipped with the reason, never silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from muse.studio.teachers.base import TeacherUnavailable, iou, mask_box


@dataclass
class TeacherSet:
    masks: list[Any] = field(default_factory=list)  # MaskTeacher, best first
    poses: list[Any] = field(default_factory=list)  # PoseTeacher, best first
    skipped: dict[str, str] = field(default_factory=dict)  # name -> why it is not used

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.masks] + [t.name for t in self.poses]


def build_teachers(profile: Any, device: str = "cpu", plate: np.ndarray | None = None, *, offline_only: bool = False) -> TeacherSet:
    """Teachers named in profile.yaml, best first; unavailable ones land in `skipped` with the reason."""
    from muse.studio.teachers.offline import CleanPlateTeacher, NodeMaskTeacher, NodePoseTeacher

    cfg = profile.config.teachers
    ts = TeacherSet()
    for name in cfg.segment:
        try:
            if name == "sam2":
                if offline_only:
                    raise TeacherUnavailable("offline-only run")
                from muse.studio.teachers.sam2_teacher import Sam2Teacher

                ts.masks.append(Sam2Teacher(cfg.sam2.config, cfg.sam2.checkpoint, device, video=cfg.sam2.video))
            elif name == "clean_plate":
                if plate is None:
                    raise TeacherUnavailable(f"no clean plate at {profile.plate_path}; record it with `muse studio plate {profile.name}`")
                ts.masks.append(CleanPlateTeacher(plate))
            elif name == "selfie":
                ts.masks.append(NodeMaskTeacher("segment.selfie", "selfie", device=device))
            else:
                ts.masks.append(NodeMaskTeacher(name, name.split(".")[-1], device=device))
        except TeacherUnavailable as exc:
            ts.skipped[name] = str(exc)
    for name in cfg.pose:
        try:
            if name == "vitpose":
                if offline_only:
                    raise TeacherUnavailable("offline-only run")
                from muse.studio.teachers.vitpose_teacher import VitPoseTeacher

                ts.poses.append(VitPoseTeacher.from_checkpoint(cfg.vitpose.checkpoint, device, cfg.batch))
            elif name == "bundled_pose":
                ts.poses.append(NodePoseTeacher("pose.blazepose", "bundled_pose", device))
            else:
                ts.poses.append(NodePoseTeacher(name, name.split(".")[-1], device))
        except TeacherUnavailable as exc:
            ts.skipped[name] = str(exc)
    if not ts.masks:
        raise TeacherUnavailable(
            "no mask teacher can run: " + "; ".join(f"{k}: {v}" for k, v in ts.skipped.items())
            + ". Record a clean plate, install the bundled segmenter, or set a SAM 2.1 checkpoint"
        )
    return ts


@dataclass
class Label:
    mask: np.ndarray  # float32 (H,W) in [0,1], the label the student learns
    agreement: float  # lowest IoU between the label and another teacher (1.0 if only one)
    ious: dict[str, float]  # per other teacher
    keypoints: np.ndarray | None  # (K,3) x, y, confidence
    skeleton: str | None
    teacher: str  # which teacher gave the label


def label_frames(teachers: TeacherSet, frames: Sequence[np.ndarray]) -> list[Label]:
    """Run every teacher on a clip and fuse. Prompted teachers (SAM) get the offline masks and keypoints as hints."""
    offline = [t for t in teachers.masks if t.name != "sam2"]
    prompted = [t for t in teachers.masks if t.name == "sam2"]
    votes: dict[str, list[np.ndarray]] = {t.name: t.masks(frames) for t in offline}
    prior = votes[offline[0].name] if offline else [None] * len(frames)
    boxes = [mask_box(m) if m is not None else None for m in prior]
    kps: list[np.ndarray | None] = [None] * len(frames)
    skeleton = None
    if teachers.poses:
        pose = teachers.poses[0]
        kps = pose.keypoints(frames, boxes)
        skeleton = pose.skeleton
    for t in prompted:
        hints = [{"mask": m, "keypoints": k} for m, k in zip(prior, kps)]
        votes[t.name] = t.masks(frames, hints)
    order = [t.name for t in teachers.masks]  # best first, as the profile lists them
    labels = []
    for i in range(len(frames)):
        best = order[0]
        mask = votes[best][i].astype(np.float32)
        ious = {n: iou(mask, votes[n][i]) for n in order[1:]}
        labels.append(Label(mask, min(ious.values(), default=1.0), ious, kps[i], skeleton, best))
    return labels
