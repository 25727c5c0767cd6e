"""`relight.light`: a virtual light on the person (direction, colour, intensity, softness).

Shader-style on the device: a normal estimate from the image (the person's
outline as a rounded body plus fine relief from shading), Lambert lighting with
wrap for softness, applied in linear light and only where the mask says person.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.nodes.background import resize_mask
from muse.nodes.composite import gaussian_blur
from muse.nodes.warp.kernels import decode_uint8, encode_uint8, srgb_to_linear

Channel = Annotated[int, Field(ge=0, le=255)]


def estimate_normals(alpha: torch.Tensor, luma: torch.Tensor, roundness: float, relief: float) -> torch.Tensor:
    """(3, h, w) unit normals (x right, y down, z to the camera) at the given (low) resolution.

    The body is modelled as a height field: a smooth dome from the mask (its
    outline faces sideways) plus a little relief from blurred brightness.
    """
    h = alpha.shape[-2]
    dome = gaussian_blur(alpha[None], roundness * h)[0]
    dome = dome.clamp(0, 1).sqrt()  # steeper at the outline, flatter in the middle, like a cylinder
    height = dome * (2.0 * roundness * h) + relief * gaussian_blur(luma[None], 1.5)[0] * (0.02 * h)
    gy, gx = torch.gradient(height)
    n = torch.stack((-gx, -gy, torch.ones_like(gx)))
    return n / n.norm(dim=0, keepdim=True)


def light_direction(angle: float, elevation: float, device: torch.device) -> torch.Tensor:
    """Unit vector towards the light: `angle` 0 = from the picture's left, 90 = from above; `elevation` 90 = frontal."""
    a, e = math.radians(angle), math.radians(elevation)
    return torch.tensor([-math.cos(a) * math.cos(e), -math.sin(a) * math.cos(e), math.sin(e)], device=device)


class Relight(Node):
    node_type = "relight.light"
    display_name = "Relight"
    description = "A virtual light (direction, colour, intensity, softness) on the person, from the mask and an estimated normal map."
    capturable = False  # light colour and direction are uploaded per frame

    frame: In[Frame]
    mask: In[Mask]
    out: Out[Frame]

    class Params(NodeParams):
        angle: float = Field(30.0, ge=-180.0, le=180.0, description="Where the light comes from, degrees: 0 = left, 90 = above, 180 = right")
        elevation: float = Field(30.0, ge=0.0, le=90.0, description="Light height over the picture plane, degrees: 90 = straight from the camera")
        colour: tuple[Channel, Channel, Channel] = Field((255, 236, 210), description="Light colour (RGB 0-255)")
        intensity: float = Field(0.6, ge=0.0, le=3.0, description="0 = off; 1 = the lit side gets up to twice as bright")
        softness: float = Field(0.5, ge=0.0, le=1.0, description="0 = hard light with dark falloff, 1 = soft wrapping light")
        shadow: float = Field(0.2, ge=0.0, le=1.0, description="How much the side away from the light darkens")
        roundness: float = Field(0.1, ge=0.01, le=0.3, description="How rounded the body is taken to be (fraction of the frame height)")
        relief: float = Field(0.5, ge=0.0, le=2.0, description="How much fine shading (nose, folds) shapes the normals")
        scale: int = Field(4, ge=1, le=16, description="Normals are estimated at 1/scale resolution")

    params: Params

    def process(self, frame: Frame, mask: Mask) -> dict[str, Frame]:
        p = self.params
        src = frame.hwc_uint8()
        if p.intensity == 0:
            return {"out": frame}
        height, width = frame.height, frame.width
        alpha = resize_mask(mask.alpha, height, width).clamp(0, 1)
        lin = decode_uint8(src).permute(2, 0, 1)
        # normals at low resolution: the lighting is smooth, the detail stays in the picture
        small_a = F.avg_pool2d(alpha[None, None], p.scale, ceil_mode=True)[0, 0] if p.scale > 1 else alpha
        luma = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]
        small_l = F.avg_pool2d(luma[None, None], p.scale, ceil_mode=True)[0, 0] if p.scale > 1 else luma
        normals = estimate_normals(small_a, small_l, p.roundness, p.relief)
        light = light_direction(p.angle, p.elevation, lin.device)
        ndotl = (normals * light[:, None, None]).sum(0)
        wrap = p.softness
        shade = ((ndotl + wrap) / (1 + wrap)).clamp(0, 1)  # wrap lighting: soft light reaches further round
        if p.scale > 1:
            shade = F.interpolate(shade[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]
        colour = srgb_to_linear(torch.tensor(p.colour, dtype=torch.float32, device=lin.device) / 255.0)
        gain = 1 + p.intensity * (colour[:, None, None] * shade - p.shadow * (1 - shade))
        lit = lin * (1 + alpha * (gain - 1))
        out = encode_uint8(lit).permute(1, 2, 0)
        # the room is untouched to the bit, not just to rounding
        out = torch.where((alpha > 0)[..., None], out, src).contiguous()
        return {"out": frame.with_image(out, layout="hwc")}
