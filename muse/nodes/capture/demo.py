"""`capture.demo`: a source that needs no camera and no files.

A real person photo (scikit-image's astronaut, cut out with a fixed soft
silhouette) moves smoothly over a real background picture. Frame i is always
the same picture, so graphs can be tried and tested anywhere; the clean plate
(the background alone) and the person's alpha are outputs too, as ground truth.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.nodes.capture.demo_kernel import DemoKernel
from muse.nodes.capture.pacing import Pacer
from muse.nodes.cpu import unread

# Silhouette of the astronaut in her 512x512 photo: head, collar ring and
# torso (the helmet in the lower right and the flag on the left are left out).
_HEAD = ((226, 95), (66, 82))  # centre (x, y), axes (rx, ry)
_COLLAR = ((210, 226), (95, 68))
_TORSO = [(120, 240), (305, 240), (345, 290), (362, 350), (292, 385), (282, 512),
          (22, 512), (18, 345), (40, 285), (85, 255)]


def _photo(name: str) -> np.ndarray:
    """scikit-image's photo `name`: the lossless copy shipped in muse/assets (the packaged app has no
    scikit-image data files), else scikit-image's own."""
    import cv2

    from muse.app_paths import demo_media

    shipped = demo_media(f"{name}.png")
    if shipped.is_file():
        img = cv2.imread(str(shipped), cv2.IMREAD_UNCHANGED)
        return np.ascontiguousarray(img[:, :, ::-1] if img.ndim == 3 else img)
    from skimage import data

    return getattr(data, name)()


def person_cutout() -> tuple[np.ndarray, np.ndarray]:
    """The astronaut as (512, 512, 3) uint8 RGB and her soft alpha (512, 512) float32 in [0, 1]."""
    import cv2

    from muse.pictures import picture

    rgb = picture("astronaut").copy()
    hard = np.zeros(rgb.shape[:2], np.uint8)
    for (cx, cy), (rx, ry) in (_HEAD, _COLLAR):
        cv2.ellipse(hard, (cx, cy), (rx, ry), 0, 0, 360, 255, -1)
    cv2.fillPoly(hard, [np.array(_TORSO, np.int32)], 255)
    # A few pixels of feather, like the edge a real matte has.
    alpha = cv2.GaussianBlur(hard.astype(np.float32) / 255.0, (0, 0), 2.0)
    alpha[-4:] = hard[-4:] / 255.0  # the body leaves the frame at the bottom: keep that edge hard
    return rgb, alpha


# Warm wall paint over scikit-image's brick-wall photo: an empty room corner with nothing in it
# that a person segmenter mistakes for a person (the coffee photo's cup is taken for one).
_ROOM_TINT = np.array([1.0, 0.82, 0.68], np.float32)


