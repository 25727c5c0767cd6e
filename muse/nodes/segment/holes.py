"""Which of a closing's fills are holes in the person, not bays of room beside her (issue 14).

`segment.fused` closes the plate's person (holes where clothes match the room); beyond `small_hole_radius` only
where the model calls the filled pixels person. A square closing fills every gap narrower than its element, bays
as well as holes: the room between a walker's legs, under an arm, in the angle of a neck and shoulder. The bundled
model is blurry there (a probability of ~0.5 between the legs of a small full-body person), so those bays were
half filled, and their shape changes every frame as the limbs move and the camera shakes (twentieth session,
second round: `bench/quality_extra.py`'s two_shake, the false person between Messi's legs and under his arm).

A hole is enclosed: walking from the pixel up, down, left or right, the person is met on all four rays, each as
long as the widest gap the closing fills (twice its radius: every pixel of a hole the closing fills is enclosed;
rays of the radius alone would pass only a hole's middle). A bay is open on one side at least (between the legs:
downwards), so `enclosed` is 0 there, and a concave corner (two rays) is not rounded off. The wide closing's
fill is kept in full where it is enclosed.

Geometry alone cannot tell a bay of room from a bite of clothes the colour of the room that reaches her outline
(quality.py's low_light: the orange suit in front of a red saucer at 28 % light, the plate seeing only pieces of
her outline there; the bundled model is unsure in both, ~0.5-0.7). The plate can: room in a bay differs from the
plate by the camera's noise (the person threshold tau is 5x the room's 30th-percentile difference, so room reads
~0.2 tau), clothes near the room's colour by more, though under tau. So in a bay the fill is kept as far as the
smallest 3x3 mean difference around the pixel (a 3x3 box, then a 3x3 minimum: the person's own large difference
beside the bay does not leak in) lies between BAY_EVIDENCE[0] and [1] x tau (smooth). Beyond the picture's
border a ray sees the border's pixel (replicated): a person cut by the frame keeps her holes at the border.

Both paths use these definitions: `enclosed` (torch, four max pools: device ops only, nothing read back) and
`enclosed_host` (the CPU path's float32 plane, four OpenCV dilations with one-sided kernels); the evidence is
computed in each path's fused maths with its own box filter and erosion.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["BAY_EVIDENCE", "enclosed", "enclosed_host"]

# A bay's fill: none while the smallest local mean plate difference is under BAY_EVIDENCE[0] x tau (room: noise),
# all from BAY_EVIDENCE[1] x tau (a faint difference: clothes near the room's colour). Chosen on the CPU path,
# twentieth session, second round (quality.py's low_light / steady, quality_extra's two_shake, mean IoU / worst /
# flicker): 0.1-0.3 0.949 / 0.916 / 7.0, 2.5, 10.7; 0.15-0.4 0.949 / 0.912 / 7.1, 2.5, 10.7; a 5x5 box mean
# instead of the 3x3 minimum of 3x3 means, 0.2-0.5: 0.949 / 0.916 / 7.0, 2.7, 11.1 (the person's own difference
# leaks into the bay beside her); no fill in bays at all: 0.898 / 0.869 / 8.5, 2.4, 10.7.
BAY_EVIDENCE = (0.1, 0.3)


def enclosed(x: torch.Tensor, r: int) -> torch.Tensor:
    """(1, 1, h, w) plane in [0, 1] -> the smallest, over up / down / left / right, of the largest value along a ray
    of r pixels from each pixel (the pixel itself included). r <= 0: x itself."""
    if r <= 0:
        return x
    up = F.max_pool2d(F.pad(x, (0, 0, r, 0), mode="replicate"), (r + 1, 1), stride=1)
    down = F.max_pool2d(F.pad(x, (0, 0, 0, r), mode="replicate"), (r + 1, 1), stride=1)
    left = F.max_pool2d(F.pad(x, (r, 0, 0, 0), mode="replicate"), (1, r + 1), stride=1)
    right = F.max_pool2d(F.pad(x, (0, r, 0, 0), mode="replicate"), (1, r + 1), stride=1)
    return torch.minimum(torch.minimum(up, down), torch.minimum(left, right))


_RAYS: dict[int, np.ndarray] = {}


def enclosed_host(x: np.ndarray, r: int) -> np.ndarray:
    """`enclosed` of an (h, w) float32 plane: the same numbers (a one-sided kernel is a dilation whose anchor sits
    at its end; the border replicated, as the torch path pads)."""
    if r <= 0:
        return x
    col = _RAYS.get(r)
    if col is None:
        col = _RAYS[r] = np.ones((r + 1, 1), np.uint8)
    row = col.reshape(1, -1)
    rep = cv2.BORDER_REPLICATE
    up = cv2.dilate(x, col, anchor=(0, r), borderType=rep)  # rows i - r .. i
    down = cv2.dilate(x, col, anchor=(0, 0), borderType=rep)  # rows i .. i + r
    left = cv2.dilate(x, row, anchor=(r, 0), borderType=rep)  # columns j - r .. j
    right = cv2.dilate(x, row, anchor=(0, 0), borderType=rep)
    return np.minimum(np.minimum(up, down), np.minimum(left, right))
