"""The soak report's arithmetic: a long GPU start-up (frames recorded for tens of seconds) is not drift."""

from __future__ import annotations

from muse.graph.soak import Sample, SoakReport


def _report(first_frame: int, fps_late: float) -> SoakReport:
    r = SoakReport(device="test", seconds=100.0)
    frames = 0.0
    for t in range(101):
        if t > first_frame:
            frames += 60.0 if t < 75 else fps_late
        r.samples.append(Sample(t=float(t), frames=int(frames), cpu_s=t * 0.1, rss_mib=500.0))
    return r


def test_start_up_longer_than_a_tenth_of_the_run_is_not_counted_as_drift() -> None:
    r = _report(first_frame=28, fps_late=60.0)
    assert r.first_frame_s == 29.0
    assert abs(r.fps_drift) < 1e-9
    assert r.as_dict()["first_frame_s"] == 29.0


def test_a_real_slowdown_is_drift() -> None:
    r = _report(first_frame=5, fps_late=48.0)
    assert -0.25 < r.fps_drift < -0.15


def test_per_node_cpu_tells_which_node_drifts() -> None:
    r = _report(first_frame=5, fps_late=60.0)
    for s in r.samples:
        s.node_cpu_ms = {"matte": 20.0, "composite": 10.0 + (5.0 if s.t >= 75 else 0.0)}
    quarters = r.as_dict()["node_cpu_ms_first_last_quarter"]
    assert quarters["matte"] == [20.0, 20.0]
    assert quarters["composite"][0] == 10.0 and quarters["composite"][1] == 15.0
