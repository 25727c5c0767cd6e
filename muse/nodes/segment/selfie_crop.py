"""The selfie model's second look: the model also run on a crop around the person (issue 14).

The bundled selfie model sees the whole frame at 256 px, so a person who fills half the frame's height or less
is a blur of 60-140 model pixels: thin limbs vanish, the gaps between legs and arms fill, and a face-like
pattern in the room (a cat's face) reads as a person. `segment.selfie` with `crop` on also runs the model on a
crop of the model's own aspect around the person, at up to 4x the whole frame's scale, and maps that
probability back over the whole-frame one where the crop covers the frame.

The box is the previous frame's output's: every pixel above CONFIDENT, whatever it is, so the crop never cuts off
anything the model is sure of (a second person, or a false positive the crop then looks at closely), grown by
`margin` on every side and smoothed over time (BOX_SMOOTHING). Where that box is nearly the whole frame the
crop would see what the whole frame sees: its weight is 0 below ZOOM[0] times the whole frame's scale and 1
from ZOOM[1] (smooth between), so two people far apart, or a frame full of false positives, fall back to the
whole-frame pass alone. Inside the crop the crop's probability replaces the whole frame's (an average of the
two gave less), fading in over FEATHER of the crop's width from its border, and it raises a pixel only in and
near the box (RAISE_REACH): it may lower a false positive anywhere in its view, but closer up the model also
takes things beside the person (a tower, a lamp) for her, and those must not be made surer. Figures:
bench/RESULTS.md, issue 14, twenty-first session.

On the GPU path every step is a fixed-shape device op (`affine_grid` / `grid_sample`, reductions, `where`), the
box and the weight are device tensors updated in place, and nothing is read back. The CPU path runs the same
functions on CPU tensors, except the two resamplings, which OpenCV does there with the same affines (the rectangle
of the frame the crop reads, then an area average for the 2x supersampling; within 2e-5 of `grid_sample`), and it
reads the weight to skip the crop's model call while it is 0.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

__all__ = ["CONFIDENT", "ZOOM", "BOX_SMOOTHING", "SOURCE_SCALE", "FEATHER", "RAISE_REACH", "SecondLook", "source_size"]

# The box covers every pixel of the last output above this. At 0.5 the whole frame's false positives made the box
# nearly the frame (the scratch prototype, quality_extra without a plate, mean IoU / flicker: 0.868 / 13.1 against
# 0.885 / 12.4 at 0.8; 0.9: 0.894 / 12.2).
CONFIDENT = 0.8
# The crop's weight: 0 at ZOOM[0] times the whole frame's scale, 1 from ZOOM[1] (prototype, with the box
# smoothed: 1.1-1.3 0.905 / 12.1, 1.2-1.5 0.899 / 12.0, 1.4-1.8 0.866 / 12.6).
ZOOM = (1.2, 1.5)
# The box moves this much of the way to the new frame's box each frame (prototype: 0, the new box as it is,
# 0.885 / 12.4; 0.5 0.899 / 12.0; 0.7 0.895 / 12.1).
BOX_SMOOTHING = 0.5
# The crop is sampled from the frame, shrunk where it is over this many times the whole-frame pass's scale (a 4K
# frame is not read whole for a 256-px crop; 720p is used as it is), 2x supersampled then averaged (no aliasing
# down to a third of that scale: the crop's weight is 0 below ZOOM[0]).
SOURCE_SCALE = 6
# The crop's view fades in over this fraction of its width from its border: a person it sees cut off there is
# half-judged (quality_extra without a plate, the node before RAISE_REACH, mean IoU / flicker of two_shake and
# cat_clutter: 0.05 0.780 / 26.8 and 0.946 / 7.2, 0.1 0.786 / 26.1 and 0.933 / 7.3, 0.15 0.780 / 26.4 and
# 0.903 / 8.3; two_shake's second person, of whom the whole frame is unsure, lost most of his model mask at 0.05).
FEATHER = 0.1
# The crop raises a pixel in full inside the box, not at all beyond RAISE_REACH of the margin outside it (it
# lowers anywhere): closer up, the model took the tower beside the astronaut for a person (two_shake's model
# mask: worst frame 0.51 -> 0.56 with this, the matte the same).
RAISE_REACH = 0.5


def source_size(frame_w: int, frame_h: int, view_w: int, view_h: int) -> tuple[int, int]:
    """(w, h) of the picture the crop is sampled from: the frame, or the frame shrunk to SOURCE_SCALE times
    the whole-frame pass's view of it (view_w, view_h) where that is smaller."""
    scale = min(1.0, SOURCE_SCALE * max(view_w / frame_w, view_h / frame_h))
    return max(1, round(frame_w * scale)), max(1, round(frame_h * scale))


