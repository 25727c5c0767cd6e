"""segment.fused's masked quantiles: the batched form gives, bit for bit, what one call per plane gives."""

from __future__ import annotations

import numpy as np
import torch

from muse.nodes.segment.fused import _known_quantile, _known_quantiles


def test_batched_known_quantiles_equal_one_call_each(astronaut: np.ndarray) -> None:
    img = torch.from_numpy(astronaut).float().div(255.0).permute(2, 0, 1)[None]
    small = torch.nn.functional.interpolate(img, size=(72, 128), mode="area")
    gx, gy = small[:, :1, :, 1:] - small[:, :1, :, :-1], small[:, :1, 1:] - small[:, :1, :-1]
    gx, gy = gx[..., :71, :], gy[..., :127]  # (1, 1, 71, 127) each: the picture's horizontal and vertical change
    bright = (small[:, 1:2, :71, :127] > 0.5).float()  # "known" where the green channel is bright
    dark = 1.0 - bright
    for q in (0.5, 0.3, 0.99):
        got = _known_quantiles(torch.stack((gx, gy, gx, gy)), torch.stack((bright, bright, dark, dark)), q)
        want = torch.stack([_known_quantile(d, k, q) for d, k in ((gx, bright), (gy, bright), (gx, dark), (gy, dark))])
        assert torch.equal(got, want), q
        flat = gx.flatten()[::7][bright.flatten()[::7] > 0.5].sort().values  # the known samples
        assert float(flat[0]) <= float(got[0]) <= float(flat[-1]) and float(got[0]) != 1e3
