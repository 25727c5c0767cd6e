"""`muse run`'s live status line: shown on a terminal about once a second, silent otherwise."""

from __future__ import annotations

import io
import logging

from muse.graph.stats import GraphStats
from muse.live_status import LiveStatus, status_line


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class _Runner:
    def __init__(self) -> None:
        self.stats = GraphStats()
        self.device = "cpu"


def _running() -> _Runner:
    r = _Runner()
    seg = r.stats.node("segment", "segment.hybrid")
    seg.info.update({"mode": "bundled", "live": "selfie"})
    r.stats.node("camera", "capture.camera").drops = 3
    for ms in (40.0, 50.0, 60.0):
        r.stats.add_latency(ms)
    return r


def test_line_names_fps_latency_drops_and_segmentation_mode():
    r = _running()
    line = status_line(r.stats, 29.84, "cpu")
    assert "29.8 fps" in line and "latency 50 ms" in line and "drops 3" in line
    assert "segmentation bundled (selfie)" in line and line.endswith("cpu")


def test_line_names_each_switchs_live_branch():
    r = _running()
    r.stats.node("segment/switch", "flow.switch").info.update({"live": "personalized", "branches": {"personalized": "live"}})
    r.stats.node("camera", "flow.switch").info.update({"live": "demo", "branches": {"webcam": "failed: no camera", "demo": "live"}})
    line = status_line(r.stats, 30.0)
    assert "segment personalized" in line and "camera demo" in line


def test_updates_in_place_on_a_terminal_about_once_a_second():
    r, out = _running(), _Tty()
    status = LiveStatus(r, out, every_s=0.0)
    r.stats.frames_out = 10
    status.tick()
    status.tick()
    text = out.getvalue()
    assert text.count("\r") == 2 and "\n" not in text
    assert "drops 3" in text
    slow = LiveStatus(r, _Tty(), every_s=3600.0)
    slow.tick()
    assert slow.stream.getvalue() == ""  # not yet a second (here: an hour) since the start
    status.end()
    assert out.getvalue().endswith("\n")


def test_silent_when_not_a_terminal_or_switched_off():
    r, pipe = _running(), io.StringIO()
    status = LiveStatus(r, pipe, every_s=0.0)
    status.tick()
    status.end()
    assert pipe.getvalue() == ""
    off = LiveStatus(r, _Tty(), every_s=0.0, enabled=False)
    off.tick()
    assert off.stream.getvalue() == ""


def test_a_log_message_starts_on_a_clean_line():
    r, out = _running(), _Tty()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        status = LiveStatus(r, out, every_s=0.0)
        status.tick()
        logging.getLogger("muse.test").warning("camera lost")
        status.end()
    finally:
        root.removeHandler(handler)
    text = out.getvalue()
    assert "\r\x1b[Kcamera lost" in text
    assert not handler.filters  # the filter is removed again
