"""Compares pose.blazepose and face.landmarks keypoints on real photos: CPU fp32
vs GPU fp32 vs GPU fp16 (tracked third frame), per point, to tell precision
drift from code-path differences. Prints one JSON line.

    python bench/check_pose_precision.py [--image PATH]
    python bench/check_pose_precision.py --sequence 300 --size 3840x2160   # GPU: fp16 vs fp32 landmarks, tracked

`--sequence N` runs pose.blazepose twice over N frames of the moving demo source (the same frames), once
with the body landmark model in exact fp32 (as shipped) and once in fp16 (the tracker's `landmark_dtype`),
and prints per-frame distances of the visible keypoints: pixels of the frame and the share of the body
box's diagonal.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from muse.graph.payloads import Frame  # noqa: E402
from muse.graph.testing import make_context, run_node_frames  # noqa: E402
from muse.nodes.face.landmarks import FaceLandmarksNode  # noqa: E402
from muse.nodes.pose.blazepose import BlazePose  # noqa: E402
from muse.nodes.pose.tracker import BlazePoseTracker  # noqa: E402


def picture(path: str | None) -> np.ndarray:
    if path:
        import cv2

        return np.ascontiguousarray(cv2.imread(path)[:, :, ::-1])
    import media

    return media.astronaut()


def points(cls, port: str, img: np.ndarray, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    frame = Frame(torch.from_numpy(img).to(device))
    ctx = make_context("probe", device, dtype=dtype)
    out = run_node_frames(cls, {"backend": "torch"}, [{"frame": frame}] * 3, ctx=ctx)[-1][port]
    conf = out.confidence if port == "keypoints" else torch.ones(out.points.shape[0])
    return out.points[:, :2].float().cpu(), torch.as_tensor(conf).float().cpu()


def sequence(frames: int, size: str) -> dict:
    """fp32 vs fp16 body landmarks through the tracking loop on the demo source (GPU)."""
    from muse.nodes.capture.demo import Demo
    from muse.graph.testing import build_node

    w, h = (int(v) for v in size.split("x"))
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # on a CPU both runs are fp32 (a smoke run)
    demo = build_node(Demo, {"width": w, "height": h, "fps": 0, "frames": frames})
    demo.open(make_context("demo", dev, resolution=(w, h)))
    pictures = [demo.render(i)[0] for i in range(frames)]
    tracks = {}
    for precision in ("fp32", "fp16"):
        node = build_node(BlazePose, {"backend": "torch"})
        ctx = make_context("pose", dev, resolution=(w, h))
        node.open(ctx)
        node.tracker = BlazePoseTracker("pose", ctx.device, ctx.dtype, backend="torch",
                                        landmark_dtype=torch.float16 if precision == "fp16" else torch.float32)
        with torch.cuda.stream(ctx.stream) if ctx.stream is not None else contextlib.nullcontext():
            outs = [node.process(frame=Frame(p)) for p in pictures]
        node.close()
        tracks[precision] = [(o["keypoints"].points[:, :2].float().cpu(), torch.as_tensor(o["keypoints"].confidence).float().cpu())
                             for o in outs if o is not None]
    per_frame_px, per_frame_share = [], []
    for (a, ca), (b, _) in zip(tracks["fp32"], tracks["fp16"]):
        vis = ca > 0.5
        if not bool(vis.any()):
            continue
        d = (a - b).norm(dim=1)[vis]
        box = a[vis]
        diag = float((box.amax(0) - box.amin(0)).norm().clamp(min=1.0))
        per_frame_px.append(float(d.max()))
        per_frame_share.append(float(d.max()) / diag)
    px, share = np.array(per_frame_px), np.array(per_frame_share)
    q = lambda v, k: round(float(np.percentile(v, k)), 4) if v.size else None  # noqa: E731
    return {"bench": "pose_landmark_fp16_sequence", "gpu": torch.cuda.get_device_name(0) if dev == "cuda" else None, "size": size,
            "frames": len(px), "visible_max_px": {"p50": q(px, 50), "p95": q(px, 95), "max": q(px, 100)},
            "share_of_body_diagonal": {"p50": q(share, 50), "p95": q(share, 95), "max": q(share, 100)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=None)
    ap.add_argument("--sequence", type=int, default=0, help="GPU: fp16 vs fp32 body landmarks over N demo frames")
    ap.add_argument("--size", default="3840x2160")
    args = ap.parse_args()
    if args.sequence:
        print(json.dumps(sequence(args.sequence, args.size)))
        return
    img = picture(args.image)
    result: dict = {"bench": "pose_precision", "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    for cls, port in ((BlazePose, "keypoints"), (FaceLandmarksNode, "face")):
        ref, conf = points(cls, port, img, "cpu", torch.float32)
        row = {}
        if torch.cuda.is_available():
            for name, dtype, tf32 in (("gpu_fp32_tf32", torch.float32, True), ("gpu_fp32", torch.float32, False),
                                      ("gpu_fp16", torch.float16, True)):
                torch.backends.cudnn.allow_tf32 = tf32  # the engine runs with PyTorch's default (TF32 on)
                got, _ = points(cls, port, img, "cuda", dtype)
                d = (got - ref).abs().amax(dim=1)
                vis = conf > 0.5
                row[name] = {"max_px": round(float(d.max()), 2), "visible_max_px": round(float(d[vis].max()), 2),
                             "per_point_px": [round(float(v), 1) for v in d]}
        result[port] = row
    print(json.dumps(result))


if __name__ == "__main__":
    main()
