"""`muse.nodes.segment.quantile`: the matte's robust statistics (the q-quantile of a map over the pixels whose plate
is known, every 7th pixel). The sort on the CPU and the CUDA kernel give the numbers of torch.quantile where every
pixel is known and of the sort elsewhere; torch.compile keeps the op as one call; the kernel records into a CUDA
graph and replays on new pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from muse.nodes.segment import quantile
from muse.nodes.segment.quantile import SUBSAMPLE, known_quantiles, known_quantiles_sorted


def _maps(astronaut: np.ndarray, messi: np.ndarray, h: int = 288, w: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Difference maps of real pictures at working size (4, h, w) and a known-plate mask per map: all, a person's
    worth missing (the astronaut's bright suit), a left half, none."""
    pics = []
    for img in (astronaut, messi):
        t = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
        pics.append(F.interpolate(t, size=(h, w), mode="area")[0])
    a, b = pics
    luma = torch.tensor([0.299, 0.587, 0.114])[:, None, None]
    la, lb = (a * luma).sum(0), (b * luma).sum(0)
    d = torch.stack([(la - lb).abs(), torch.log(la.clamp_min(0.02)) - torch.log(lb.clamp_min(0.02)),
                     la - la.roll(3, dims=1), (a - b).abs().amax(0)])
    known = torch.ones_like(d)
    known[1] = (la < 0.6).float()
    known[2, :, w // 2:] = 0.0
    known[3] = 0.0
    return d, known


@pytest.mark.parametrize("q", [0.3, 0.5, 0.99])
def test_with_every_pixel_known_it_is_torch_quantile(q: float, astronaut, messi) -> None:
    d, _ = _maps(astronaut, messi)
    got = known_quantiles(d, torch.ones_like(d), q)
    want = torch.quantile(d.reshape(4, -1)[:, ::SUBSAMPLE], q, dim=1)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)  # the position q * (n - 1) rounds in float32 here


def test_unknown_pixels_do_not_count_and_the_cpu_runs_the_sort(astronaut, messi) -> None:
    d, known = _maps(astronaut, messi)
    got = known_quantiles(d, known, 0.5)
    assert torch.equal(got, known_quantiles_sorted(d, known, 0.5))
    # half the room known: the median of the known half (the sort's interpolation sits within its values)
    half = d[2].reshape(-1)[::SUBSAMPLE][known[2].reshape(-1)[::SUBSAMPLE] > 0.5]
    assert float(half.min()) <= float(got[2]) <= float(half.max())
    assert abs(float(got[2]) - float(half.median())) < 0.02
    assert float(got[3]) == quantile.UNKNOWN  # nothing known: the stand-in value, never a read of unknown pixels
    one = known_quantiles(d[1:2], known[1:2], 0.5)  # a row alone: the same number as in the batch
    assert torch.equal(one, got[1:2])


def test_compiled_it_stays_one_call_with_the_same_numbers(astronaut, messi, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))  # not the user's cache
    d, known = _maps(astronaut, messi, 72, 128)

    def stats(d: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        return known_quantiles(d * 2.0, known, 0.3) + 1.0

    torch._dynamo.reset()
    compiled = torch.compile(stats, fullgraph=True, dynamic=False)  # a graph break would raise
    with torch.no_grad():
        assert torch.equal(compiled(d, known), stats(d, known))


@pytest.mark.cuda
@pytest.mark.parametrize("q", [0.3, 0.5, 0.99])
def test_cuda_kernel_gives_the_sorts_numbers(q: float, astronaut, messi) -> None:
    d, known = _maps(astronaut, messi)
    d, known = d.cuda(), known.cuda()
    assert quantile.usable(d)
    calls = []
    real = quantile.known_quantiles_cupy
    try:
        quantile.known_quantiles_cupy = lambda *a: calls.append(1) or real(*a)
        got = known_quantiles(d, known, q)
    finally:
        quantile.known_quantiles_cupy = real
    assert calls == [1]
    want = known_quantiles_sorted(d, known, q)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-7), (got, want)
    for n in (1, 3):  # a row alone, odd batches
        assert torch.allclose(known_quantiles(d[:n], known[:n], q), want[:n], rtol=1e-6, atol=1e-7)
    small = known_quantiles(d[:, :5, :3].contiguous(), known[:, :5, :3].contiguous(), q)  # fewer values than threads
    assert torch.allclose(small, known_quantiles_sorted(d[:, :5, :3], known[:, :5, :3], q), rtol=1e-6, atol=1e-7)
    ties = torch.full_like(d[:1], 0.25)  # every value equal
    assert float(known_quantiles(ties, known[:1], q)) == 0.25


@pytest.mark.cuda
def test_cuda_kernel_records_and_replays_on_new_pictures(astronaut, messi) -> None:
    d, known = _maps(astronaut, messi)
    d, known = d.cuda(), known.cuda()
    static_d, static_k = d.clone(), known.clone()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        known_quantiles(static_d, static_k, 0.5)  # built before the recording
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = known_quantiles(static_d, static_k, 0.5)
    static_d.copy_(d.flip(-1) * 0.5 + 0.1)
    static_k.copy_(known.flip(-2))
    g.replay()
    torch.cuda.synchronize()
    assert torch.allclose(out, known_quantiles_sorted(static_d, static_k, 0.5), rtol=1e-6, atol=1e-7)


@pytest.mark.cuda
def test_cuda_compiled_matte_statistics_run_the_kernel(astronaut, messi, monkeypatch, tmp_path) -> None:
    pytest.importorskip("triton")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    d, known = _maps(astronaut, messi)
    d, known = d.cuda(), known.cuda()
    torch._dynamo.reset()
    compiled = torch.compile(lambda d, k: known_quantiles(d, k, 0.99) * 3.0, fullgraph=True, dynamic=False)
    with torch.no_grad():
        got = compiled(d, known)
    assert torch.allclose(got, known_quantiles_sorted(d, known, 0.99) * 3.0, rtol=1e-6, atol=1e-7)
