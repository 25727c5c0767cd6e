"""`segment.clean_plate`: the person is whatever differs from a picture of the empty room.

No weights: colour-space distance to the clean plate, hysteresis (strong differences
seed the person, weaker ones join only where connected), then morphology to drop specks and
fill holes. Works with a fixed camera; also a teacher aid for training a student.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from muse.graph.capture import device_constant
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.models.matte_refine import box_filter
from muse.nodes.segment._prep import frame_batch, user_path

__all__ = ["CleanPlateSegment", "colour_distance", "rgb_to_lab"]


def _srgb_to_linear(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


_RGB_TO_XYZ = ((0.4124, 0.3576, 0.1805), (0.2126, 0.7152, 0.0722), (0.0193, 0.1192, 0.9505))
_WHITE = (0.95047, 1.0, 1.08883)  # D65


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) sRGB in [0,1] -> CIE Lab scaled by 1/100 (L in [0,1], a/b about [-1.3,1.3])."""
    lin = _srgb_to_linear(rgb.float().clamp(0, 1))
    m = device_constant(_RGB_TO_XYZ, rgb.device)
    xyz = torch.einsum("ij,bjhw->bihw", m, lin) / device_constant(_WHITE, rgb.device).view(1, 3, 1, 1)
    d = 6.0 / 29.0
    f = torch.where(xyz > d**3, xyz.clamp_min(1e-12) ** (1.0 / 3.0), xyz / (3 * d * d) + 4.0 / 29.0)
    lum = 116.0 * f[:, 1:2] - 16.0
    a = 500.0 * (f[:, 0:1] - f[:, 1:2])
    b = 200.0 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat((lum, a, b), 1) / 100.0


def _ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    return torch.cat((y, 0.564 * (b - y), 0.713 * (r - y)), 1)


def colour_distance(frame: torch.Tensor, plate: torch.Tensor, space: str = "lab", luma_weight: float = 0.5) -> torch.Tensor:
    """Per-pixel distance (B,1,H,W) between two (B,3,H,W) pictures in [0,1].

    Brightness counts `luma_weight` as much as colour, so shadows and auto-exposure drift weigh less than a new colour."""
    if space == "lab":
        f, p = rgb_to_lab(frame), rgb_to_lab(plate)
    elif space == "ycbcr":
        f, p = _ycbcr(frame.float()), _ycbcr(plate.float())
    else:
        f, p = frame.float(), plate.float()
    d = f - p
    w = device_constant([luma_weight, 1.0, 1.0] if space != "rgb" else [1.0, 1.0, 1.0], d.device).view(1, 3, 1, 1)
    return (d * d * w).sum(1, keepdim=True).sqrt()


def _dilate(x: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(x, 2 * r + 1, stride=1, padding=r) if r > 0 else x


def _erode(x: torch.Tensor, r: int) -> torch.Tensor:
    return -F.max_pool2d(-x, 2 * r + 1, stride=1, padding=r) if r > 0 else x


def hysteresis(strong: torch.Tensor, weak: torch.Tensor, steps: int) -> torch.Tensor:
    """Weak pixels connected to strong ones, by `steps` rounds of 5x5 geodesic dilation (fixed count: no host sync)."""
    seed = strong * weak
    for _ in range(steps):
        seed = _dilate(seed, 2) * weak
    return torch.maximum(seed, strong)


class CleanPlateSegment(Node):
    node_type = "segment.clean_plate"
    capturable = True
    display_name = "Clean-plate difference"
    description = "Person mask from the difference to a picture of the empty room (fixed camera, no model)."

    frame: In[Frame]
    plate: In[Frame] = In(optional=True, description="The empty room; overrides plate_file when connected")
    mask: Out[Mask]

    class Params(NodeParams):
        plate_file: str = Field("", description="Image file of the empty room (used when the plate input is not connected)")
        working_height: int = Field(360, ge=0, le=2160, description="Height the difference is computed at; 0 = frame size")
        colour_space: Literal["lab", "ycbcr", "rgb"] = Field("lab", description="Where colours are compared")
        luma_weight: float = Field(0.5, ge=0.0, le=1.0, description="Weight of brightness against colour (lower ignores shadows)")
        low: float = Field(0.05, ge=0.0, le=2.0, description="Distance that may be person when connected to a sure pixel")
        high: float = Field(0.12, ge=0.0, le=2.0, description="Distance that is surely person")
        blur: int = Field(1, ge=0, le=8, description="Box-blur radius before comparing (camera noise)")
        open_radius: int = Field(1, ge=0, le=8, description="Removes specks up to this radius")
        close_radius: int = Field(3, ge=0, le=16, description="Fills holes and gaps up to this radius")
        hysteresis_steps: int = Field(24, ge=0, le=256, description="How far (x2 px) weak pixels may join a sure region")
        feather: int = Field(1, ge=0, le=8, description="Softens the mask edge by this radius")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._file_plate: torch.Tensor | None = None
        self._plate_cache: tuple[int, tuple[int, int], torch.Tensor] | None = None
        if self.params.plate_file:
            self._file_plate = self._read_plate(user_path(self.params.plate_file, ctx))

    def _read_plate(self, path: Path) -> torch.Tensor:
        import cv2

        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if bgr is None:
            raise NodeError(
                f"node '{self.name}' (segment.clean_plate), field 'plate_file': cannot read an image from {path}; "
                "save a picture of the empty room (PNG or JPEG) there, or connect the 'plate' input"
            )
        rgb = np.ascontiguousarray(bgr[:, :, ::-1])
        assert self.ctx is not None
        return torch.from_numpy(rgb).to(self.ctx.device)  # (H, W, 3) uint8

    def update_params(self, params: Params) -> bool:
        if params.plate_file != self.params.plate_file:
            return False
        self.params = params
        return True

    def _size(self, frame: Frame) -> tuple[int, int]:
        h = self.params.working_height
        if h <= 0 or h >= frame.height:
            return frame.width, frame.height
        return max(1, round(frame.width * h / frame.height)), h

    def _plate_batch(self, plate: Frame | None, size: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
        if plate is not None:
            return frame_batch(plate, size, dtype)
        if self._file_plate is None:
            raise NodeError(
                f"node '{self.name}' (segment.clean_plate): no clean plate; set field 'plate_file' to a picture of "
                "the empty room or connect the 'plate' input"
            )
        # The file never changes while running: resize it once per working size.
        if self._plate_cache is None or self._plate_cache[1] != size:
            resized = frame_batch(Frame(self._file_plate), size, dtype)
            self._plate_cache = (0, size, resized)
        return self._plate_cache[2]

    def process(self, frame: Frame, plate: Frame | None = None) -> dict[str, Mask]:
        ctx, p = self.ctx, self.params
        assert ctx is not None
        size = self._size(frame)
        x = frame_batch(frame, size, torch.float32)
        bg = self._plate_batch(plate, size, torch.float32)
        if p.blur:
            x, bg = box_filter(x, p.blur), box_filter(bg, p.blur)
        dist = colour_distance(x, bg, p.colour_space, p.luma_weight)
        strong = (dist > max(p.high, p.low)).float()
        weak = (dist > p.low).float()
        m = hysteresis(strong, weak, p.hysteresis_steps)
        m = _dilate(_erode(m, p.open_radius), p.open_radius)  # opening: specks go
        m = _erode(_dilate(m, p.close_radius), p.close_radius)  # closing: holes fill
        if p.feather:
            m = box_filter(m, p.feather)
        return {"mask": Mask(m[0, 0].to(ctx.dtype), frame.timestamp, frame.index)}
