"""The stall watchdog: a thread that notices a node call running past its budget while it still runs.

A call that ends over budget is counted by the thread that made it (`stalls` in the node's
stats). A call that does not end is the watchdog's: it warns once the budget is passed, then
every `REPEAT_S`, and keeps `info.stalled` ("running 12.0 s, budget 1000 ms") on the node for
`--stats`, the live status line and the editor. (A node that is slow on every call is
named at most once every `REPEAT_S`.) What happens meanwhile:

- an output (sink) runs on its own thread: the others keep running; while it is stalled the
  executor no longer waits for room in its queue (its frames are dropped and counted);
- a secondary source never holds the stream (its last frame is used); the first source paces
  the stream, so no new frame comes until it returns;
- a processing node runs on the executor thread and Python cannot interrupt it: the stream
  waits for it, and the warning names it. After `settings.hang_after_s` (and at least five
  budgets) the node is left behind: a new executor thread takes over (on the CPU path with
  two frames in flight, the tail thread is given up instead and whole frames run on the
  executor), the node is skipped as its `on_error` says (`stop` stops the graph), and when the
  call finally returns, the old thread ends quietly and the node runs again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger("muse.runtime")

REPEAT_S = 30.0  # a call that never returns is named again this often (the log stays readable)


WARMUP_CALLS = 1  # a processing node's first call loads and captures its models (their compiles run in the background)
WARMUP_BUDGET_MS = 60_000.0  # ... so it gets this budget instead of its own


def warming_up(runner: Any, slot: Any) -> bool:
    """A processing node's first call, and a frame being recorded, get `WARMUP_BUDGET_MS`: models load, cuDNN
    picks kernels, Inductor compiles and the frame program records there (seconds on a cold start). Sources and
    outputs keep their own budget (a sink that hangs on its first frame is a hang)."""
    if slot.rn.cls.is_source() or slot.rn.cls.is_sink():
        return False
    return slot.stats.frames < WARMUP_CALLS or bool(getattr(runner, "_recording", False))


def budget_ms(runner: Any, slot: Any) -> float:
    """The budget this call of the node is held to."""
    own = float(slot.rn.policy.budget_ms)
    return max(own, WARMUP_BUDGET_MS) if warming_up(runner, slot) else own


class StallWatchdog:
    def __init__(self, runner: Any, every_s: float = 0.1) -> None:  # noqa: D107
        self.runner = runner
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="muse-watchdog", daemon=True)
        self._next_warn: dict[str, float] = {}  # node -> when it may be named again

    def start(self) -> "StallWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # the watchdog must never take the stream down
                log.debug("stall watchdog", exc_info=True)

    def check(self, now: float | None = None) -> None:
        now = time.perf_counter() if now is None else now
        for slot in list(self.runner.slots.values()):
            started = slot.call_started
            if started is None:
                continue
            ran = now - started
            budget_s = budget_ms(self.runner, slot) / 1000.0
            if ran <= budget_s:
                continue
            if slot.hung:
                continue  # left behind already; the executor says when it returns
            slot.stats.info["stalled"] = f"running {ran:.1f} s, budget {slot.rn.policy.budget_ms:.0f} ms"
            cls = slot.rn.cls
            hang_s = max(self.runner.graph.settings.hang_after_s, 5 * budget_s)
            if ran > hang_s and not cls.is_source() and not cls.is_sink():
                self.runner._leave_behind(slot, ran)
                continue
            if not slot.stall_warned:
                slot.stall_warned = True
                # Once per node per REPEAT_S: a node that is merely slow on every call must not flood the log.
                if now >= self._next_warn.get(slot.name, 0.0):
                    self._next_warn[slot.name] = now + REPEAT_S
                    log.warning("node '%s' (%s) has been running for %.1f s, over its budget of %.0f ms: %s",
                                slot.name, slot.rn.type, ran, slot.rn.policy.budget_ms, self._consequence(slot))
            elif now >= self._next_warn.get(slot.name, 0.0):
                self._next_warn[slot.name] = now + REPEAT_S
                log.warning("node '%s' (%s) is still running after %.0f s", slot.name, slot.rn.type, ran)

    def _consequence(self, slot: Any) -> str:
        cls = slot.rn.cls
        if cls.is_sink():
            return "the other outputs keep running; its frames are dropped (counted) until it returns"
        if cls.is_source():
            if self.runner._is_secondary_source(slot.name):
                return "the stream keeps its last frame"
            return "the stream gets no new frame until it returns"
        hang_s = max(self.runner.graph.settings.hang_after_s, 5 * slot.rn.policy.budget_ms / 1000.0)
        return f"the stream waits for it; if it still runs after {hang_s:.0f} s, the stream goes on without it"
