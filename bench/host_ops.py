"""What the host pays for each CUDA call the executor makes a frame (issue 12: host CPU <= 1.5 ms a 4K frame).

Thread CPU a call, over many calls, for: a new event recorded and freed against one event recorded again; a stream
switch; a wait on an event; a one-element fill; a 4K frame's allocation and copy; `record_stream`; `query`; and the
launch of a frame-like CUDA graph (two branches of small kernels, ~2,500 nodes, ~4 ms of GPU) when the GPU is idle,
when the same graph is still running (the executor keeps frames in flight), and alternating two instantiations of
it (a second one is free to start while the first still runs).

    python bench/host_ops.py [--calls 5000] [--nodes 2500] [--json F]

Needs a CUDA GPU; CuPy for the second instantiation (left out without it).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable

import torch


def per_call_us(fn: Callable[[], Any], calls: int) -> float:
    for _ in range(min(200, calls)):
        fn()
    c0 = time.thread_time_ns()
    for _ in range(calls):
        fn()
    return (time.thread_time_ns() - c0) / calls / 1000.0


def _fill_on(stream: torch.cuda.Stream, t: torch.Tensor) -> None:
    with torch.cuda.stream(stream):
        t.fill_(1.5)


def _copy_on(stream: torch.cuda.Stream, dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.cuda.stream(stream):
        dst.copy_(src, non_blocking=True)


def frame_like_graph(nodes: int, gpu_ms: float, stream: torch.cuda.Stream) -> tuple[torch.cuda.CUDAGraph, Any]:
    """Two branches of `nodes // 2` tiny kernels each, forked and joined by events, plus a spin of ~gpu_ms."""
    a = torch.zeros(256, device="cuda")
    b = torch.zeros(256, device="cuda")
    side = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph(keep_graph=True)
    cycles = int(gpu_ms * 1e-3 * torch.cuda.get_device_properties(0).clock_rate * 1e3)
    with torch.cuda.graph(g, stream=stream):
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(nodes // 2):
                b.add_(1.0)
        torch.cuda._sleep(cycles)
        for _ in range(nodes // 2):
            a.add_(1.0)
        torch.cuda.current_stream().wait_stream(side)
    g.instantiate()
    return g, (a, b)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--nodes", type=int, default=2500)
    ap.add_argument("--gpu-ms", type=float, default=4.0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("host_ops.py needs a CUDA GPU")
    n = args.calls
    s = torch.cuda.Stream()
    other = torch.cuda.Stream()
    res: dict[str, float] = {}

    def new_event() -> None:
        ev = torch.cuda.Event(blocking=True)
        ev.record(s)

    def new_timing_event() -> None:
        ev = torch.cuda.Event(enable_timing=True, blocking=True)
        ev.record(s)

    kept = torch.cuda.Event(blocking=True)
    kept_t = torch.cuda.Event(enable_timing=True, blocking=True)
    res["event: new, recorded, freed"] = per_call_us(new_event, n)
    res["event (timing): new, recorded, freed"] = per_call_us(new_timing_event, n)
    res["event: recorded again"] = per_call_us(lambda: kept.record(s), n)
    res["event (timing): recorded again"] = per_call_us(lambda: kept_t.record(s), n)
    res["stream.wait_event"] = per_call_us(lambda: other.wait_event(kept), n)
    res["event.query (done)"] = per_call_us(kept.query, n)

    def switch() -> None:
        with torch.cuda.stream(s):
            pass

    res["with torch.cuda.stream(s)"] = per_call_us(switch, n)
    clock = torch.zeros((), device="cuda")
    res["clock.fill_(t)"] = per_call_us(lambda: clock.fill_(1.5), n)
    frame = torch.zeros((2160, 3840, 3), dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(frame)
    res["torch.empty 4K frame (cached), freed"] = per_call_us(lambda: torch.empty((2160, 3840, 3), dtype=torch.uint8, device="cuda"), n)
    res["4K frame clone"] = per_call_us(frame.clone, n // 5)
    res["4K frame copy_ into a buffer"] = per_call_us(lambda: dst.copy_(frame, non_blocking=True), n // 5)
    res["tensor.record_stream"] = per_call_us(lambda: frame.record_stream(s), n)
    torch.cuda.synchronize()

    g, _keep = frame_like_graph(args.nodes, args.gpu_ms, s)
    launches = max(50, n // 50)

    def idle_replay() -> float:
        total = 0
        for _ in range(launches):
            torch.cuda.synchronize()
            c0 = time.thread_time_ns()
            with torch.cuda.stream(s):
                g.replay()
            total += time.thread_time_ns() - c0
        return total / launches / 1000.0

    def queued_replay(execs: list[Callable[[], None]], depth: int = 2) -> float:
        """Replays `depth` frames ahead of the GPU, as the executor does; an event bounds the queue."""
        total = 0
        pending: list[torch.cuda.Event] = []
        for i in range(launches):
            c0 = time.thread_time_ns()
            execs[i % len(execs)]()
            total += time.thread_time_ns() - c0
            ev = torch.cuda.Event(blocking=True)
            ev.record(s)
            pending.append(ev)
            while len(pending) > depth:
                pending.pop(0).synchronize()
        torch.cuda.synchronize()
        return total / launches / 1000.0

    def torch_replay() -> None:
        with torch.cuda.stream(s):
            g.replay()

    res[f"graph launch, {args.nodes} nodes, GPU idle"] = idle_replay()
    res[f"graph launch, {args.nodes} nodes, the same graph still running"] = queued_replay([torch_replay])
    # The same calls while two frames of the graph are queued on the GPU (the executor's steady state: it runs
    # up to `max_frames_in_flight` frames ahead), on the graph's stream and on another stream.
    def loaded(call: Callable[[], Any], reps: int = 20) -> float:
        total = 0
        for _ in range(launches):
            with torch.cuda.stream(s):
                g.replay()
                g.replay()
            c0 = time.thread_time_ns()
            for _ in range(reps):
                call()
            total += time.thread_time_ns() - c0
            torch.cuda.synchronize()
        return total / launches / reps / 1000.0

    res["loaded: event new+record on the busy stream"] = loaded(new_event)
    res["loaded: event new+record on another stream"] = loaded(lambda: torch.cuda.Event(blocking=True).record(other))
    res["loaded: event recorded again, busy stream"] = loaded(lambda: kept.record(s))
    res["loaded: clock.fill_ on another stream"] = loaded(lambda: _fill_on(other, clock))
    res["loaded: 4K copy_ on another stream"] = loaded(lambda: _copy_on(other, dst, frame), reps=5)
    res["loaded: graph launch (third frame queued)"] = loaded(torch_replay, reps=1)
    # Another thread's calls while this one replays frames as the executor does (the demo source and the sinks
    # make their calls on their own threads).
    def side_thread_cost(busy: bool, iters: int = 2000) -> float:
        import threading

        stop = threading.Event()

        def executor() -> None:
            pending: list[torch.cuda.Event] = []
            while not stop.is_set():
                with torch.cuda.stream(s):
                    g.replay()
                ev = torch.cuda.Event(blocking=True)
                ev.record(s)
                pending.append(ev)
                while len(pending) > 2:
                    pending.pop(0).synchronize()

        t = threading.Thread(target=executor, daemon=True)
        if busy:
            t.start()
            time.sleep(0.05)
        total = 0
        for _ in range(iters):
            c0 = time.thread_time_ns()
            _fill_on(other, clock)
            torch.cuda.Event(blocking=True).record(other)
            total += time.thread_time_ns() - c0
            time.sleep(0.0003)
        stop.set()
        if busy:
            t.join()
        torch.cuda.synchronize()
        return total / iters / 1000.0

    res["other thread: fill + event on its stream, executor idle"] = side_thread_cost(False)
    res["other thread: fill + event on its stream, executor replaying"] = side_thread_cost(True)
    try:
        import cupy

        second = cupy.cuda.runtime.graphInstantiate(g.raw_cuda_graph())

        def cupy_second() -> None:
            cupy.cuda.runtime.graphLaunch(second, s.cuda_stream)

        def cupy_first() -> None:
            cupy.cuda.runtime.graphLaunch(g.raw_cuda_graph_exec(), s.cuda_stream)

        res[f"graph launch, {args.nodes} nodes, one instantiation through CuPy, still running"] = queued_replay([cupy_first])
        res[f"graph launch, {args.nodes} nodes, two instantiations alternating"] = queued_replay([cupy_first, cupy_second])
        torch.cuda.synchronize()
        cupy.cuda.runtime.graphExecDestroy(second)
    except Exception as exc:  # no CuPy, or an API it lacks: the torch figures stand alone
        print(f"second instantiation not measured: {type(exc).__name__}: {exc}")
    torch.cuda.synchronize()
    width = max(len(k) for k in res)
    print(f"host CPU a call ({torch.cuda.get_device_name(0)}, torch {torch.__version__}):")
    for k, v in res.items():
        print(f"  {k:<{width}}  {v:8.2f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "us_per_call": res}, f, indent=1)


if __name__ == "__main__":
    main()
