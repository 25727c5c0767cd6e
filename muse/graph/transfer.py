"""Host <-> device copies through pinned staging buffers.

Capture nodes upload camera frames and output nodes download finished frames;
both go through a small ring of page-locked buffers so the copy is
asynchronous on the node's stream and overlaps the GPU work of other nodes.
A buffer is reused only after the copy that used it has completed (an event
wait on that one copy, never a device-wide synchronize).
"""

from __future__ import annotations

import numpy as np
import torch


class PinnedRing:
    """A ring of pinned host buffers of one shape and dtype."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.uint8, slots: int = 3) -> None:
        self.shape = tuple(shape)
        self.dtype = dtype
        pin = torch.cuda.is_available()
        self.buffers = [torch.empty(self.shape, dtype=dtype, pin_memory=pin) for _ in range(slots)]
        self.events: list[torch.cuda.Event | None] = [None] * slots
        self._next = 0

    def take(self) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % len(self.buffers)
        ev = self.events[i]
        if ev is not None:
            ev.synchronize()  # only this slot's earlier copy; other work keeps running
            self.events[i] = None
        return i, self.buffers[i]

    def mark(self, slot: int, event: torch.cuda.Event) -> None:
        self.events[slot] = event


class Uploader:
    """Copies host frames (numpy or CPU tensors) to a device, asynchronously when it is a GPU."""

    def __init__(self, device: torch.device, slots: int = 3) -> None:
        self.device = torch.device(device)
        self.slots = slots
        self._rings: dict[tuple, PinnedRing] = {}

    def __call__(self, array: np.ndarray | torch.Tensor) -> torch.Tensor:
        host = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
        if self.device.type != "cuda":
            return host.to(self.device)
        key = (tuple(host.shape), host.dtype)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = PinnedRing(key[0], key[1], self.slots)
        slot, pinned = ring.take()
        pinned.copy_(host)
        out = pinned.to(self.device, non_blocking=True)
        ev = torch.cuda.Event(blocking=True)
        ev.record(torch.cuda.current_stream(self.device))
        ring.mark(slot, ev)
        return out


class Downloader:
    """Copies device tensors to host memory; returns a numpy view valid until the next call with that shape."""

    def __init__(self, slots: int = 2) -> None:
        self.slots = slots
        self._rings: dict[tuple, PinnedRing] = {}

    def __call__(self, tensor: torch.Tensor) -> np.ndarray:
        if tensor.device.type != "cuda":
            return tensor.contiguous().numpy()
        key = (tuple(tensor.shape), tensor.dtype)
        ring = self._rings.get(key)
        if ring is None:
            ring = self._rings[key] = PinnedRing(key[0], key[1], self.slots)
        slot, pinned = ring.take()
        pinned.copy_(tensor, non_blocking=True)
        ev = torch.cuda.Event(blocking=True)
        ev.record(torch.cuda.current_stream(tensor.device))
        ev.synchronize()  # the host needs the bytes now; waits on this copy only (sink thread)
        return pinned.numpy()
