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

from muse.graph.capture import device_constant, is_recording
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.graph.transfer import Uploader
from muse.nodes import plate_kernels
from muse.nodes.background import fit_image, load_image
from muse.nodes.cpu import wanted
from muse.nodes.warp import kernels
from muse.nodes.warp.fields import shrink_mean
from muse.nodes.warp.kernels import decode_uint8, srgb_to_linear

Channel = Annotated[int, Field(ge=0, le=255)]


def gaussian_blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (C, H, W) with reflected edges."""
    if sigma <= 0.05:
        return img
    radius = max(1, int(math.ceil(3 * sigma)))
    radius = min(radius, img.shape[-1] - 1, img.shape[-2] - 1)
    if max(img.shape[-2:]) <= _MATMUL_BLUR_MAX and not (img.device.type == "cpu" and not is_recording()):
        # Small planes on the GPU (the reduced-size feather, wrap and blur passes): two matrix products
        # with the reflected taps folded into banded matrices. A depthwise convolution ran as cuDNN's
        # implicit GEMM at about 100 us a plane (H200); the products are two kernels of a few us.
        rows = _blur_matrix(img.shape[-2], sigma, radius, img.device)
        cols = _blur_matrix(img.shape[-1], sigma, radius, img.device)
        return torch.matmul(torch.matmul(rows, img.float()), cols.T).to(img.dtype)
    if img.is_cuda and img.dtype == torch.float32 and kernels.cupy_available():
        return kernels.gaussian_blur_cupy(img, _blur_taps(sigma, radius, img.device))
    k = _blur_taps(sigma, radius, img.device)  # made once, not 7 ops a call
    k = k if k.dtype == img.dtype else k.to(img.dtype)
    if img.device.type == "cpu" and img.dtype == torch.float32 and not is_recording():
        return _gaussian_blur_cpu(img, k)
    c = img.shape[0]
    out = F.pad(img[None], (radius, radius, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.pad(out, (0, 0, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


_MATMUL_BLUR_MAX = 640  # planes up to this size blur by matrix products
_BLUR_MATRICES: dict[tuple, torch.Tensor] = {}


_BLUR_TAPS: dict[tuple, torch.Tensor] = {}


def _blur_taps(sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """The Gaussian's taps -radius..radius on the device, made once (host maths, no per-frame kernels)."""
    key = (round(sigma, 6), radius, str(device))
    t = _BLUR_TAPS.get(key)
    if t is None:
        x = torch.arange(-radius, radius + 1, dtype=torch.float64)
        k = torch.exp(-(x * x) / (2 * sigma * sigma))
        t = _BLUR_TAPS[key] = (k / k.sum()).float().to(device)
    return t


def _blur_matrix(n: int, sigma: float, radius: int, device: torch.device) -> torch.Tensor:
    """(n, n) matrix applying a Gaussian of `sigma` (taps -radius..radius) with reflected edges (torch's
    'reflect' padding). Made on the host once per size and kernel, in the warm-up frames before any
    recording, and kept on the device."""
    key = (n, round(sigma, 6), radius, str(device))
    m = _BLUR_MATRICES.get(key)
    if m is None:
        import numpy as np

        # numpy, not _blur_taps: under the CPU capture emulation the first call comes inside a recording,
        # where torch ops on host values are refused
        x = np.arange(-radius, radius + 1, dtype=np.float64)
        taps = np.exp(-(x * x) / (2 * sigma * sigma))
        taps /= taps.sum()
        dense = np.zeros((n, n))
        for i in range(n):
            for t in range(-radius, radius + 1):
                j = i + t
                j = -j if j < 0 else (2 * (n - 1) - j if j >= n else j)
                dense[i, j] += taps[t + radius]
        m = _BLUR_MATRICES[key] = torch.from_numpy(dense).to(device=device, dtype=torch.float32)
    return m


