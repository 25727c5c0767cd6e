"""Auto exposure for the bundled models: a dark picture is scaled up before a model that was trained on well-lit
people sees it (the selfie segmenter, BlazePose's detector and landmark model). The torch version runs on the
device with no host read; the numpy one is the CPU path's, in place, with the same numbers.

Issue 14: in low light the selfie model's accuracy halves, and BlazePose's person mask drops from 0.91 to 0.66 IoU
(bench/quality.py's low_light clip) unless its crop is brightened first.
"""

from __future__ import annotations

import numpy as np
import torch

TARGET = 0.9  # where the bright end lands
MOST = 4.0  # the largest gain
QUANTILE = 0.98  # the bright end: this quantile of the brightest channel, over every 4th pixel


def brighten(img: torch.Tensor, target: float = TARGET, most: float = MOST) -> torch.Tensor:
    """Scale a dark (N, 3, h, w) picture so its bright end (98th percentile of the brightest channel) reaches
    `target`; a lit one is left as it is (gain 1). Returns a new tensor."""
    peak = torch.quantile(img.float().amax(1).flatten()[::4], QUANTILE)
    gain = (target / peak.clamp_min(1e-3)).clamp(1.0, most)
    return (img * gain.to(img.dtype)).clamp_(0.0, 1.0)


def brighten_in_place(region: np.ndarray) -> None:
    """`brighten` on a (3, h, w) float32 numpy picture, in place (the CPU path's model inputs)."""
    peak = float(np.quantile(region.max(0).ravel()[::4], QUANTILE))
    gain = min(max(TARGET / max(peak, 1e-3), 1.0), MOST)
    if gain > 1.0:
        np.multiply(region, np.float32(gain), out=region)
        np.clip(region, 0.0, 1.0, out=region)
