"""landmarks.roi's geometry, written with few ops a call (each is a kernel launch on the GPU), against the
plain formulas: affine_grid + one grid_sample per antialiasing tap, the crop's inverse map for `uncrop`,
rotation and scale for `to_frame`; on the astronaut photo with rotated, flipped and off-frame ROIs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from muse.nodes.landmarks import roi as R

ROIS = torch.tensor([[256.0, 230.0, 180.0, 180.0, 0.3], [120.0, 300.0, 90.0, 60.0, -2.9], [480.0, 40.0, 300.0, 300.0, 3.1]])
FLIP = torch.tensor([False, True, False])


@pytest.fixture(scope="module")
def image(astronaut) -> torch.Tensor:
    return torch.from_numpy(astronaut.copy()).permute(2, 0, 1).float() / 255


def _theta(roi: torch.Tensor, w: int, h: int, flip: torch.Tensor | None) -> torch.Tensor:
    cos, sin = torch.cos(roi[:, 4]), torch.sin(roi[:, 4])
    sx = roi[:, 2] if flip is None else torch.where(flip, -roi[:, 2], roi[:, 2])
    rh = roi[:, 3]
    return torch.stack([torch.stack([cos * sx / w, -sin * rh / w, 2 * roi[:, 0] / w - 1], 1),
                        torch.stack([sin * sx / h, cos * rh / h, 2 * roi[:, 1] / h - 1], 1)], 1)


@pytest.mark.parametrize("taps", [1, 2, 3])
@pytest.mark.parametrize("border", ["zeros", "border"])
@pytest.mark.parametrize("flip", [None, FLIP])
def test_crop_matches_affine_grid_and_a_grid_sample_per_tap(image, taps, border, flip) -> None:
    h, w = image.shape[-2:]
    oh, ow = 48, 64
    theta = _theta(ROIS, w, h, flip)
    assert torch.allclose(R.crop_theta(ROIS, w, h, flip), theta, atol=1e-6)
    grid = F.affine_grid(theta, (3, 3, oh, ow), align_corners=False)
    src = image.expand(3, -1, -1, -1)
    want = torch.zeros(3, 3, oh, ow)
    for i in range(taps):
        for j in range(taps):
            ox, oy = ((i + 0.5) / taps - 0.5) * 2 / ow, ((j + 0.5) / taps - 0.5) * 2 / oh
            shift = theta[:, :, 0] * ox + theta[:, :, 1] * oy
            want += F.grid_sample(src, grid + shift[:, None, None, :], mode="bilinear", padding_mode=border, align_corners=False)
    want /= taps * taps
    got = R.crop(image, ROIS, (oh, ow), border=border, taps=taps, flip=flip)
    assert got.shape == want.shape
    assert (got - want).abs().max() < 1e-4


def test_uncrop_puts_a_crop_back_where_it_came_from(image) -> None:
    """Crop, paste back at full size: inside each ROI the picture comes back (bilinear twice), outside is 0."""
    h, w = image.shape[-2:]
    rois = ROIS[:2]
    crops = R.crop(image, rois, 256)
    back = R.uncrop(crops, rois, (w, h), (w, h))
    theta = _theta(rois, w, h, None)
    # the plain inverse: the affine map from frame- to crop-normalised coordinates, through affine_grid
    full = torch.cat([theta, torch.tensor([[[0.0, 0.0, 1.0]]]).expand(2, 1, 3)], 1)
    inverse = torch.linalg.inv(full)[:, :2]
    want = F.grid_sample(crops, F.affine_grid(inverse, (2, 3, h, w), align_corners=False), align_corners=False)
    assert (back - want).abs().max() < 1e-3
    inside = want.abs().sum(1) > 0
    assert ((back - image).abs().amax(1)[inside] < 0.25).float().mean() > 0.97


def test_to_frame_rotates_scales_and_mirrors() -> None:
    torch.manual_seed(0)
    pts = torch.rand(3, 39, 5) * 256
    got = R.to_frame(pts, ROIS, 256.0, flip=FLIP)
    u = pts[..., 0] / 256 - 0.5
    u = torch.where(FLIP[:, None], -u, u)
    v = pts[..., 1] / 256 - 0.5
    lx, ly = u * ROIS[:, 2:3], v * ROIS[:, 3:4]
    c, s = torch.cos(ROIS[:, 4:5]), torch.sin(ROIS[:, 4:5])
    want = torch.stack([ROIS[:, 0:1] + c * lx - s * ly, ROIS[:, 1:2] + s * lx + c * ly, pts[..., 2] / 256 * ROIS[:, 2:3], pts[..., 3], pts[..., 4]], -1)
    assert torch.allclose(got, want, atol=1e-3)
    two = R.to_frame(pts[..., :2], ROIS, (256.0, 192.0))
    assert torch.allclose(two[..., 1], ROIS[:, 1:2] + s * (pts[..., 0] / 256 - 0.5) * ROIS[:, 2:3] + c * (pts[..., 1] / 192 - 0.5) * ROIS[:, 3:4], atol=1e-3)


def test_rotation_and_rois_from_points() -> None:
    start, end = torch.tensor([[10.0, 10.0], [0.0, 0.0]]), torch.tensor([[10.0, -20.0], [-5.0, 0.0]])
    # up (y decreasing) already points at 90 degrees; pointing left must turn by -90 to point up
    assert torch.allclose(R.rotation_towards(start, end, 90.0), torch.tensor([0.0, -math.pi / 2]), atol=1e-6)
    a = R.rotation_towards(start, end, 0.0 + 180.0 * 3)  # any target comes back in [-pi, pi)
    assert bool(((a >= -math.pi) & (a < math.pi)).all())
    roi = R.aligned_roi(start, end, 90.0, 1.25)
    assert torch.allclose(roi[:, 2:4], torch.tensor([[75.0, 75.0], [12.5, 12.5]]))
    box = R.box_roi(torch.tensor([[[0.0, 0.0], [40.0, 10.0], [20.0, 30.0]]]), 0, 1, 0.0, 1.5)
    assert torch.allclose(box[0, :4], torch.tensor([20.0, 15.0, 60.0, 60.0]))
