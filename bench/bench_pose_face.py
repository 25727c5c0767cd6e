"""Pose + face landmarks on a 4K frame on the GPU (fp16; models run on crops at
their own resolution: 224/256 pose, 128/192/64 face), and 720p on the CPU
(fp32, 2 threads) for the fps a streamer without a GPU gets.

Run (bundled models imported beforehand into the same MUSE_CACHE):
    MUSE_CACHE=.carry/muse-cache python bench/bench_pose_face.py [--frames 200] [--cpu-frames 20]
Needs torch (+ CUDA for the GPU part), numpy, and a photo of a person: scikit-image's
astronaut, else messi5.jpg from the carried .carry/test-media. The node packages' __init__ (pydantic) are skipped: only the
framework-free tracker modules are loaded. Prints one JSON line and markdown rows.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for _pkg in ("muse.nodes", "muse.nodes.pose", "muse.nodes.face", "muse.nodes.landmarks"):
    # empty package shells: their __init__ files import the node framework (pydantic), not needed here
    _m = types.ModuleType(_pkg)
    _m.__path__ = [str(ROOT / _pkg.replace(".", "/"))]
    sys.modules[_pkg] = _m

from muse.graph.payloads import Keypoints  # noqa: E402  (torch only)
from muse.nodes.face.tracker import FaceTracker  # noqa: E402
from muse.nodes.pose.tracker import BlazePoseTracker  # noqa: E402


def _person_photo() -> torch.Tensor:
    """(1, 3, H, W) float 0-255 of a real person: scikit-image's astronaut, else
    messi5.jpg from the carried opencv-doc media (the GPU image has OpenCV)."""
    try:
        from skimage import data

        return torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float()
    except Exception:
        pass
    try:
        import cv2

        for root in (ROOT / ".carry" / "test-media", Path.home() / ".cache" / "muse" / "test-media"):
            for path in sorted(root.rglob("messi5.jpg")):
                bgr = cv2.imread(str(path))
                if bgr is not None:
                    return torch.from_numpy(bgr[:, :, ::-1].copy()).permute(2, 0, 1)[None].float()
    except Exception:
        pass
    raise SystemExit("bench_pose_face: needs a photo of a person: install scikit-image or carry .carry/test-media (opencv-doc)")


def photo_frame(width: int, height: int, device: torch.device) -> torch.Tensor:
    """A real person scaled to the frame height, centred on a grey canvas, as
    uint8 HWC on `device` - the layout cameras deliver."""
    img = _person_photo()
    ph, pw = img.shape[-2:]
    new_w = min(width, round(pw * height / ph))
    person = F.interpolate(img, size=(height, new_w), mode="bilinear", align_corners=False)[0]
    canvas = torch.full((3, height, width), 90.0)
    x0 = (width - new_w) // 2
    canvas[:, :, x0 : x0 + new_w] = person
    return canvas.permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous().to(device)


def to_chw(frame: torch.Tensor) -> torch.Tensor:
    """What the nodes do first: uint8 HWC -> float32 CHW in [0, 1]."""
    return frame.permute(2, 0, 1).float().div_(255.0)


def gpu_ms(fn, frames: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()  # benchmark only
    times = []
    for _ in range(frames):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()  # benchmark only: per-frame GPU time
        times.append(start.elapsed_time(end))
    return round(statistics.median(times), 3)


def cpu_ms(fn, frames: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


def stage(device: torch.device, dtype: torch.dtype, width: int, height: int, timer, frames: int, warmup: int, backend: str = "auto") -> dict:
    frame = photo_frame(width, height, device)
    pose = BlazePoseTracker("bench.pose", device, dtype, backend=backend)
    face = FaceTracker("bench.face", device, dtype, iris=True, backend=backend)
    r = pose(to_chw(frame))  # first frame: detector, then tracking
    # As in a streaming graph: face.landmarks seeded by the body pose (a whole-frame face
    # detector sees a 4K/720p streamer's face at ~13 px in its 128x128 input).
    kp = Keypoints(r["points"][:, :2], r["visibility"], "blazepose33", (width, height))
    face(to_chw(frame), kp)
    out: dict = {"backend": type(pose.landmarks).__name__}
    out["to_float_ms"] = timer(lambda: to_chw(frame), frames, warmup)
    out["pose_tracked_ms"] = timer(lambda: pose(to_chw(frame)), frames, warmup)
    out["pose_detect_frame_ms"] = timer(lambda: pose(to_chw(frame), force_detect=True), max(3, frames // 4), 2)
    out["face_tracked_ms"] = timer(lambda: face(to_chw(frame), kp), frames, warmup)
    out["face_seed_frame_ms"] = timer(lambda: face(to_chw(frame), kp, force_detect=True), max(3, frames // 4), 2)

    def both():
        image = to_chw(frame)
        pose(image)
        face(image, kp)

    out["pose_face_tracked_ms"] = timer(both, frames, warmup)
    r = pose(to_chw(frame))
    f = face(to_chw(frame), kp)
    out["person_found"] = bool(r["present"]) and bool(f["present"])  # sanity: the timing ran on a real track
    out["fps_pose_face"] = round(1000.0 / out["pose_face_tracked_ms"], 1)
    return out


def cpu_backend(choice: str) -> str:
    """ONNX Runtime when the models' ONNX exports are already in the cache; the
    benchmark does not export them itself (it would grow a carried cache)."""
    if choice != "auto":
        return choice
    from muse.models import bundled

    names = ("pose_detection", "pose_landmark_full", "face_detection_short_range", "face_landmark", "iris_landmark")
    missing = [n for n in names if not bundled.onnx_path_of(n).exists()]
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        missing = ["onnxruntime"]
    if missing:
        print(f"bench_pose_face: CPU part on the torch backend (no ONNX Runtime or no ONNX export of {missing})", file=sys.stderr)
        return "torch"
    return "onnxruntime"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--cpu-frames", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cpu-backend", default="auto", choices=["auto", "torch", "onnxruntime"], help="auto = ONNX Runtime when the ONNX exports are cached, else torch")
    args = ap.parse_args()
    result: dict = {
        "bench": "pose_face",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
    }
    torch.set_grad_enabled(False)
    if torch.cuda.is_available():
        dev = torch.device("cuda")
        result["gpu"] = torch.cuda.get_device_name(dev)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):  # like the runtime: the node runs on its own stream
            result["gpu_4k_fp16"] = stage(dev, torch.float16, 3840, 2160, gpu_ms, args.frames, 10)
    torch.set_num_threads(args.threads)
    result["cpu_threads"] = args.threads
    result["cpu_720p_fp32"] = stage(torch.device("cpu"), torch.float32, 1280, 720, cpu_ms, args.cpu_frames, 2, cpu_backend(args.cpu_backend))
    print(json.dumps(result))
    print("| where | pose tracked ms | face+iris tracked ms | pose+face ms | fps | pose with detector ms | face seeding ms |")
    print("|---|---|---|---|---|---|---|")
    for key, label in (("gpu_4k_fp16", f"{result.get('gpu', 'GPU')} 4K fp16"), ("cpu_720p_fp32", f"CPU {args.threads} threads 720p fp32 ({result['cpu_720p_fp32']['backend']})")):
        r = result.get(key)
        if r:
            print(f"| {label} | {r['pose_tracked_ms']} | {r['face_tracked_ms']} | {r['pose_face_tracked_ms']} | {r['fps_pose_face']} | {r['pose_detect_frame_ms']} | {r['face_seed_frame_ms']} |")


if __name__ == "__main__":
    main()
