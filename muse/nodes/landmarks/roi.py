"""Rotated square regions of interest on the device: crop them with one affine
`grid_sample`, map model-space points back to frame pixels, and build the next
ROI from points (the detect-then-track loop of pose and face landmarks).

A ROI is a (N, 5) float tensor in frame pixels: centre x, centre y, width,
height, rotation (radians; positive turns the crop's "up" towards +x, as in
MediaPipe's NormalizedRect). Pixel coordinates are continuous: pixel i covers
[i, i + 1), so a point at x lands on normalised grid coordinate 2x/W - 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _rotation(angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cos(angle), torch.sin(angle)


_BASE: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _affine_grid(theta: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """F.affine_grid (align_corners=False) as two broadcast multiply-adds on a
    cached base grid: torch's CPU affine_grid takes 25-70 ms for 256x256 here."""
    key = (out_h, out_w, str(theta.device))
    base = _BASE.get(key)
    if base is None:
        ys = (torch.arange(out_h, device=theta.device, dtype=torch.float32) * 2 + 1) / out_h - 1
        xs = (torch.arange(out_w, device=theta.device, dtype=torch.float32) * 2 + 1) / out_w - 1
        base = _BASE[key] = (xs.view(1, 1, out_w), ys.view(1, out_h, 1))
    xo, yo = base
    t = theta.float()[:, :, :, None, None]  # (N, 2, 3, 1, 1)
    gx = t[:, 0, 0] * xo + t[:, 0, 1] * yo + t[:, 0, 2]
    gy = t[:, 1, 0] * xo + t[:, 1, 1] * yo + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


def crop(
    image: torch.Tensor,
    roi: torch.Tensor,
    size: int | tuple[int, int],
    *,
    border: str = "zeros",
    flip: torch.Tensor | None = None,
    taps: int = 1,
) -> torch.Tensor:
    """Crop rotated ROIs out of `image` (3, H, W) float into (N, 3, h, w); a (3, H, W) view of a uint8
    picture is cropped by OpenCV on the CPU (muse/nodes/cpu/crop.py) and by one CuPy kernel on CUDA
    (muse/nodes/landmarks/crop_kernel.py), both in [0, 1].

    `border` is "zeros" (letterbox, like MediaPipe's BORDER_ZERO) or "border"
    (replicate). `flip` (N,) bool mirrors crops horizontally (iris model,
    trained on left eyes only). `taps` > 1 averages taps x taps bilinear samples
    spread over each output pixel's footprint: a box filter against aliasing when
    a big ROI (a 4K body) shrinks to a small model input.
    """
    out_h, out_w = (size, size) if isinstance(size, int) else size
    if image.dtype == torch.uint8 and image.device.type == "cpu":  # issue 13: the CPU path crops the uint8 frame
        from muse.nodes.cpu.crop import crop_uint8

        return crop_uint8(image, roi, out_h, out_w, border, flip, taps)
    h, w = image.shape[-2:]
    roi = roi.float()  # float32 geometry: fp16 cannot hold 4K pixel positions to sub-pixel
    cos, sin = _rotation(roi[:, 4])
    rw, rh = roi[:, 2], roi[:, 3]
    sx = rw if flip is None else torch.where(flip, -rw, rw)
    theta = torch.stack(
        [
            torch.stack([cos * sx / w, -sin * rh / w, 2 * roi[:, 0] / w - 1], dim=1),
            torch.stack([sin * sx / h, cos * rh / h, 2 * roi[:, 1] / h - 1], dim=1),
        ],
        dim=1,
    )
    n = roi.shape[0]
    if image.dtype == torch.uint8:  # a CUDA uint8 picture (TrackerInput): the kernel reads its bytes
        from muse.nodes.landmarks.crop_kernel import crop_u8_cupy

        return crop_u8_cupy(image, theta, out_h, out_w, taps, border)
    grid = _affine_grid(theta, out_h, out_w)
    src = image.unsqueeze(0).expand(n, -1, -1, -1)
    if taps <= 1:
        return F.grid_sample(src, grid.to(image.dtype), mode="bilinear", padding_mode=border, align_corners=False)
    out = None
    for i in range(taps):
        for j in range(taps):
            ox = ((i + 0.5) / taps - 0.5) * 2 / out_w  # sub-pixel offset in output-normalised units
            oy = ((j + 0.5) / taps - 0.5) * 2 / out_h
            shift = theta[:, :, 0] * ox + theta[:, :, 1] * oy  # (N, 2) in input-normalised units
            g = (grid + shift[:, None, None, :]).to(image.dtype)
            sample = F.grid_sample(src, g, mode="bilinear", padding_mode=border, align_corners=False)
            out = sample if out is None else out + sample
    return out / (taps * taps)


def antialias_taps(roi_side: float, model_size: int, max_taps: int = 4) -> int:
    """Taps per axis for `crop` from an expected ROI side in pixels (estimated from
    the frame size by the caller: no host read of the real ROI). Bilinear is fine
    up to a 2x shrink; beyond, one tap per 2x, capped."""
    return max(1, min(max_taps, math.ceil(roi_side / model_size / 2)))


