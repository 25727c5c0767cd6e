"""Where a frame's GPU time goes, node by node: kernels per frame and their summed GPU time (CUDA profiler).

Runs the graph eagerly (capture off, so each kernel can be attributed to the node that launched it),
profiles `--frames` steady frames and prints, per node, kernels per frame, summed kernel ms per frame
and its costliest kernels. The sum is what a captured frame costs at best when nothing overlaps;
the kernel count times ~2 us is the launch floor inside a CUDA graph.

    python bench/profile_nodes.py graphs/stream_4k.yaml --frames 20 --json out.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from muse.graph.registry import load_registry  # noqa: E402
from muse.graph.runtime import GraphRunner  # noqa: E402
from muse.graph.validate import validate_text  # noqa: E402

WARM = 40  # frames before the profiled ones (models loaded, variants recorded)


def _kernels(evt: Any) -> list[Any]:
    out = list(getattr(evt, "kernels", []) or [])
    for child in evt.cpu_children:
        out.extend(_kernels(child))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("graph")
    ap.add_argument("--frames", type=int, default=20)
    ap.add_argument("--size", default="3840x2160")
    ap.add_argument("--top", type=int, default=6)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--set", action="append", default=[], help="NODE.PARAM=VALUE (YAML value)")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    spec = yaml.safe_load(Path(a.graph).read_text())
    spec["settings"].update(device=a.device, resolution=[w, h], capture="off")
    total_frames = WARM + a.frames + 5
    for name, d in spec["nodes"].items():
        if d["type"].startswith("capture."):
            spec["nodes"][name] = {"type": "capture.demo", "params": {"width": w, "height": h, "fps": 0, "frames": total_frames}}
        if d["type"].startswith("output."):
            spec["nodes"][name] = {"type": "output.null", "inputs": d.get("inputs", {})}
    sources = {n for n, d in spec["nodes"].items() if d["type"] == "capture.demo"}

    def queued(value: Any) -> Any:
        """A link from a source, as a queue: every frame runs (with `latest`, an unpaced demo's frames are dropped
        while the first ones run, fewer frames than the profiler's schedule ran and it never started)."""
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if names and all(isinstance(v, str) for v in names) and any(v.split(".")[0] in sources for v in names):
            return {"from": value, "queue": 8}
        return value

    for d in spec["nodes"].values():
        d["inputs"] = {port: queued(v) for port, v in (d.get("inputs") or {}).items()}
    for item in a.set:
        key, value = item.split("=", 1)
        node, param = key.split(".", 1)
        spec["nodes"][node].setdefault("params", {})[param] = yaml.safe_load(value)
    # base_dir: the graph's includes (include/segment_hybrid.yaml) resolve next to it
    runner = GraphRunner(validate_text(yaml.safe_dump(spec), a.graph, load_registry(), base_dir=Path(a.graph).resolve().parent))
    original = runner._run_node
    state: dict[str, Any] = {"first": None, "frame": 0, "prof": None, "done": False}
    per_node: dict[str, list[Any]] = collections.defaultdict(list)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if a.device == "cuda" else [])

    def wrapped(slot, values, events):  # type: ignore[no-untyped-def]
        # The profiler is started and stopped on the thread that runs the nodes (the executor's): torch's
        # profiler records the thread it was started on (started from the main thread, it saw no node).
        if state["first"] is None and not slot.rn.cls.is_source():
            state["first"] = slot.name
        if slot.name == state["first"]:
            state["frame"] += 1
            if state["frame"] == WARM + 1:
                state["prof"] = torch.profiler.profile(activities=acts)
                state["prof"].__enter__()
            elif state["frame"] == WARM + a.frames + 1 and state["prof"] is not None and not state["done"]:
                if a.device == "cuda":
                    torch.cuda.synchronize()
                state["prof"].__exit__(None, None, None)
                state["done"] = True
        if state["prof"] is None or state["done"]:
            return original(slot, values, events)
        with torch.profiler.record_function(f"node::{slot.name}"):
            return original(slot, values, events)

    runner._run_node = wrapped  # type: ignore[method-assign]
    runner.run()
    if a.device == "cuda":
        torch.cuda.synchronize()
    if not state["done"]:
        raise SystemExit(f"profile_nodes: only {state['frame']} frames ran (needs {WARM + a.frames + 1})")
    for evt in state["prof"].events():
        if evt.name.startswith("node::"):
            per_node[evt.name[6:]].append(_kernels(evt))
    report: dict[str, Any] = {"graph": a.graph, "size": a.size, "device": torch.cuda.get_device_name(0) if a.device == "cuda" else "cpu", "frames": a.frames, "nodes": {}}
    print(f"| node | kernels/frame | kernel ms/frame | costliest kernels (us/frame) |\n|---|---|---|---|")
    tot_k = tot_ms = 0.0
    for name, frames in per_node.items():
        n = len(frames)
        ks = [k for f in frames for k in f]
        count = len(ks) / max(n, 1)
        ms = sum(k.duration for k in ks) / 1000.0 / max(n, 1)
        by = collections.Counter()
        cnt = collections.Counter()
        for k in ks:
            by[k.name] += k.duration / max(n, 1)
            cnt[k.name] += 1 / max(n, 1)
        top = [{"name": k[:90], "us": round(v, 1), "count": round(cnt[k], 1)} for k, v in by.most_common(a.top)]
        report["nodes"][name] = {"kernels": round(count, 1), "ms": round(ms, 3), "top": top}
        tot_k += count
        tot_ms += ms
        print(f"| {name} | {count:.0f} | {ms:.3f} | " + "; ".join(f"{t['name'][:50]} x{t['count']:.0f} {t['us']:.0f}" for t in top[:3]) + " |")
    print(f"| **total** | **{tot_k:.0f}** | **{tot_ms:.3f}** | |")
    report["total"] = {"kernels": round(tot_k, 1), "ms": round(tot_ms, 3)}
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
