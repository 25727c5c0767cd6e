"""`warp.body`: shoulders, waist and hips reshaped from body keypoints.

A symmetric lateral scaling about the torso axis (shoulder midpoint to hip
midpoint), weighted by smooth bands at shoulder, waist and hip height and kept
inside the person's dilated outline, as a low-resolution Displacement.
"""

from __future__ import annotations

import torch
from pydantic import Field

from muse.graph.capture import device_constant
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Displacement, Keypoints, Mask
from muse.nodes.cpu import wanted
from muse.nodes.warp.fields import bump, field_points, mask_gate, zero_field

# (left shoulder, right shoulder, left hip, right hip) per skeleton
TORSO = {"coco17": (5, 6, 11, 12), "blazepose33": (11, 12, 23, 24)}

# Strength 1 maps to these lateral scale factors k: a width w becomes w / (1 + k).
WAIST_MAX = 0.15  # waist=1 narrows the waist by 0.15/1.15 = 13.0 %
HIPS_MAX = 0.12
SHOULDERS_MAX = 0.10
WAIST_AT = 0.62  # natural waist, as a fraction of the way from shoulders to hips


def body_field(
    xs: torch.Tensor,
    ys: torch.Tensor,
    torso: torch.Tensor,
    *,
    waist: float,
    hips: float,
    shoulders: float,
    grid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Backward lateral field from torso points (4, 2) = (l_shoulder, r_shoulder, l_hip, r_hip).

    `grid`: xs and ys stacked (2, h, w), when the caller has it (`fields.field_points`)."""
    ends = torso.view(2, 2, 2).mean(1)  # shoulder midpoint (top), hip midpoint (bottom)
    top = ends[0]
    axis = ends[1] - top
    length = axis.norm().clamp_min(1.0)
    down = axis / length
    across = torch.stack((-down[1], down[0]))
    shoulder_width = (torso[0] - torso[1]).norm().clamp_min(1.0)
    rel = (torch.stack((xs, ys)) if grid is None else grid) - top[:, None, None]  # (2, h, w)
    # 0 at the shoulders, 1 at the hips; and signed pixels from the axis: both projections in one pass
    frame = torch.stack((down / length, across))  # (2, 2)
    ts = (frame[:, :, None, None] * rel[None]).sum(1)
    t, s = ts[0], ts[1]
    # k > 0 narrows (samples farther out); positive hips/shoulders widen. A band at strength 0 adds nothing.
    k: torch.Tensor | float = 0.0
    for strength, centre, half in ((WAIST_MAX * waist, WAIST_AT, 0.32), (-HIPS_MAX * hips, 1.0, 0.3), (-SHOULDERS_MAX * shoulders, 0.0, 0.3)):
        if strength != 0:
            k = k + strength * bump(t, centre, half)
    # uniform scaling across the whole body, fading out well beyond the arms
    reach = (s.abs() / shoulder_width - 0.9) / 0.6
    taper = 1 - bump(reach.clamp(0, 1), 1.0, 1.0)
    amount = s * k * taper
    return amount[None] * across[:, None, None]


class BodyWarp(Node):
    node_type = "warp.body"
    capturable = True
    display_name = "Body warp"
    description = "Shoulder, waist and hip reshaping from body keypoints, kept inside the person mask; a Displacement."

    keypoints: In[Keypoints] = In(optional=True, description="No person this frame -> identity field")
    mask: In[Mask] = In(optional=True, description="Person mask: keeps the field on the body")
    field: Out[Displacement]

    class Params(NodeParams):
        waist: float = Field(0.0, ge=0.0, le=1.0, description="Waist slimming; 1 narrows the waist by 13 %")
        hips: float = Field(0.0, ge=-1.0, le=1.0, description="Hips: + wider (up to 12 %), - narrower")
        shoulders: float = Field(0.0, ge=-1.0, le=1.0, description="Shoulders: + broader (up to 10 %), - narrower")
        margin: float = Field(0.04, ge=0.005, le=0.2, description="How far past the mask outline the field may reach, as a fraction of the frame height")
        cell: int = Field(8, ge=1, le=32, description="Field resolution: one value per cell x cell pixels")
        min_confidence: float = Field(0.3, ge=0.0, le=1.0, description="Shoulder and hip keypoints below this -> identity")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._cpu = None
        if wanted(ctx):  # issue 13: a few numpy/OpenCV passes on the grid
            from muse.nodes.cpu.body_warp import BodyWarpCPU

            self._cpu = BodyWarpCPU(self)

    def fallback(self, keypoints: Keypoints | None = None, mask: Mask | None = None) -> dict[str, Displacement]:
        """No reshaping (a zero field): what `on_error: fallback` stands in with, and `hold_last` before a good frame."""
        ctx = self.context
        if keypoints is not None:
            size, device = (int(keypoints.image_size[0]), int(keypoints.image_size[1])), keypoints.points.device
        elif mask is not None:
            size, device = mask.size, mask.alpha.device
        else:
            size, device = (int(ctx.resolution[0]), int(ctx.resolution[1])), ctx.device
        stamp = keypoints or mask
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        return {"field": Displacement(zero_field(size, self.params.cell, device), size, ts, idx)}

    def process(self, keypoints: Keypoints | None = None, mask: Mask | None = None) -> dict[str, Displacement]:
        if getattr(self, "_cpu", None) is not None:
            return self._cpu.process(keypoints, mask)
        ctx = self.ctx
        assert ctx is not None
        p = self.params
        if keypoints is not None:
            size = (int(keypoints.image_size[0]), int(keypoints.image_size[1]))
            device = keypoints.points.device
        elif mask is not None:
            size, device = mask.size, mask.alpha.device
        else:
            size, device = (int(ctx.resolution[0]), int(ctx.resolution[1])), ctx.device
        stamp = keypoints or mask
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        if keypoints is None or (p.waist == 0 and p.hips == 0 and p.shoulders == 0):
            return {"field": Displacement(zero_field(size, p.cell, device), size, ts, idx)}
        ids = TORSO.get(keypoints.skeleton)
        if ids is None:
            raise NodeError(
                f"node {self.name!r}: keypoints skeleton {keypoints.skeleton!r} is not supported; "
                f"connect a pose node giving one of {sorted(TORSO)}"
            )
        xs, ys, grid = field_points(size, p.cell, device)
        index = device_constant(list(ids), keypoints.points.device)
        torso = keypoints.points[index, :2].float()
        field = body_field(xs, ys, torso, waist=p.waist, hips=p.hips, shoulders=p.shoulders, grid=grid)
        # a low-confidence torso gives identity, decided on the device (no host sync)
        field = torch.where(keypoints.confidence[index].amin() >= p.min_confidence, field, 0.0)
        if mask is not None:
            field = field * mask_gate(mask.alpha, tuple(xs.shape), p.margin * xs.shape[0])
        return {"field": Displacement(field, size, ts, idx)}
