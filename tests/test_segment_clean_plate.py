"""segment.clean_plate: a real person photo pasted over a real room, against the room alone,
with camera noise and an exposure drift: IoU with the paste mask > 0.9."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import segment_scenes as scenes
from muse.graph.node import NodeError
from muse.graph.payloads import Frame
from muse.graph.testing import make_context, run_node
from muse.nodes.segment.clean_plate import CleanPlateSegment, colour_distance, rgb_to_lab

SIZE = 256


def _camera(rgb: np.ndarray, seed: int, gain: float = 1.0) -> np.ndarray:
    """Sensor noise (sigma 3/255) and an exposure gain, as two shots of one webcam differ."""
    noise = np.random.default_rng(seed).normal(0.0, 3.0, rgb.shape)
    return np.clip(rgb.astype(np.float64) * gain + noise, 0, 255).astype(np.uint8)


def test_person_over_room_iou():
    rgb, gt = scenes.composite(SIZE)
    frame = Frame(torch.from_numpy(_camera(rgb, 1, gain=1.03)))
    plate = Frame(torch.from_numpy(_camera(scenes.room(SIZE), 2)))
    mask = run_node(CleanPlateSegment, {"working_height": 0}, frame=frame, plate=plate)["mask"]
    assert mask.size == (SIZE, SIZE)
    got = mask.alpha.numpy() > 0.5
    score = scenes.iou(got, gt)
    assert score > 0.9, score
    # Person pixels land inside (measured 99.9%), room pixels outside (2.3% leak, at the edges).
    assert got[gt].mean() > 0.93 and got[~gt].mean() < 0.05


def test_empty_room_gives_empty_mask():
    room = scenes.room(SIZE)
    out = run_node(CleanPlateSegment, {}, frame=Frame(torch.from_numpy(_camera(room, 3, gain=0.97))),
                   plate=Frame(torch.from_numpy(_camera(room, 4))))
    assert float(out["mask"].alpha.mean()) < 0.005


def test_plate_file_and_working_height(tmp_path):
    rgb, gt = scenes.composite(SIZE)
    plate_path = tmp_path / "empty_room.png"
    cv2.imwrite(str(plate_path), scenes.room(SIZE)[:, :, ::-1])
    before = plate_path.read_bytes()
    out = run_node(CleanPlateSegment, {"plate_file": str(plate_path), "working_height": 128},
                   frame=Frame(torch.from_numpy(rgb)))["mask"]
    assert out.size == (128, 128)
    small_gt = cv2.resize(gt.astype(np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST).astype(bool)
    assert scenes.iou(out.alpha.numpy() > 0.5, small_gt) > 0.9
    assert plate_path.read_bytes() == before  # the user's plate is only read


def test_missing_plate_says_what_to_do():
    rgb, _ = scenes.composite(64)
    with pytest.raises(NodeError, match="'node'.*field 'plate_file'.*connect the 'plate' input"):
        run_node(CleanPlateSegment, {}, frame=Frame(torch.from_numpy(rgb)))


def test_unreadable_plate_file_is_named(tmp_path):
    bad = tmp_path / "plate.png"
    bad.write_bytes(b"\x89PNG broken")
    node = CleanPlateSegment("plate_seg", CleanPlateSegment.Params(plate_file=str(bad)))
    with pytest.raises(NodeError, match="'plate_seg'.*plate.png"):
        node.open(make_context("plate_seg"))


def test_lab_matches_opencv():
    rgb, _ = scenes.composite(64)
    ours = rgb_to_lab(torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255)[0].permute(1, 2, 0).numpy() * 100
    ref = cv2.cvtColor(rgb.astype(np.float32) / 255, cv2.COLOR_RGB2LAB)
    assert np.abs(ours - ref).max() < 0.5


def test_luma_weight_discounts_shadows():
    room = torch.from_numpy(scenes.room(64)).permute(2, 0, 1)[None].float() / 255
    shadow = room * 0.8  # same colours, darker
    heavy = colour_distance(shadow, room, "lab", 1.0).mean()
    light = colour_distance(shadow, room, "lab", 0.3).mean()
    assert light < 0.75 * heavy  # measured 0.68: darker colours also move a little in a/b


@pytest.mark.cuda
def test_cuda_matches_cpu():
    rgb, gt = scenes.composite(SIZE)
    frame = torch.from_numpy(_camera(rgb, 1))
    plate = torch.from_numpy(_camera(scenes.room(SIZE), 2))
    cpu = run_node(CleanPlateSegment, {"working_height": 0}, frame=Frame(frame), plate=Frame(plate))["mask"].alpha
    gpu = run_node(CleanPlateSegment, {"working_height": 0}, device="cuda", frame=Frame(frame.cuda()),
                   plate=Frame(plate.cuda()))["mask"].alpha
    assert scenes.iou(gpu.float().cpu().numpy() > 0.5, cpu.numpy() > 0.5) > 0.98