def _smoothstep(lo: float, hi: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _feather(like: torch.Tensor) -> torch.Tensor:
    """(mh, mw) weights rising from 0 at the crop's border to 1 at FEATHER of its width inside."""
    mh, mw = like.shape
    reach = max(1.0, FEATHER * mw)
    ys = torch.arange(mh, device=like.device, dtype=torch.float32)
    xs = torch.arange(mw, device=like.device, dtype=torch.float32)
    ry = ((torch.minimum(ys, mh - 1 - ys) + 0.5) / reach).clamp(max=1.0)
    rx = ((torch.minimum(xs, mw - 1 - xs) + 0.5) / reach).clamp(max=1.0)
    return torch.minimum(ry[:, None], rx[None, :])


class SecondLook:
    """The crop's state (the last output's box as fractions of the frame, and whether it has one) and its steps.

    `__call__` takes the whole-frame probability and gives the blended one, then updates the box from it."""

    def __init__(self, device: torch.device, margin: float) -> None:
        self.margin = margin
        self.box = torch.zeros(4, device=device)  # x0, y0, x1, y1 in [0, 1] of the frame
        self.have = torch.zeros((), device=device)  # 1 while the last output had a confident pixel

    def view(self, frame_wh: tuple[int, int], model_wh: tuple[int, int], full_scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the box: the crop's affine (frame -> crop, for `affine_grid` over the whole frame), its inverse
        (crop -> frame) and the crop's weight, all device tensors."""
        (fw, fh), (mw, mh) = frame_wh, model_wh
        b = self.box
        grow = 1.0 + 2.0 * self.margin
        bw = ((b[2] - b[0]) * fw).clamp_min(1.0) * grow
        bh = ((b[3] - b[1]) * fh).clamp_min(1.0) * grow
        scale = torch.minimum(mw / bw, mh / bh)  # model pixels per frame pixel inside the crop
        cw, ch = mw / scale, mh / scale  # the crop's extent in frame pixels (the model's aspect)
        cx, cy = (b[0] + b[2]) * (fw / 2.0), (b[1] + b[3]) * (fh / 2.0)
        # inside the frame where it fits (more of the frame seen, no black border); centred on the box where not
        cx = torch.where(cw < fw, torch.minimum(torch.maximum(cx, cw / 2.0), fw - cw / 2.0), cx)
        cy = torch.where(ch < fh, torch.minimum(torch.maximum(cy, ch / 2.0), fh - ch / 2.0), cy)
        zero = torch.zeros_like(cx)
        to_crop = torch.stack((torch.stack((cw / fw, zero, 2.0 * cx / fw - 1.0)),
                               torch.stack((zero, ch / fh, 2.0 * cy / fh - 1.0))))[None]
        to_frame = torch.stack((torch.stack((fw / cw, zero, (fw - 2.0 * cx) / cw)),
                                torch.stack((zero, fh / ch, (fh - 2.0 * cy) / ch))))[None]
        weight = _smoothstep(ZOOM[0], ZOOM[1], scale / full_scale) * self.have
        return to_crop, to_frame, weight

    @staticmethod
    def crop(source: torch.Tensor, to_crop: torch.Tensor, model_wh: tuple[int, int]) -> torch.Tensor:
        """(1, 3, H, W) picture of the whole frame -> (1, 3, mh, mw) float32 crop (black beyond the frame, as
        letterboxing). In float32 whatever the picture's type: float16 coordinates in [-1, 1] lie up to 2^-11 apart,
        a few tenths of a pixel of a 1536-pixel source, and the crop would shimmer by that from frame to frame."""
        mw, mh = model_wh
        grid = F.affine_grid(to_crop.float(), [1, 3, 2 * mh, 2 * mw], align_corners=False)
        return F.avg_pool2d(F.grid_sample(source.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False), 2)

    @staticmethod
    def lay(planes: torch.Tensor, to_frame: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """(1, C, mh, mw) planes of the crop -> (C, h, w) over the whole frame (0 where the crop does not reach)."""
        grid = F.affine_grid(to_frame.float(), [1, planes.shape[1], 2 * h, 2 * w], align_corners=False)
        return F.avg_pool2d(F.grid_sample(planes, grid, mode="bilinear", padding_mode="zeros", align_corners=False), 2)[0]

    @classmethod
    def paste(cls, full: torch.Tensor, crop_prob: torch.Tensor, to_frame: torch.Tensor, weight: torch.Tensor,
              core: torch.Tensor, lay: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor] | None = None
              ) -> torch.Tensor:
        """(h, w) whole-frame probability with the (mh, mw) crop's laid over it where the crop covers the frame; the
        crop raises a pixel only as far as `core` (h, w) allows (1 in the box, 0 beyond it), lowers it anywhere."""
        h, w = full.shape
        ramp = _feather(crop_prob)
        laid = (lay or cls.lay)(torch.stack((crop_prob.float() * ramp, ramp))[None], to_frame, h, w)
        # laid[0] is the crop's probability times its share of the pixel (laid[1]): the change it asks for is
        # laid[0] - laid[1] * full, raising only inside the box
        f = full.float()
        change = laid[0] - laid[1] * f
        change = torch.where(change > 0, change * core, change)
        return (f + weight * change).to(full.dtype)

    def core(self, h: int, w: int) -> torch.Tensor:
        """(h, w): 1 inside the box, falling to 0 at RAISE_REACH of the margin beyond it (the crop, looking closer,
        takes a tower or a lamp beside the person for her more often than it finds a limb the whole frame missed)."""
        b = self.box
        xs = (torch.arange(w, device=b.device, dtype=torch.float32) + 0.5) / w
        ys = (torch.arange(h, device=b.device, dtype=torch.float32) + 0.5) / h
        reach_x = ((b[2] - b[0]) * (RAISE_REACH * self.margin)).clamp_min(1.0 / w)
        reach_y = ((b[3] - b[1]) * (RAISE_REACH * self.margin)).clamp_min(1.0 / h)
        out_x = ((b[0] - xs).clamp_min(0.0) + (xs - b[2]).clamp_min(0.0)) / reach_x
        out_y = ((b[1] - ys).clamp_min(0.0) + (ys - b[3]).clamp_min(0.0)) / reach_y
        return (1.0 - torch.maximum(out_y[:, None], out_x[None, :])).clamp(0.0, 1.0)

    def update(self, out: torch.Tensor) -> None:
        """The box of `out`'s confident pixels, smoothed with the last one, into the state (in place)."""
        h, w = out.shape
        sure = out > CONFIDENT
        cols, rows = sure.any(0).float(), sure.any(1).float()
        have = cols.amax()
        x0, x1 = cols.argmax(), w - cols.flip(0).argmax()  # the first and one past the last confident column
        y0, y1 = rows.argmax(), h - rows.flip(0).argmax()
        new = torch.stack((x0 / w, y0 / h, x1 / w, y1 / h)).float()
        keep = BOX_SMOOTHING * self.have * have  # smooth only from one box to the next
        self.box.copy_(new + keep * (self.box - new))
        self.have.copy_(have)

    def __call__(self, full: torch.Tensor, frame_wh: tuple[int, int], model_wh: tuple[int, int], full_scale: float,
                 source: Callable[[], torch.Tensor], model: Callable[[torch.Tensor], torch.Tensor],
                 skip_idle: bool = False, crop: Callable[[torch.Tensor, torch.Tensor, tuple[int, int]], torch.Tensor] | None = None,
                 lay: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor] | None = None) -> torch.Tensor:
        """`full` (h, w): the whole-frame probability; `source()` the picture to crop from (for `SecondLook.crop` the
        (1, 3, H, W) floats of the whole frame, for the CPU path's `crop` its (3, H, W) uint8 bytes); `model`
        the crop's (1, 3, mh, mw) input -> (mh, mw) probability (its exposure handled by the caller). With
        `skip_idle` (the CPU path) the weight is read and the crop's model call skipped while it is 0; `crop` and
        `lay` replace `SecondLook.crop` and `SecondLook.lay` (the CPU path's OpenCV resampling, the same samples)."""
        to_crop, to_frame, weight = self.view(frame_wh, model_wh, full_scale)
        if skip_idle and float(weight) == 0.0:
            out = full
        else:
            picture = (crop or self.crop)(source(), to_crop, model_wh)
            out = self.paste(full, model(picture), to_frame, weight, self.core(*full.shape), lay)
        self.update(out)
        return out
