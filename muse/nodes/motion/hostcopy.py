"""Getting small tracking tensors to the host without making the frame wait.

`process` of a tracking output starts a non-blocking copy into a pinned host
slot it owns and records a CUDA event; the output's own thread waits on that
event (only that thread waits) and reads the numbers. Slots are allocated on
first use (or when a shape changes) and reused; a slot still being read is
never written: the frame is dropped and counted instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class Snapshot:
    """One frame's tracking numbers on the host (valid once `ready()` returned)."""

    index: int = 0
    timestamp: float = 0.0
    image_size: tuple[int, int] = (0, 0)
    skeleton: str = ""
    host: dict[str, torch.Tensor] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)  # which tensors this frame has
    event: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def ready(self) -> None:
        """Block the calling (output) thread until the copies have landed."""
        if self.event is not None:
            self.event.synchronize()

    def array(self, name: str) -> np.ndarray | None:
        return self.host[name].numpy() if name in self.present else None

    def release(self) -> None:
        if self.lock.locked():
            self.lock.release()


class HostRing:
    """A fixed ring of host snapshots; `capture` never blocks."""

    def __init__(self, device: torch.device, slots: int) -> None:
        self.device = device
        self.slots = [Snapshot() for _ in range(slots)]
        self.next = 0
        self.dropped = 0

    def capture(self, tensors: dict[str, torch.Tensor | None], *, index: int, timestamp: float,
                image_size: tuple[int, int], skeleton: str = "") -> Snapshot | None:
        """Start copying `tensors` into the next free slot; None (and a drop counted) when it is still in use."""
        slot = self.slots[self.next]
        if not slot.lock.acquire(blocking=False):
            self.dropped += 1
            return None
        self.next = (self.next + 1) % len(self.slots)
        cuda = self.device.type == "cuda"
        slot.present = set()
        for name, t in tensors.items():
            if t is None:
                continue
            t = t.detach()
            buf = slot.host.get(name)
            if buf is None or buf.shape != t.shape:
                buf = slot.host[name] = torch.empty(t.shape, dtype=torch.float32, pin_memory=cuda)
            buf.copy_(t, non_blocking=cuda)
            slot.present.add(name)
        if cuda:
            ev = torch.cuda.Event()
            ev.record(torch.cuda.current_stream(self.device))
            slot.event = ev
        else:
            slot.event = None
        slot.index, slot.timestamp, slot.image_size, slot.skeleton = index, timestamp, image_size, skeleton
        return slot


class Newest:
    """A one-item mailbox: a newer snapshot replaces (and releases) one not yet taken."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._item: Snapshot | None = None
        self.replaced = 0

    def put(self, snap: Snapshot) -> None:
        with self._cv:
            if self._item is not None:
                self._item.release()
                self.replaced += 1
            self._item = snap
            self._cv.notify()

    def take(self, timeout: float) -> Snapshot | None:
        with self._cv:
            if self._item is None:
                self._cv.wait(timeout)
            item, self._item = self._item, None
            return item

    def wake(self) -> None:
        with self._cv:
            self._cv.notify_all()


def capture_tracking(ring: HostRing, keypoints: Any = None, face: Any = None) -> Snapshot | None:
    """Snapshot of a frame's body keypoints and face landmarks (either may be None)."""
    ref = keypoints if keypoints is not None else face
    if ref is None:
        return None
    tensors: dict[str, torch.Tensor | None] = {"body": None, "body_conf": None, "face": None, "face_conf": None}
    if keypoints is not None:
        tensors["body"] = keypoints.points
        tensors["body_conf"] = keypoints.confidence
    if face is not None:
        tensors["face"] = face.points
        conf = face.confidence
        tensors["face_conf"] = conf.reshape(1) if isinstance(conf, torch.Tensor) else torch.tensor([float(conf)])
    return ring.capture(tensors, index=int(ref.index), timestamp=float(ref.timestamp), image_size=tuple(ref.image_size),
                        skeleton=getattr(keypoints, "skeleton", "") if keypoints is not None else "")
