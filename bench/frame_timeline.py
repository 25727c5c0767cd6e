"""Where a replayed frame's GPU time goes on the timeline: busy, idle, and which kernels sit on each lane.

Reads the Chrome trace `muse bench` writes of its profiled phase (`MUSE_BENCH_TRACE=FILE` with
`--kernel-frames N`) and, for each graph launch (a frame), prints its span from first kernel start to last
kernel end, the time at least one kernel ran (busy) and the time nothing ran (idle: dependency waits and
launch latency between tiny kernels), how many kernels ran shorter than 3 us, the kernels outside the frame
that overlapped it (the source's render, the sink's copy), and the costliest kernel names on the frame; with the
node markers the trace carries (`muse.graph.markers`, on in the traced run) also when each node began and ended.

    MUSE_BENCH_TRACE=trace.json muse bench graphs/stream_4k.yaml --device cuda --kernel-frames 6 ...
    python bench/frame_timeline.py trace.json [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import statistics
from pathlib import Path
from typing import Any


_MARK = re.compile(r"^muse_mark_(.+)_(begin|end)$")


def _load(path: Path) -> list[dict[str, Any]]:
    raw = gzip.open(path, "rt").read() if path.suffix == ".gz" else path.read_text()
    data = json.loads(raw)
    return data["traceEvents"] if isinstance(data, dict) else data


def _union(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for s, e in sorted(intervals):
        if e <= end:
            continue
        total += e - max(s, end)
        end = e
    return total


def _node_windows(ks: list[dict[str, Any]], start: float) -> dict[str, dict[str, float]]:
    """Each marked node's begin (its begin marker's start), end (its end marker's end) and lane, in us from the
    frame's start (`muse.graph.markers`: only in runs with markers on)."""
    out: dict[str, dict[str, float]] = {}
    for k in ks:
        m = _MARK.match(k["name"])
        if m is None:
            continue
        node, edge = m.group(1), m.group(2)
        w = out.setdefault(node, {})
        if edge == "begin":
            w["begin"] = k["ts"] - start
            w["lane"] = k.get("args", {}).get("stream", k.get("tid"))
        else:
            w["end"] = k["ts"] + k["dur"] - start
    return {n: w for n, w in out.items() if "begin" in w and "end" in w}


def analyse(events: list[dict[str, Any]]) -> dict[str, Any]:
    launches = {e["args"].get("correlation"): e for e in events
                if e.get("ph") == "X" and e.get("name") == "cudaGraphLaunch" and "args" in e}
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    by_launch: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
    others: list[dict[str, Any]] = []
    for k in kernels:
        corr = k.get("args", {}).get("correlation")
        (by_launch[corr] if corr in launches else others).append(k)
    frames = []
    names: dict[str, float] = collections.Counter()
    for corr, ks in sorted(by_launch.items(), key=lambda kv: min(k["ts"] for k in kv[1])):
        start = min(k["ts"] for k in ks)
        end = max(k["ts"] + k["dur"] for k in ks)
        busy = _union([(k["ts"], k["ts"] + k["dur"]) for k in ks])
        lanes: dict[Any, float] = collections.Counter()
        for k in ks:
            lanes[k.get("args", {}).get("stream", k.get("tid"))] += k["dur"]
            names[k["name"][:110]] += k["dur"]
        overlap = [o for o in others if o["ts"] < end and o["ts"] + o["dur"] > start]
        windows = _node_windows(ks, start)
        frames.append({
            "span_us": round(end - start, 1), "busy_us": round(busy, 1), "idle_us": round(end - start - busy, 1),
            "kernel_sum_us": round(sum(k["dur"] for k in ks), 1), "kernels": len(ks),
            "short_kernels": sum(1 for k in ks if k["dur"] < 3.0),
            "lanes_us": {str(s): round(v, 1) for s, v in sorted(lanes.items(), key=lambda kv: -kv[1])[:6]},
            "outside_overlapping": len(overlap), "outside_overlapping_us": round(sum(o["dur"] for o in overlap), 1),
            "nodes": windows,
        })
    n = max(len(frames), 1)
    outside: dict[str, float] = collections.Counter()
    for o in others:
        outside[o["name"][:110]] += o["dur"]
    # each marked node's median window over the frames that have it (the longest variant's frames dominate)
    per_node: dict[str, dict[str, list[float]]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for f in frames:
        for node, w in f["nodes"].items():
            for key in ("begin", "end"):
                per_node[node][key].append(w[key])
            per_node[node]["lane"].append(w["lane"])
    nodes = {n: {"begin_us": round(statistics.median(v["begin"]), 1), "end_us": round(statistics.median(v["end"]), 1),
                 "lane": collections.Counter(v["lane"]).most_common(1)[0][0], "frames": len(v["begin"])}
             for n, v in per_node.items()}
    return {
        "nodes": dict(sorted(nodes.items(), key=lambda kv: kv[1]["begin_us"])),
        "frames": frames,
        "top_kernels_us_per_frame": {k: round(v / n, 1) for k, v in names.most_common(25)},
        "outside_frames_us_per_frame": {k: round(v / n, 1) for k, v in outside.most_common(12)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("trace", type=Path)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    report = analyse(_load(a.trace))
    frames = report["frames"]
    if not frames:
        raise SystemExit(f"{a.trace}: no graph launches with kernels in this trace (profiled phase captured?)")
    print("| frame | span us | busy us | idle us | kernel sum us | kernels | < 3 us | lanes (us) | outside kernels overlapping (us) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, f in enumerate(frames):
        lanes = ", ".join(f"{s}: {v:.0f}" for s, v in f["lanes_us"].items())
        print(f"| {i} | {f['span_us']:.0f} | {f['busy_us']:.0f} | {f['idle_us']:.0f} | {f['kernel_sum_us']:.0f} | {f['kernels']} | "
              f"{f['short_kernels']} | {lanes} | {f['outside_overlapping']} ({f['outside_overlapping_us']:.0f}) |")
    if report["nodes"]:
        print("\n| node (markers) | begins us | ends us | lane | frames |\n|---|---|---|---|---|")
        for n, w in report["nodes"].items():
            print(f"| {n} | {w['begin_us']:.0f} | {w['end_us']:.0f} | {w['lane']} | {w['frames']} |")
    print("\nframe kernels, us a frame:")
    for k, v in report["top_kernels_us_per_frame"].items():
        print(f"  {v:8.1f}  {k}")
    print("\nkernels outside the frames (source, sinks, bench), us a frame:")
    for k, v in report["outside_frames_us_per_frame"].items():
        print(f"  {v:8.1f}  {k}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
