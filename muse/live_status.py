"""The one-line live status `muse run` keeps updated on a terminal:

    muse: 29.8 fps | latency 62 ms | drops 3 | camera demo | segment bundled | pose bundled | cpu

Updated about once a second in place (carriage return); nothing at all when stderr
is not a terminal (a log file or a pipe stays clean), or with `muse run --no-status`.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Any, TextIO

__all__ = ["LiveStatus", "status_line"]


def status_line(stats: Any, fps: float, device: str = "") -> str:
    """The status text from a GraphStats and the measured output rate."""
    lat = list(stats.latency_ms)[-60:]
    parts = [f"{fps:5.1f} fps", f"latency {statistics.median(lat):.0f} ms" if lat else "latency -"]
    drops = sum(ns.drops for ns in stats.nodes.values())
    parts.append(f"drops {drops}")
    totals = stats.fault_totals() if hasattr(stats, "fault_totals") else {}
    for key, label in (("errors", "errors"), ("nan", "NaN"), ("stalls", "stalls"), ("oom", "out of memory")):
        if totals.get(key):
            parts.append(f"{label} {totals[key]}")
    stalled = [name for name, ns in list(stats.nodes.items()) if ns.info.get("stalled")]
    if stalled:
        parts.append("stalled: " + ", ".join(stalled))
    for name, ns in list(stats.nodes.items()):
        mode = ns.info.get("mode")
        if mode is not None and "live" in ns.info:  # segment.hybrid's live model
            parts.append(f"segmentation {mode} ({ns.info['live']})")
        elif "branches" in ns.info and "live" in ns.info:  # a switch: its live branch ("segment bundled")
            parts.append(f"{name.removesuffix('/switch')} {ns.info['live']}")
    if device:
        parts.append(device)
    return "muse: " + " | ".join(parts)


class LiveStatus:
    def __init__(self, runner: Any, stream: TextIO | None = None, *, every_s: float = 1.0, enabled: bool = True) -> None:
        self.runner = runner
        self.stream = stream or sys.stderr
        self.every_s = every_s
        isatty = getattr(self.stream, "isatty", None)
        self.enabled = enabled and bool(isatty and isatty())
        self._t = time.perf_counter()
        self._frames = 0
        self._width = 0
        self._handlers: list[logging.Handler] = []
        if self.enabled:  # a log message clears the status line first, so it starts on a clean line
            for h in logging.getLogger().handlers:
                if getattr(h, "stream", None) is self.stream:
                    h.addFilter(self._clear_line)
                    self._handlers.append(h)

    def _clear_line(self, record: logging.LogRecord) -> bool:
        if self._width:
            self.stream.write("\r\x1b[K")
            self._width = 0
        return True

    def tick(self) -> None:
        """Call often; redraws when `every_s` has passed."""
        if not self.enabled:
            return
        now = time.perf_counter()
        if now - self._t < self.every_s:
            return
        stats = self.runner.stats
        frames = stats.frames_out
        fps = (frames - self._frames) / (now - self._t)
        self._t, self._frames = now, frames
        text = status_line(stats, fps, str(getattr(self.runner, "device", "")))
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def end(self) -> None:
        """Leave the terminal on a fresh line so the summary starts clean."""
        for h in self._handlers:
            h.removeFilter(self._clear_line)
        self._handlers = []
        if self.enabled and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
