"""Compares pose.blazepose and face.landmarks keypoints on real photos: CPU fp32
vs GPU fp32 vs GPU fp16 (tracked third frame), per point, to tell precision
drift from code-path differences. Prints one JSON line.

    python bench/check_pose_precision.py [--image PATH]
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image", default=None)
    args = ap.parse_args()
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
