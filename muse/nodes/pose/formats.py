"""Keypoint formats: COCO-17 (ViTPose, students) and BlazePose-33 (MediaPipe),
their names and bones, and `pose.convert` so downstream nodes take either.

"left" is always the person's left (MediaPipe and COCO agree). COCO -> BlazePose
fills the 16 points COCO lacks (inner/outer eye corners, mouth corners, hand
and foot points) from nearby joints, with lower confidence (`derived_confidence`).
"""

from __future__ import annotations

from typing import Literal

import torch
from muse.graph.capture import device_constant
from pydantic import Field

from muse.graph.node import In, Node, NodeError, NodeParams, Out
from muse.graph.payloads import Keypoints
from muse.nodes.pose.skeletons import BLAZE_OF_COCO, BLAZEPOSE33, BONES, COCO17, SKELETONS, bone_indices, index_of, skeleton_names  # noqa: F401


def to_coco17(kp: Keypoints) -> Keypoints:
    """BlazePose-33 -> COCO-17 (exact: every COCO joint exists in BlazePose)."""
    if kp.skeleton == "coco17":
        return kp
    skeleton_names(kp.skeleton)
    idx = device_constant(list(BLAZE_OF_COCO), kp.points.device)
    return Keypoints(kp.points[idx], kp.confidence[idx], "coco17", kp.image_size, kp.timestamp, kp.index)


def to_blazepose33(kp: Keypoints, derived_confidence: float = 0.5) -> Keypoints:
    """COCO-17 -> BlazePose-33: the 17 shared joints exactly; the rest estimated
    from neighbours (eye corners along the eye line, mouth below the nose, hand
    points past the wrist along the forearm, foot points below the ankle)."""
    if kp.skeleton == "blazepose33":
        return kp
    skeleton_names(kp.skeleton)
    p, c = kp.points, kp.confidence
    j = {n: i for i, n in enumerate(COCO17)}
    pts = p.new_zeros((33, 2))
    conf = c.new_zeros(33)
    for ci, bi in enumerate(BLAZE_OF_COCO):
        pts[bi] = p[ci]
        conf[bi] = c[ci]

    def put(name: str, point: torch.Tensor, *sources: str) -> None:
        b = BLAZEPOSE33.index(name)
        pts[b] = point
        conf[b] = torch.stack([c[j[s]] for s in sources]).min() * derived_confidence

    eye_l, eye_r, nose = p[j["left_eye"]], p[j["right_eye"]], p[j["nose"]]
    across = eye_l - eye_r  # person's right -> left, one eye distance
    put("left_eye_inner", eye_l - 0.2 * across, "left_eye", "right_eye")
    put("left_eye_outer", eye_l + 0.2 * across, "left_eye", "right_eye")
    put("right_eye_inner", eye_r + 0.2 * across, "left_eye", "right_eye")
    put("right_eye_outer", eye_r - 0.2 * across, "left_eye", "right_eye")
    down = nose - (eye_l + eye_r) / 2  # eyes -> nose, about a third of the face
    mouth = nose + 0.8 * down
    put("mouth_left", mouth + 0.3 * across, "nose", "left_eye", "right_eye")
    put("mouth_right", mouth - 0.3 * across, "nose", "left_eye", "right_eye")
    for side in ("left", "right"):
        wrist, elbow = p[j[f"{side}_wrist"]], p[j[f"{side}_elbow"]]
        forearm = wrist - elbow
        normal = torch.stack([-forearm[1], forearm[0]])
        put(f"{side}_index", wrist + 0.35 * forearm, f"{side}_wrist", f"{side}_elbow")
        put(f"{side}_pinky", wrist + 0.3 * forearm + 0.08 * normal, f"{side}_wrist", f"{side}_elbow")
        put(f"{side}_thumb", wrist + 0.2 * forearm - 0.08 * normal, f"{side}_wrist", f"{side}_elbow")
        ankle, knee = p[j[f"{side}_ankle"]], p[j[f"{side}_knee"]]
        shin = ankle - knee
        put(f"{side}_heel", ankle + 0.08 * shin, f"{side}_ankle", f"{side}_knee")
        put(f"{side}_foot_index", ankle + 0.15 * shin, f"{side}_ankle", f"{side}_knee")  # toes: no direction known, just below
    return Keypoints(pts, conf, "blazepose33", kp.image_size, kp.timestamp, kp.index)


def convert(kp: Keypoints, skeleton: str) -> Keypoints:
    if skeleton == "coco17":
        return to_coco17(kp)
    if skeleton == "blazepose33":
        return to_blazepose33(kp)
    raise ValueError(f"unknown skeleton {skeleton!r}; known: {', '.join(SKELETONS)}")


class ConvertKeypoints(Node):
    node_type = "pose.convert"
    display_name = "Keypoint format"
    description = "Converts body keypoints between COCO-17 and BlazePose-33 (person's left = left)."
    capturable = True

    keypoints: In[Keypoints]
    out: Out[Keypoints]

    class Params(NodeParams):
        to: Literal["coco17", "blazepose33"] = Field("blazepose33", description="Skeleton the output uses")

    params: Params

    def process(self, keypoints: Keypoints) -> dict[str, Keypoints]:
        try:
            return {"out": convert(keypoints, self.params.to)}
        except ValueError as exc:
            raise NodeError(f"node {self.name!r}: input keypoints: {exc}") from exc
