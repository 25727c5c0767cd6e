"""The bundled models under other precisions, layouts and torch.compile: GPU ms per call (replayed as a
CUDA graph, as the nodes run them) and how far each output lands from exact fp32, on a real picture.

    python bench/bench_model_variants.py [--models pose_landmark_full face_landmark] [--compile] [--json OUT]

Prints one JSON line per (model, variant): ms per call, kernels per call, the largest difference of
each output from exact fp32 (for the landmark models, output 0 holds pixel coordinates of the input).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from muse.models.bundled import load_model, model_info  # noqa: E402

POINT_STRIDE = {"pose_landmark_full": 5, "face_landmark": 3, "iris_landmark": 3}
DEFAULT = ["selfie_segmentation_landscape", "pose_landmark_full", "face_landmark", "iris_landmark"]


def picture(width: int, height: int) -> torch.Tensor:
    import cv2

    import media

    img = cv2.resize(media.astronaut(), (width, height), interpolation=cv2.INTER_AREA)
    return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0


def outputs(o: Any) -> list[torch.Tensor]:
    if isinstance(o, torch.Tensor):
        return [o]
    if isinstance(o, dict):
        return [v for v in o.values() if isinstance(v, torch.Tensor)]
    return [v for v in o if isinstance(v, torch.Tensor)]


def run_variant(name: str, x: torch.Tensor, dtype: torch.dtype, channels_last: bool, tf32: bool, compile_: bool,
                reps: int = 300, cudnn: str = "on", fold: bool | str = True) -> tuple[float, list[torch.Tensor], float]:
    """`cudnn`: "on" (as the nodes run), "off" (torch's own convolution kernels: the depthwise ones are
    torch's `conv_depthwise2d`) or "benchmark" (cuDNN times its algorithms once per shape)."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.enabled = cudnn != "off"
    torch.backends.cudnn.benchmark = cudnn == "benchmark"
    model = load_model(name, device=torch.device("cuda"), dtype=dtype, fold=fold is True).eval()
    if fold == "even":  # pads folded, uneven SAME padding kept as a pad (no kernel grown to 4x4 / 6x6)
        from muse.models.tflite.fold import fold_for_inference

        fold_for_inference(model, grow=False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    if compile_:
        model = torch.compile(model, dynamic=False)
    inp = x.cuda().to(dtype)
    if channels_last:
        inp = inp.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                model(inp)
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        build_s = time.perf_counter() - t0
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = model(inp)
        for _ in range(20):
            g.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            g.replay()
        end.record()
        torch.cuda.synchronize()
    torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark = True, False
    return start.elapsed_time(end) / reps, [o.float().clone() for o in outputs(out)], build_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=DEFAULT)
    ap.add_argument("--compile", action="store_true", help="also torch.compile (Inductor) variants")
    ap.add_argument("--only", nargs="*", help="only these variants (labels as printed)")
    ap.add_argument("--json")
    a = ap.parse_args()
    rows = []
    for name in a.models:
        w, h = model_info(name)["input_size"]
        x = picture(w, h)
        ref_ms, ref, _ = run_variant(name, x, torch.float32, False, False, False)
        variants = [("fp32-tf32", torch.float32, False, True, False, "on"), ("fp16", torch.float16, False, False, False, "on"),
                    ("fp16-cl", torch.float16, True, False, False, "on"), ("bf16-cl", torch.bfloat16, True, False, False, "on"),
                    ("fp32-exact-nocudnn", torch.float32, False, False, False, "off"),
                    ("fp32-exact-benchmark", torch.float32, False, False, False, "benchmark"),
                    ("fp16-nocudnn", torch.float16, False, False, False, "off"),
                    ("fp16-benchmark", torch.float16, False, False, False, "benchmark"),
                    ("fp16-cl-benchmark", torch.float16, True, False, False, "benchmark"),
                    # as TFLite wrote it: pads as kernels of their own, 3x3 kernels not grown to 4x4 (fold=False)
                    ("fp32-exact-asis", torch.float32, False, False, False, "on-asis"),
                    ("fp16-asis", torch.float16, False, False, False, "on-asis"),
                    ("fp16-nocudnn-asis", torch.float16, False, False, False, "off-asis"),
                    ("fp32-exact-even", torch.float32, False, False, False, "on-even"),
                    ("fp16-even", torch.float16, False, False, False, "on-even")]
        if a.compile:
            variants += [("fp32-compiled", torch.float32, False, False, True, "on"), ("fp16-cl-compiled", torch.float16, True, False, True, "on")]
        if a.only:
            variants = [v for v in variants if v[0] in a.only]
        rows.append({"model": name, "variant": "fp32-exact", "ms": round(ref_ms, 4)})
        print(json.dumps(rows[-1]), flush=True)
        for label, dtype, cl, tf32, comp, cudnn in variants:
            try:
                how, _, kind = cudnn.partition("-")
                ms, outs, build = run_variant(name, x, dtype, cl, tf32, comp, cudnn=how,
                                              fold={"asis": False, "even": "even"}.get(kind, True))
            except Exception as exc:  # a variant that cannot run is a finding, not a crash
                rows.append({"model": name, "variant": label, "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                print(json.dumps(rows[-1]), flush=True)
                continue
            diffs = [round(float((o - r).abs().max()), 4) for o, r in zip(outs, ref)]
            row = {"model": name, "variant": label, "ms": round(ms, 4), "build_s": round(build, 1), "max_diff": diffs}
            stride = POINT_STRIDE.get(name)
            if stride:  # landmark models: output 0 is (x, y, ...) per point in input pixels
                d = (outs[0].view(-1, stride)[:, :2] - ref[0].view(-1, stride)[:, :2]).abs()
                row["px_max"], row["px_median"] = round(float(d.max()), 3), round(float(d.median()), 3)
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