def background_picture(name: str) -> np.ndarray:
    """A real photo (scikit-image's, shipped in muse/assets) as (H, W, 3) uint8 RGB; `room` is the brick wall, painted."""
    from muse.pictures import picture

    if name == "room":
        wall = picture("brick").astype(np.float32) / 255.0
        return np.clip((0.25 + 0.7 * wall)[:, :, None] * _ROOM_TINT * 255.0 + 0.5, 0, 255).astype(np.uint8)
    img = picture(name).copy()
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def _cover(img: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize (3, h, w) float to fill width x height, cropping the overflow (like a camera's field of view)."""
    _, h, w = img.shape
    scale = max(width / w, height / h)
    nw, nh = max(width, round(w * scale)), max(height, round(h * scale))
    big = F.interpolate(img[None], size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)[0]
    y0, x0 = (nh - height) // 2, (nw - width) // 2
    return big[:, y0 : y0 + height, x0 : x0 + width]


class Demo(Node):
    node_type = "capture.demo"
    display_name = "Demo source"
    description = (
        "A real person photo moving over a background photo, at any size and fps; deterministic. "
        "Outputs the frame, the person's alpha (ground truth) and the clean plate (background alone)."
    )

    on_demand = True  # rendering costs CPU on the CPU path; a frame nobody takes is not worth making

    frame: Out[Frame]
    mask: Out[Mask]
    clean_plate: Out[Frame]

    class Params(NodeParams):
        width: int = Field(1280, ge=16, le=7680, description="Width in pixels")
        height: int = Field(720, ge=16, le=4320, description="Height in pixels")
        fps: float = Field(30.0, ge=0, le=240, description="Frames per second; 0 = as fast as possible")
        frames: int = Field(0, ge=0, description="Stop after this many frames; 0 = endless")
        person: bool = Field(True, description="Draw the person; off renders the clean plate alone")
        background: Literal["room", "coffee", "chelsea", "rocket"] = Field(
            "room", description="Background photo (scikit-image sample); `room` is an empty brick-walled room "
            "(the bundled segmenter finds nobody in it, so it works as a clean plate)"
        )
        motion: float = Field(1.0, ge=0.0, le=2.0, description="How far the person moves (0 = still)")
        start: int = Field(0, ge=0, description="First frame number (frame i is always the same picture)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        dev = ctx.device
        work = torch.float16 if dev.type == "cuda" else torch.float32
        bg = torch.from_numpy(background_picture(p.background)).to(dev).permute(2, 0, 1).to(work) / 255.0
        self._plate = (_cover(bg, p.width, p.height).clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        rgb, alpha = person_cutout()
        side = max(8, round(0.85 * p.height))  # she fills most of the frame's height, like a webcam shot
        person = torch.from_numpy(rgb).to(dev).permute(2, 0, 1).to(work) / 255.0
        a = torch.from_numpy(alpha).to(dev)[None].to(work)
        both = F.interpolate(torch.cat((person, a))[None], size=(side, side), mode="bilinear",
                             align_corners=False, antialias=True)[0].clamp(0, 1)
        alpha_s = both[3]
        # Snap near-0/1 alpha to exact values, so the inside is exactly the photo and the outside exactly the plate.
        alpha_s = torch.where(alpha_s >= 0.999, torch.ones_like(alpha_s), torch.where(alpha_s <= 0.001, torch.zeros_like(alpha_s), alpha_s))
        self._person = both[:3].permute(1, 2, 0).contiguous() * 255.0  # (s, s, 3), pre-scaled to 0..255
        self._alpha = alpha_s.contiguous()  # (s, s)
        if dev.type == "cpu":
            # On the CPU, OpenCV's SIMD blend is several times faster than torch's lerp at 4K.
            self._cv = (self._person.round().to(torch.uint8).numpy(), self._alpha.float().numpy(), (1.0 - self._alpha).float().numpy())
            # alpha is exactly 0 or 1 away from her soft edge: there the blend is a copy (or nothing), so
            # only the edge's pixels (~5 % of her square) are blended
            a_np = self._alpha.float().numpy()
            self._solid = np.ascontiguousarray((a_np >= 1.0).astype(np.uint8))
            ys, xs = np.nonzero((a_np > 0.0) & (a_np < 1.0))
            flat = ys * a_np.shape[1] + xs
            # the edge's colours and weights gathered once, as columns for cv2.blendLinear
            person_u8, wa, wb = self._cv
            self._edge = (ys, xs, person_u8.reshape(-1, 3)[flat][:, None], wa.reshape(-1)[flat][:, None], wb.reshape(-1)[flat][:, None])
            from muse.nodes.cpu import kernels

            # with numba: one loop over the edge's points (the same blend; the gathers and the scatter cost 1.2 ms a frame)
            self._edge_loop = kernels.available()
            self._edge_ready = False  # compiled by the warm-up (the first frames blend as below until then)
            if self._edge_loop:
                kernels.warm_up()
                self._edge_flat = (ys.astype(np.int64), xs.astype(np.int64), np.ascontiguousarray(self._edge[2][:, 0]),
                                   np.ascontiguousarray(self._edge[3][:, 0]), np.ascontiguousarray(self._edge[4][:, 0]))
        self._side = side
        self._work = work
        # On CUDA: the frame in one kernel launch (demo_kernel.py); None elsewhere (the torch ops below render)
        self._kernel = DemoKernel.build(self._plate, self._person.round(), self._alpha, ctx.dtype) if dev.type == "cuda" else None
        self._mask_dtype = ctx.dtype
        self._index = p.start
        self._emitted = 0
        # `muse bench` runs synthetic sources flat out (a camera's stand-in included).
        self._pacer = Pacer(0.0 if ctx.settings.get("unpaced") else p.fps)

    def placement(self, index: int) -> tuple[int, int]:
        """Top-left pixel of the person at frame `index`: a slow sway plus a small bob."""
        p = self.params
        t = index / (p.fps or 30.0)
        cx = p.width / 2 + p.motion * 0.22 * p.width * math.sin(2 * math.pi * t / 6.0)
        bob = p.motion * 0.015 * p.height * math.sin(2 * math.pi * t / 1.7)
        x0 = round(cx - self._side / 2)
        y0 = round(p.height - self._side + 0.03 * p.height + bob)  # body runs off the bottom edge
        return x0, y0

    def render(self, index: int, with_mask: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frame `index` as (H, W, 3) uint8 and the person's alpha (H, W); None for the alpha when
        `with_mask` is False (nothing reads it: a full-size float plane a frame saved on the CPU)."""
        p = self.params
        if self._kernel is not None and p.person:
            return self._kernel.render(*self.placement(index), with_mask)
        alpha_full = torch.zeros((p.height, p.width), dtype=self._mask_dtype, device=self._plate.device) if with_mask else None
        if not p.person:
            return self._plate, alpha_full
        x0, y0 = self.placement(index)
        # Clip the person's square to the frame.
        fx0, fy0 = max(0, x0), max(0, y0)
        fx1, fy1 = min(p.width, x0 + self._side), min(p.height, y0 + self._side)
        if fx1 <= fx0 or fy1 <= fy0:
            return self._plate, alpha_full
        sx0, sy0 = fx0 - x0, fy0 - y0
        sx1, sy1 = sx0 + (fx1 - fx0), sy0 + (fy1 - fy0)
        a = self._alpha[sy0:sy1, sx0:sx1]
        out = self._plate.clone()
        if self._plate.device.type == "cpu":
            import cv2

            person = self._cv[0]
            region = out.numpy()[fy0:fy1, fx0:fx1]
            cv2.copyTo(person[sy0:sy1, sx0:sx1], self._solid[sy0:sy1, sx0:sx1], region)
            if self._edge_loop and (self._edge_ready or self._edge_compiled()):
                from muse.nodes.cpu import kernels

                kernels.blend_points(out.numpy(), *self._edge_flat, (fy0 - sy0, fx0 - sx0), (sy0, sy1, sx0, sx1))
                return out, self._alpha_frame(alpha_full, a, fx0, fy0, fx1, fy1)
            ys, xs, e_person, e_wa, e_wb = self._edge
            if (sy0, sx0, sy1, sx1) != (0, 0, self._side, self._side):  # her square is cut by the frame's edges
                keep = np.flatnonzero((ys >= sy0) & (ys < sy1) & (xs >= sx0) & (xs < sx1))
                ys, xs, e_person, e_wa, e_wb = ys[keep], xs[keep], e_person[keep], e_wa[keep], e_wb[keep]
            if ys.size:
                # the same blend, on the edge's pixels gathered into one column (flat indices: 2-D fancy
                # indexing cost three times as much)
                at = (ys + (fy0 - sy0)) * p.width + (xs + (fx0 - sx0))
                flat_out = out.numpy().reshape(-1, 3)
                flat_out[at] = cv2.blendLinear(e_person, flat_out[at][:, None], e_wa, e_wb)[:, 0]
        else:
            # One fused blend over the person's square: cheap on a GPU and free of host syncs.
            fg = self._person[sy0:sy1, sx0:sx1]
            bg = self._plate[fy0:fy1, fx0:fx1].to(self._work)
            out[fy0:fy1, fx0:fx1] = torch.lerp(bg, fg, a[..., None]).round_().to(torch.uint8)
        return out, self._alpha_frame(alpha_full, a, fx0, fy0, fx1, fy1)

    def _edge_compiled(self) -> bool:
        from muse.nodes.cpu import kernels

        self._edge_ready = kernels.compiled("blend_points")
        return self._edge_ready

    @staticmethod
    def _alpha_frame(alpha_full: torch.Tensor | None, a: torch.Tensor, fx0: int, fy0: int, fx1: int, fy1: int) -> torch.Tensor | None:
        if alpha_full is not None:
            alpha_full[fy0:fy1, fx0:fx1] = a
        return alpha_full

    def process(self) -> dict[str, Frame | Mask] | None:
        p = self.params
        if p.frames and self._emitted >= p.frames:
            return None
        self._pacer.wait(self._emitted)
        i = self._index
        # the ground-truth mask only when something reads it (on the GPU too: a 4K plane and a payload a frame)
        with_mask = not unread(self.ctx, "mask", any_device=True)
        image, alpha = self.render(i, with_mask)
        ts = i / (p.fps or 30.0)
        self._index += 1
        self._emitted += 1
        out: dict[str, Frame | Mask] = {"frame": Frame(image, timestamp=ts, index=i)}
        if alpha is not None:
            out["mask"] = Mask(alpha, timestamp=ts, index=i)
        out["clean_plate"] = Frame(self._plate, timestamp=ts, index=i)
        return out

    def update_params(self, params: Params) -> bool:
        # Size and pictures are baked into buffers at open; motion/person/frames can change live.
        old = self.params
        if (params.width, params.height, params.background) != (old.width, old.height, old.background):
            return False
        self.params = params
        self._pacer.fps = params.fps
        self._pacer.reset()
        return True
