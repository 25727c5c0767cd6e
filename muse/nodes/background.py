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

from muse.graph.capture import device_constant
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.nodes import plate_kernels
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


def pull_push(num: torch.Tensor, den: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Pull-push fill on a grid: `num` (C, h, w) colours premultiplied by coverage `den` (1, h, w);
    cells with no coverage take the colour of the nearest covered ones."""
    c = num.shape[0]
    level = torch.cat([num, den])  # colours and coverage pooled together: one kernel a level, not two
    pyramid = [level]
    for _ in range(levels):
        if min(level.shape[-2:]) < 4:
            break
        level = F.avg_pool2d(level[None], 2, ceil_mode=True)[0]
        pyramid.append(level)
    fill = level[:c] / level[c:].clamp_min(1e-6)
    for level in reversed(pyramid[:-1]):
        up = F.interpolate(fill[None], size=level.shape[-2:], mode="bilinear", align_corners=False)[0]
        fill = torch.addcmul(level[:c], 1 - level[c:], up)  # num is premultiplied by coverage den
    return fill


def fill_unknown(plate: torch.Tensor, known: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Pull-push fill at quarter resolution: unknown pixels take the colour of the nearest known ones."""
    num = F.avg_pool2d((plate * known)[None], 4, ceil_mode=True)[0]
    den = F.avg_pool2d(known[None, None], 4, ceil_mode=True)[0]
    fill = pull_push(num, den, levels)
    return F.interpolate(fill[None], size=plate.shape[-2:], mode="bilinear", align_corners=False)[0]


def margin_blocks(height: int, margin: float) -> tuple[int, int]:
    """(radius in pixels, block size) of the safety margin: wide margins are dilated on 4x4 blocks
    (a margin needs no pixel precision), so the plate's bookkeeping lives on those blocks."""
    radius = max(0, round(margin * height))
    return radius, (4 if radius >= 8 else 1)


def dilate_blocks(alpha: torch.Tensor, radius: int, step: int) -> torch.Tensor:
    """`dilate` without the final expand: the (ceil(H/step), ceil(W/step)) block plane."""
    m = alpha[None, None]
    if step > 1:
        m = F.max_pool2d(m, step, stride=step, ceil_mode=True)
        radius = -(-radius // step)
    if radius > 0:
        m = F.max_pool2d(m, (1, 2 * radius + 1), stride=1, padding=(0, radius))
        m = F.max_pool2d(m, (2 * radius + 1, 1), stride=1, padding=(radius, 0))
    return m[0, 0]


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
        from muse.nodes.warp.kernels import cupy_available

        # the per-frame plate pass: one CuPy kernel on CUDA, its torch twin elsewhere (plate_kernels)
        self._kernels = "cupy" if ctx.cuda and cupy_available() else "torch"
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
        """State for a frame size: the plate at full resolution, the bookkeeping on margin blocks."""
        if start is not None:
            img = start.to(device).permute(2, 0, 1).float() / 255.0
            self._plate = fit_image(img, height, width).contiguous()
        else:
            self._plate = torch.zeros((3, height, width), device=device)
        self._blocks(height, width, device, 1.0 if start is not None else 0.0)

    def _blocks(self, height: int, width: int, device: torch.device, known: float) -> None:
        _, step = margin_blocks(height, self.params.margin)
        bh, bw = -(-height // step), -(-width // step)
        self._step = step
        self._occupied = torch.zeros((bh, bw), dtype=torch.bool, device=device)
        self._clear_for = torch.full((bh, bw), self.params.settle_frames, dtype=torch.int16, device=device)
        self._counts = plate_kernels.block_counts(height, width, bh, bw, device)
        self._img_sums = torch.zeros((3, bh, bw), device=device)
        self._known = torch.full((bh, bw), known, device=device)
        assert self._plate is not None
        self._plate_sums = plate_kernels.block_sums(self._plate, bh, bw)

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
        if self._step != margin_blocks(height, p.margin)[1]:
            # a live margin edit crossed the block threshold: new blocks, the plate kept (re-learned where seen)
            self._blocks(height, width, device, 0.0)
        plate, known = self._plate, self._known
        assert plate is not None and known is not None and self._occupied is not None and self._clear_for is not None
        step = self._step
        fg = frame.hwc_uint8()

        # Bookkeeping on blocks (the margin is dilated on them): person here, frames clear, room seen.
        radius, _ = margin_blocks(height, p.margin)
        near = dilate_blocks(resize_mask(mask.alpha, height, width), radius, step)
        # hysteresis: become person above `person_on`, clear only below `person_off`
        occupied = (near > p.person_on) | ((near >= p.person_off) & self._occupied)
        self._occupied.copy_(occupied)  # state in place: a recorded frame replays into the same buffers
        self._clear_for.add_(1).clamp_max_(10_000).masked_fill_(occupied, 0)
        clear = (self._clear_for >= p.settle_frames).float()

        rate = 1.0 - math.exp(-1.0 / max(1e-3, ctx.fps * p.adapt_seconds))
        backend = "cupy" if self._kernels == "cupy" else "torch"
        stream = ctx.cupy_stream() if backend == "cupy" else None
        # the frame's block sums: the exposure gain and the fill need no full-resolution float copy
        img_sums = plate_kernels.block_sums_u8(fg, *clear.shape, out=self._img_sums, backend=backend, stream=stream)
        if p.follow_exposure:
            # the room's global gain (auto exposure, a lamp), measured where the room is seen and clear and
            # applied to the whole plate, so what the person hides follows too; w is constant on blocks,
            # so block sums give the pixel sums exactly
            w = clear * known
            gain = (img_sums * w).sum((1, 2)) / (self._plate_sums * w).sum((1, 2)).clamp_min(1e-6)
            gain = torch.where((w * self._counts).sum() > 0.02 * height * width, gain, 1.0).clamp(0.5, 2.0)
            g_rate = 1.0 - math.exp(-1.0 / max(1e-3, ctx.fps * p.exposure_seconds))
            gain = (gain * g_rate).add_(1 - g_rate)  # 1 + g_rate (gain - 1)
        else:
            gain = device_constant([1.0, 1.0, 1.0], device, torch.float32)
        # never-seen pixels are taken at once; known ones drift slowly
        step_b = clear * torch.where(known > 0, rate, 1.0)
        torch.maximum(known, clear, out=known)
        # The fill for never-seen pixels, from the room seen so far. The update is linear with coefficients
        # constant on blocks, so the updated plate's block means are known before the full-resolution pass.
        mean = torch.lerp(gain.view(3, 1, 1) * self._plate_sums, img_sums, step_b) / self._counts
        seen = known[None]
        if step == 1:
            fill = pull_push(F.avg_pool2d((mean * seen)[None], 4, ceil_mode=True)[0], F.avg_pool2d(seen[None], 4, ceil_mode=True)[0])
        else:
            fill = pull_push(mean * seen, seen)
        out = torch.empty((height, width, 3), dtype=torch.uint8, device=device)
        plate_kernels.plate_update(fg, plate, out, gain, step_b, known, fill, self._plate_sums, backend=backend, stream=stream)
        return {
            "plate": Frame(out, timestamp=frame.timestamp, index=frame.index, layout="hwc"),
            "coverage": Mask(known.clone(), frame.timestamp, frame.index),
        }
