"""Displacement fields built at low resolution from landmarks and keypoints.

Pure torch on the graph's device, no host syncs: strengths that depend on
detections (confidence) enter as tensors, never as Python branches. A field
(2, h, w) holds offsets in pixels of the full picture; the output pixel p
samples the source at p + field(p) (backward mapping).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


_GRIDS: dict[tuple[int, int, int, str], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def field_grid(image_size: tuple[int, int], cell: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-resolution pixel coordinates (x, y) of the centres of a grid `cell` times coarser
    (made once per size: read-only expanded views of cached axes)."""
    xs, ys, _ = field_points(image_size, cell, device)
    return xs, ys


def field_points(image_size: tuple[int, int], cell: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`field_grid`'s x and y, and the same stacked as one (2, h, w) tensor; made once per size and device."""
    key = (int(image_size[0]), int(image_size[1]), cell, str(device))
    found = _GRIDS.get(key)
    if found is None:
        width, height = image_size
        w, h = max(2, math.ceil(width / cell)), max(2, math.ceil(height / cell))
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (width / w) - 0.5
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (height / h) - 0.5
        xs2, ys2 = xs[None, :].expand(h, w), ys[:, None].expand(h, w)
        found = _GRIDS[key] = (xs2, ys2, torch.stack((xs2, ys2)))
    return found


def smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def bump(x: torch.Tensor, centre: float, half_width: float) -> torch.Tensor:
    """cos^2 window: 1 at `centre`, exactly 0 beyond `half_width` (compact, so rooms stay put)."""
    u = ((x - centre) / half_width).clamp(-1, 1)
    return torch.cos(u * (math.pi / 2)) ** 2


def compact_gaussian(dist2: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """A Gaussian cut to exactly 0 at 3 sigma, continuous there."""
    floor = math.exp(-4.5)
    g = torch.exp(-dist2 / (2 * sigma * sigma))
    return ((g - floor) / (1 - floor)).clamp_min(0)


def mask_gate(alpha: torch.Tensor, size_hw: tuple[int, int], margin_cells: float) -> torch.Tensor:
    """1 on the person, falling to exactly 0 at `margin_cells` beyond the outline, at grid size.

    Dilate by half the margin, then box-blur by half the margin: the support
    ends at the margin and the person itself keeps a gate of 1.
    """
    h, w = size_hw
    m = alpha.float()[None, None]
    # max-pool keeps thin limbs that an average would lose at low resolution
    m = shrink_max(m, (h, w)) if (m.shape[-2] >= h and m.shape[-1] >= w) else F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
    m = (m > 0.05).float()
    r = max(1, int(round(margin_cells / 2)))
    m = F.max_pool2d(m, 2 * r + 1, stride=1, padding=r)
    m = F.avg_pool2d(m, 2 * r + 1, stride=1, padding=r, count_include_pad=False)
    return m[0, 0]


def zero_field(image_size: tuple[int, int], cell: int, device: torch.device) -> torch.Tensor:
    xs, _ = field_grid(image_size, cell, device)
    return torch.zeros((2, *xs.shape), device=device, dtype=torch.float32)


def shrink_max(m: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Max over cells of (N, C, H, W) down to `size_hw`: one strided max-pool when a whole-number cell fits
    (adaptive pooling's variable windows cost 0.3 ms a 4K plane on an H200), adaptive otherwise."""
    (H, W), (h, w) = m.shape[-2:], size_hw
    kh, kw = -(-H // h), -(-W // w)
    if -(-H // kh) == h and -(-W // kw) == w:
        return F.max_pool2d(m, (kh, kw), stride=(kh, kw), ceil_mode=True)
    return F.adaptive_max_pool2d(m, (h, w))


def shrink_mean(m: torch.Tensor, size_hw: tuple[int, int]) -> torch.Tensor:
    """Mean over cells of (N, C, H, W) down to `size_hw`: one strided average pool when whole cells tile the plane
    exactly (adaptive pooling's variable windows cost 0.1-0.4 ms a 4K plane on an H200: the composite's room blur,
    the warp's never-seen-room gate), adaptive otherwise (the same windows either way).

    Only an exact tiling: with a partial last cell the cells no longer sit where the bilinear upsample
    of the final pass samples them (cell i centred at (i + 0.5) * H / h); the picture drifts by up to
    a cell towards the bottom-right (16 px of a 1080p room blur), 2.5x the error of adaptive windows."""
    (H, W), (h, w) = m.shape[-2:], size_hw
    if H % h == 0 and W % w == 0:
        return F.avg_pool2d(m, (H // h, W // w))
    return F.adaptive_avg_pool2d(m, size_hw)


def unseen_gate(field: torch.Tensor, alpha: torch.Tensor, coverage: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(h, w) multiplier for `field` (2, h, w; offsets in pixels of a picture of `image_size` (w, h)): 0 where
    the warp would uncover room the plate has never seen.

    A reshape that moves the person's outline inwards shows the clean plate where the person was. Where
    `coverage` (background.adaptive's: 1 where the room was seen) is 0, that plate is a guess filled in from
    the room around it, and showing it would paint a made-up room through the person (issue 14's no-ghost
    rule). The person keeps their shape there instead, until the room behind has been seen. All on the
    field's grid: a cell uncovers room when the person's share at the cell falls after sampling at cell + field."""
    h, w = field.shape[-2:]

    def on_grid(m: torch.Tensor) -> torch.Tensor:
        m = m.float()[None, None]
        if m.shape[-2] >= h and m.shape[-1] >= w:
            return shrink_mean(m, (h, w))
        return F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)

    a = on_grid(alpha)
    # where each cell samples from, in grid_sample's align_corners=False units: its centre (made once) plus
    # the offset, in one multiply-add
    from muse.graph.capture import device_constant

    scale = device_constant([2.0 / image_size[0], 2.0 / image_size[1]], field.device)
    src = torch.addcmul(_cell_centres(h, w, field.device), field.float().permute(1, 2, 0)[None], scale)
    a_src = F.grid_sample(a, src, mode="bilinear", padding_mode="border", align_corners=False)
    reveal = (a - a_src).clamp_(0, 1)
    cov = on_grid(coverage).clamp_(0, 1)
    darkest = F.max_pool2d(-cov, 3, stride=1, padding=1)  # minus the least seen of each cell's neighbourhood:
    # a cell next to a never-seen one counts as never seen; reveal * (1 - seen) = reveal * (1 + darkest)
    hold = torch.addcmul(reveal, reveal, darkest).mul_(4).clamp_(0, 1)
    hold = F.max_pool2d(hold, 3, stride=1, padding=1)  # its neighbours hold too, so the upsampled field stays put there
    return (1 - hold)[0, 0]


_CENTRES: dict[tuple[int, int, str], torch.Tensor] = {}


def _cell_centres(h: int, w: int, device: torch.device) -> torch.Tensor:
    """(1, h, w, 2) centres of an h x w grid in grid_sample's align_corners=False units, made once."""
    key = (h, w, str(device))
    c = _CENTRES.get(key)
    if c is None:
        xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * (2.0 / w) - 1.0
        ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * (2.0 / h) - 1.0
        c = _CENTRES[key] = torch.stack((xs[None, :].expand(h, w), ys[:, None].expand(h, w)), dim=-1)[None].contiguous()
    return c
