"""COCO-17 <-> BlazePose-33: exact round trips on the shared joints, plausible
estimates for the rest, and the pose.convert node."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Keypoints
from muse.graph.testing import run_node
from muse.nodes.pose.blazepose import BlazePose
from muse.nodes.pose.formats import BLAZEPOSE33, COCO17, ConvertKeypoints, bone_indices, index_of, to_blazepose33, to_coco17


@pytest.fixture(scope="module")
def astronaut_pose(astronaut):
    return run_node(BlazePose, {}, frame=Frame(torch.from_numpy(np.ascontiguousarray(astronaut))))["keypoints"]


def test_blazepose_coco_round_trip_is_exact_on_shared_joints(astronaut_pose):
    coco = to_coco17(astronaut_pose)
    assert coco.skeleton == "coco17" and coco.points.shape == (17, 2)
    for i, name in enumerate(COCO17):  # same joint, same side
        assert torch.equal(coco.points[i], astronaut_pose.points[BLAZEPOSE33.index(name)])
    back = to_blazepose33(coco)
    shared = [BLAZEPOSE33.index(n) for n in COCO17]
    assert torch.equal(back.points[shared], astronaut_pose.points[shared])
    assert torch.equal(to_coco17(back).points, coco.points)  # coco -> blaze -> coco is the identity


def test_estimated_blazepose_points_are_plausible(astronaut_pose):
    back = to_blazepose33(to_coco17(astronaut_pose))
    p = {n: back.points[i] for i, n in enumerate(BLAZEPOSE33)}
    truth = {n: astronaut_pose.points[i] for i, n in enumerate(BLAZEPOSE33)}
    eye_gap = float(p["left_eye"][0] - p["right_eye"][0])
    assert p["right_eye_inner"][0] < p["nose"][0] + 0.3 * eye_gap and p["left_eye_inner"][0] > p["nose"][0] - 0.3 * eye_gap
    assert p["mouth_left"][1] > p["nose"][1] and p["mouth_right"][1] > p["nose"][1]
    assert p["mouth_left"][0] > p["mouth_right"][0]  # person's left on the image's right
    for n in ("mouth_left", "mouth_right", "left_eye_outer", "right_eye_outer"):
        assert float(torch.linalg.vector_norm(p[n] - truth[n])) < 0.8 * eye_gap, n
    derived = [i for i, n in enumerate(BLAZEPOSE33) if n not in COCO17]
    assert (back.confidence[derived] <= 0.5 * back.confidence.max() + 1e-6).all()


def test_convert_node_and_bad_skeleton(astronaut_pose):
    out = run_node(ConvertKeypoints, {"to": "coco17"}, keypoints=astronaut_pose)["out"]
    assert out.skeleton == "coco17" and out.image_size == astronaut_pose.image_size
    odd = Keypoints(torch.zeros(21, 2), torch.ones(21), "hand21", (10, 10))
    with pytest.raises(NodeError, match="node 'node'.*hand21"):
        run_node(ConvertKeypoints, {"to": "coco17"}, keypoints=odd)
    assert bone_indices("coco17").max() < 17 and bone_indices("blazepose33").max() < 33
    assert index_of("coco17", "left_hip") == 11 and index_of("blazepose33", "left_hip") == 23
