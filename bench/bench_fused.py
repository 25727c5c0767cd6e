"""GPU cost of `segment.fused` at 4K (issue 14): eager, and replayed as a CUDA graph (the capturable contract).

Run: python bench/bench_fused.py --device cuda [--width 3840 --height 2160] [--frames 200] [--working-height 288]
     [--no-plate]  (model and time only, as stream_4k runs it: the node grows its own plate) [--kernels]
     MUSE_FUSE=off times the node's working-resolution maths uncompiled (default on a GPU: fused by Inductor).
Prints one JSON line per mode and a markdown row. The frame is the demo source's picture (a real photo
with the person), the plate its clean plate; the prior is the demo's exact mask blurred to a 256 px
model-like probability (the bundled model's own cost is in bench_bundled.py). On CPU it times with
perf_counter (no CUDA graph) and also reports the thread CPU time (`time.thread_time`, what the call
itself used: less sensitive to a shared machine's load than the wall time), with OpenCV's and torch's
thread pools set as the CPU pipeline sets them (`cpu_threads()`: one thread a stage on two cores).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muse.graph.payloads import Frame, Mask  # noqa: E402
from muse.graph.testing import build_node, make_context  # noqa: E402
from muse.nodes.capture.demo import Demo  # noqa: E402
from muse.nodes.segment.fused import FusedSegment  # noqa: E402


def inputs(width: int, height: int, device: torch.device) -> tuple[Frame, Mask, Frame]:
    demo = build_node(Demo, {"width": width, "height": height, "fps": 0})
    demo.open(make_context("demo", device, resolution=(width, height)))
    out = demo.process()
    alpha = out["mask"].alpha.float()[None, None]
    prior = F.interpolate(alpha, size=(256, 256), mode="area")
    prior = F.avg_pool2d(prior, 9, stride=1, padding=4)[0, 0]
    return out["frame"], Mask(prior.to(torch.float16 if device.type == "cuda" else torch.float32)), out["clean_plate"]


def graph_kernels(graph: "torch.cuda.CUDAGraph") -> int:
    """Kernels launched by one replay of `graph`, counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        graph.replay()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA" and "memcpy" not in e.name.lower()
               and "memset" not in e.name.lower())


def stats(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {"p50_ms": round(statistics.median(ms), 3), "p90_ms": round(ms[int(0.9 * (len(ms) - 1))], 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--width", type=int, default=3840)
    ap.add_argument("--height", type=int, default=2160)
    ap.add_argument("--frames", type=int, default=200)
    ap.add_argument("--working-height", type=int, default=288)
    ap.add_argument("--no-plate", action="store_true", help="no recorded plate (model + time; the node learns its own)")
    ap.add_argument("--kernels", action="store_true", help="count the kernels of the recorded frame (CUDA profiler)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    dev = torch.device(args.device)
    if dev.type == "cpu":  # the thread pools as the CPU pipeline sets them (muse/graph/cpu_pipeline.py)
        import cv2

        from muse.nodes.cpu import cpu_threads

        cv2.setNumThreads(cpu_threads())
        torch.set_num_threads(cpu_threads())
    ctx = make_context("fused", dev, resolution=(args.width, args.height))
    node = build_node(FusedSegment, {"working_height": args.working_height}, "fused")
    node.open(ctx)
    frame, prior, plate = inputs(args.width, args.height, dev)
    if args.no_plate:
        plate = None
    cuda = dev.type == "cuda"
    stream = ctx.stream if cuda else None

    def step() -> dict:
        node.frame_variant()  # as the runtime calls it before each frame: fused once the compiled code is ready
        return node.process(frame=frame, prior=prior, plate=plate)

    rows = []
    # eager; the first call includes compiling the node's fused maths on a GPU (MUSE_FUSE, cached on disk)
    t0 = time.perf_counter()
    if cuda:
        with torch.cuda.stream(stream):
            step()
        stream.synchronize()  # bench only
    else:
        step()
    first_call_s = round(time.perf_counter() - t0, 2)
    # the fused maths compile in the background (the node runs unfused meanwhile): wait for them here
    compiled_in = node._chain.wait(900) and node._chain.seconds
    step()  # the first fused call
    for _ in range(5):
        if cuda:
            with torch.cuda.stream(stream):
                step()
        else:
            step()
    ms, cpu_ms = [], []
    for _ in range(args.frames):
        if cuda:
            with torch.cuda.stream(stream):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                step()
                b.record()
            b.synchronize()  # bench only
            ms.append(a.elapsed_time(b))
        else:
            t, c = time.perf_counter(), time.thread_time()
            step()
            ms.append((time.perf_counter() - t) * 1e3)
            cpu_ms.append((time.thread_time() - c) * 1e3)
    fused = bool(node._fused)
    rows.append({"mode": "eager", **stats(ms), "first_call_s": first_call_s, "fused": fused,
                 "compile_s": round(compiled_in, 1) if compiled_in else None})
    if cpu_ms:
        rows[-1]["thread_cpu_p50_ms"] = round(statistics.median(cpu_ms), 3)

    if cuda:
        try:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.stream(stream):
                for _ in range(3):
                    step()
            stream.synchronize()
            with torch.cuda.graph(graph, stream=stream):
                out = step()
            ms = []
            for _ in range(args.frames):
                with torch.cuda.stream(stream):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    graph.replay()
                    b.record()
                b.synchronize()
                ms.append(a.elapsed_time(b))
            kernels = graph_kernels(graph) if args.kernels else None
            rows.append({"mode": "cuda_graph", **stats(ms), "mask_mean": float(out["mask"].alpha.float().mean()),
                         "fused": fused, "kernels": kernels})
        except Exception as exc:  # report, do not hide: a failed capture breaks the node contract
            rows.append({"mode": "cuda_graph", "error": f"{type(exc).__name__}: {exc}"})

    name = torch.cuda.get_device_name(dev) if cuda else "cpu"
    for r in rows:
        print(json.dumps({"bench": "segment.fused", "device": name, "size": [args.width, args.height],
                          "working_height": args.working_height, "plate": not args.no_plate, **r}))
    for r in rows:
        if "p50_ms" in r:
            print(f"| segment.fused {args.width}x{args.height} (work {args.working_height}p) | {r['mode']} | "
                  f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {name} |")


if __name__ == "__main__":
    main()
