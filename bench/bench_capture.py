"""Benchmark of the camera fast path at 4K: MJPEG decode + upload (nvJPEG via
torchvision vs OpenCV on the CPU + pinned upload), and YUYV/NV12 -> RGB as GPU
kernels vs OpenCV + upload; plus RGB -> NV12 for the virtual camera.

Needs torch with CUDA, torchvision and opencv; not the rest of MUSE's
dependencies (the conversion modules are loaded by path).

    python bench/bench_capture.py [--iters 50] [--image PATH] [--json OUT.json]

Prints one JSON line and a markdown table (medians in milliseconds).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
CAPTURE = ROOT / "muse" / "nodes" / "capture"


def load(name: str):
    """A capture helper module by path, so the package's pydantic-based nodes are not needed."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", CAPTURE / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


def picture_4k(path: str | None) -> tuple[np.ndarray, str]:
    """A real photo at 3840x2160 (RGB): --image, else scikit-image's astronaut over its coffee photo."""
    if path:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"cannot read --image {path}")
        return cv2.resize(bgr, (3840, 2160), interpolation=cv2.INTER_CUBIC)[:, :, ::-1].copy(), path
    try:
        from skimage import data

        room = cv2.resize(data.coffee(), (3840, 2160), interpolation=cv2.INTER_CUBIC)
        person = cv2.resize(data.astronaut(), (1800, 1800), interpolation=cv2.INTER_CUBIC)
        room[360:2160, 1020:2820] = person
        return room, "skimage astronaut over coffee, upscaled"
    except ImportError:
        # No real photo available: smooth gradients and shapes compress like a picture (not like noise).
        yy, xx = np.mgrid[0:2160, 0:3840].astype(np.float32)
        img = np.stack([xx / 3840 * 255, yy / 2160 * 255, (xx + yy) / 6000 * 255], -1).astype(np.uint8)
        for i in range(40):
            cv2.circle(img, (97 * i % 3840, 53 * i % 2160), 40 + 7 * i, (i * 37 % 255, i * 91 % 255, i * 13 % 255), -1)
        return cv2.GaussianBlur(img, (0, 0), 3), "synthetic (pass --image for a real photo)"


