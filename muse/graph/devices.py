"""Which CUDA device a `torch.device` means (a leaf module: the runtime, the nodes and the models import it)."""

from __future__ import annotations

import torch

__all__ = ["device_index"]


def device_index(device: torch.device) -> int:
    """The CUDA ordinal of `device`; a bare `cuda` means the current device (as torch reads it)."""
    return device.index if device.index is not None else torch.cuda.current_device()
