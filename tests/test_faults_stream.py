"""Fault injection on the whole stream graph (graphs/stream_4k.yaml on the demo source, CPU, small
frames): every node made to raise, return NaN, run out of memory, stall past its budget or die,
and the output keeps running (issue 19's "done means"). The counts are what `--stats` writes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from muse.graph.registry import load_registry
from muse.graph.runtime import GraphRunner
from muse.graph.validate import validate_text
from muse.testing.faults import Fault
from tests.stream_graph import GRAPHS, TORCH_NODES, stream_spec

REPO = Path(__file__).resolve().parents[1]
SOURCE, OUTPUT = "demo", "virtualcam"
# What runs of stream_4k on a machine with no student, MODNet or ViTPose: the switches and the bundled branches.
UINT8_OUT = ("camera", "composite")  # nodes whose outputs are uint8 frames
MIDDLE = ["camera", "segment/bundled", "segment/switch", "matte", "pose/bundled", "pose/switch", "face", "steady",
          "face_shape", "body_shape", "room", "reshape", "composite"]


def stream_graph(capture: str, frames: int, on_error: str, budget_ms: float, device: str = "cpu",
                 size: tuple[int, int] = (128, 72)) -> tuple[str, list[str]]:
    """stream_4k.yaml on the demo source (lossless links) into output.null; returns the text and its processing nodes."""
    spec = stream_spec(size[0], size[1], frames, device=device, capture=capture)
    spec["settings"].update(on_error=on_error, budget_ms=budget_ms)
    for d in spec["nodes"].values():
        for port, src in list((d.get("inputs") or {}).items()):
            if isinstance(src, str):
                d["inputs"][port] = {"from": src, "queue": 1000}
    return yaml.safe_dump(spec, sort_keys=False), list(MIDDLE)


def run(text: str, faults: list[Fault]) -> tuple[GraphRunner, list[Any]]:
    # the torch backend everywhere (ONNX Runtime runs outside a recorded frame; eager runs compare alike)
    runner = GraphRunner(validate_text(text, "stream_4k.yaml", load_registry(), TORCH_NODES, base_dir=GRAPHS), faults=faults)
    shown: list[Any] = []
    runner.tap("composite", "out", lambda v: shown.append(v.hwc_uint8().float().mean().item()))
    runner.run()
    return runner, shown


@pytest.mark.slow
def test_every_node_fails_every_way_under_hold_last_and_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """One run, frame capture emulated: every node raises (frame 5), returns NaN (11), runs out of memory (17),
    stalls past its budget (23), and every processing node dies at frame 31; all at once on those frames."""
    monkeypatch.setenv("MUSE_CPU_PATH", "torch")  # the emulation stands in for the GPU path
    monkeypatch.setenv("MUSE_CPU_PIPELINE", "0")
    every_node_every_way("cpu", "emulate", (128, 72), budget_ms=400, stall_ms=450)


@pytest.mark.cuda
def test_every_node_fails_every_way_on_the_gpu() -> None:
    """The same on real CUDA graphs at 1280x720 (run on the GPU machine)."""
    every_node_every_way("cuda", "on", (1280, 720), budget_ms=150, stall_ms=200)


def every_node_every_way(device: str, capture: str, size: tuple[int, int], budget_ms: float, stall_ms: float) -> None:
    frames = 40
    text, middle = stream_graph(capture, frames, "hold_last", budget_ms=budget_ms, device=device, size=size)
    faults = [Fault(n, "raise", at=5) for n in middle + [SOURCE, OUTPUT]]
    faults += [Fault(n, "nan", at=11) for n in middle]
    faults += [Fault(n, "oom", at=17) for n in middle]
    faults += [Fault(n, "stall", at=23, ms=stall_ms) for n in middle + [OUTPUT]]
    faults += [Fault(n, "die", at=31) for n in middle]
    runner, shown = run(text, faults)
    stats = runner.stats
    out = stats.nodes[OUTPUT]
    print(f"\nhold_last, {device}, capture {capture}: {out.frames} of {frames} frames reached the output; "
          f"faults {stats.fault_totals()}; capture {runner.program.describe()['replays'] if runner.program else 0} replays")
    assert out.frames >= 0.9 * frames and out.frames == frames - 1, "only the output's own failed frame is missing"
    assert len(shown) == frames and min(shown) > 20, f"never black: composite means {[round(x) for x in shown]}"
    for n in middle:
        s = stats.nodes[n]
        assert s.errors >= 2 + (frames - 31), (n, s.errors)  # raise, oom and every frame after dying
        assert s.oom == 1 and s.stalls >= 1, (n, s.oom, s.stalls)
        assert s.handled.get("held", 0) + s.handled.get("fallback", 0) >= s.errors, (n, s.handled)
        floats = n not in UINT8_OUT  # a uint8 frame has nothing to poison
        assert s.nan_frames == (1 if floats else 0), (n, s.nan_frames)
    assert stats.nodes["matte"].stepped_down == ["working_height 288 -> 208"]
    assert stats.nodes[SOURCE].errors == 1 and stats.nodes[OUTPUT].errors == 1 and stats.nodes[OUTPUT].stalls >= 1
    d = stats.as_dict()
    assert d["faults"]["errors"] >= 10 * (2 + frames - 31) and d["faults"]["nan"] == len(middle) - len(UINT8_OUT)
    assert runner.program is not None and runner.program.replays > 0, "frames without a fault were replayed"


@pytest.mark.slow
@pytest.mark.parametrize("node", [SOURCE, *MIDDLE, OUTPUT])
def test_each_node_fails_each_way_under_skip(node: str) -> None:
    """Eager CPU path, `on_error: skip` for every node: each node raises (frame 4), stalls (8), returns NaN (12)
    and runs out of memory (20); the output still gets at least 90% of the frames."""
    frames = 30
    text, middle = stream_graph("off", frames, "skip", budget_ms=800)
    faults = [Fault(node, "raise", at=4), Fault(node, "stall", at=8, ms=850)]
    if node in middle:
        faults += [Fault(node, "nan", at=12), Fault(node, "oom", at=20)]
    runner, shown = run(text, faults)
    stats = runner.stats
    out = stats.nodes[OUTPUT]
    s = stats.nodes[node]
    print(f"\nskip, {node}: {len(shown)} of {frames} frames reached the output; {s.faults()}")
    # output.null takes frames optionally, so count the composited pictures (a skipped frame has none).
    assert len(shown) >= 0.9 * frames and out.frames >= 0.9 * frames, (node, len(shown), out.frames)
    assert s.errors == (2 if node in middle else 1) and s.stalls >= 1
    if node in middle:
        assert s.oom == 1 and s.nan_frames == (0 if node in UINT8_OUT else 1)
        assert 2 <= s.handled.get("skipped", 0) <= 3, s.handled  # raise, oom, and the frame after the NaN one
    assert all(math.isfinite(x) and x > 20 for x in shown), "nothing black reached the output"
    assert torch.isfinite(torch.tensor(shown)).all()
