"""Host time of one CUDA graph launch against the graph's size and shape (issue 12: the 4K frame's replay).

Graphs of N tiny kernels are recorded as one chain, as parallel branches (4 streams), and as a frame-like run of
nodes each forking two side streams; each also rewired into one chain (`muse.graph.linear.linearize`). Printed:
the host microseconds a `replay()` takes (median and mean over the timed replays) and the GPU time a replay.

    python bench/graph_launch.py [--kernels 1400] [--replays 400] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Callable

import torch

from muse.graph.linear import graph_shape, linearize


def _record(body: Callable[[], None], linear: bool) -> tuple[torch.cuda.CUDAGraph, dict]:
    side = torch.cuda.Stream()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    with torch.cuda.stream(side):
        g.capture_begin()
        try:
            body()
        finally:
            g.capture_end()  # even after a failure: a capture left open breaks every later case
    shape = graph_shape(g.raw_cuda_graph())
    if linear:
        linearize(g.raw_cuda_graph())
        shape["after"] = graph_shape(g.raw_cuda_graph())
    g.instantiate()
    return g, shape


def _time(g: torch.cuda.CUDAGraph, replays: int) -> dict:
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    host: list[float] = []
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    gpu: list[float] = []
    for i in range(replays):
        if i % 10 == 0:
            torch.cuda.synchronize()  # the launch queue never fills: the launch is timed, not a wait for room
            start.record()
        t = time.perf_counter()
        g.replay()
        host.append((time.perf_counter() - t) * 1e6)
        if i % 10 == 9:
            end.record()
            end.synchronize()
            gpu.append(start.elapsed_time(end) / 10 * 1e3)
    return {"host_us_median": round(statistics.median(host), 1), "host_us_mean": round(statistics.fmean(host), 1),
            "gpu_us": round(statistics.median(gpu), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernels", type=int, default=1400)
    ap.add_argument("--replays", type=int, default=400)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.kernels
    xs = [torch.zeros(4096, device="cuda") for _ in range(8)]
    streams = [torch.cuda.Stream() for _ in range(4)]

    def chain() -> None:
        for i in range(n):
            xs[0].add_(1.0)

    def chain_copies() -> None:  # a copy node every 20 kernels, as the frame's static outputs have
        for i in range(n):
            xs[0].add_(1.0)
            if i % 20 == 19:
                xs[1].copy_(xs[0])

    def branches() -> None:
        main = torch.cuda.current_stream()
        for k, s in enumerate(streams):
            s.wait_stream(main)
            with torch.cuda.stream(s):
                for _ in range(n // 4):
                    xs[k].add_(1.0)
        for s in streams:
            main.wait_stream(s)

    def frame_like() -> None:  # nodes of 24 kernels: 4 on the node's stream, then two side branches of 10
        main = torch.cuda.current_stream()
        for j in range(n // 24):
            for _ in range(4):
                xs[0].add_(1.0)
            for k in range(2):
                s = streams[k]
                s.wait_stream(main)
                with torch.cuda.stream(s):
                    for _ in range(10):
                        xs[1 + k].add_(1.0)
            for k in range(2):
                main.wait_stream(streams[k])

    w = torch.randn(64, 64, device="cuda")
    m = [torch.randn(64, 64, device="cuda") for _ in range(2)]
    torch.mm(m[0], w, out=m[1])  # cuBLAS makes its handle outside the capture (inside, creating it fails)

    def chain_gemms() -> None:  # a cuBLAS GEMM every 14 kernels (the models' 1x1 convolutions are GEMMs)
        for i in range(n):
            if i % 14 == 13:
                torch.mm(m[0], w, out=m[1])
            else:
                xs[0].add_(1.0)

    def chain_memsets() -> None:  # zeroed scratch every 20 kernels (torch records `zero_` as a kernel, H200)
        for i in range(n):
            xs[0].add_(1.0)
            if i % 20 == 19:
                xs[2].zero_()

    # (a graph replayed inside another's capture, a child graph node, is refused by torch: "Cannot prepare for
    # replay during capturing stage", H200 2026-12-03; not a case)

    rows = []
    for name, body in (("chain", chain), ("chain_copies", chain_copies), ("chain_gemms", chain_gemms),
                       ("chain_memsets", chain_memsets), ("branches4", branches),
                       ("frame_like", frame_like)):
        for linear in (False, True):
            try:
                g, shape = _record(body, linear)
            except Exception as exc:  # a case this torch or driver cannot record: said, and the next one runs
                print(json.dumps({"graph": name, "linearized": linear, "error": repr(exc)}), flush=True)
                continue
            row = {"graph": name, "linearized": linear, **shape, **_time(g, a.replays)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            g.reset()
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
