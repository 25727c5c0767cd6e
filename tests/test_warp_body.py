"""warp.body + warp.apply on a synthetic torso of known geometry over a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

import visual_scenes as vs
from muse.graph.payloads import Frame, Mask
from muse.graph.testing import run_node
from muse.nodes.warp import BodyWarp, WarpApply
from muse.nodes.warp.body import WAIST_MAX


def _warp(params: dict, with_plate: bool = True):
    frame, plate, mask, kp = vs.body_scene()
    m = Mask(torch.from_numpy(mask))
    field = run_node(BodyWarp, params, keypoints=kp, mask=m)["field"]
    inputs = dict(frame=Frame(torch.from_numpy(frame)), body=field, mask=m)
    if with_plate:
        inputs["plate"] = Frame(torch.from_numpy(plate))
    out = run_node(WarpApply, {}, **inputs)
    return frame, plate, mask, field, out["out"].image.numpy(), out["warped_mask"].alpha.numpy()


def test_strength_zero_is_bit_identical():
    frame, _, mask, field, out, warped = _warp({"waist": 0.0, "hips": 0.0, "shoulders": 0.0})
    assert torch.count_nonzero(field.field) == 0
    assert np.array_equal(out, frame)
    assert np.array_equal(warped, mask)


def test_waist_narrows_by_expected_amount():
    frame, plate, mask, _, out, warped = _warp({"waist": 1.0})
    before = vs.measured_width(mask[vs.WAIST_Y])
    after = vs.measured_width(warped[vs.WAIST_Y])
    expected = before / (1 + WAIST_MAX)  # 45 px -> 39.13 px (measured 39.19)
    assert abs(after - expected) <= 0.5, (before, after, expected)
    # the picture agrees with the warped mask: the shirt (red 200) is as wide as the mask says
    shirt = (out[vs.WAIST_Y, :, 0] == 200) & (out[vs.WAIST_Y, :, 2] == 60)
    assert abs(int(shirt.sum()) - after) <= 1
    # symmetric: both sides move in by the same amount
    cols = np.nonzero(warped[vs.WAIST_Y] >= 0.5)[0]
    left_in = cols[0] - np.nonzero(mask[vs.WAIST_Y] >= 0.5)[0][0]
    right_in = np.nonzero(mask[vs.WAIST_Y] >= 0.5)[0][-1] - cols[-1]
    assert abs(left_in - right_in) <= 1 and left_in >= 2
    # shoulders and hips far from the waist band stay as they were
    assert abs(vs.measured_width(warped[vs.SHOULDER_Y - 10]) - vs.measured_width(mask[vs.SHOULDER_Y - 10])) <= 0.5


def test_half_strength_narrows_half_as_much():
    _, _, mask, _, _, warped = _warp({"waist": 0.5})
    before, after = vs.measured_width(mask[vs.WAIST_Y]), vs.measured_width(warped[vs.WAIST_Y])
    assert abs(after - before / (1 + 0.5 * WAIST_MAX)) <= 0.5, (before, after)  # 45 -> 41.86 px (measured 42.07)


def test_uncovered_pixels_come_from_the_plate_not_smeared():
    frame, plate, mask, _, out, warped = _warp({"waist": 1.0})
    uncovered = (mask >= 0.99) & (warped <= 0.01)
    assert uncovered.sum() >= 20
    diff = np.abs(out.astype(int) - plate.astype(int))[uncovered]
    assert diff.max() <= 1


def test_background_outside_dilated_mask_is_untouched():
    for params in ({"waist": 1.0}, {"hips": 1.0, "shoulders": -1.0}, {"waist": 1.0, "hips": -1.0, "shoulders": 1.0}):
        frame, plate, mask, field, out, warped = _warp(params)
        dist = distance_transform_edt(mask < 0.5)
        margin = 0.04 * vs.BODY_H + 2 * 8  # the node's margin + the field grid's cell spread
        far = dist > margin
        assert far.sum() > 0.4 * mask.size
        assert np.array_equal(out[far], frame[far]), params
        # every background pixel (not under the old or new person) is the original room: lines stay straight
        bg = (mask <= 0.0) & (warped <= 0.0)
        assert np.array_equal(out[bg], frame[bg])


def test_hips_widen_and_shoulders_narrow():
    _, _, mask, _, _, warped = _warp({"hips": 1.0, "shoulders": -1.0})
    assert vs.measured_width(warped[vs.HIP_Y]) > vs.measured_width(mask[vs.HIP_Y]) + 3
    assert vs.measured_width(warped[vs.SHOULDER_Y]) < vs.measured_width(mask[vs.SHOULDER_Y]) - 3


def test_low_confidence_torso_gives_identity():
    frame, plate, mask, kp = vs.body_scene()
    kp.confidence[11] = 0.05
    field = run_node(BodyWarp, {"waist": 1.0}, keypoints=kp, mask=Mask(torch.from_numpy(mask)))["field"]
    assert torch.count_nonzero(field.field) == 0


def test_unknown_skeleton_is_a_clear_error():
    from muse.graph.node import NodeError
    from muse.graph.payloads import Keypoints

    kp = Keypoints(torch.zeros(5, 2), torch.ones(5), "hands21", (64, 64))
    with pytest.raises(NodeError, match="node 'node'.*hands21.*coco17"):
        run_node(BodyWarp, {"waist": 1.0}, keypoints=kp)


def test_blazepose_skeleton_matches_coco():
    frame, plate, mask, kp = vs.body_scene()
    from muse.graph.payloads import Keypoints

    pts = torch.zeros(33, 2)
    conf = torch.zeros(33)
    for c, b in ((5, 11), (6, 12), (11, 23), (12, 24)):
        pts[b], conf[b] = kp.points[c], kp.confidence[c]
    bp = Keypoints(pts, conf, "blazepose33", kp.image_size)
    m = Mask(torch.from_numpy(mask))
    a = run_node(BodyWarp, {"waist": 0.7}, keypoints=kp, mask=m)["field"].field
    b = run_node(BodyWarp, {"waist": 0.7}, keypoints=bp, mask=m)["field"].field
    assert torch.equal(a, b) and a.abs().max() > 1
