"""Auto exposure for the bundled models: a dark picture is scaled up before a model that was trained on well-lit
people sees it (the selfie segmenter, BlazePose's detector and landmark model). On the device, no host read.

Issue 14: in low light the selfie model's accuracy halves, and BlazePose's person mask drops from 0.91 to 0.66 IoU
(bench/quality.py's low_light clip) unless its crop is brightened first.
"""

from __future__ import annotations

import torch


def brighten(img: torch.Tensor, target: float = 0.9, most: float = 4.0) -> torch.Tensor:
    """Scale a dark (N, 3, h, w) picture so its bright end (98th percentile of the brightest channel) reaches
    `target`; a lit one is left as it is (gain 1). Returns a new tensor."""
    peak = torch.quantile(img.float().amax(1).flatten()[::4], 0.98)
    gain = (target / peak.clamp_min(1e-3)).clamp(1.0, most)
    return (img * gain.to(img.dtype)).clamp_(0.0, 1.0)
