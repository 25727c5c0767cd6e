"""Soak: graphs/stream_4k.yaml on the demo source for minutes (issue 19).

Checks, over the run (figures printed; see muse/graph/soak.py for how each is measured):
- host memory stays flat: the RSS floor's slope over the second half is within a bound that scales
  with the run (20 MiB/min over the CI run's one-minute second half, 1.3 MiB/min over a 30-minute run);
- on CUDA, GPU memory stays flat: torch's reserved memory rises by at most one allocator block (20 MiB) over the second half and
  allocated memory's slope is under 1 MiB/min;
- timings do not drift: on CUDA the frame rate of the last quarter is within 5% of the first; on the
  CPU, whose two cores are shared with other jobs, the CPU time per frame grows by less than 10% once the
  drift all nodes share (the machine's) is taken out, and moves by less than 35% in all (the wall frame rate follows the
  machine's load, and is printed with the load average of each quarter);
- no frame is lost: every source frame the executor took reached the output, or a counted `latest`
  policy dropped it; no node error.

CI runs 120 s (`-m soak`); MUSE_SOAK_SECONDS=1800 for the long run, MUSE_SOAK_SIZE=WxH for another
demo size (CPU default 640x360: the CPU path at 1280x720 makes too few frames in two minutes).
`bench/soak.py` is the same run from the command line (the 9-minute GPU soak).
"""

from __future__ import annotations

import json
import os

import pytest

from muse.graph.registry import load_registry
from muse.graph.soak import REPO, soak_graph, stream_soak_text
from muse.graph.validate import validate_text

pytestmark = [pytest.mark.soak, pytest.mark.slow]

SECONDS = float(os.environ.get("MUSE_SOAK_SECONDS", "120"))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_stream_graph_soak(device):
    size = os.environ.get("MUSE_SOAK_SIZE") or ("640x360" if device == "cpu" else "3840x2160")
    w, h = (int(v) for v in size.lower().split("x"))
    graph = validate_text(stream_soak_text(w, h, 60.0, device), "graphs/stream_4k.yaml", load_registry(), base_dir=REPO / "graphs")
    report = soak_graph(graph, SECONDS, device=device, interval=max(1.0, SECONDS / 120))
    d = report.as_dict()
    print("\nsoak " + json.dumps(d))
    assert report.frames_out >= 20, f"too few frames to judge: {report.frames_out}"
    assert report.lost == 0, f"{report.lost} frames lost that no policy dropped (examples {report.lost_examples})"
    assert report.errors == 0, {n: s.get("last_error") for n, s in report.stats["nodes"].items() if s["errors"]}
    half_min = report.seconds / 120.0  # the second half, in minutes
    rss_bound = max(1.0, 20.0 / half_min)
    assert d["rss_floor_slope_mib_per_min_2nd_half"] < rss_bound, f"host memory grows: {d}"
    if device == "cuda":
        assert d["gpu_reserved_rise_mib_2nd_half"] <= 20.0, f"GPU memory reserved grows: {d}"  # one allocator block at most
        assert d["gpu_alloc_slope_mib_per_min_2nd_half"] < 1.0, f"GPU memory allocated grows: {d}"
        assert abs(d["fps_drift"]) < 0.05, f"frame rate drifts: {d}"
    else:
        # On the shared CPU the machine itself moves the CPU time per frame: other jobs, and a VM's neighbours
        # (two CI runs of the same code drifted -12.5 % and +13.2 % in two minutes, every node with the total).
        # So: within 10 % once what all nodes share is taken out (a node or the runtime slowing by itself
        # shows), and within 35 % in all (see docs/reliability.md).
        # Growth is what a soak is after: a fall is no leak. (CI, 2026-12-03 03:47: -10.0 % own with every node
        # flat, 16.34 -> 16.33 ms and so on; the output rate rose 9 % with the load, and the 60 fps demo source's
        # CPU, spread over fewer dropped frames per output frame, fell with it.)
        assert d["cpu_ms_per_frame_drift_own"] < 0.10, f"CPU time per frame grows beyond the machine's own drift: {d}"
        assert abs(d["cpu_ms_per_frame_drift"]) < 0.35, f"CPU time per frame drifts: {d}"
