"""Pose, face, smoothing and overlay wired as a graph and run by the real
runtime on real pictures: ports, optional inputs and outputs fit together."""

from __future__ import annotations

import shutil

import torch

import media
from muse.graph.node import In, Node, NodeParams
from muse.graph.payloads import FaceLandmarks, Frame, Keypoints
from muse.graph.runtime import GraphRunner
from muse.graph.testing import registry_with
from muse.graph.validate import validate_text


class KeepPose(Node):
    """Sink that keeps what reached it (test node)."""

    node_type = "test.keep_pose"
    description = "test"
    frame: In[Frame]
    keypoints: In[Keypoints]
    face: In[FaceLandmarks]
    seen: list[tuple[Frame, Keypoints, FaceLandmarks]] = []

    class Params(NodeParams):
        pass

    def process(self, frame: Frame, keypoints: Keypoints, face: FaceLandmarks) -> None:
        KeepPose.seen.append((frame, keypoints, face))


def test_pose_face_smooth_overlay_graph(tmp_path):
    for i in range(3):
        shutil.copy(media.opencv_sample_path("messi5.jpg"), tmp_path / f"shot{i}.jpg")
    reg = registry_with(KeepPose)
    KeepPose.seen.clear()
    text = f"""version: 1
settings: {{device: cpu}}
nodes:
  shots: {{type: capture.images, params: {{path: "{tmp_path}/*.jpg", fps: 0}}}}
  pose: {{type: pose.blazepose, inputs: {{frame: {{from: shots.frame, queue: 4}}}}}}
  face: {{type: face.landmarks, inputs: {{frame: {{from: shots.frame, queue: 4}}, pose: {{from: pose.keypoints, queue: 4}}}}}}
  smooth: {{type: landmarks.smooth, inputs: {{keypoints: {{from: pose.keypoints, queue: 4}}, face: {{from: face.face, queue: 4}}}}}}
  overlay: {{type: pose.overlay, inputs: {{frame: {{from: shots.frame, queue: 4}}, keypoints: {{from: smooth.smoothed_keypoints, queue: 4}}, face: {{from: smooth.smoothed_face, queue: 4}}}}}}
  keep: {{type: test.keep_pose, inputs: {{frame: {{from: overlay.out, queue: 4}}, keypoints: {{from: smooth.smoothed_keypoints, queue: 4}}, face: {{from: smooth.smoothed_face, queue: 4}}}}}}
"""
    stats = GraphRunner(validate_text(text, "pose_face.yaml", reg)).run()
    assert stats.nodes["keep"].frames == 3
    frame, kp, face = KeepPose.seen[-1]
    assert frame.size == (548, 342) and kp.skeleton == "blazepose33"
    assert float(kp.confidence[0]) > 0.5 and float(face.confidence) > 0.5
    # the face mesh's nose tip sits on the pose's nose
    assert float(torch.linalg.vector_norm(face.points[1, :2] - kp.points[0])) < 15
