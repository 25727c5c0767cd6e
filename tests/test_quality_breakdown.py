"""bench/quality.py's flicker breakdown (issue 14, session 6): on the astronaut's real silhouette walking to the
right, a matte that arrives one frame late is charged at the person's edge, leaves late where she has gone
(trailing error > 0) and arrives late where she comes (leading error < 0); a perfect matte costs nothing, and
a constant false person in the room costs nothing while the room is still."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

import segment_scenes as scenes

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import quality  # noqa: E402


def _walk(frames: int = 4, step: int = 5) -> list[np.ndarray]:
    """The astronaut's paste mask, soft-edged as a real matte, moving `step` pixels right a frame."""
    _, mask = scenes.person_cutout(256)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 1.0)
    return [np.roll(soft, step * i, axis=1) for i in range(frames)]


def _clip(truth: list[np.ndarray]) -> quality.Clip:
    blank = np.zeros((*truth[0].shape, 3), np.uint8)
    return quality.Clip("walk", [blank] * len(truth), truth, blank)


def test_a_late_matte_is_charged_at_the_edge_with_the_lag_signed():
    truth = _walk()
    late = [truth[0]] + truth[:-1]  # each frame shows where she was a frame ago
    row = quality.score_clip(late, _clip(truth), [], breakdown=True).row()
    parts = row["flicker_edge_x1e3"] + row["flicker_inside_x1e3"] + row["flicker_room_x1e3"]
    assert abs(parts - row["flicker_x1e3"]) < 1e-3 * row["flicker_x1e3"]  # the parts are the flicker
    assert row["flicker_edge_x1e3"] > 0.95 * row["flicker_x1e3"] > 0  # nearly all of it where she moved (measured 98 %)
    assert row["trailing"] > 0.5 and row["leading"] < -0.5, (row["trailing"], row["leading"])


def test_a_perfect_matte_and_a_still_false_person_cost_nothing():
    truth = _walk()
    exact = quality.score_clip(list(truth), _clip(truth), [], breakdown=True).row()
    assert exact["flicker_x1e3"] == 0.0 and exact["flicker_edge_x1e3"] == 0.0
    assert abs(exact["leading"]) < 1e-6 and abs(exact["trailing"]) < 1e-6
    ghost = np.zeros_like(truth[0])
    ghost[10:60, 200:250] = 1.0  # a patch of room the matte calls person in every frame (she never gets there)
    assert not (np.maximum.reduce(truth)[10:60, 200:250] > 0.01).any()
    with_ghost = quality.score_clip([np.maximum(t, ghost) for t in truth], _clip(truth), [], breakdown=True).row()
    assert with_ghost["flicker_x1e3"] == 0.0 and with_ghost["flicker_room_x1e3"] == 0.0
    assert with_ghost["mean_iou"] < exact["mean_iou"]  # the IoU sees it, the flicker does not


def test_extra_clips_render_real_people_with_exact_alpha():
    """bench/quality_extra.py: five other combinations of the same renderer, each with its people in every frame
    (alpha in [0, 1], someone visible), moving (the truth changes frame to frame) and distinctly named."""
    import quality_extra

    clips = list(quality_extra.clips(72, 8))
    assert len({c.name for c in clips}) == len(clips) == 5
    for clip in clips:
        assert len(clip.frames) == len(clip.alphas) == 8 and clip.frames[0].shape == (72, 128, 3)
        assert all(0.0 <= a.min() and a.max() <= 1.0 + 1e-6 and (a > 0.5).mean() > 0.02 for a in clip.alphas), clip.name
        assert np.abs(clip.alphas[7] - clip.alphas[0]).sum() > 1.0, clip.name
