"""`segment.person`: the pose tracker's person mask merged into the bundled selfie model's (issue 14, twenty-second
session). A node of its own after `segment.selfie`, so the selfie model runs beside the pose model and only this
merge waits for both (on the H200 the selfie node waiting for the pose cost stream_4k 0.85 ms a frame).

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

from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Mask
from muse.nodes.cpu import wanted

__all__ = ["PersonMerge", "REACH", "with_person"]

# The selfie model's own opinion inside the pose's crop but away from its person: kept in full above SURE_HI,
# let go below SURE_LO (a blob it is unsure of, which the closer view does not see as the person)
SURE_LO, SURE_HI = 0.5, 0.9
REACH = 0.04  # the default reach (fraction of the height), also segment.hybrid's


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


class PersonMerge(Node):
    node_type = "segment.person"
    capturable = True  # fixed shapes, device ops only (the CPU path's max filter by OpenCV)
    display_name = "Pose person into mask"
    description = ("The pose tracker's person mask (pose.blazepose's `mask`) merged into a segmenter's mask: near the "
                   "tracked person its outline, in its crop the segmenter's sure opinion, elsewhere the segmenter's mask. "
                   "Without `person` the mask passes through.")

    mask: In[Mask] = In(description="The segmenter's mask (segment.selfie)")
    person: In[Mask] = In(optional=True, description="pose.blazepose's `mask`: the tracked person with its crop's coverage")
    out: Out[Mask] = Out(description="The merged mask, at the segmenter's size")

    class Params(NodeParams):
        reach: float = Field(REACH, ge=0.0, le=0.5, description="How far around the pose's person (fraction of the height) its outline replaces the segmenter's")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._host = wanted(ctx)  # the CPU path: OpenCV's max filter

    def process(self, mask: Mask, person: Mask | None = None) -> dict[str, Mask]:
        if person is None:
            return {"out": mask}
        alpha = with_person(mask.alpha, person.to(mask.alpha.device), self.params.reach, host=self._host)
        return {"out": Mask(alpha, mask.timestamp, mask.index)}
