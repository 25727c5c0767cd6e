"""filter_bad_data on crafted bad frames built from a real person-over-room scene."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from muse.studio.filter import filter_bad_data, measure
from muse.studio.synthetic import SyntheticScene


@pytest.fixture(scope="module")
def scene_frames():
    scene = SyntheticScene(256, 144)
    return [scene.frame(i * 3) for i in range(14)]  # every 3rd frame: the person moves visibly


def _records(frames, overrides=None):
    recs = []
    for i, (rgb, alpha) in enumerate(frames):
        rgb, mask, kps, agreement = rgb, alpha, None, 1.0
        if overrides and i in overrides:
            rgb, mask, kps, agreement = overrides[i](rgb, alpha)
        recs.append({"id": f"take_{i:06d}", "recording": "take", "index": i, "stats": measure(rgb, mask, kps, agreement)})
    return recs


def test_good_frames_are_all_kept(scene_frames):
    report = filter_bad_data(_records(scene_frames))
    assert report.dropped == {}
    assert len(report.kept) == len(scene_frames)


def test_each_crafted_bad_frame_is_dropped_for_its_reason(scene_frames):
    def blurred(rgb, a):
        return cv2.GaussianBlur(rgb, (0, 0), 4), a, None, 1.0

    def dark(rgb, a):
        return (rgb * 0.08).astype(np.uint8), a, None, 1.0

    def empty(rgb, a):  # the person left: the label is empty
        return rgb, np.zeros_like(a), None, 1.0

    def duplicate(rgb, a):  # a frozen camera repeats the previous picture
        prev_rgb, prev_a = scene_frames[6]
        return prev_rgb.copy(), prev_a, None, 1.0

    def disagree(rgb, a):
        return rgb, a, None, 0.4

    def kps_outside(rgb, a):
        h, w = a.shape
        kps = np.array([[5, 5, 0.9], [w - 5, 5, 0.9], [6, h - 6, 0.9], [w * 0.5, h * 0.9, 0.9]], np.float32)
        return rgb, a, kps, 1.0

    def area_jump(rgb, a):  # half the person vanished for one frame
        a2 = a.copy()
        a2[: a.shape[0] * 2 // 3] = 0
        return rgb, a2, None, 1.0

    def centroid_jump(rgb, a):  # the mask sits in the wrong place for one frame
        return rgb, np.roll(a, a.shape[1] // 3, axis=1), None, 1.0

    crafted = {1: blurred, 3: dark, 5: empty, 7: duplicate, 9: disagree, 10: kps_outside, 12: area_jump}
    report = filter_bad_data(_records(scene_frames, crafted))
    expect = {1: "blur", 3: "exposure", 5: "empty", 7: "duplicate", 9: "disagree", 10: "keypoints_outside", 12: "area_jump"}
    for i, reason in expect.items():
        assert reason in report.dropped.get(f"take_{i:06d}", []), (i, reason, report.dropped)
    # frames next to a glitch are not punished for it
    for i in (0, 2, 4, 6, 8, 11, 13):
        assert f"take_{i:06d}" in report.kept, (i, report.dropped)
    counts = report.counts()
    assert counts["blur"] >= 1 and counts["duplicate"] == 1
    md = report.markdown()
    assert "keypoints_outside" in md and "take_000003" in md

    report2 = filter_bad_data(_records(scene_frames, {6: centroid_jump}))
    assert "centroid_jump" in report2.dropped["take_000006"]
    assert len(report2.dropped) == 1


def test_keypoints_inside_the_person_are_fine(scene_frames):
    rgb, a = scene_frames[4]
    ys, xs = np.nonzero(a > 0.5)
    kps = np.stack([xs[::500], ys[::500], np.full(len(xs[::500]), 0.9)], 1).astype(np.float32)
    st = measure(rgb, a, kps)
    assert st["keypoints_outside"] == 0.0