def timed(fn, iters: int, warmup: int = 5) -> float:
    """Median wall time in ms, synchronising the device after each call (a benchmark may; nodes never do)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        samples.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(samples)


def yuyv_from_rgb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    u = np.repeat(i420[h : h + h // 4].reshape(h // 2, w // 2), 2, axis=0)
    v = np.repeat(i420[h + h // 4 :].reshape(h // 2, w // 2), 2, axis=0)
    out = np.empty((h, w, 2), np.uint8)
    out[..., 0] = i420[:h]
    out[:, 0::2, 1] = u
    out[:, 1::2, 1] = v
    return out


def nv12_from_rgb(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    i420 = cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420)
    uv = np.stack([i420[h : h + h // 4].reshape(-1), i420[h + h // 4 :].reshape(-1)], 1).reshape(-1)
    return np.concatenate([i420[:h].reshape(-1), uv]).reshape(h * 3 // 2, w)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--quality", type=int, default=90, help="JPEG quality of the simulated MJPG camera frame")
    ap.add_argument("--image", default=None, help="a photo to use (resized to 3840x2160)")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    yuv = load("yuv")
    jpeg = load("jpeg")
    dev = torch.device("cuda")
    rgb, source = picture_4k(args.image)
    ok, enc = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, args.quality])
    assert ok
    jpeg_bytes = enc.reshape(-1)
    pinned = torch.empty((2160, 3840, 3), dtype=torch.uint8).pin_memory()
    stream = torch.cuda.Stream()
    results: dict[str, float] = {}

    # -- MJPEG: CPU decode + pinned upload (the portable path) --------------------
    def cpu_decode():
        return cv2.cvtColor(cv2.imdecode(jpeg_bytes, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    decoded = cpu_decode()
    results["mjpeg_cpu_decode_ms"] = timed(cpu_decode, args.iters)

    def upload(host: np.ndarray, buf: torch.Tensor):
        buf.copy_(torch.from_numpy(host))
        with torch.cuda.stream(stream):
            out = buf.to(dev, non_blocking=True)
        stream.synchronize()
        return out

    results["rgb_pinned_upload_ms"] = timed(lambda: upload(decoded, pinned), args.iters)
    results["mjpeg_cpu_total_ms"] = timed(lambda: upload(cpu_decode(), pinned), args.iters)

    # -- MJPEG: nvJPEG on the GPU (the fast path) ----------------------------------
    def gpu_decode():
        with torch.cuda.stream(stream):
            return jpeg.decode_jpeg(jpeg_bytes, dev)

    gpu_img = gpu_decode()
    torch.cuda.synchronize()
    results["mjpeg_nvjpeg_total_ms"] = timed(gpu_decode, args.iters)
    results["mjpeg_torchvision_cpu_decode_ms"] = timed(lambda: jpeg.decode_jpeg(jpeg_bytes, "cpu"), max(5, args.iters // 5))
    err = (gpu_img.cpu().int() - torch.from_numpy(decoded).int()).abs().float().mean().item()

    # -- YUYV / NV12 -> RGB ----------------------------------------------------------
    yuyv = yuyv_from_rgb(rgb)
    nv12 = nv12_from_rgb(rgb)
    pin_yuyv = torch.from_numpy(yuyv).pin_memory()
    pin_nv12 = torch.from_numpy(nv12).pin_memory()

    def yuyv_gpu():
        with torch.cuda.stream(stream):
            return yuv.yuyv_to_rgb(pin_yuyv.to(dev, non_blocking=True))

    def nv12_gpu():
        with torch.cuda.stream(stream):
            return yuv.nv12_to_rgb(pin_nv12.to(dev, non_blocking=True), 3840, 2160)

    results["yuyv_cpu_convert_upload_ms"] = timed(lambda: upload(cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUY2), pinned), args.iters)
    results["yuyv_gpu_upload_convert_ms"] = timed(yuyv_gpu, args.iters)
    results["nv12_cpu_convert_upload_ms"] = timed(lambda: upload(cv2.cvtColor(nv12, cv2.COLOR_YUV2RGB_NV12), pinned), args.iters)
    results["nv12_gpu_upload_convert_ms"] = timed(nv12_gpu, args.iters)
    ref = cv2.cvtColor(yuyv, cv2.COLOR_YUV2RGB_YUY2)
    got = yuyv_gpu()
    stream.synchronize()  # the kernel ran on `stream`; .cpu() alone would read it early
    yuyv_err = (got.cpu().int() - torch.from_numpy(ref).int()).abs().max().item()

    # -- RGB -> NV12 for the virtual camera (1080p) ------------------------------------------
    rgb1080 = torch.from_numpy(cv2.resize(rgb, (1920, 1080), interpolation=cv2.INTER_AREA)).to(dev)
    results["rgb_to_nv12_1080p_gpu_ms"] = timed(lambda: yuv.rgb_to_nv12(rgb1080), args.iters)

    out = {
        "bench": "capture_4k",
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "opencv_threads": cv2.getNumThreads(),
        "image": source,
        "jpeg_kb": round(jpeg_bytes.size / 1024, 1),
        "nvjpeg_vs_cpu_mean_abs_diff": round(err, 3),
        "yuyv_gpu_vs_opencv_max_diff": int(yuyv_err),
        "iters": args.iters,
        **{k: round(v, 3) for k, v in results.items()},
    }
    print(json.dumps(out))
    print()
    print("| 4K step | median ms |")
    print("|---|---|")
    for k, v in results.items():
        print(f"| {k} | {v:.2f} |")
    if args.json:
        target = Path(args.json)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
