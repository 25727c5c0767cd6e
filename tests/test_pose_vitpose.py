"""pose.vitpose through the real transformers code path: a tiny randomly
initialised ViTPose saved with save_pretrained and loaded back by the node;
heatmap decoding checked on a known peak; boxes from mask and keypoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import run_node, run_node_frames
from muse.nodes.pose.vitpose import ViTPose, decode_heatmaps, keypoint_box, mask_box, person_roi


def save_tiny_vitpose(folder, num_labels: int = 17):
    from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

    torch.manual_seed(0)
    backbone = VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, out_indices=[2])
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=num_labels))
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_vitpose(tmp_path_factory.mktemp("vitpose-tiny"))


def _frame(img):
    return Frame(torch.from_numpy(np.ascontiguousarray(img)))


def test_decode_finds_a_known_peak_to_a_quarter_cell():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(48.0), indexing="ij")
    hm = torch.zeros(1, 2, 64, 48)
    for k, (cx, cy) in enumerate([(10.3, 20.0), (30.0, 40.7)]):  # continuous peak centres (cell centres at i + 0.5)
        hm[0, k] = torch.exp(-((xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2) / 4.0)
    pts, conf = decode_heatmaps(hm)
    assert torch.allclose(pts[0], torch.tensor([[10.3, 20.0], [30.0, 40.7]]), atol=0.3)
    assert (conf > 0.9).all()


def test_boxes_from_mask_and_keypoints():
    alpha = torch.zeros(90, 160)
    alpha[30:60, 40:80] = 1.0
    box, any_person = mask_box(alpha, (320, 180))
    assert bool(any_person) and box.tolist() == [80.0, 60.0, 160.0, 120.0]
    _, none = mask_box(torch.zeros(9, 16), (320, 180))
    assert not bool(none)
    pts = torch.tensor([[10.0, 10.0], [50.0, 90.0], [500.0, 500.0]])
    assert keypoint_box(pts, torch.tensor([0.9, 0.8, 0.0])).tolist() == [10.0, 10.0, 50.0, 90.0]
    roi = person_roi(*torch.tensor([0.0, 0.0, 30.0, 80.0]), aspect=192 / 256)
    assert torch.allclose(roi[0, 2:4], torch.tensor([60.0 * 1.25, 80.0 * 1.25]))  # widened to 3:4, padded


def test_tiny_checkpoint_through_the_node(tiny_checkpoint, astronaut):
    """The real loading and inference path; random weights, so only geometry is checked:
    17 COCO points inside the padded person box that the mask gave."""
    alpha = torch.zeros(512, 512)
    alpha[60:500, 100:420] = 1.0  # the astronaut's rough silhouette
    out = run_node(ViTPose, {"checkpoint": str(tiny_checkpoint)}, frame=_frame(astronaut), mask=Mask(alpha))
    kp = out["keypoints"]
    assert kp.skeleton == "coco17" and kp.points.shape == (17, 2) and kp.confidence.shape == (17,)
    assert torch.isfinite(kp.points).all() and ((0 <= kp.confidence) & (kp.confidence <= 1)).all()
    roi = person_roi(*torch.tensor([100.0, 60.0, 420.0, 500.0]), aspect=0.75)[0]
    cx, cy, w, h, _ = roi.tolist()
    assert (kp.points[:, 0] >= cx - w / 2).all() and (kp.points[:, 0] <= cx + w / 2).all()
    assert (kp.points[:, 1] >= cy - h / 2).all() and (kp.points[:, 1] <= cy + h / 2).all()


def test_tracking_and_detector_boxes(tiny_checkpoint, astronaut):
    """Without a mask the first box comes from the bundled person detector; later
    frames reuse the last keypoints' box while their confidence holds."""
    outs = run_node_frames(ViTPose, {"checkpoint": str(tiny_checkpoint), "min_tracking": 0.0}, [{"frame": _frame(astronaut)}] * 2)
    assert all(o["keypoints"].points.shape == (17, 2) for o in outs)


def test_bad_checkpoints_name_the_node_and_field(tmp_path, astronaut):
    with pytest.raises(NodeError, match="node 'node'.*checkpoint"):
        run_node(ViTPose, {}, frame=_frame(astronaut))
    with pytest.raises(NodeError, match="no config.json"):
        run_node(ViTPose, {"checkpoint": str(tmp_path)}, frame=_frame(astronaut))
    five = save_tiny_vitpose(tmp_path / "five", num_labels=5)
    with pytest.raises(NodeError, match="5 keypoints"):
        run_node(ViTPose, {"checkpoint": str(five)}, frame=_frame(astronaut))


@pytest.mark.cuda
def test_fp16_on_gpu(tiny_checkpoint, astronaut):
    out = run_node(ViTPose, {"checkpoint": str(tiny_checkpoint), "box_source": "frame"}, frame=_frame(astronaut).to("cuda"), device="cuda")
    kp = out["keypoints"]
    assert kp.points.is_cuda and kp.points.dtype == torch.float32 and torch.isfinite(kp.points).all()
