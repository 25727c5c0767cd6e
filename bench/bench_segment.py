"""Segmentation stage at 4K on a GPU: MODNet at 544p + refinement to 3840x2160, eager vs CUDA graph.

Run: python bench/bench_segment.py [--checkpoint modnet_webcam_portrait_matting.ckpt] [--frames 200]
Needs only torch with CUDA (numpy optional); loads muse's model files by path, so the
project's pinned dependencies need not be installed. Prints one JSON line and one markdown row.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, rel: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


modnet = _load("bench_modnet", "muse/models/modnet.py")
backends = _load("bench_backends", "muse/models/backends.py")
refine = _load("bench_matte_refine", "muse/models/matte_refine.py")


def test_frame(width: int, height: int, device: torch.device) -> torch.Tensor:
    """A 4K uint8 HWC picture: the astronaut when scikit-image is there, else a gradient (timing is content-blind)."""
    try:
        from skimage import data

        img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    except Exception:
        yy, xx = torch.meshgrid(torch.linspace(0, 255, 512), torch.linspace(0, 255, 512), indexing="ij")
        img = torch.stack((xx, yy, 255 - xx))[None]
    big = F.interpolate(img, size=(height, width), mode="bilinear", align_corners=False)
    return big[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous().to(device)


def time_ms(fn, frames: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(frames):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()  # benchmark only: per-frame GPU time
        out.append(start.elapsed_time(end))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default="", help="official MODNet checkpoint; random weights when empty (same speed)")
    ap.add_argument("--width", type=int, default=3840)
    ap.add_argument("--height", type=int, default=2160)
    ap.add_argument("--model-height", type=int, default=544)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--onnxruntime", action="store_true", help="also time onnxruntime (CUDA provider) for the model")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_segment needs a CUDA GPU")
    dev = torch.device("cuda")
    dtype = torch.float16
    torch.backends.cudnn.benchmark = True

    net = modnet.load_modnet(args.checkpoint) if args.checkpoint else modnet.MODNet().eval()
    matte = modnet.MODNetMatte(net)
    mw, mh = modnet.working_size((args.width, args.height), args.model_height)
    frame = test_frame(args.width, args.height, dev)
    stream = torch.cuda.Stream()
    results: dict[str, object] = {
        "bench": "segment_4k", "gpu": torch.cuda.get_device_name(dev), "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"), "frame": [args.width, args.height],
        "model_input": [mw, mh], "weights": "checkpoint" if args.checkpoint else "random", "dtype": "fp16",
    }

    with torch.cuda.stream(stream):
        image = frame.permute(2, 0, 1)[None].to(dtype).div_(255.0)
        small = F.interpolate(image, size=(mh, mw), mode="bilinear", align_corners=False, antialias=True)
        runners = {
            "eager": backends.TorchBackend(matte, dev, dtype, cuda_graph=False),
            "cuda_graph": backends.TorchBackend(matte, dev, dtype, cuda_graph=True),
        }
        if args.onnxruntime:
            onnx = backends.cached_onnx(matte, small.float(), backends.default_cache_dir(), "modnet")
            runners["onnxruntime"] = backends.OnnxRuntimeBackend(onnx, dev, dtype)
        for r in runners.values():
            r.prepare(small)
        stab = refine.TemporalStabilizer()

        def stage(runner) -> torch.Tensor:
            # segment.modnet: uint8 4K -> fp16 CHW -> antialiased resize -> model (as the node does)
            img = frame.permute(2, 0, 1)[None].to(dtype).div_(255.0)
            x = F.interpolate(img, size=(mh, mw), mode="bilinear", align_corners=False, antialias=True)
            low = runner(x)
            # segment.refine on a GPU: small guide from the frame, temporal, then A . I + b on the uint8 frame
            raw = frame.permute(2, 0, 1)[None]
            guide_small = refine.downsample(raw.to(dtype), (mh, mw)).float().div_(255.0)
            low = stab(low, guide_small)
            return refine.fast_guided_upsample(low, raw, guide_small=guide_small, full_scale=1.0 / 255.0, out_dtype=dtype)

        for name, runner in runners.items():
            total = time_ms(lambda: stage(runner), args.frames, args.warmup)
            model = time_ms(lambda: runner(small), args.frames, args.warmup)
            results[f"{name}_stage_ms"] = round(statistics.median(total), 3)
            results[f"{name}_stage_p95_ms"] = round(sorted(total)[int(0.95 * (len(total) - 1))], 3)
            results[f"{name}_model_ms"] = round(statistics.median(model), 3)
        low = runners["cuda_graph"](small)
        raw = frame.permute(2, 0, 1)[None]

        def refine_only() -> torch.Tensor:
            small_guide = refine.downsample(raw.to(dtype), (mh, mw)).float().div_(255.0)
            return refine.fast_guided_upsample(stab(low, small_guide), raw, guide_small=small_guide,
                                               full_scale=1.0 / 255.0, out_dtype=dtype)

        results["refine_only_ms"] = round(statistics.median(time_ms(refine_only, args.frames, args.warmup)), 3)
        out = stage(runners["cuda_graph"])
    torch.cuda.synchronize()
    results["mask_shape"] = list(out.shape[-2:])
    results["mask_finite"] = bool(torch.isfinite(out).all())
    print(json.dumps(results))
    print(f"| {results['date']} | {results['gpu']} | {args.width}x{args.height} | MODNet {mw}x{mh} fp16 | "
          f"eager {results['eager_stage_ms']} ms | CUDA graph {results['cuda_graph_stage_ms']} ms "
          f"(model {results['cuda_graph_model_ms']} ms, refine {results['refine_only_ms']} ms) |")


if __name__ == "__main__":
    main()