def _linear(v: float) -> float:
    """One sRGB value in [0, 1] to linear light (host maths: a key colour is a param, not a picture)."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def _gaussian_blur_cpu(img: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """The same separable blur through OpenCV: torch's CPU depthwise convolution took
    115 ms for one 720p plane with 9 taps, OpenCV about 1 ms (reflect-101 = torch's 'reflect')."""
    import cv2
    import numpy as np

    kern = k.numpy().astype(np.float32)
    planes = [cv2.sepFilter2D(p, -1, kern, kern, borderType=cv2.BORDER_REFLECT_101) for p in img.contiguous().numpy()]
    return torch.from_numpy(np.stack(planes))


def masked_blur_small(img: torch.Tensor, weight: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur of `img` (C, h, w) counting only where `weight` > 0 (the room without the person: no halo)."""
    both = gaussian_blur(torch.cat((img * weight, weight[None], img)), sigma)
    num, den, plain = both[:3], both[3:4], both[4:]
    eps = 1e-3  # where the person covers a whole blur footprint, fall back to the plain blur
    return (num + eps * plain) / (den + eps)


def resample(plane: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(h, w) or (C, h, w) to `size`: area average when shrinking, bilinear when growing."""
    squeeze = plane.dim() == 2
    p = plane.float()[None, None] if squeeze else plane.float()[None]
    if tuple(p.shape[-2:]) != tuple(size):
        shrink = p.shape[-2] >= size[0] and p.shape[-1] >= size[1]
        p = shrink_mean(p, size) if shrink else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
    return p[0, 0] if squeeze else p[0]


def _known(coverage: Mask | None, confidence: Mask) -> Mask:
    """Where the plate may be shown: seen (coverage) and behind a sure matte (confidence), on the finer grid."""
    conf = confidence.alpha.float().clamp(0, 1)
    if coverage is None:
        return Mask(conf, confidence.timestamp, confidence.index)
    cov = coverage.alpha.float().clamp(0, 1)
    if conf.shape != cov.shape:
        # at the finer of the two grids (the coverage's blocks at 4K, the matte's working size at 720p), so the
        # final pass's bilinear sampling of the product stays within a level of the product at full size
        size = max(tuple(conf.shape), tuple(cov.shape), key=lambda s: s[0] * s[1])
        conf = conf if tuple(conf.shape) == size else F.interpolate(conf[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        cov = cov if tuple(cov.shape) == size else F.interpolate(cov[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return Mask(cov * conf, coverage.timestamp, coverage.index)


def cell_factor(height: int, width: int, want: int) -> int:
    """The reduction factor for a low-resolution pass: the largest whole cell <= `want` that tiles the
    frame exactly (1080p: 15 for 16, 4K: 30 for 32), so `shrink_mean` is one strided pool and the
    cells sit on the final pass's sampling grid; `want` itself (adaptive windows) when no cell of at
    least half of it tiles the frame (odd sizes)."""
    g = math.gcd(height, width)
    for f in range(max(1, want), (want + 1) // 2 - 1, -1):
        if f >= 1 and g % f == 0:
            return f
    return max(1, want)


def reduced_size(height: int, width: int, factor: int) -> tuple[int, int]:
    """(h, w) of a plane `factor` times smaller, rounded up (the cells `shrink_mean` averages)."""
    return -(-height // factor), -(-width // factor)


def fit_uint8(img: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W, 3) uint8 resized to cover (height, width), cropped, still uint8 (what the final pass reads)."""
    if tuple(img.shape[:2]) == (height, width):
        return img.contiguous()
    out = fit_image(img.permute(2, 0, 1).float(), height, width)
    return out.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()


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
    node_type = "composite.over"
    capturable = True  # the registry needs "family.name"; "over" is the compositing operator
    display_name = "Composite"
    category = "composite"
    description = "Person over the clean plate, an image, a video, a blurred room or a key colour; feathered, light-wrapped, in linear light."

    frame: In[Frame]
    mask: In[Mask] = In(description="Person alpha (use warp.apply's warped_mask after a warp)")
    plate: In[Frame] = In(optional=True, description="Clean plate from background.adaptive (background: plate)")
    coverage: In[Mask] = In(
        optional=True,
        description="background.adaptive's coverage: where the room was never seen, show the live frame, not a guessed plate",
    )
    confidence: In[Mask] = In(
        optional=True,
        description="segment.fused's confidence: where the matte is unsure, the live frame is shown behind the person, "
        "never plate pixels through them (no ghost, no halo)",
    )
    out: Out[Frame]

    class Params(NodeParams):
        background: Literal["plate", "image", "video", "blur", "colour"] = Field("blur", description="What goes behind the person; can change live")
        path: str = Field("", description="Image or video file for background: image / video")
        colour: tuple[Channel, Channel, Channel] = Field((0, 255, 0), description="Key colour (RGB 0-255) for background: colour")
        blur: float = Field(0.03, ge=0.0, le=0.2, description="Background blur strength (sigma) as a fraction of the frame height")
        feather: float = Field(0.0015, ge=0.0, le=0.05, description="Edge softening (sigma) as a fraction of the frame height")
        light_wrap: float = Field(0.3, ge=0.0, le=1.0, description="How much background light wraps onto the person's edge")
        wrap_size: float = Field(0.015, ge=0.001, le=0.1, description="Width of the light wrap as a fraction of the frame height")
        backend: Literal["auto", "cupy", "torch"] = Field("auto", description="auto = one fused CuPy pass on CUDA when installed, torch elsewhere")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._image: torch.Tensor | None = None  # (H, W, 3) uint8 on the CPU
        self._image_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        self._video: VideoBackground | None = None
        self._warned: set[str] = set()
        if self.params.backend == "cupy" and not (ctx.cuda and kernels.cupy_available()):
            raise NodeError(f"node {self.name!r}: backend 'cupy' needs a CUDA device and CuPy; use backend: auto")
        self._backend = "cupy" if ctx.cuda and self.params.backend != "torch" and kernels.cupy_available() else "torch"
        self._counts: dict[tuple, torch.Tensor] = {}  # pixels per pooled cell, per frame and cell size
        self._cpu = None
        if wanted(ctx) and self.params.backend == "auto":  # issue 13: the CPU path
            from muse.nodes.cpu.composite import CompositeCPU

            self._cpu, self._backend = CompositeCPU(self), "cpu"
        ctx.report("backend", self._backend)
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

    def capture_blocker(self) -> str | None:
        if self.params.background == "video":
            return "background: video decodes and uploads a file frame on the host every frame"
        return None

    def update_params(self, params: Params) -> bool:
        old = self.params
        if params.backend != old.backend:
            return False  # rebuild: open() decides the backend
        if (params.background, params.path) != (old.background, old.path):
            self._load(params)
        self.params = params
        if self.ctx is not None:
            self.report("background", params.background)
        return True

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned and self.ctx is not None:
            self._warned.add(key)
            self.logger.warning("node %r: %s", self.name, message)
            self.report("warning", message)

    def _background(
        self, fg: torch.Tensor, alpha: torch.Tensor, plate: Frame | None, coverage: Mask | None = None,
        confidence: Mask | None = None,
    ) -> tuple[torch.Tensor | None, tuple[float, float, float], torch.Tensor | None]:
        """The background as full-size uint8 sRGB, or low-resolution linear floats (blur), or None + a flat linear
        colour; and with a uint8 plate, the low-resolution plane of where it is known (None: everywhere)."""
        p = self.params
        height, width = int(fg.shape[0]), int(fg.shape[1])
        device = fg.device
        mode = p.background
        r, g, b = (_linear(v / 255.0) for v in p.colour)
        colour = (r, g, b)
        if mode == "plate" and plate is None:
            self._warn_once("plate", "background 'plate' but no clean plate arrived; showing a blurred room")
            mode = "blur"
        if mode == "colour":
            return None, colour, None
        if mode == "plate":
            assert plate is not None
            room = fit_uint8(plate.hwc_uint8(), height, width)
            known: torch.Tensor | None = None
            if coverage is not None or confidence is not None:
                # A plate pixel never seen is a guess (filled in), and where the matte is unsure the plate may
                # be the room behind the person's hair or shoulder: the live frame there is the truth (the
                # room, or the person, who is drawn over it anyway). The final pass mixes the two per pixel
                # from this low-resolution plane (no full-resolution copy of the room).
                if confidence is not None:
                    known = _known(coverage, confidence).alpha
                elif coverage is not None:
                    known = coverage.alpha.float().clamp(0, 1)
            return room, colour, known
        if mode == "image":
            if self._image_cache is None or self._image_cache[0] != (height, width):
                assert self._image is not None  # background 'image' loaded it at open
                self._image_cache = ((height, width), fit_uint8(self._image.to(device), height, width))
            return self._image_cache[1], colour, None
        if mode == "video":
            assert self._video is not None
            return fit_uint8(self._video.next(), height, width), colour, None
        # blur: a low-resolution linear picture of the room, sampled smoothly by the final pass
        sigma = max(0.5, p.blur * height)
        factor = cell_factor(height, width, int(sigma // 2))
        size = reduced_size(height, width, factor)
        if plate is not None:  # the true room: no trace of the person in the blur
            room = decode_uint8(fit_uint8(plate.hwc_uint8(), height, width)).permute(2, 0, 1)
            return gaussian_blur(shrink_mean(room[None], size)[0], sigma / factor), colour, None
        room = shrink_mean(decode_uint8(fg).permute(2, 0, 1)[None], size)[0]
        weight = (1.0 - resample(alpha, size)).clamp(0, 1) ** 2
        return masked_blur_small(room, weight, sigma / factor), colour, None

    def _pooled(self, img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, h, w) cell means in [0, 1] (plate_kernels' block sums: one read of the bytes)."""
        height, width = int(img.shape[0]), int(img.shape[1])
        key = (height, width, size, str(img.device))
        counts = self._counts.get(key)
        if counts is None:
            counts = self._counts[key] = plate_kernels.block_counts(height, width, size[0], size[1], img.device)
        backend = "cupy" if self._backend == "cupy" else "torch"
        sums = plate_kernels.block_sums_u8(img, size[0], size[1], backend=backend,
                                           stream=self.ctx.cupy_stream() if backend == "cupy" and self.ctx else None)
        return sums / counts

    def process(self, frame: Frame, mask: Mask, plate: Frame | None = None, coverage: Mask | None = None,
                confidence: Mask | None = None) -> dict[str, Frame]:
        if self._cpu is not None:
            return self._cpu.process(frame, mask, plate, coverage, confidence)
        p = self.params
        ctx = self.ctx
        assert ctx is not None
        height = frame.height
        fg = frame.hwc_uint8()
        alpha = mask.alpha if mask.alpha.dtype in (torch.float16, torch.float32) else mask.alpha.float()
        if p.feather > 0:
            # A few pixels of softening: blurred at a reduced size when the mask is large (the final pass
            # samples alpha bilinearly at any size); a 4K plane through a 21-tap convolution cost 2.7 ms.
            sigma = p.feather * alpha.shape[0]
            factor = cell_factor(alpha.shape[0], alpha.shape[1], int(sigma // 1.5))
            if factor > 1:
                small = reduced_size(alpha.shape[0], alpha.shape[1], factor)
                alpha = gaussian_blur(shrink_mean(alpha.float()[None, None], small)[0], sigma / factor)[0]
            else:
                alpha = gaussian_blur(alpha.float()[None], sigma)[0]
        bg, colour, known = self._background(fg, alpha, plate, coverage, confidence)
        wrap, inside, soft = 0.0, None, None
        if p.light_wrap > 0:
            # background light spills over the person's edge: strongest at the outline, fading inwards
            sigma = max(0.5, p.wrap_size * height)
            factor = cell_factor(frame.height, frame.width, int(sigma // 2))
            size = reduced_size(frame.height, frame.width, factor)
            inside = gaussian_blur(resample(alpha, size)[None], sigma / factor)[0]
            if bg is None:
                soft = device_constant(list(colour), fg.device, torch.float32)[:, None, None]
            elif bg.dtype == torch.uint8:
                # pooled before decoding (a small gamma error, invisible in a soft glow) straight from the
                # uint8 picture: no full-resolution float copy; the live frame mixed in where the plate is unknown
                pooled = self._pooled(bg, size)
                if known is not None:
                    pooled = torch.lerp(self._pooled(fg, size), pooled, resample(known, size).clamp(0, 1))
                soft = gaussian_blur(srgb_to_linear(pooled), sigma / factor)
            else:
                soft = gaussian_blur(resample(bg, size), sigma / factor)
            wrap = p.light_wrap
        if self._backend == "cupy":
            img = kernels.composite_over_cupy(fg, alpha, bg, colour, wrap, inside, soft, known, stream=ctx.cupy_stream())
        else:
            img = kernels.composite_over_torch(fg, alpha, bg, colour, wrap, inside, soft, known)
        return {"out": frame.with_image(img, layout="hwc")}
