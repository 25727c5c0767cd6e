"""background.adaptive on a synthetic clip: a person moves across a real room and leaves while the light drifts."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

import visual_scenes as vs
from muse.graph.node import NodeError
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import build_node, make_context, run_node, run_node_frames
from muse.nodes.background import AdaptiveBackground

W, H = 128, 96


def _person(cx: float) -> tuple[np.ndarray, np.ndarray]:
    """A striped red figure (head + body) centred at x=cx: (mask float, colour uint8)."""
    ys, xs = np.mgrid[0:H, 0:W]
    body = ((xs - cx) / 16.0) ** 2 + ((ys - 70) / 34.0) ** 2 <= 1
    head = ((xs - cx) / 9.0) ** 2 + ((ys - 28) / 11.0) ** 2 <= 1
    mask = cv2.GaussianBlur((body | head).astype(np.float32), (3, 3), 0.8)
    colour = np.zeros((H, W, 3), np.uint8)
    colour[..., 0] = 210
    colour[..., 1] = np.where((ys // 4) % 2 == 0, 30, 120)
    colour[..., 2] = 50
    return mask, colour


def _clip():
    """(frames, masks, true plates): still at x=30 for 20 frames, walk to x=100 over 40 frames, gone for 40; gain 1 -> 1.12."""
    room = vs.room(W, H).astype(np.float32)
    items = []
    for i in range(100):
        gain = 1.0 + 0.12 * min(1.0, max(0.0, (i - 20) / 40))
        truth = np.clip(room * gain, 0, 255)
        if i < 60:
            cx = 30 + 70 * max(0, i - 20) / 40
            mask, colour = _person(cx)
        else:
            mask, colour = np.zeros((H, W), np.float32), np.zeros((H, W, 3), np.uint8)
        img = mask[..., None] * colour + (1 - mask[..., None]) * truth
        items.append((np.clip(img.round(), 0, 255).astype(np.uint8), mask, truth))
    return items


def test_learns_the_room_without_ghosts_and_follows_light():
    clip = _clip()
    inputs = [{"frame": Frame(torch.from_numpy(f)), "mask": Mask(torch.from_numpy(m))} for f, m, _ in clip]
    outs = run_node_frames(AdaptiveBackground, {"adapt_seconds": 1.0}, inputs)
    ever_covered = np.zeros((H, W), bool)
    for (frame, mask, truth), out in zip(clip, outs):
        plate = out["plate"].image.numpy().astype(np.float32)
        known = out["coverage"].alpha.numpy() > 0
        ever_covered |= mask > 0.01
        err = np.abs(plate - truth).max(-1)
        # no ghost at any time: where the plate claims to know the room, it never shows the person
        assert np.percentile(err[known], 99.9) < 0.08 * 255, frame
    final = outs[-1]
    plate = final["plate"].image.numpy().astype(np.float32)
    truth = clip[-1][2]
    err = np.abs(plate - truth)
    assert final["coverage"].alpha.numpy().min() == 1.0  # every pixel has been seen
    assert err.mean() < 1.5, err.mean()  # converged to the true (brightened) plate: mean error < 1.5/255
    assert err.max() < 8, err.max()
    assert err[ever_covered].mean() < 2.0  # where the person walked: no ghost
    # the light drift was followed: the plate is brighter than the room it started from
    start = outs[19]["plate"].image.numpy().astype(np.float32)
    known0 = outs[19]["coverage"].alpha.numpy() > 0
    assert plate[known0].mean() > 1.08 * start[known0].mean()


def test_first_frames_are_learned_at_once_and_hidden_part_is_filled():
    clip = _clip()
    f, m, truth = clip[0]
    out = run_node(AdaptiveBackground, {}, frame=Frame(torch.from_numpy(f)), mask=Mask(torch.from_numpy(m)))
    known = out["coverage"].alpha.numpy() > 0
    plate = out["plate"].image.numpy().astype(np.float32)
    free = distance_free(m, 0.03 * H + 2)
    assert known[free].all() and not known[m > 0.5].any()
    assert np.abs(plate - truth)[known].max() <= 1
    # the hidden part is filled with room colours, not black and not the person's red
    hidden = plate[m > 0.9]
    assert hidden.mean() > 40 and np.abs(hidden[:, 0] - 210).mean() > 30


def distance_free(mask: np.ndarray, margin: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    return distance_transform_edt(mask < 0.01) > margin


def test_starts_from_a_recorded_plate_file(tmp_path):
    room = vs.room(W * 2, H * 2)  # a recording at another resolution is fitted to the frame
    path = tmp_path / "plate.png"
    assert cv2.imwrite(str(path), room[:, :, ::-1])
    f, m, _ = _clip()[0]
    out = run_node(AdaptiveBackground, {"plate_path": str(path)}, frame=Frame(torch.from_numpy(f)), mask=Mask(torch.from_numpy(m)))
    plate = out["plate"].image.numpy().astype(np.float32)
    expected = cv2.resize(room, (W, H), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert out["coverage"].alpha.min() == 1
    assert np.abs(plate - expected)[m > 0.5].mean() < 6  # behind the person: the recording, not a fill


def test_recorded_plate_as_frame_input():
    clip = _clip()
    f, m, truth = clip[30]
    rec = Frame(torch.from_numpy(truth.round().astype(np.uint8)))
    out = run_node(AdaptiveBackground, {}, frame=Frame(torch.from_numpy(f)), mask=Mask(torch.from_numpy(m)), recorded=rec)
    assert np.abs(out["plate"].image.numpy().astype(np.float32) - truth).max() <= 1


def test_missing_plate_file_names_node_and_field(tmp_path):
    node = build_node(AdaptiveBackground, {"plate_path": str(tmp_path / "nope.png")}, name="bg")
    with pytest.raises(NodeError, match="node 'bg': plate_path .*nope.png.* does not exist"):
        node.open(make_context("bg"))


def test_with_the_demo_source_ground_truth():
    """capture.demo gives a moving person, its true alpha and the true clean plate: the learned plate matches it."""
    from muse.graph.registry import Registry

    reg = Registry()
    reg.load_builtins_direct()
    if "capture.demo" not in reg:
        pytest.skip("capture.demo not available")
    demo = build_node(reg.get("capture.demo"), {"width": 160, "height": 96, "fps": 0, "frames": 40, "motion": 2.0})
    demo.open(make_context("demo", resolution=(160, 96)))
    frames = []
    while (out := demo.process()) is not None:
        frames.append(out)
    demo.close()
    assert len(frames) == 40
    outs = run_node_frames(AdaptiveBackground, {}, [{"frame": o["frame"], "mask": o["mask"]} for o in frames])
    plate = outs[-1]["plate"].image.numpy().astype(np.float32)
    truth = frames[-1]["clean_plate"].hwc_uint8().numpy().astype(np.float32)
    known = outs[-1]["coverage"].alpha.numpy() > 0
    assert known.mean() > 0.8
    err = np.abs(plate - truth).max(-1)
    assert err[known].mean() < 2.0 and np.percentile(err[known], 99.5) < 20, (err[known].mean(), np.percentile(err[known], 99.5))
