"""bench/frame_timeline.py and the node markers it reads (muse/graph/markers.py): a replayed frame's timeline split
into busy and idle time, and each marked node's window, on a trace shaped as torch's profiler writes it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import frame_timeline  # noqa: E402

from muse.graph import markers  # noqa: E402


def _kernel(name: str, ts: float, dur: float, corr: int, stream: int) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr, "stream": stream}}


def test_marker_names_are_c_identifiers_per_node_and_edge():
    assert markers.marker_name("pose/bundled", "begin") == "muse_mark_pose_bundled_begin"
    assert markers.marker_name("face-2.x", "end") == "muse_mark_face_2_x_end"


def test_markers_off_launch_nothing():
    """Off (every run but `muse bench`'s traced profiled one), `mark` touches no device and needs no CuPy."""
    assert markers.ENABLED == [False]
    markers.mark("node", "begin", torch.cuda.current_stream() if torch.cuda.is_available() else object())


def test_timeline_splits_each_launch_and_names_nodes(tmp_path):
    """Two launches (frames): busy is the union of kernels on all lanes, idle the rest of the span; kernels of
    another launch or none (the source's) are outside the frames; markers give each node its window."""
    events = [{"ph": "X", "name": "cudaGraphLaunch", "ts": t, "dur": 5, "args": {"correlation": c}} for t, c in ((0, 1), (100, 2))]
    for c, base in ((1, 10), (2, 110)):
        events += [
            _kernel(markers.marker_name("segment/bundled", "begin"), base, 1, c, 7),
            _kernel("conv", base + 1, 20, c, 7),
            _kernel(markers.marker_name("segment/bundled", "end"), base + 21, 1, c, 7),
            _kernel(markers.marker_name("pose/bundled", "begin"), base + 2, 1, c, 8),
            _kernel("gemm", base + 3, 5, c, 8),
            _kernel(markers.marker_name("pose/bundled", "end"), base + 30, 1, c, 8),  # waited 22 us for something
        ]
    events.append(_kernel("demo_render", 12, 4, 99, 3))
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    report = frame_timeline.analyse(frame_timeline._load(trace))
    assert len(report["frames"]) == 2
    first = report["frames"][0]
    # from 10 to 41 us; something ran in [10, 32] and [40, 41]
    assert (first["span_us"], first["busy_us"], first["idle_us"], first["kernels"], first["short_kernels"]) == (31, 23, 8, 6, 4)
    assert first["outside_overlapping"] == 1 and report["outside_frames_us_per_frame"] == {"demo_render": 2.0}
    nodes = report["nodes"]
    assert list(nodes) == ["segment_bundled", "pose_bundled"]  # by when they began
    assert nodes["segment_bundled"] == {"begin_us": 0.0, "end_us": 22.0, "lane": 7, "frames": 2}
    assert nodes["pose_bundled"] == {"begin_us": 2.0, "end_us": 31.0, "lane": 8, "frames": 2}
