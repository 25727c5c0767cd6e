"""`background.adaptive`: the clean plate (the room without the person), kept up to date.

Initialised from a recorded plate (an image file or a Frame input) or learned
from the first frames; afterwards updated slowly, only where the mask has shown
no person for a while (safety margin + hysteresis), so the person never leaks
in and lighting drift is followed. Pixels never seen are filled from around.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import wanted


def load_image(path: str, node: str, field: str) -> torch.Tensor:
    """An image file as (H, W, 3) uint8 RGB on the CPU, or a NodeError saying what to fix."""
    import cv2

    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise NodeError(f"node {node!r}: {field} {str(p)!r} does not exist; record a clean plate in Studio or fix the path")
    bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if bgr is None:
        raise NodeError(f"node {node!r}: {field} {str(p)!r} is not a readable image (PNG/JPEG expected)")
    return torch.from_numpy(bgr[:, :, ::-1].copy())


def fit_image(img_chw: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize a (C, H, W) float image to cover (height, width), cropping the overflow (no black bars)."""
    _, h, w = img_chw.shape
    if (h, w) == (height, width):
        return img_chw
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    out = F.interpolate(img_chw[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)[0]
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return out[:, y0 : y0 + height, x0 : x0 + width].contiguous()


def resize_mask(alpha: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(alpha.shape) == (height, width):
        return alpha.float()
    return F.interpolate(alpha.float()[None, None], size=(height, width), mode="bilinear", align_corners=False)[0, 0]


def dilate(alpha: torch.Tensor, radius: int) -> torch.Tensor:
    """Max filter of `radius` pixels, done at 1/4 resolution for wide radii (a safety margin needs no pixel precision)."""
    if radius <= 0:
        return alpha
    m = alpha[None, None]
    step = 4 if radius >= 8 else 1
    if step > 1:
        m = F.max_pool2d(m, step, stride=step, ceil_mode=True)
        radius = -(-radius // step)  # round up: never a smaller margin than asked
    # separable: a (2r+1)^2 window read per pixel cost 0.4 ms at a 4K frame's quarter size (H200)
    m = F.max_pool2d(m, (1, 2 * radius + 1), stride=1, padding=(0, radius))
    m = F.max_pool2d(m, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    if step > 1:
        m = F.interpolate(m, size=alpha.shape, mode="nearest")
    return m[0, 0]


def fill_unknown(plate: torch.Tensor, known: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Pull-push fill at quarter resolution: unknown pixels take the colour of the nearest known ones."""
    num = F.avg_pool2d((plate * known)[None], 4, ceil_mode=True)[0]
    den = F.avg_pool2d(known[None, None], 4, ceil_mode=True)[0]
    pyramid = [(num, den)]
    for _ in range(levels):
        if min(num.shape[-2:]) < 4:
            break
        num = F.avg_pool2d(num[None], 2, ceil_mode=True)[0]
        den = F.avg_pool2d(den[None], 2, ceil_mode=True)[0]
        pyramid.append((num, den))
    fill = num / den.clamp_min(1e-6)
    for num, den in reversed(pyramid[:-1]):
        up = F.interpolate(fill[None], size=num.shape[-2:], mode="bilinear", align_corners=False)[0]
        fill = num + (1 - den) * up  # num is premultiplied by coverage den
    return F.interpolate(fill[None], size=plate.shape[-2:], mode="bilinear", align_corners=False)[0]


class AdaptiveBackground(Node):
    node_type = "background.adaptive"
    capturable = True
    display_name = "Adaptive background"
    description = "Clean plate of the room: from a recorded plate or learned live where no person is, following lighting drift."

    frame: In[Frame]
    mask: In[Mask] = In(description="Person mask (1 = person); nothing is learned under it")
    recorded: In[Frame] = In(optional=True, description="A recorded clean plate (Studio); replaces the buffer when it changes")
    plate: Out[Frame]
    coverage: Out[Mask] = Out(description="1 where the room has been seen, 0 where the plate is filled in")

    class Params(NodeParams):
        plate_path: str = Field("", description="Image file of the empty room to start from; empty = learn from the first frames")
        adapt_seconds: float = Field(3.0, ge=0.1, le=600.0, description="Time constant of the slow update (lighting drift)")
        margin: float = Field(0.03, ge=0.0, le=0.2, description="Safety margin around the person, as a fraction of the frame height")
        person_on: float = Field(0.3, ge=0.0, le=1.0, description="Mask value above which a pixel becomes person (after the margin)")
        person_off: float = Field(0.05, ge=0.0, le=1.0, description="Mask value below which it stops being person (hysteresis)")
        settle_frames: int = Field(4, ge=0, le=120, description="Frames a pixel must stay clear before it is learned (mask lag, motion blur)")
        follow_exposure: bool = Field(True, description="Follow global brightness changes everywhere, also behind the person")
        exposure_seconds: float = Field(0.5, ge=0.05, le=60.0, description="Time constant of the global brightness follow")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._plate: torch.Tensor | None = None  # (3, H, W) float32 sRGB values in [0, 1]
        self._known: torch.Tensor | None = None  # (H, W) float32 0/1
        self._occupied: torch.Tensor | None = None  # (H, W) bool, hysteresis state
        self._clear_for: torch.Tensor | None = None  # (H, W) int16 frames since the person left
        self._recorded_id: int | None = None
        self._file_plate: torch.Tensor | None = None
        if self.params.plate_path:
            self._file_plate = load_image(self.params.plate_path, self.name, "plate_path")
        self._cpu = None
        if wanted(ctx):  # issue 13: the CPU path
            from muse.nodes.cpu.background import BackgroundCPU

            self._cpu = BackgroundCPU(self)

    def update_params(self, params: Params) -> bool:
        if params.plate_path != self.params.plate_path:
            self._file_plate = load_image(params.plate_path, self.name, "plate_path") if params.plate_path else None
            self._plate = None  # start again from the new plate
            if getattr(self, "_cpu", None) is not None:
                self._cpu.reset()
        self.params = params
        return True

    def reset(self, plate: torch.Tensor | None = None) -> None:
        """Forget the learned room (a camera move), optionally starting from `plate` (H, W, 3) uint8."""
        self._plate = None
        if getattr(self, "_cpu", None) is not None:
            self._cpu.reset()
        if plate is not None:
            self._file_plate = plate

    def _init(self, height: int, width: int, device: torch.device, start: torch.Tensor | None) -> None:
        self._occupied = torch.zeros((height, width), dtype=torch.bool, device=device)
        self._clear_for = torch.full((height, width), self.params.settle_frames, dtype=torch.int16, device=device)
        if start is not None:
            img = start.to(device).permute(2, 0, 1).float() / 255.0
            self._plate = fit_image(img, height, width).contiguous()
            self._known = torch.ones((height, width), device=device)
        else:
            self._plate = torch.zeros((3, height, width), device=device)
            self._known = torch.zeros((height, width), device=device)

    def capture_blocker(self) -> str | None:
        if self.ctx is not None and "recorded" in self.ctx.connected:
            return "a recorded plate input is compared by identity each frame (a host choice)"
        return None

    def frame_variant(self) -> bool:
        self._planned = True
        return self._plate is None

    def process(self, frame: Frame, mask: Mask, recorded: Frame | None = None) -> dict[str, object]:
        if self._cpu is not None:
            return self._cpu.process(frame, mask, recorded)
        ctx = self.ctx
        assert ctx is not None
        p = self.params
        height, width = frame.height, frame.width
        device = frame.image.device
        if not getattr(self, "_planned", False):
            self.frame_variant()
        self._planned = False
        if recorded is not None and id(recorded.image) != self._recorded_id:
            self._recorded_id = id(recorded.image)
            self._init(height, width, device, recorded.hwc_uint8())
        elif self._plate is None or self._plate.shape[-2:] != (height, width):
            self._init(height, width, device, self._file_plate)
        plate, known = self._plate, self._known
        assert plate is not None and known is not None and self._occupied is not None and self._clear_for is not None

        img = frame.chw(torch.float32)
        alpha = resize_mask(mask.alpha, height, width)
        near = dilate(alpha, max(0, round(p.margin * height)))
        # hysteresis: become person above `person_on`, clear only below `person_off`
        occupied = torch.where(near > p.person_on, True, torch.where(near < p.person_off, False, self._occupied))
        self._occupied.copy_(occupied)  # state in place: a recorded frame replays into the same buffers
        self._clear_for.copy_(torch.where(occupied, torch.zeros_like(self._clear_for), (self._clear_for + 1).clamp_max(10_000)))
        clear = (self._clear_for >= p.settle_frames).float()

        rate = 1.0 - math.exp(-1.0 / max(1e-3, ctx.fps * p.adapt_seconds))
        if p.follow_exposure:
            # the room's global gain (auto exposure, a lamp), measured where the room is seen and
            # applied to the whole plate, so what the person hides follows too
            w = clear * known
            gain = (img * w).sum((1, 2)) / (plate * w).sum((1, 2)).clamp_min(1e-6)
            gain = torch.where(w.sum() > 0.02 * height * width, gain, torch.ones_like(gain)).clamp(0.5, 2.0)
            g_rate = 1.0 - math.exp(-1.0 / max(1e-3, ctx.fps * p.exposure_seconds))
            plate.mul_(1 + g_rate * (gain[:, None, None] - 1))
        # never-seen pixels are taken at once; known ones drift slowly
        step = clear * torch.where(known > 0, torch.full_like(known, rate), torch.ones_like(known))
        plate.add_(step * (img - plate))
        known.copy_(torch.maximum(known, clear))

        shown = torch.where(known[None] > 0, plate, fill_unknown(plate, known))
        out = shown.clamp(0, 1).mul(255.0).round_().to(torch.uint8).permute(1, 2, 0).contiguous()
        return {
            "plate": Frame(out, timestamp=frame.timestamp, index=frame.index, layout="hwc"),
            "coverage": Mask(known.clone(), frame.timestamp, frame.index),
        }
