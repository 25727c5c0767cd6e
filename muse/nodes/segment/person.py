"""The pose tracker's person mask merged into the bundled selfie model's (issue 14, twenty-second session).

BlazePose's landmark model also draws the person it tracks, on a 256 px crop around them: a closer view than the
selfie model's whole-frame 256 px, and a model that does not take a cup, a cat's face or a lamp for a person. Near
that person its outline replaces the selfie model's; elsewhere in its crop the selfie model's unsure blobs (a grey
~0.5 tower, a cat's face half believed) are let go, while what it is sure of stays: the pose model draws one person,
and a guest beside the streamer, inside the same crop, is the selfie model's to keep. Outside the crop, or while
the tracker has nobody, the selfie model alone decides (a person cut by the frame's border, a second person).

No-plate matte, bench/quality_extra.py: mean IoU 0.849 -> 0.90, flicker 14.2 -> ~10.5 (CPU, this session's
RESULTS.md section has the table and the rules tried).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from muse.graph.payloads import Mask

# The selfie model's own opinion inside the pose's crop but away from its person: kept in full above SURE_HI,
# let go below SURE_LO (a blob it is unsure of, which the closer view does not see as the person)
SURE_LO, SURE_HI = 0.5, 0.9


def with_person(selfie: torch.Tensor, person: Mask, reach: float, host: bool = False) -> torch.Tensor:
    """`selfie` (h, w) probabilities with `person` (a pose tracker's mask with its crop's `coverage`, any size of
    the same frame) merged in: within `reach` (a fraction of the height) of the person the pose's mask, elsewhere
    in its crop the selfie model's sure opinion, outside it the selfie model's. Returns a new (h, w) tensor.
    `host`: the CPU path (the max filter by OpenCV: torch's on the CPU cost 6 ms a 256 px plane, OpenCV's ~0.05)."""
    h, w = selfie.shape
    cov = person.coverage if person.coverage is not None else torch.ones_like(person.alpha)
    both = torch.stack((person.alpha, cov))[None].to(selfie.dtype)
    if both.shape[-2:] != (h, w):
        both = F.interpolate(both, size=(h, w), mode="bilinear", align_corners=False)
    pm, cover = both[0, 0], both[0, 1]
    r = max(1, round(reach * h))
    if host:
        k = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        grown = torch.from_numpy(cv2.dilate(np.ascontiguousarray(pm.float().numpy()), k, borderType=cv2.BORDER_REPLICATE))
        near = grown.to(pm.dtype) * cover
    else:
        near = F.max_pool2d(pm[None, None], 2 * r + 1, stride=1, padding=r)[0, 0] * cover
    sure = ((selfie - SURE_LO) / (SURE_HI - SURE_LO)).clamp(0.0, 1.0)
    far = selfie * torch.lerp(torch.ones_like(sure), sure, cover)
    return torch.lerp(far, pm, near)
