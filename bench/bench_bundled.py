"""Bundled MediaPipe models converted to torch: ms per call on CPU (2 threads, fp32)
and on the GPU (fp16, channels_last, eager and CUDA graph), fp16 parity against the
stored TFLite reference, and the segment.selfie stage on a 4K (and 720p) frame.

Run (models imported beforehand, e.g. `MUSE_CACHE=.carry/muse-cache muse models import --no-onnx`):
    MUSE_CACHE=.carry/muse-cache python bench/bench_bundled.py [--frames 200] [--cpu-frames 30]
Needs only torch (+ numpy); scikit-image is used for the parity picture when present.
Prints one JSON line, then a markdown table.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muse.models import bundled  # noqa: E402  (light: numpy + torch only, no pydantic/tflite)
from muse.models.tflite.builder import load_artifact  # noqa: E402


def _ms(fn, frames: int, warmup: int, cuda: bool) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()  # benchmark only: time each call on its own
    times = []
    for _ in range(frames):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return {"median": round(statistics.median(times), 3), "p90": round(times[int(0.9 * (len(times) - 1))], 3)}


def _graphed(model: torch.nn.Module, x: torch.Tensor):
    """Capture one forward as a CUDA graph; returns a replay function."""
    static_in = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            model(static_in)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = model(static_in)

    def replay():
        graph.replay()
        return static_out

    return replay


def _selfie_stage(model: torch.nn.Module, frame_hwc: torch.Tensor, size: tuple[int, int], dtype: torch.dtype):
    """What segment.selfie does per frame (letterbox on the device, model, crop), without the graph runtime."""
    mw, mh = size
    fh, fw = frame_hwc.shape[:2]
    scale = min(mw / fw, mh / fh)
    w, h = max(1, min(mw, round(fw * scale))), max(1, min(mh, round(fh * scale)))
    x0, y0 = (mw - w) // 2, (mh - h) // 2

    def run():
        img = frame_hwc.permute(2, 0, 1).unsqueeze(0).to(dtype).div_(255.0)
        img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        img = F.pad(img, (x0, mw - w - x0, y0, mh - h - y0))
        alpha = model(img)[0][0, y0 : y0 + h, x0 : x0 + w, 0]
        return alpha

    return run


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--cpu-frames", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    result: dict = {
        "bench": "bundled_models",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu only",
        "cpu_threads": args.threads,
        "cache": str(bundled.models_dir()),
        "models": {},
    }
    missing = [n for n in bundled.list_models() if not bundled.torch_path(n).exists()]
    if missing:
        print(f"not imported in {bundled.models_dir()}: {missing}; run `muse models import --no-onnx` with the same MUSE_CACHE", file=sys.stderr)
        return 2
    with torch.inference_mode():
        for name in bundled.list_models():
            module, _ = load_artifact(bundled.torch_path(name))
            w, h = bundled.CATALOGUE[name].input_size
            row: dict = {"input": f"{w}x{h}"}
            x = torch.rand(1, 3, h, w)
            row["cpu_fp32_ms"] = _ms(lambda: module(x), args.cpu_frames, 3, False)
            if cuda:
                gm = module.to("cuda", torch.float16).to(memory_format=torch.channels_last)
                xg = x.to("cuda", torch.float16).contiguous(memory_format=torch.channels_last)
                row["gpu_fp16_eager_ms"] = _ms(lambda: gm(xg), args.frames, 10, True)
                try:
                    replay = _graphed(gm, xg)
                    row["gpu_fp16_cuda_graph_ms"] = _ms(replay, args.frames, 10, True)
                except Exception as exc:  # report, keep going
                    row["gpu_fp16_cuda_graph_ms"] = f"capture failed: {exc}"
                try:
                    row["gpu_fp16_parity"] = bundled.parity_report(name, gm, None)["detail"]
                except Exception as exc:  # scikit-image missing on the bench machine
                    row["gpu_fp16_parity"] = f"not checked ({type(exc).__name__}: {exc})"
            result["models"][name] = row

        stage = {}
        for label, (fw, fh) in {"720p": (1280, 720), "4k": (3840, 2160)}.items():
            frame = torch.randint(0, 256, (fh, fw, 3), dtype=torch.uint8)
            for model_name in ("selfie_segmentation", "selfie_segmentation_landscape"):
                module, _ = load_artifact(bundled.torch_path(model_name))
                size = bundled.CATALOGUE[model_name].input_size
                key = f"{model_name}@{label}"
                stage[key] = {"cpu_fp32_ms": _ms(_selfie_stage(module, frame, size, torch.float32), args.cpu_frames, 3, False)}
                if cuda:
                    gm = module.to("cuda", torch.float16).to(memory_format=torch.channels_last)
                    run = _selfie_stage(gm, frame.cuda(), size, torch.float16)
                    stage[key]["gpu_fp16_eager_ms"] = _ms(run, args.frames, 10, True)
        result["selfie_stage"] = stage

    print(json.dumps(result))
    print(f"\n| model | input | CPU fp32 {args.threads} thr ms | GPU fp16 eager ms | GPU fp16 CUDA graph ms |")
    print("|---|---|---|---|---|")
    for name, row in result["models"].items():
        g = row.get("gpu_fp16_eager_ms", {})
        c = row.get("gpu_fp16_cuda_graph_ms", {})
        print(f"| {name} | {row['input']} | {row['cpu_fp32_ms']['median']} | {g.get('median', '-') if isinstance(g, dict) else g} | "
              f"{c.get('median', '-') if isinstance(c, dict) else c} |")
    print("\n| selfie stage (letterbox + model + crop) | CPU fp32 ms | GPU fp16 eager ms |\n|---|---|---|")
    for key, row in result["selfie_stage"].items():
        print(f"| {key} | {row['cpu_fp32_ms']['median']} | {row.get('gpu_fp16_eager_ms', {}).get('median', '-')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
