"""Frame pacing for sources and sinks: sleep until frame i is due at `fps`.

A source paced this way behaves like a camera (frames arrive at the rate the
graph expects) without drifting: deadlines are computed from the start time,
not from the previous frame."""

from __future__ import annotations

import time


class Pacer:
    """Sleeps until `start + index / fps`; fps 0 means no pacing."""

    def __init__(self, fps: float) -> None:
        self.fps = float(fps)
        self.start: float | None = None

    def wait(self, index: int) -> None:
        if self.fps <= 0:
            return
        now = time.perf_counter()
        if self.start is None:
            self.start = now
            return
        due = self.start + index / self.fps
        if due - now > 0:
            time.sleep(due - now)
        elif now - due > 1.0:  # far behind (a stall): restart the clock instead of bursting
            self.start = now - index / self.fps

    def reset(self) -> None:
        self.start = None
