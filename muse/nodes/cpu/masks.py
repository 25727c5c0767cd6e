"""Small mask checks for the CPU path, in numpy: torch's thread pool wakes a second thread
even for 40 k values, which on two busy cores cost 10-40 ms a call (measured: a 256x144
isfinite + mean took 94 ms at load 6)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["mask_stats"]


def mask_stats(alpha: torch.Tensor) -> torch.Tensor:
    """[non-finite flag, coverage] of a CPU mask, as `segment.hybrid._mask_stats` computes it."""
    a = alpha.detach().float().numpy()
    finite = np.isfinite(a)
    bad = not bool(finite.all())
    mean = float(np.where(finite, a, 0.0).mean()) if bad else float(a.mean())
    return torch.tensor([1.0 if bad else 0.0, mean], dtype=torch.float32)
