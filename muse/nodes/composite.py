"""`composite`: the person over the chosen background, in linear light.

Backgrounds: the adaptive clean plate (for morphing), a replacement image or
video file, a blur of the real background, or a flat colour (green screen for
OBS keying). Edge feathering and light wrap; the choice can change live.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.graph.transfer import Uploader
from muse.nodes.background import fit_image, load_image, resize_mask
from muse.nodes.warp.kernels import decode_uint8, encode_uint8, srgb_to_linear

Channel = Annotated[int, Field(ge=0, le=255)]


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflected edges."""
    if sigma <= 0.05:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    x = torch.arange(-radius, radius + 1, device=img.device, dtype=img.dtype)
    k = torch.exp(-(x * x) / (2 * sigma * sigma))
    k = k / k.sum()
    c = img.shape[0]
    out = F.pad(img[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


def soft_blur(img: torch.Tensor, sigma: float, out_size: tuple[int, int] | None = None) -> torch.Tensor:
    """A wide blur done at low resolution: area-downscale so sigma is ~2 px, blur, upscale (to `out_size`)."""
    h, w = out_size or tuple(img.shape[-2:])
    factor = max(1, int(sigma // 2))
    small = F.avg_pool2d(img[None], factor, ceil_mode=True)[0] if factor > 1 else img
    small = gaussian_blur(small, sigma / factor)
    if tuple(small.shape[-2:]) == (h, w):
        return small
    return F.interpolate(small[None], size=(h, w), mode="bilinear", align_corners=False)[0]


def masked_blur(img: torch.Tensor, weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur of `img` counting only where `weight` > 0 (the room without the person: no halo)."""
    both = soft_blur(torch.cat((img * weight, weight[None], img)), sigma)
    num, den, plain = both[:3], both[3:4], both[4:]
    eps = 1e-3  # where the person covers a whole blur footprint, fall back to the plain blur
    return (num + eps * plain) / (den + eps)


class VideoBackground:
    """A looping video file read frame by frame and uploaded (host decode, device resize)."""

    def __init__(self, path: Path, node: str, device: torch.device) -> None:
        import cv2

        self.cap = cv2.VideoCapture(str(path))
        if not self.cap.isOpened():
            raise NodeError(f"node {node!r}: path {str(path)!r} is not a readable video (MP4/MKV/AVI expected)")
        self.path = path
        self.upload = Uploader(device)

    def next(self) -> torch.Tensor:
        ok, bgr = self.cap.read()
        if not ok:  # loop
            self.cap.set(1, 0)  # cv2.CAP_PROP_POS_FRAMES
            ok, bgr = self.cap.read()
            if not ok:
                raise NodeError(f"video background {str(self.path)!r} has no frames")
        return self.upload(bgr[:, :, ::-1].copy())

    def close(self) -> None:
        self.cap.release()


VIDEO_SUFFIXES = {".mp4", ".mkv", ".avi", ".mov", ".webm", ".m4v"}


class Composite(Node):
    node_type = "composite.over"  # the registry needs "family.name"; "over" is the compositing operator
    display_name = "Composite"
    category = "composite"
    description = "Person over the clean plate, an image, a video, a blurred room or a key colour; feathered, light-wrapped, in linear light."

    frame: In[Frame]
    mask: In[Mask] = In(description="Person alpha (use warp.apply's warped_mask after a warp)")
    plate: In[Frame] = In(optional=True, description="Clean plate from background.adaptive (background: plate)")
    out: Out[Frame]

    class Params(NodeParams):
        background: Literal["plate", "image", "video", "blur", "colour"] = Field("blur", description="What goes behind the person; can change live")
        path: str = Field("", description="Image or video file for background: image / video")
        colour: tuple[Channel, Channel, Channel] = Field((0, 255, 0), description="Key colour (RGB 0-255) for background: colour")
        blur: float = Field(0.03, ge=0.0, le=0.2, description="Background blur strength (sigma) as a fraction of the frame height")
        feather: float = Field(0.0015, ge=0.0, le=0.05, description="Edge softening (sigma) as a fraction of the frame height")
        light_wrap: float = Field(0.3, ge=0.0, le=1.0, description="How much background light wraps onto the person's edge")
        wrap_size: float = Field(0.015, ge=0.001, le=0.1, description="Width of the light wrap as a fraction of the frame height")

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._image: torch.Tensor | None = None  # (H, W, 3) uint8 on the CPU
        self._image_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        self._video: VideoBackground | None = None
        self._warned: set[str] = set()
        self._load(self.params)
        ctx.report("background", self.params.background)

    def _load(self, params: Any) -> None:
        """Open the file a background needs, before it is switched on (a bad path leaves the old one running)."""
        if params.background not in ("image", "video"):
            return
        if not params.path:
            raise NodeError(f"node {self.name!r}: background {params.background!r} needs path: an image or video file")
        path = Path(os.path.expanduser(params.path))
        if not path.is_file():
            raise NodeError(f"node {self.name!r}: path {str(path)!r} does not exist; pick an existing {params.background} file")
        is_video = path.suffix.lower() in VIDEO_SUFFIXES
        if params.background == "image":
            if is_video:
                raise NodeError(f"node {self.name!r}: path {str(path)!r} is a video; use background: video")
            image = load_image(str(path), self.name, "path")
            self._image, self._image_cache = image, None
        else:
            assert self.ctx is not None
            video = VideoBackground(path, self.name, self.ctx.device)
            if self._video is not None:
                self._video.close()
            self._video = video

    def update_params(self, params: NodeParams) -> bool:
        old = self.params
        if (params.background, params.path) != (old.background, old.path):  # type: ignore[attr-defined]
            self._load(params)
        self.params = params
        if self.ctx is not None:
            self.ctx.report("background", params.background)  # type: ignore[attr-defined]
        return True

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned and self.ctx is not None:
            self._warned.add(key)
            self.ctx.logger.warning("node %r: %s", self.name, message)
            self.ctx.report("warning", message)

    def _background(self, fg_lin: torch.Tensor, alpha: torch.Tensor, plate: Frame | None) -> torch.Tensor:
        p = self.params
        _, height, width = fg_lin.shape
        device = fg_lin.device
        mode = p.background
        if mode == "plate" and plate is None:
            self._warn_once("plate", "background 'plate' but no clean plate arrived; showing a blurred room")
            mode = "blur"
        if mode == "colour":
            c = srgb_to_linear(torch.tensor(p.colour, dtype=torch.float32, device=device) / 255.0)
            return c[:, None, None].expand(3, height, width)
        if mode == "plate":
            assert plate is not None
            return fit_image(decode_uint8(plate.hwc_uint8()).permute(2, 0, 1), height, width)
        if mode == "image":
            if self._image_cache is None or self._image_cache[0] != (height, width):
                img = self._image.to(device).permute(2, 0, 1).float() / 255.0  # type: ignore[union-attr]
                self._image_cache = ((height, width), srgb_to_linear(fit_image(img, height, width)))
            return self._image_cache[1]
        if mode == "video":
            assert self._video is not None
            img = self._video.next().permute(2, 0, 1).float() / 255.0
            return srgb_to_linear(fit_image(img, height, width))
        sigma = max(0.5, p.blur * height)
        if plate is not None:  # the true room: no trace of the person in the blur
            room = fit_image(decode_uint8(plate.hwc_uint8()).permute(2, 0, 1), height, width)
            return soft_blur(room, sigma)
        return masked_blur(fg_lin, (1.0 - alpha).clamp(0, 1) ** 2, sigma)

    def process(self, frame: Frame, mask: Mask, plate: Frame | None = None) -> dict[str, Frame]:
        p = self.params
        height, width = frame.height, frame.width
        fg = decode_uint8(frame.hwc_uint8()).permute(2, 0, 1)
        alpha = resize_mask(mask.alpha, height, width).clamp(0, 1)
        if p.feather > 0:
            alpha = gaussian_blur(alpha[None], p.feather * height)[0]
        bg = self._background(fg, alpha, plate)
        if p.light_wrap > 0:
            # background light spills over the person's edge: strongest at the outline, fading inwards
            sigma = max(0.5, p.wrap_size * height)
            inside = soft_blur(alpha[None], sigma)[0]
            wrap = (p.light_wrap * alpha * (1.0 - inside)).clamp(0, 1)
            fg = fg + wrap * (soft_blur(bg, sigma) - fg)
        out = alpha * fg + (1.0 - alpha) * bg
        img = encode_uint8(out).permute(1, 2, 0).contiguous()
        return {"out": frame.with_image(img, layout="hwc")}
