"""Aten ops each node of a graph dispatches per frame (eager, CPU, torch backend): the proxy for
kernel launches that needs no GPU (FRAME_CAPTURE.md). Every op is about one kernel on CUDA.

    python bench/count_ops.py graphs/stream_4k.yaml --frames 8 --size 640x360

Every frame of the demo source is counted (its links become queues); the table gives each node's median
frame (tracking: the steady state), how many of those ops launch a kernel (no-op conversions and
`contiguous` of a contiguous tensor launch nothing), and its first frame (detectors, per-size constants).
On a GPU some work is a CuPy kernel that this count does not see: the landmark crops from the uint8 frame,
warp.apply's and composite's full-resolution passes, background.adaptive's plate update; here their torch
twins are counted instead.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
from pathlib import Path

import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# The GPU path's torch code is what a kernel count stands for: on a CPU device the nodes would otherwise run
# their OpenCV/ONNX Runtime implementations (the fused matte: 22 "ops" a frame instead of its torch work).
os.environ.setdefault("MUSE_CPU_PATH", "torch")

from muse.graph.registry import load_registry  # noqa: E402
from muse.graph.runtime import GraphRunner  # noqa: E402
from muse.graph.validate import validate_text  # noqa: E402

_SKIP = {"aten.detach.default", "aten.alias.default", "aten.view.default", "aten._unsafe_view.default",
         "aten.expand.default", "aten.permute.default", "aten.unsqueeze.default", "aten.squeeze.dim",
         "aten.slice.Tensor", "aten.select.int", "aten.t.default", "aten.as_strided.default", "aten.reshape.default",
         "aten.transpose.int", "aten.lift_fresh.default", "aten.split.Tensor", "aten.unbind.int"}


# Dispatched, but launch nothing: a conversion to the dtype/device a tensor already has (a real one also
# dispatches `_to_copy`, counted), `contiguous` of a contiguous tensor (a real one dispatches `clone`), views.
_NO_KERNEL = {"aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten.to.other", "aten.contiguous.default",
              "aten.flatten.using_ints", "aten.detach_.default", "aten.unflatten.int"}


class _Count(TorchDispatchMode):
    def __init__(self, full: int = 0) -> None:
        super().__init__()
        self.n = 0
        self.k = 0  # of which launch a kernel on the GPU (see _NO_KERNEL)
        self.ops: collections.Counter[str] = collections.Counter()
        self.full = full  # pixels of a whole frame: ops writing at least that many elements are listed apart
        self.full_ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if str(func) not in _SKIP:  # views launch nothing
            self.n += 1
            self.k += str(func) not in _NO_KERNEL
            self.ops[str(func)] += 1
        out = func(*args, **(kwargs or {}))
        if self.full and str(func) not in _SKIP:
            first = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(first, torch.Tensor) and first.numel() >= self.full:
                self.full_ops[f"{str(func).removeprefix('aten.')}:{first.dtype}".replace("torch.", "")] += 1
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("graph")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--top", type=int, default=0, help="also list each node's N most frequent ops (last frame)")
    a = ap.parse_args()
    w, h = (int(v) for v in a.size.split("x"))
    spec = yaml.safe_load(Path(a.graph).read_text())
    spec["settings"].update(device="cpu", resolution=[w, h], capture="off")
    sources = set()
    for name, d in spec["nodes"].items():
        if d["type"].startswith("capture."):  # every source (a camera, its demo stand-in) renders the demo
            spec["nodes"][name] = {"type": "capture.demo", "params": {"width": w, "height": h, "fps": 0, "frames": a.frames}}
            sources.add(name)

    def queued(value: object) -> object:
        """A link from a source, as a queue: every frame is counted (with `latest`, an unpaced demo's frames are
        dropped while the first ones run, so 2 of 6 frames were counted and the 'median' was the first frame's)."""
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        if names and all(isinstance(v, str) for v in names) and any(v.split(".")[0] in sources for v in names):
            return {"from": value, "queue": max(8, a.frames)}
        return value

    for d in spec["nodes"].values():
        d["inputs"] = {port: queued(v) for port, v in (d.get("inputs") or {}).items()}
    text, base, reg = yaml.safe_dump(spec), Path(a.graph).resolve().parent, load_registry()
    graph = validate_text(text, a.graph, reg, base_dir=base)
    torch_nodes = {n: {"backend": "torch"} for n, rn in graph.nodes.items()  # included nodes too (pose/bundled)
                   if rn.type in ("pose.hybrid", "face.landmarks", "pose.blazepose")}
    runner = GraphRunner(validate_text(text, a.graph, reg, torch_nodes, base_dir=base))
    counts: dict[str, list[int]] = collections.defaultdict(list)
    kernels: dict[str, list[int]] = collections.defaultdict(list)
    last_ops: dict[str, collections.Counter[str]] = {}
    last_full: dict[str, collections.Counter[str]] = {}
    original = runner._run_node

    def counted(slot, values, events):  # type: ignore[no-untyped-def]
        with _Count(w * h if a.top else 0) as c:
            out = original(slot, values, events)
        counts[slot.name].append(c.n)
        kernels[slot.name].append(c.k)
        last_ops[slot.name] = c.ops
        last_full[slot.name] = c.full_ops
        return out

    runner._run_node = counted  # type: ignore[method-assign]
    runner.run()
    total = total_k = 0
    print(f"| node | ops per frame (median of {len(next(iter(counts.values()), []))} frames) | of which launch a kernel | first frame |\n|---|---|---|---|")
    for name, ns in counts.items():
        med = sorted(ns)[len(ns) // 2]
        med_k = sorted(kernels[name])[len(ns) // 2]
        total, total_k = total + med, total_k + med_k
        print(f"| {name} | {med} | {med_k} | {ns[0]} |")
    print(f"| **total** | **{total}** | **{total_k}** | |")
    for name, ops in last_ops.items() if a.top else ():
        print(f"{name}: " + ", ".join(f"{op.removeprefix('aten.')} {n}" for op, n in ops.most_common(a.top)))
        if last_full.get(name):
            print(f"  {name}, whole-frame outputs: " + ", ".join(f"{op} {n}" for op, n in last_full[name].most_common()))


if __name__ == "__main__":
    main()