def to_frame(points: torch.Tensor, roi: torch.Tensor, model_size: float | tuple[float, float], flip: torch.Tensor | None = None) -> torch.Tensor:
    """Map (N, K, D>=2) points in model pixels of a crop back to frame pixels.

    z (a third column, if present) is scaled like x, so it stays in frame pixels.
    """
    mw, mh = (model_size, model_size) if not isinstance(model_size, tuple) else model_size
    points = points.float()
    roi = roi.float()
    u = points[..., 0] / mw - 0.5
    v = points[..., 1] / mh - 0.5
    if flip is not None:
        u = torch.where(flip[:, None], -u, u)
    lx = u * roi[:, 2:3]
    ly = v * roi[:, 3:4]
    cos, sin = _rotation(roi[:, 4:5])
    x = roi[:, 0:1] + cos * lx - sin * ly
    y = roi[:, 1:2] + sin * lx + cos * ly
    out = [x, y]
    if points.shape[-1] > 2:
        out.append(points[..., 2] / mw * roi[:, 2:3])
        out.extend(points[..., d] for d in range(3, points.shape[-1]))
    return torch.stack(out, dim=-1)


def rotation_towards(start: torch.Tensor, end: torch.Tensor, target_degrees: float) -> torch.Tensor:
    """Rotation that turns the vector start->end (frame pixels, y down) to
    `target_degrees` (90 = pointing up), normalised to [-pi, pi)."""
    angle = math.radians(target_degrees) - torch.atan2(-(end[..., 1] - start[..., 1]), end[..., 0] - start[..., 0])
    return angle - 2 * math.pi * torch.floor((angle + math.pi) / (2 * math.pi))


def square_roi(cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor, angle: torch.Tensor, scale: float) -> torch.Tensor:
    """MediaPipe's RectTransformation with `square_long`: scale, then make square on the long side."""
    side = torch.maximum(w, h) * scale
    return torch.stack([cx, cy, side, side, angle], dim=-1)


def aligned_roi(center: torch.Tensor, scale_point: torch.Tensor, target_degrees: float, scale: float) -> torch.Tensor:
    """ROI centred on `center` with side 2*|scale_point - center| (MediaPipe's
    AlignmentPointsRects), rotated so center->scale_point points to the target."""
    radius = torch.linalg.vector_norm(scale_point - center, dim=-1)
    angle = rotation_towards(center, scale_point, target_degrees)
    return square_roi(center[..., 0], center[..., 1], 2 * radius, 2 * radius, angle, scale)


def box_roi(points: torch.Tensor, start: int, end: int, target_degrees: float, scale: float) -> torch.Tensor:
    """ROI on the axis-aligned box of (N, K, 2) points, rotated by the vector
    points[start] -> points[end] (MediaPipe's DetectionsToRects on landmarks)."""
    lo = points[..., :2].amin(dim=-2)
    hi = points[..., :2].amax(dim=-2)
    centre = (lo + hi) / 2
    size = hi - lo
    angle = rotation_towards(points[:, start, :2], points[:, end, :2], target_degrees)
    return square_roi(centre[:, 0], centre[:, 1], size[:, 0], size[:, 1], angle, scale)


_WHOLE_FRAME: dict[tuple[int, int, str], torch.Tensor] = {}


def whole_frame_roi(width: int, height: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The letterboxed whole frame as one ROI (detectors see the full picture).
    Cached per size and device: building it is a host->device copy, which may sync."""
    key = (width, height, str(device))
    roi = _WHOLE_FRAME.get(key)
    if roi is None:
        side = float(max(width, height))
        roi = _WHOLE_FRAME[key] = torch.tensor([[width / 2, height / 2, side, side, 0.0]], device=device)
    return roi


def uncrop(maps: torch.Tensor, roi: torch.Tensor, frame_size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """Paste (N, C, h, w) maps that live in ROI crops back onto the frame,
    sampled at `out_size` (width, height) covering the whole frame; zero outside."""
    fw, fh = frame_size
    ow, oh = out_size
    roi = roi.float()
    cos, sin = _rotation(roi[:, 4])
    cx, cy, rw, rh = roi[:, 0], roi[:, 1], roi[:, 2], roi[:, 3]
    dx0, dy0 = fw / 2 - cx, fh / 2 - cy
    theta = torch.stack(
        [
            torch.stack([cos * fw / rw, sin * fh / rw, 2 * (cos * dx0 + sin * dy0) / rw], dim=1),
            torch.stack([-sin * fw / rh, cos * fh / rh, 2 * (-sin * dx0 + cos * dy0) / rh], dim=1),
        ],
        dim=1,
    )
    grid = _affine_grid(theta, oh, ow).to(maps.dtype)
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def predict(current: torch.Tensor, previous: torch.Tensor, valid: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Constant-velocity guess of the next frame's ROI centre: a tracker's crop
    otherwise trails a moving face by one frame's motion. `valid` (0-d bool)
    turns it off when this frame's result is not trusted."""
    step = (current[:, :2] - previous[:, :2]) * gain
    step = torch.where(valid, step, torch.zeros_like(step))
    return torch.cat([current[:, :2] + step, current[:, 2:]], dim=1)
