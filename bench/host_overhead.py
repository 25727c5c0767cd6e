"""The executor's own host work a captured frame, measured on the CPU (issue 12: host CPU <= 1.5 ms a frame).

On the GPU a replayed frame costs the executor thread its bookkeeping (sources in, variant choice, events, the
launch, outputs published, sinks fed, timing) and one graph launch; the launch itself is cheap (`muse bench`'s
"frame program" line: 0.2 ms of 1.5 ms on the H200). This runs a graph with the frame program emulated and its
replay made a no-op, so what is left is that bookkeeping, in the same Python code the GPU path runs, and
profiles the executor thread with cProfile after a warm-up.

    python bench/host_overhead.py [graphs/stream_4k.yaml] [--frames 600] [--top 40] [--set demo.width=320 ...]

The figures are this machine's CPU, not the H200 host's; compare before/after on one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from typing import Any


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("graph", nargs="?", default="graphs/stream_4k.yaml")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--warm", type=int, default=100, help="frames before the profile starts")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sort", default="tottime", choices=["tottime", "cumulative"])
    ap.add_argument("--set", action="append", default=[], help="node.param=value (default: a 320x180 demo source)")
    a = ap.parse_args()

    from muse.cli import _parse_sets, _registry
    from muse.graph import capture
    from muse.graph.runtime import GraphRunner
    from muse.graph.validate import load_graph

    sets = a.set or ["demo.width=320", "demo.height=180"]
    graph = load_graph(a.graph, _registry(argparse.Namespace()), _parse_sets(sets))
    graph.settings = graph.settings.model_copy(update={"capture": "emulate"})

    replays = [0]

    def replay(self: Any) -> None:  # the GPU runs the frame; the host only launches it
        replays[0] += 1

    capture.EmulatedFrameGraph.replay = replay  # type: ignore[method-assign]
    profiles: list[tuple[float, cProfile.Profile]] = []
    cpu: list[float] = []
    cls = next(c for c in GraphRunner.__mro__ if "_run_frame" in c.__dict__)
    original = cls.__dict__["_run_frame"]
    seen = [0]

    def run_frame(self: Any, items: Any) -> None:
        seen[0] += 1
        if seen[0] <= a.warm:
            original(self, items)
            return
        prof = cProfile.Profile()
        c0 = time.thread_time()
        prof.enable()
        try:
            original(self, items)
        finally:
            prof.disable()
            cpu.append(time.thread_time() - c0)
            profiles.append((cpu[-1], prof))

    setattr(cls, "_run_frame", run_frame)
    runner = GraphRunner(graph, device="cpu", frames=a.frames + a.warm, unpaced=True)
    runner.start()
    runner.wait()
    runner.stop()
    cpu.sort()
    if not cpu:
        raise SystemExit("no frame was measured (fewer frames than --warm?)")
    print(f"{len(cpu)} frames profiled, {replays[0]} replays; executor thread CPU a frame (cProfile on, so inflated): "
          f"p50 {cpu[len(cpu) // 2] * 1e3:.3f} ms, mean {sum(cpu) / len(cpu) * 1e3:.3f} ms")
    # steady frames only: a recording or an eager warm-up frame costs 10-100x a replayed one and would fill the table
    limit = cpu[len(cpu) // 2] * 3
    steady = [p for c, p in profiles if c <= limit]
    print(f"{len(steady)} steady frames (thread CPU <= 3x the median) in the table below")
    out = io.StringIO()
    stats = pstats.Stats(steady[0], stream=out)
    for p in steady[1:]:
        stats.add(p)
    stats.sort_stats(a.sort).print_stats(a.top)
    print(out.getvalue())


if __name__ == "__main__":
    main()
