"""Progress of the long Studio steps (record, label, filter, train, export).

On a terminal: a tqdm bar with rate and ETA on stderr. Otherwise (a pipe, a
log file, the editor): one JSON object per line on stderr, at most one a
second plus the first and the last, so a GUI or a script can follow along.
Each line is also appended to the profile's `logs/progress.jsonl`.
`MUSE_PROGRESS=bar|json|off` overrides the choice.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

MODE_ENV = "MUSE_PROGRESS"


def progress_mode(stream: TextIO | None = None) -> str:
    """'bar' on a terminal, 'json' otherwise; MUSE_PROGRESS wins."""
    forced = os.environ.get(MODE_ENV, "").strip().lower()
    if forced in ("bar", "json", "off"):
        return forced
    stream = stream or sys.stderr
    try:
        return "bar" if stream.isatty() else "json"
    except (AttributeError, ValueError):
        return "json"


def _clean(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 5) if math.isfinite(v) else None  # strict JSON for any reader
    return v


class Progress:
    """One stage's progress: `update(n, **fields)` as work gets done, `close(**fields)` at the end."""

    def __init__(self, stage: str, total: int | None, *, unit: str = "frame", desc: str | None = None, initial: int = 0,
                 log_file: Path | None = None, mode: str | None = None, interval: float = 1.0, stream: TextIO | None = None) -> None:
        self.stage, self.total, self.unit = stage, total, unit
        self.done = initial
        self.fields: dict[str, Any] = {}
        self.stream = stream or sys.stderr
        self.mode = mode or progress_mode(self.stream)
        self.interval = interval
        self.log_file = log_file
        self._t0 = time.monotonic()
        self._start = initial
        self._last_emit = -1e9
        self._bar: Any = None
        self._closed = False
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc or stage, unit=unit, dynamic_ncols=True, file=self.stream)
        self._emit("start", force=True)

    def rate(self) -> float:
        elapsed = time.monotonic() - self._t0
        return (self.done - self._start) / elapsed if elapsed > 0 else 0.0

    def record(self, event: str) -> dict[str, Any]:
        rate = self.rate()
        left = None if not self.total or rate <= 0 else max(0.0, (self.total - self.done) / rate)
        rec = {"stage": self.stage, "event": event, "done": self.done, "total": self.total, "unit": self.unit,
               "rate": rate, "eta_s": left, "elapsed_s": time.monotonic() - self._t0, **self.fields}
        return {k: _clean(v) for k, v in rec.items()}

    def _emit(self, event: str, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_emit < self.interval:
            return
        self._last_emit = now
        line = json.dumps(self.record(event))
        if self.mode == "json":
            print(line, file=self.stream, flush=True)
        if self.log_file is not None:
            with open(self.log_file, "a") as fh:
                fh.write(line + "\n")

    def update(self, n: int = 1, **fields: Any) -> None:
        self.done += n
        if fields:
            self.fields.update(fields)
            if self._bar is not None:
                self._bar.set_postfix({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in fields.items()}, refresh=False)
        if self._bar is not None:
            self._bar.update(n)
        self._emit("progress")

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.total = total
            self._bar.refresh()

    def close(self, **fields: Any) -> None:
        if self._closed:
            return
        self._closed = True
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self._emit("done", force=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close(**({"stopped": exc[0].__name__} if exc[0] is not None else {}))


def for_profile(profile: Any, stage: str, total: int | None, **kw: Any) -> Progress:
    """A Progress whose lines also go to the profile's logs/progress.jsonl."""
    return Progress(stage, total, log_file=profile.progress_log_path, desc=f"{stage} {profile.name}", **kw)
