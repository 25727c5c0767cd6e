"""`composite.layout`: several frames on one canvas: picture-in-picture (insets
in a corner with a border and rounded corners), side by side, or a grid.

Each input can be the end of a full per-camera chain (its own segmentation,
background, reshaping). Work stays on the device: every input is resized once
into its cell, and the rounded-corner and border masks are built once per
geometry and reused; nothing is read back to the host.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame

Channel = Annotated[int, Field(ge=0, le=255)]
Corner = Literal["top_left", "top_right", "bottom_left", "bottom_right"]


def fit(img: torch.Tensor, height: int, width: int, mode: str) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(3, h, w) float resized to `mode` ("cover": fill and crop; "contain": fit whole).

    Returns the resized picture and where it lands in the (height, width) cell: (y0, x0, h, w)
    of the part that is shown (for cover: the whole cell)."""
    _, h, w = img.shape
    scale = max(height / h, width / w) if mode == "cover" else min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) != (h, w):
        shrink = nh <= h and nw <= w
        img = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=shrink)[0]
    if mode == "cover":
        y0, x0 = (nh - height) // 2, (nw - width) // 2
        return img[:, y0 : y0 + height, x0 : x0 + width], (0, 0, height, width)
    return img, ((height - nh) // 2, (width - nw) // 2, nh, nw)


def rounded_rect_alpha(height: int, width: int, radius: float, inset: float, device: torch.device) -> torch.Tensor:
    """(height, width) coverage in [0, 1] of a rectangle shrunk by `inset` pixels on
    each side with corners of `radius`, anti-aliased over one pixel (signed distance)."""
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    half_h, half_w = height / 2 - inset, width / 2 - inset
    r = max(0.0, min(radius, half_h, half_w))
    qy = (ys - height / 2).abs()[:, None] - (half_h - r)
    qx = (xs - width / 2).abs()[None, :] - (half_w - r)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    inside = torch.maximum(qx, qy).clamp(max=0.0)
    dist = outside + inside - r
    return (0.5 - dist).clamp(0.0, 1.0)


class Layout(Node):
    node_type = "composite.layout"
    display_name = "Layout (multi-camera)"
    category = "composite"
    description = (
        "Places several frames on one canvas: picture-in-picture (corner, size, border, rounded corners), "
        "side by side, or a grid; the first input is the main picture."
    )
    capturable = True  # device work only; masks are built once per geometry

    frames: In[Frame] = In(multiple=True, description="Pictures to place, main first (each may be a whole per-camera chain)")
    out: Out[Frame]

    class Params(NodeParams):
        mode: Literal["pip", "side_by_side", "grid"] = Field("pip", description="pip: insets over the main picture; side_by_side: one row; grid: rows and columns")
        width: int = Field(0, ge=0, le=7680, description="Canvas width; 0 = the main picture's")
        height: int = Field(0, ge=0, le=4320, description="Canvas height; 0 = the main picture's")
        corner: Corner = Field("bottom_right", description="pip: corner of the first inset (more insets stack along the edge)")
        size: float = Field(0.3, ge=0.05, le=0.9, description="pip: inset width as a share of the canvas width")
        margin: int = Field(24, ge=0, le=1000, description="pip: pixels between an inset and the canvas edge (and between insets)")
        border: int = Field(4, ge=0, le=100, description="pip: border width in pixels; 0 = none")
        border_colour: tuple[Channel, Channel, Channel] = Field((255, 255, 255), description="pip: border colour (R, G, B)")
        radius: int = Field(16, ge=0, le=1000, description="pip: corner radius in pixels; 0 = square corners")
        fit: Literal["cover", "contain"] = Field("contain", description="side_by_side/grid: cover = fill each cell (crops), contain = whole picture (bars)")
        gap: int = Field(8, ge=0, le=1000, description="side_by_side/grid: pixels between cells")
        columns: int = Field(0, ge=0, le=16, description="grid: columns; 0 = as square as possible")
        background: tuple[Channel, Channel, Channel] = Field((16, 16, 16), description="Colour of bars and gaps (R, G, B)")

    params: Params

    COLOURS = ("border_colour", "background")

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._masks: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self._work = torch.float16 if ctx.cuda else torch.float32
        # Colours live in small device tensors, changed in place (a replayed CUDA graph sees new values).
        self._colours = {k: torch.zeros(3, 1, 1, device=ctx.device, dtype=self._work) for k in self.COLOURS}
        self._set_colours(self.params)

    def _set_colours(self, params: NodeParams) -> None:
        for key in self.COLOURS:
            rgb = torch.tensor(getattr(params, key), dtype=torch.float32).div_(255.0).reshape(3, 1, 1)
            self._colours[key].copy_(rgb)

    def update_params(self, params: Params) -> bool:
        old = self.params.model_dump(exclude=set(self.COLOURS))
        if params.model_dump(exclude=set(self.COLOURS)) != old:
            return False  # geometry (mode, sizes, corner, radius...): rebuilt, cheap for this node
        self.params = params
        if getattr(self, "_colours", None) is not None:
            self._set_colours(params)
        return True


    def _pip_masks(self, h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        key = (h, w, p.border, p.radius, str(device))
        m = self._masks.get(key)
        if m is None:
            outer = rounded_rect_alpha(h, w, p.radius, 0.0, device)
            inner = rounded_rect_alpha(h, w, max(0, p.radius - p.border), p.border, device) if p.border else outer
            m = self._masks[key] = (outer.to(self._work)[None], inner.to(self._work)[None])
        return m

    def _canvas_size(self, main: Frame) -> tuple[int, int]:
        p = self.params
        w, h = p.width or main.width, p.height or main.height
        return h, w

    def process(self, frames: list[Frame | None]) -> dict[str, Frame]:
        shown = [f for f in frames if f is not None]
        if not shown or frames[0] is None:
            raise NodeError(f"node {self.name!r}: the main picture (first of `frames`) is missing this frame")
        main = frames[0]
        assert main is not None
        p = self.params
        H, W = self._canvas_size(main)
        device = main.image.device
        if p.mode == "pip":
            out = self._pip(frames, H, W, device)
        else:
            out = self._cells(shown, H, W, device)
        image = out.clamp_(0, 1).mul_(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous()
        return {"out": main.with_image(image, "hwc")}

    def _pip(self, frames: list[Frame | None], H: int, W: int, device: torch.device) -> torch.Tensor:
        p = self.params
        main = frames[0]
        assert main is not None
        canvas, _ = fit(main.chw(self._work), H, W, "cover")
        canvas = canvas.contiguous().clone() if canvas.data_ptr() == main.image.data_ptr() else canvas.contiguous()
        border = self._colours["border_colour"]
        right = p.corner.endswith("right")
        bottom = p.corner.startswith("bottom")
        for k, frame in enumerate(frames[1:]):
            if frame is None:
                continue  # that camera's chain had nothing this frame: its slot stays empty
            iw = max(8, round(W * p.size))
            ih = max(8, round(iw * frame.height / max(frame.width, 1)))
            ih, iw = min(ih, H), min(iw, W)
            # Insets stack away from the corner along the vertical edge.
            y0 = H - p.margin - ih - k * (ih + p.margin) if bottom else p.margin + k * (ih + p.margin)
            x0 = W - p.margin - iw if right else p.margin
            y0, x0 = max(0, min(H - ih, y0)), max(0, min(W - iw, x0))
            inset, _ = fit(frame.chw(self._work), ih, iw, "cover")
            outer, inner = self._pip_masks(ih, iw, device)
            region = canvas[:, y0 : y0 + ih, x0 : x0 + iw]
            framed = torch.lerp(region, border.expand_as(region), outer)
            region.copy_(torch.lerp(framed, inset, inner))
        return canvas

    def _cells(self, frames: list[Frame], H: int, W: int, device: torch.device) -> torch.Tensor:
        p = self.params
        n = len(frames)
        if p.mode == "side_by_side":
            cols, rows = n, 1
        else:
            cols = p.columns or math.ceil(math.sqrt(n))
            rows = math.ceil(n / cols)
        cw = (W - p.gap * (cols - 1)) // cols
        ch = (H - p.gap * (rows - 1)) // rows
        if cw < 8 or ch < 8:
            raise NodeError(f"node {self.name!r}: {n} pictures do not fit a {W}x{H} canvas with gap {p.gap} (fields `gap`, `columns`, `width`, `height`)")
        canvas = self._colours["background"].expand(3, H, W).clone()
        for i, frame in enumerate(frames):
            r, c = divmod(i, cols)
            cy, cx = r * (ch + p.gap), c * (cw + p.gap)
            img, (y0, x0, h, w) = fit(frame.chw(self._work), ch, cw, p.fit)
            canvas[:, cy + y0 : cy + y0 + h, cx + x0 : cx + x0 + w] = img
        return canvas
