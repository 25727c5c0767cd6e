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


def _f32(t: torch.Tensor) -> torch.Tensor:
    """float32 without dispatching a no-op conversion (each op is a kernel launch's worth of host time)."""
    return t if t.dtype == torch.float32 else t.float()


def _rotations(angle: torch.Tensor) -> torch.Tensor:
    """(N,) angles -> (N, 2, 2) rotation matrices [[cos, -sin], [sin, cos]], in four ops."""
    cos, sin = _rotation(angle)
    return torch.stack([cos, -sin, sin, cos], dim=-1).view(*angle.shape, 2, 2)


def _flip_sign(flip: torch.Tensor) -> torch.Tensor:
    """(N,) bool -> (N, 2): (-1, 1) where the crop is mirrored, (1, 1) elsewhere."""
    from muse.graph.capture import device_constant  # here: benchmarks import this module without the framework

    return torch.where(flip[:, None], device_constant([-1.0, 1.0], flip.device), 1.0)


_BASE: dict[tuple[int, int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _base_grid(out_h: int, out_w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """affine_grid's (align_corners=False) output-normalised cell centres: x (1, 1, w, 1), y (1, h, 1, 1), made once."""
    key = (out_h, out_w, str(device))
    base = _BASE.get(key)
    if base is None:
        ys = (torch.arange(out_h, device=device, dtype=torch.float32) * 2 + 1) / out_h - 1
        xs = (torch.arange(out_w, device=device, dtype=torch.float32) * 2 + 1) / out_w - 1
        base = _BASE[key] = (xs.view(1, 1, out_w, 1), ys.view(1, out_h, 1, 1))
    return base


def _affine_grid(theta: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """F.affine_grid (align_corners=False) as two broadcast multiply-adds on a cached base grid
    (torch's CPU affine_grid takes 25-70 ms for 256x256 here; on CUDA it is several kernels)."""
    xo, yo = _base_grid(out_h, out_w, theta.device)
    t = _f32(theta).transpose(1, 2)[:, :, None, None, :]  # (N, 3, 1, 1, 2): columns of theta
    return torch.addcmul(torch.addcmul(t[:, 2], t[:, 0], xo), t[:, 1], yo)  # (N, h, w, 2)


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
    theta = crop_theta(roi, w, h, flip)
    n = roi.shape[0]
    if image.dtype == torch.uint8:  # a CUDA uint8 picture (TrackerInput): the kernel reads its bytes
        from muse.nodes.landmarks.crop_kernel import crop_u8_cupy

        return crop_u8_cupy(image, theta, out_h, out_w, taps, border)
    grid = _affine_grid(theta, out_h, out_w)
    if taps > 1:
        # every tap's grid at once: the offsets of the taps x taps samples over each output pixel's footprint
        offsets = _tap_offsets(taps, out_h, out_w, theta.device)  # (T, 2) in output-normalised units
        shift = (offsets[None, :, None, :] * theta[:, None, :, :2]).sum(-1)  # (N, T, 2) in input units
        grid = (grid[:, None] + shift[:, :, None, None, :]).flatten(0, 1)  # (N * T, h, w, 2)
    src = image.unsqueeze(0).expand(grid.shape[0], -1, -1, -1)
    out = F.grid_sample(src, grid.to(image.dtype), mode="bilinear", padding_mode=border, align_corners=False)
    return out if taps <= 1 else out.view(n, taps * taps, *out.shape[1:]).mean(1)


_TAPS: dict[tuple[int, int, int, str], torch.Tensor] = {}


def _tap_offsets(taps: int, out_h: int, out_w: int, device: torch.device) -> torch.Tensor:
    key = (taps, out_h, out_w, str(device))
    t = _TAPS.get(key)
    if t is None:
        rows = [[((i + 0.5) / taps - 0.5) * 2 / out_w, ((j + 0.5) / taps - 0.5) * 2 / out_h] for i in range(taps) for j in range(taps)]
        t = _TAPS[key] = torch.tensor(rows, dtype=torch.float32, device=device)
    return t


def crop_theta(roi: torch.Tensor, width: int, height: int, flip: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2, 3) affine maps from a crop's output-normalised coordinates to the frame's (affine_grid's theta)
    for (N, 5) ROIs in a `width` x `height` frame; `flip` (N,) mirrors crops horizontally."""
    from muse.graph.capture import device_constant  # here: benchmarks import this module without the framework

    roi = _f32(roi)  # float32 geometry: fp16 cannot hold 4K pixel positions to sub-pixel
    size = roi[:, None, 2:4] if flip is None else roi[:, None, 2:4] * _flip_sign(flip)[:, None, :]
    inv = device_constant([[1.0 / width], [1.0 / height]], roi.device)  # rows of theta are over the frame's w, h
    linear = _rotations(roi[:, 4]) * size * inv  # [[cos sx, -sin rh], [sin sx, cos rh]] / (w, h)
    shift = roi[:, :2, None] * (2 * inv) - 1  # the ROI centre in frame-normalised units
    return torch.cat([linear, shift], dim=2)


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
    points = _f32(points)
    roi = _f32(roi)
    if mw == mh:
        u = points[..., :2] / mw - 0.5
    else:
        from muse.graph.capture import device_constant

        u = points[..., :2] / device_constant([float(mw), float(mh)], points.device) - 0.5
    if flip is not None:
        u = u * _flip_sign(flip)[:, None, :]
    local = u * roi[:, None, 2:4]  # crop pixels, centred, unrotated
    rot = _rotations(roi[:, 4:5])  # (N, 1, 2, 2)
    # centre + x * (cos, sin) + y * (-sin, cos): two fused multiply-adds over the (N, K, 2) points
    xy = torch.addcmul(torch.addcmul(roi[:, None, :2], local[..., 0:1], rot[..., 0]), local[..., 1:2], rot[..., 1])
    if points.shape[-1] <= 2:
        return xy
    z = points[..., 2:3] * (roi[:, None, 2:3] / mw)
    return torch.cat([xy, z, points[..., 3:]], dim=-1)


def rotation_towards(start: torch.Tensor, end: torch.Tensor, target_degrees: float) -> torch.Tensor:
    """Rotation that turns the vector start->end (frame pixels, y down) to
    `target_degrees` (90 = pointing up), normalised to [-pi, pi)."""
    d = end[..., :2] - start[..., :2]
    turned = (math.radians(target_degrees) + math.pi) - torch.atan2(-d[..., 1], d[..., 0])
    return torch.remainder(turned, 2 * math.pi) - math.pi


def square_roi(cx: torch.Tensor, cy: torch.Tensor, w: torch.Tensor, h: torch.Tensor, angle: torch.Tensor, scale: float) -> torch.Tensor:
    """MediaPipe's RectTransformation with `square_long`: scale, then make square on the long side."""
    side = torch.maximum(w, h) * scale
    return torch.stack([cx, cy, side, side, angle], dim=-1)


def aligned_roi(center: torch.Tensor, scale_point: torch.Tensor, target_degrees: float, scale: float) -> torch.Tensor:
    """ROI centred on `center` with side 2*|scale_point - center| (MediaPipe's
    AlignmentPointsRects), rotated so center->scale_point points to the target."""
    side = torch.linalg.vector_norm(scale_point - center, dim=-1) * (2 * scale)
    angle = rotation_towards(center, scale_point, target_degrees)
    return torch.stack([center[..., 0], center[..., 1], side, side, angle], dim=-1)


def box_roi(points: torch.Tensor, start: int, end: int, target_degrees: float, scale: float) -> torch.Tensor:
    """ROI on the axis-aligned box of (N, K, 2) points, rotated by the vector
    points[start] -> points[end] (MediaPipe's DetectionsToRects on landmarks)."""
    lo, hi = torch.aminmax(points[..., :2], dim=-2)
    centre = (lo + hi) * 0.5
    side = (hi - lo).amax(-1) * scale  # square on the long side
    angle = rotation_towards(points[:, start, :2], points[:, end, :2], target_degrees)
    return torch.stack([centre[:, 0], centre[:, 1], side, side, angle], dim=-1)


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


_PIXELS: dict[tuple[int, int, int, int, str], torch.Tensor] = {}


def _pixel_grid(out_size: tuple[int, int], frame_size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """(1, oh, ow, 2) frame-pixel positions of the centres of an `out_size` grid over the whole frame, made once."""
    (ow, oh), (fw, fh) = out_size, frame_size
    key = (ow, oh, fw, fh, str(device))
    g = _PIXELS.get(key)
    if g is None:
        xs = (torch.arange(ow, device=device, dtype=torch.float32) + 0.5) * (fw / ow)
        ys = (torch.arange(oh, device=device, dtype=torch.float32) + 0.5) * (fh / oh)
        g = _PIXELS[key] = torch.stack([xs[None, :].expand(oh, ow), ys[:, None].expand(oh, ow)], dim=-1)[None].contiguous()
    return g


def uncrop(maps: torch.Tensor, roi: torch.Tensor, frame_size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """Paste (N, C, h, w) maps that live in ROI crops back onto the frame,
    sampled at `out_size` (width, height) covering the whole frame; zero outside."""
    roi = _f32(roi)
    # each output cell's offset from the ROI centre, turned into the crop's frame and over its half-size:
    # crop-normalised (x, y) = 2 / (rw, rh) * R(-angle) (p - c)
    offset = _pixel_grid(out_size, frame_size, roi.device) - roi[:, None, None, :2]  # (N, oh, ow, 2)
    inverse = _rotations(roi[:, 4]).transpose(1, 2) / (roi[:, 2:4, None] * 0.5)  # rows: (cos, sin) / (rw/2), (-sin, cos) / (rh/2)
    cols = inverse.transpose(1, 2)[:, :, None, None, :]  # (N, 2, 1, 1, 2): what x and y of the offset contribute
    grid = torch.addcmul(offset[..., 0:1] * cols[:, 0], offset[..., 1:2], cols[:, 1])
    return F.grid_sample(maps, grid.to(maps.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)


def predict(current: torch.Tensor, previous: torch.Tensor, valid: torch.Tensor, gain: float = 1.0) -> torch.Tensor:
    """Constant-velocity guess of the next frame's ROI centre: a tracker's crop
    otherwise trails a moving face by one frame's motion. `valid` (0-d bool)
    turns it off when this frame's result is not trusted."""
    step = current[:, :2] - previous[:, :2]
    if gain != 1.0:
        step = step * gain
    moved = torch.where(valid, current[:, :2] + step, current[:, :2])
    return torch.cat([moved, current[:, 2:]], dim=1)
