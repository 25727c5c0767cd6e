"""Shared pieces of the detect-then-track nodes: loading a bundled model with
an actionable error, and a one-frame-late host copy of the "still tracking"
flag so the next frame can skip the detector without a device sync.
"""

from __future__ import annotations

import torch


def load_bundled(node: str, name: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A bundled MediaPipe model converted to torch (muse.models.bundled), in eval mode."""
    from muse.graph.node import NodeError  # here, not at the top: benchmarks use this module without pydantic
    try:
        from muse.models.bundled import load_model
    except ImportError as exc:
        raise NodeError(f"node {node!r}: the bundled model layer is not available ({exc}); update MUSE") from exc
    try:
        model = load_model(name, device=device, dtype=dtype)
    except FileNotFoundError as exc:
        raise NodeError(f"node {node!r}: bundled model {name!r} is not imported ({exc}); run `muse models import {name}`") from exc
    return model.eval()


class HostFlag:
    """A device bool copied to pinned host memory without blocking.

    `publish` queues the copy on the current stream; `read` (next frame) waits
    only for that copy, which finished long ago, so the device never stalls.
    """

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.host = torch.zeros(1, dtype=torch.bool, pin_memory=self.cuda)
        self.event: torch.cuda.Event | None = None

    def publish(self, value: torch.Tensor) -> None:
        self.host.copy_(value.reshape(1), non_blocking=self.cuda)
        if self.cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def read(self) -> bool:
        if self.event is not None:
            self.event.synchronize()  # one small copy from the previous frame
        return bool(self.host[0])

    def reset(self) -> None:
        self.host.zero_()
        self.event = None
