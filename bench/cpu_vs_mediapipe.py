"""MUSE's CPU path against MediaPipe on the same frames, in one run (issue 13).

    python bench/cpu_vs_mediapipe.py [--frames 150] [--mediapipe-path DIR]

Both sides get the same pre-rendered 1280x720 frames (capture.demo: a person swaying
in front of a photo), so capture is not timed on either side.

- MUSE: the nodes of graphs/webcam_720p.yaml between camera and output (the hybrid segmentation
  sub-graph's bundled selfie branch, segment.refine, composite.over with the blurred room),
  opened from the graph file on the CPU, timed two ways: one thread, frame after frame;
  and two frames in flight (segment+refine of frame N+1 beside the composite of frame N, handed over
  at a rendezvous: how muse/graph/cpu_pipeline.py ran a chain until session 7; it now schedules node by
  node, which on this chain's emulated costs runs faster still, bench/pipeline_emulation).
- MediaPipe: its selfie segmenter (legacy solution, landscape model) and an OpenCV
  composite: the room shrunk 8x, Gaussian-blurred, enlarged, and a soft alpha blend.

mediapipe is a bench-only extra (0.10.14; `pip install mediapipe==0.10.14`, or
`pip install --no-deps --target DIR mediapipe==0.10.14 attrs absl-py` and pass
--mediapipe-path DIR). Prints both, the ratio and the load average (JSON + markdown).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import threading
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def demo_frames(n: int) -> list:
    from muse.graph.testing import build_node, make_context
    from muse.nodes.capture.demo import Demo

    src = build_node(Demo, {"width": 1280, "height": 720, "fps": 0})
    src.open(make_context("camera"))
    frames = [src.process()["frame"] for _ in range(n)]
    src.close()
    return frames


def muse_nodes(graph_file: Path) -> list:
    from muse.graph.registry import load_registry
    from muse.graph.testing import make_context
    from muse.graph.validate import load_graph

    g = load_graph(str(graph_file), load_registry())
    nodes = []
    # the segmenter is the hybrid sub-graph's bundled branch (the one live without a Studio profile or
    # MODNet checkpoint; its switch only passes the mask on) or, in older graphs, a node named `segment`
    segment = "segment" if "segment" in g.nodes else "segment/bundled"
    for name in (segment, "matte", "composite"):
        rn = g.nodes[name]
        node = rn.cls(name, rn.params)
        node.open(make_context(name, "cpu"))
        nodes.append(node)
    return nodes


def muse_frame(nodes: list, frame) -> object:
    seg, matte, comp = nodes
    mask = seg.process(frame=frame)["mask"]
    refined = matte.process(frame=frame, mask=mask)["refined"]
    return comp.process(frame=frame, mask=refined)["out"]


def time_sequential(fn, frames: list, warmup: int = 10, cpu: list | None = None) -> list[float]:
    """Wall ms per frame; `cpu` gets the process's CPU ms per frame over the same loop (all threads:
    MediaPipe runs its graph and TFLite on worker threads of its own)."""
    for f in frames[:warmup]:
        fn(f)
    times = []
    c0 = time.process_time()
    for f in frames:
        t0 = time.perf_counter()
        fn(f)
        times.append((time.perf_counter() - t0) * 1000.0)
    if cpu is not None:
        cpu.append((time.process_time() - c0) * 1000.0 / max(1, len(frames)))
    return times


def time_two_in_flight(nodes: list, frames: list) -> float:
    """Frames per second with the head (segment, refine) and the tail (composite) on two threads,
    handing over at a rendezvous: at most two frames in flight (muse/graph/cpu_pipeline.py's split until session 7)."""
    seg, matte, comp = nodes
    slot: list = []
    cond = threading.Condition()
    done = []

    def tail() -> None:
        while True:
            with cond:
                while not slot:
                    cond.wait()
                job = slot[0]
            if job is None:
                return
            frame, refined = job
            comp.process(frame=frame, mask=refined)
            with cond:
                slot.clear()
                done.append(time.perf_counter())
                cond.notify_all()

    worker = threading.Thread(target=tail, daemon=True)
    worker.start()
    t0 = time.perf_counter()
    for frame in frames:
        refined = matte.process(frame=frame, mask=seg.process(frame=frame)["mask"])["refined"]
        with cond:
            while slot:
                cond.wait()
            slot.append((frame, refined))
            cond.notify_all()
    with cond:
        while slot:
            cond.wait()
        slot.append(None)
        cond.notify_all()
    worker.join()
    return len(frames) / (time.perf_counter() - t0)


def load_mediapipe(path: str | None):
    if path:
        sys.path.insert(0, path)
    try:
        import matplotlib  # noqa: F401  (mediapipe's drawing utils import it; the segmenter does not use it)
    except ImportError:
        for name in ("matplotlib", "matplotlib.pyplot"):
            sys.modules.setdefault(name, types.ModuleType(name))
    import mediapipe as mp

    return mp


class MediaPipeSelfie:
    """MediaPipe's selfie segmenter + a usual OpenCV composite over a blurred room."""

    def __init__(self, mp) -> None:
        self.seg = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=1)

    def __call__(self, frame) -> np.ndarray:
        rgb = frame.image.numpy()
        mask = self.seg.process(rgb).segmentation_mask  # (H, W) float32 at frame size
        h, w = rgb.shape[:2]
        small = cv2.resize(rgb, (w // 8, h // 8), interpolation=cv2.INTER_AREA)
        room = cv2.resize(cv2.GaussianBlur(small, (0, 0), 2.7), (w, h), interpolation=cv2.INTER_LINEAR)
        return cv2.blendLinear(rgb, room, mask, 1.0 - mask)


def summary(times: list[float]) -> dict:
    q = statistics.quantiles(times, n=20)
    med = statistics.median(times)
    return {"p50_ms": round(med, 2), "p95_ms": round(q[18], 2), "fps": round(1000.0 / med, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=150)
    ap.add_argument("--graph", default=str(ROOT / "graphs" / "webcam_720p.yaml"))
    ap.add_argument("--mediapipe-path", default=os.environ.get("MUSE_MEDIAPIPE_PATH"),
                    help="folder holding a --target install of mediapipe (bench-only extra)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch/OpenCV threads for MUSE; default: what `muse run` sets on the CPU path (half the cores)")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args()
    from muse.nodes.cpu import cpu_threads

    threads = args.threads or cpu_threads()
    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)

    load_before = os.getloadavg()
    frames = demo_frames(args.frames)
    nodes = muse_nodes(Path(args.graph))
    try:
        mp = load_mediapipe(args.mediapipe_path)
        mediapipe = MediaPipeSelfie(mp)
    except Exception as exc:
        print(f"mediapipe not available ({type(exc).__name__}: {exc}); install the bench-only extra "
              "(see this file's docstring) to compare", file=sys.stderr)
        mediapipe = None

    # interleaved rounds: both sides see the same share of whatever else the machine is doing
    muse_t: list[float] = []
    mp_t: list[float] = []
    muse_cpu: list[float] = []
    mp_cpu: list[float] = []
    chunk = max(10, args.frames // 5)
    for i in range(0, args.frames, chunk):
        part = frames[i : i + chunk]
        muse_t += time_sequential(lambda f: muse_frame(nodes, f), part, warmup=3 if i else 10, cpu=muse_cpu)
        if mediapipe is not None:
            mp_t += time_sequential(mediapipe, part, warmup=3 if i else 10, cpu=mp_cpu)
    pipelined_fps = time_two_in_flight(nodes, frames)
    load_after = os.getloadavg()

    result = {
        "bench": "cpu_vs_mediapipe",
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "host": platform.node(),
        "cores": os.cpu_count(),
        "frames": args.frames,
        "size": [1280, 720],
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
        "muse_one_thread": {**summary(muse_t), "cpu_ms_per_frame": round(statistics.median(muse_cpu), 2)},
        "muse_two_in_flight_fps": round(pipelined_fps, 1),
    }
    if mp_t:
        result["mediapipe_selfie_opencv"] = {**summary(mp_t), "cpu_ms_per_frame": round(statistics.median(mp_cpu), 2)}
        result["ratio_muse_over_mediapipe_fps"] = round(statistics.median(mp_t) / statistics.median(muse_t), 2)
        result["ratio_muse_two_in_flight_over_mediapipe_fps"] = round(pipelined_fps / result["mediapipe_selfie_opencv"]["fps"], 2)
    print(json.dumps(result))
    print()
    print("| pipeline (720p, same frames) | p50 ms | p95 ms | fps | process CPU ms/frame |")
    print("|---|---|---|---|---|")
    m = result["muse_one_thread"]
    print(f"| MUSE webcam_720p nodes, one thread | {m['p50_ms']} | {m['p95_ms']} | {m['fps']} | {m['cpu_ms_per_frame']} |")
    print(f"| MUSE webcam_720p nodes, two frames in flight | - | - | {result['muse_two_in_flight_fps']} | |")
    if mp_t:
        m = result["mediapipe_selfie_opencv"]
        print(f"| MediaPipe selfie + OpenCV composite | {m['p50_ms']} | {m['p95_ms']} | {m['fps']} | {m['cpu_ms_per_frame']} |")
        print(f"ratio MUSE/MediaPipe (fps): one thread {result['ratio_muse_over_mediapipe_fps']}, "
              f"two in flight {result['ratio_muse_two_in_flight_over_mediapipe_fps']}")
    print(f"load average before {result['loadavg_before']}, after {result['loadavg_after']} ({os.cpu_count()} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    for n in nodes:
        n.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
