"""Live preview of a Frame or Mask output: a runner tap shrinks the payload on
its own device and copies it to the host without stalling the runtime thread;
the editor polls for the newest picture and letterboxes it into a texture."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from muse.graph.payloads import Frame, Mask
from muse.graph.streams import new_stream

PREVIEWABLE = ("Frame", "Mask")


def preview_image(payload: Any, max_w: int, max_h: int) -> torch.Tensor:
    """(h, w, 3) uint8 on the payload's device, fitting in max_w x max_h with the aspect kept."""
    if isinstance(payload, Frame):
        img = payload.chw(torch.float32)
    elif isinstance(payload, Mask):
        img = payload.alpha.float().clamp(0, 1).unsqueeze(0).expand(3, -1, -1)
    else:
        raise TypeError(f"only Frame and Mask outputs can be previewed, got {type(payload).__name__}")
    _, h, w = img.shape
    scale = min(max_w / w, max_h / h, 1.0)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size != (h, w):
        # area averaging keeps thin mask edges visible at small sizes
        img = F.interpolate(img.unsqueeze(0), size=size, mode="area")[0]
    return img.clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()


def to_texture(img: np.ndarray, tex_w: int, tex_h: int) -> np.ndarray:
    """Letterbox an (h, w, 3) uint8 picture into a flat RGBA float32 buffer of tex_w x tex_h (DearPyGui's raw texture)."""
    out = np.zeros((tex_h, tex_w, 4), np.float32)
    out[..., 3] = 1.0
    h, w = img.shape[:2]
    h, w = min(h, tex_h), min(w, tex_w)
    y, x = (tex_h - h) // 2, (tex_w - w) // 2
    out[y : y + h, x : x + w, :3] = img[:h, :w, :3].astype(np.float32) / 255.0
    return out.reshape(-1)


class PreviewTap:
    """Callable given to `runner.tap`; called on the runtime thread, so it only
    queues GPU work and returns. At most one picture is in flight."""

    def __init__(self, max_w: int = 480, max_h: int = 270) -> None:
        self.max_w, self.max_h = max_w, max_h
        self._lock = threading.Lock()
        self._pending: tuple[torch.Tensor, Any] | None = None
        self.received = 0
        self.error = ""
        self._stream: Any = None  # CUDA side stream and pinned buffer, made on the first GPU payload
        self._host: torch.Tensor | None = None

    def __call__(self, payload: Any) -> None:
        with self._lock:
            if self._pending is not None:
                return  # the editor hasn't shown the last one yet: skip, never queue up
        try:
            event = None
            if payload.device.type == "cuda":
                img, event = self._on_cuda(payload)
            else:
                img = preview_image(payload, self.max_w, self.max_h).clone()  # the producer may reuse its buffer
        except Exception as exc:  # a bad payload must not break the graph; show why in the editor
            self.error = f"{type(exc).__name__}: {exc}"
            return
        with self._lock:
            self._pending = (img, event)
            self.received += 1

    def _on_cuda(self, payload: Any) -> tuple[torch.Tensor, Any]:
        """Shrink and copy on a side stream ordered after the caller's stream; returns the pinned
        host picture and the event that says when it is there. Nothing here waits for the GPU."""
        dev = payload.device
        if self._stream is None:
            self._stream = new_stream(dev)
            self._host = torch.empty(self.max_h * self.max_w * 3, dtype=torch.uint8, pin_memory=True)
        self._stream.wait_stream(torch.cuda.current_stream(dev))
        with torch.cuda.stream(self._stream):
            for t in payload.tensors():
                t.record_stream(self._stream)  # the allocator must not recycle it before our read
            img = preview_image(payload, self.max_w, self.max_h)
            host = self._host[: img.numel()].view(img.shape)  # contiguous, so the copy stays asynchronous
            host.copy_(img, non_blocking=True)
            event = torch.cuda.Event()
            event.record(self._stream)
        return host, event

    def poll(self) -> np.ndarray | None:
        """The newest picture as (h, w, 3) uint8, once its copy finished; else None."""
        with self._lock:
            pending = self._pending
            if pending is None or (pending[1] is not None and not pending[1].query()):
                return None
            self._pending = None
        # A copy: the pinned buffer is reused for the next picture.
        return pending[0].numpy().copy()
