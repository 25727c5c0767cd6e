"""Picking up a newly exported student while streaming: the one watcher `segment.student`
and `segment.hybrid` share.

A background thread stats the profile's live model every `watch_s` (no I/O on the frame
path); on a new file (inode, mtime, size) with new content (sha256) it loads the model next
to the running one, on its own CUDA stream, and hands it over. The frame thread takes it at
the start of a frame (`take()`, never waiting) and closes the old model a few frames later
(`Retired`), when no queued frame uses it any more. A file that does not load leaves the
running model alone and is reported as `last_swap_error`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Callable

import torch

from muse.graph.node import NodeContext
from muse.graph.streams import new_stream
from muse.models.backends import file_sha256
from muse.nodes.segment.student import LoadedStudent, profile_live_model

__all__ = ["Retired", "StudentWatcher", "file_signature"]

log = logging.getLogger("muse.segment.student")


def file_signature(path: Path) -> tuple | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)  # inode: the studio swaps a symlinked folder


class StudentWatcher:
    def __init__(self, name: str, profile: Path, load: Callable[[Path], LoadedStudent], ctx: NodeContext,
                 watch_s: Callable[[], float], loaded: Path | None = None) -> None:
        self.name, self.profile, self.load, self.ctx, self.watch_s = name, profile, load, ctx, watch_s
        self.seen = file_signature(loaded) if loaded is not None else None
        self.digest = file_sha256(loaded) if loaded is not None else ""
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._pending: tuple[LoadedStudent, str] | None = None
        self._thread = threading.Thread(target=self._loop, name=f"{name}-student-watch", daemon=True)

    def start(self) -> "StudentWatcher":
        self._thread.start()
        return self

    def take(self) -> LoadedStudent | None:
        """A newly loaded student, once (None most frames: no lock taken then)."""
        if self._pending is None:
            return None
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return None
        self.digest = pending[1]
        return pending[0]

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        with self._lock:
            if self._pending is not None:
                self._pending[0].close()
                self._pending = None

    def _loop(self) -> None:
        ctx = self.ctx
        side = new_stream(ctx.device) if ctx.cuda else None
        while not self._stop.wait(self.watch_s()):
            try:
                path = profile_live_model(self.profile)
            except Exception:
                continue  # no live model (yet): nothing to pick up
            sig = file_signature(path)
            if sig is None or sig == self.seen:
                continue
            self.seen = sig
            try:
                digest = file_sha256(path)
                if digest == self.digest:
                    continue
                if side is not None:
                    with torch.cuda.device(ctx.device), torch.cuda.stream(side):
                        student = self.load(path)
                        side.synchronize()  # loader thread only: the frame path never waits on this
                else:
                    student = self.load(path)
            except Exception as exc:  # keep the running model; the next change is tried again
                log.warning("%s: new student model %s failed to load, keeping the current one: %s", self.name, path, exc)
                ctx.report("last_swap_error", f"{path}: {type(exc).__name__}: {exc}")
                continue
            with self._lock:
                if self._pending is not None:
                    self._pending[0].close()
                self._pending = (student, digest)


class Retired:
    """Models replaced while streaming, closed a few frames later (frames queued on the stream may still use them)."""

    def __init__(self, delay: int = 3) -> None:
        self.delay = delay
        self.frames = 0
        self._due: list[tuple[int, Callable[[], None]]] = []

    def add(self, closer: Callable[[], None]) -> None:
        self._due.append((self.frames + self.delay, closer))

    def tick(self) -> None:
        self.frames += 1
        if not self._due:
            return
        now = [c for f, c in self._due if f <= self.frames]
        self._due = [(f, c) for f, c in self._due if f > self.frames]
        for closer in now:
            closer()

    def close(self) -> None:
        for _, closer in self._due:
            closer()
        self._due = []
