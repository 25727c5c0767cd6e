"""Times the 4K warp + composite pass: the fused CuPy kernels against their torch twins, and checks they agree.

    python bench/bench_visual.py [--size 3840x2160] [--iters 200]

Needs torch with CUDA and CuPy; loads muse/nodes/warp/kernels.py by path, so
the project's other dependencies need not be installed. Prints one JSON line
and one markdown table row.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent


def load_kernels():
    spec = importlib.util.spec_from_file_location("muse_warp_kernels", ROOT / "muse" / "nodes" / "warp" / "kernels.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def scene(width: int, height: int, device: torch.device):
    """A textured frame, a different plate, an elliptical person mask (fp16) and a smooth 1/8-res field inside it."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    ys = torch.linspace(0, 1, height)[:, None]
    xs = torch.linspace(0, 1, width)[None, :]
    base = torch.stack([(torch.sin(40 * xs + 7 * ys) + 1) * 110, (torch.cos(25 * ys - 9 * xs) + 1) * 100, (xs * 200 + ys * 50)])
    noise = torch.randint(0, 30, (3, height, width), generator=gen)
    src = (base + noise).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
    plate = (255 - src).contiguous()
    inside = ((xs - 0.5) / 0.18) ** 2 + ((ys - 0.62) / 0.45) ** 2
    mask = (1.2 - inside).clamp(0, 1).to(torch.float16)
    fh, fw = math.ceil(height / 8), math.ceil(width / 8)
    fy = torch.linspace(0, 1, fh)[:, None]
    fx = torch.linspace(0, 1, fw)[None, :]
    support = (1.3 - (((fx - 0.5) / 0.2) ** 2 + ((fy - 0.62) / 0.47) ** 2)).clamp(0, 1)
    field = torch.stack([(fx - 0.5) * 0.15 * width * support, 6.0 * torch.sin(12 * fy) * support]).float()
    return src.to(device), plate.to(device), mask.to(device), field.to(device)


def time_ms(fn, iters: int, stream: torch.cuda.Stream) -> float:
    with torch.cuda.stream(stream):
        for _ in range(10):
            fn()
        times = []
        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            times.append(start.elapsed_time(end))
    return statistics.median(times)


def composite_inputs(width: int, height: int, device: torch.device):
    """Low-resolution light-wrap planes as composite.over makes them (1.5 % of the height, sigma ~2 px)."""
    factor = max(1, int(0.015 * height // 2))
    h, w = -(-height // factor), -(-width // factor)
    gen = torch.Generator(device="cpu").manual_seed(1)
    return torch.rand(h, w, generator=gen).to(device), torch.rand(3, h, w, generator=gen).to(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="3840x2160")
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    if not torch.cuda.is_available():
        raise SystemExit("bench_visual needs a CUDA GPU")
    kernels = load_kernels()
    import cupy  # noqa: F401  (fail early with a clear ImportError)

    dev = torch.device("cuda")
    src, plate, mask, field = scene(width, height, dev)
    stream = torch.cuda.Stream()
    cp_stream = cupy.cuda.ExternalStream(stream.cuda_stream)

    with torch.cuda.stream(stream):
        a, am = kernels.warp_apply_cupy(src, field, mask, plate, stream=cp_stream)
        b, bm = kernels.warp_apply_torch(src, field, mask, plate)
    stream.synchronize()
    diff = (a.int() - b.int()).abs()
    moved = (kernels.upsample_field(field, height, width) != 0).any(0)

    res = {
        "bench": "visual",
        "size": f"{width}x{height}",
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "cupy": cupy.__version__,
        "moved_fraction": round(float(moved.float().mean()), 3),
        "agree_max_abs_diff": int(diff.max()),
        "agree_frac_pixels_differ": float((diff > 0).any(-1).float().mean()),
        "agree_mask_max_diff": float((am.float() - bm.float()).abs().max()),
    }
    res["warp_cupy_fused_ms"] = time_ms(lambda: kernels.warp_apply_cupy(src, field, mask, plate, stream=cp_stream), args.iters, stream)
    res["warp_torch_fallback_ms"] = time_ms(lambda: kernels.warp_apply_torch(src, field, mask, plate), args.iters, stream)
    # the plain reference: one grid_sample of a 4K fp16 frame with a ready full-res grid (no field upsampling, no mask)
    img16 = src.permute(2, 0, 1)[None].half()
    grid = torch.rand(1, height, width, 2, device=dev, dtype=torch.float16) * 2 - 1
    res["grid_sample_fp16_plain_ms"] = time_ms(lambda: F.grid_sample(img16, grid, align_corners=True), args.iters, stream)
    inside, soft = composite_inputs(width, height, dev)
    over = lambda fn, img, alpha, **kw: fn(img, alpha, plate, (0.0, 0.0, 0.0), 0.3, inside, soft, **kw)
    with torch.cuda.stream(stream):
        ca = over(kernels.composite_over_cupy, a, am, stream=cp_stream)
        cb = over(kernels.composite_over_torch, a, am)
    stream.synchronize()
    cdiff = (ca.int() - cb.int()).abs()
    res["composite_agree_max_abs_diff"] = int(cdiff.max())
    res["composite_agree_frac_pixels_differ"] = float((cdiff > 0).any(-1).float().mean())
    res["composite_cupy_fused_ms"] = time_ms(lambda: over(kernels.composite_over_cupy, a, am, stream=cp_stream), args.iters, stream)
    res["composite_torch_ms"] = time_ms(lambda: over(kernels.composite_over_torch, a, am), args.iters, stream)
    res["warp_plus_composite_cupy_ms"] = time_ms(
        lambda: over(kernels.composite_over_cupy, *kernels.warp_apply_cupy(src, field, mask, plate, stream=cp_stream), stream=cp_stream),
        args.iters,
        stream,
    )
    res["warp_plus_composite_torch_ms"] = time_ms(
        lambda: over(kernels.composite_over_torch, *kernels.warp_apply_torch(src, field, mask, plate)), args.iters, stream
    )
    res["speedup_fused_vs_grid_sample_plain"] = round(res["grid_sample_fp16_plain_ms"] / res["warp_cupy_fused_ms"], 2)
    print(json.dumps(res))
    print(
        f"| {res['size']} | {res['device']} | fused CuPy {res['warp_cupy_fused_ms']:.3f} ms | torch fallback {res['warp_torch_fallback_ms']:.3f} ms "
        f"| plain grid_sample fp16 {res['grid_sample_fp16_plain_ms']:.3f} ms | composite CuPy {res['composite_cupy_fused_ms']:.3f} ms "
        f"/ torch {res['composite_torch_ms']:.3f} ms | warp+composite CuPy {res['warp_plus_composite_cupy_ms']:.3f} ms "
        f"/ torch {res['warp_plus_composite_torch_ms']:.3f} ms | warp diff {res['agree_max_abs_diff']} LSB on "
        f"{100 * res['agree_frac_pixels_differ']:.3f} % px, composite diff {res['composite_agree_max_abs_diff']} LSB on "
        f"{100 * res['composite_agree_frac_pixels_differ']:.3f} % px |"
    )


if __name__ == "__main__":
    main()
