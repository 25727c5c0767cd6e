"""The clean plate's block passes (muse/nodes/plate_kernels.py): the torch twin against plain formulas,
the CuPy kernels against the torch twin (cuda), on a real photo."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import media
from muse.nodes import plate_kernels as pk


def _photo(height: int, width: int) -> torch.Tensor:
    import cv2

    return torch.from_numpy(np.ascontiguousarray(cv2.resize(media.astronaut(), (width, height), interpolation=cv2.INTER_AREA)))


@pytest.mark.parametrize("size", [(96, 128), (342, 548)])
def test_block_sums_follow_the_nearest_rule(size: tuple[int, int]) -> None:
    height, width = size
    img = _photo(height, width)
    bh, bw = -(-height // 4), -(-width // 4)
    sums = pk.block_sums_u8(img, bh, bw)
    # every pixel counted once, in the block nearest upsampling would give it
    planes = img.permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(sums.sum((1, 2)), planes.sum((1, 2)), rtol=1e-5, atol=1e-3)
    counts = pk.block_counts(height, width, bh, bw, img.device)
    means = sums / counts
    back = F.interpolate(means[None], size=(height, width), mode="nearest")[0]
    iy, ix = pk.block_index(height, bh, img.device), pk.block_index(width, bw, img.device)
    for by, bx in [(0, 0), (bh // 2, bw // 3), (bh - 1, bw - 1)]:
        rows, cols = (iy == by).nonzero()[:, 0], (ix == bx).nonzero()[:, 0]
        block = planes[:, rows][:, :, cols]
        torch.testing.assert_close(means[:, by, bx], block.mean((1, 2)), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(back[:, rows[0], cols[0]], means[:, by, bx])
    if height % 4 == 0 and width % 4 == 0:
        torch.testing.assert_close(means, F.avg_pool2d(planes[None], 4)[0], rtol=1e-5, atol=1e-6)


def test_plate_update_torch_twin_formula() -> None:
    height, width = 96, 128
    frame = _photo(height, width)
    rng = torch.Generator().manual_seed(3)
    plate = torch.rand((3, height, width), generator=rng)
    bh, bw = height // 4, width // 4
    step = (torch.rand((bh, bw), generator=rng) > 0.5).float() * 0.25
    known = (torch.rand((bh, bw), generator=rng) > 0.3).float()
    fill = torch.rand((3, bh, bw), generator=rng)
    gain = torch.tensor([1.01, 0.99, 1.0])
    before = plate.clone()
    out = torch.empty((height, width, 3), dtype=torch.uint8)
    sums = torch.empty((3, bh, bw))
    pk.plate_update(frame, plate, out, gain, step, known, fill, sums)
    st = F.interpolate(step[None, None], size=(height, width), mode="nearest")[0]
    expect = before * gain.view(3, 1, 1)
    expect = expect + st * (frame.permute(2, 0, 1).float() / 255.0 - expect)
    torch.testing.assert_close(plate, expect)
    torch.testing.assert_close(sums, pk.block_sums(expect, bh, bw), rtol=1e-5, atol=1e-4)
    seen = F.interpolate(known[None, None], size=(height, width), mode="nearest")[0, 0] > 0
    up = F.interpolate(fill[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    shown = torch.where(seen, expect, up).clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0)
    assert torch.equal(out, shown)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (run on the GPU machine)")
@pytest.mark.parametrize("size", [(2160, 3840), (342, 548)])
def test_cupy_kernels_match_the_torch_twin(size: tuple[int, int]) -> None:
    pytest.importorskip("cupy")
    height, width = size
    frame = _photo(height, width).cuda()
    bh, bw = -(-height // 4), -(-width // 4)
    torch.testing.assert_close(pk.block_sums_u8(frame, bh, bw, backend="cupy"), pk.block_sums_u8(frame, bh, bw, backend="torch"),
                               rtol=1e-5, atol=1e-3)
    rng = torch.Generator(device="cuda").manual_seed(5)
    plate = torch.rand((3, height, width), generator=rng, device="cuda")
    step = (torch.rand((bh, bw), generator=rng, device="cuda") > 0.5).float() * 0.25
    known = (torch.rand((bh, bw), generator=rng, device="cuda") > 0.3).float()
    fill = torch.rand((3, bh, bw), generator=rng, device="cuda")
    gain = torch.tensor([1.01, 0.99, 1.0], device="cuda")
    results = []
    for backend in ("cupy", "torch"):
        p = plate.clone()
        out = torch.empty((height, width, 3), dtype=torch.uint8, device="cuda")
        sums = torch.empty((3, bh, bw), device="cuda")
        pk.plate_update(frame, p, out, gain, step, known, fill, sums, backend=backend)
        results.append((p, out, sums))
    (pa, oa, sa), (pb, ob, sb) = results
    torch.testing.assert_close(pa, pb, rtol=0, atol=1e-6)
    assert (oa.int() - ob.int()).abs().max() <= 1
    torch.testing.assert_close(sa, sb, rtol=1e-5, atol=1e-3)
