"""A replayed output carries the current frame's timing (`retime`), as a cheap shallow copy."""

from __future__ import annotations

import torch

from muse.graph.replayed import retime, timing_of
from muse.graph.payloads import Frame, Mask


def test_retime_sets_the_frames_timing_and_shares_the_pixels() -> None:
    image = torch.zeros(4, 6, 3, dtype=torch.uint8)
    recorded = Frame(image, timestamp=1.0, index=7)
    now = Frame(torch.ones(2, 2, 3, dtype=torch.uint8), timestamp=2.5, index=9)
    out = retime(recorded, now, timing_of(now))
    assert (out.timestamp, out.index) == (2.5, 9) and type(out) is Frame
    assert out.image is image and out.layout == "hwc"
    assert (recorded.timestamp, recorded.index) == (1.0, 7)  # the recording's own payload is untouched
    assert retime(recorded, now).timestamp == 2.5  # without the precomputed timing too


def test_retime_drops_the_sink_copy_mark_and_leaves_other_values_alone() -> None:
    marked = Frame(torch.zeros(2, 2, 3, dtype=torch.uint8)).sink_copy()
    assert marked.is_sink_copy()
    out = retime(marked, Frame(torch.zeros(2, 2, 3, dtype=torch.uint8), timestamp=3.0))
    assert not out.is_sink_copy() and out.timestamp == 3.0
    assert retime(5, marked) == 5 and retime(marked, None) is marked
    mask = Mask(torch.zeros(2, 2))
    assert retime(mask, Frame(torch.zeros(2, 2, 3, dtype=torch.uint8), timestamp=4.0)).alpha is mask.alpha
