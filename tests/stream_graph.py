"""graphs/stream_4k.yaml as shipped, on the demo source, for tests that run the real default graph.

The camera switch keeps its wiring; only its candidates change: the webcam is dropped and the demo
(its stand-in) runs on its own, with lossless links (eager and captured runs see the same frames)
and `frames` frames. The outputs are replaced by `sinks` (name -> node spec)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
GRAPH = REPO / "graphs" / "stream_4k.yaml"
GRAPHS = GRAPH.parent
TORCH_NODES = {"pose/bundled": {"backend": "torch"}, "face": {"backend": "torch"}}  # ONNX Runtime runs outside a recording


def stream_spec(width: int, height: int, frames: int, *, device: str = "cpu", capture: str = "off", fps: float | None = None,
                sinks: dict[str, Any] | None = None, queue: int = 1000) -> dict[str, Any]:
    spec = yaml.safe_load(GRAPH.read_text())
    spec["settings"].update(device=device, resolution=[width, height], capture=capture)
    if fps is not None:
        spec["settings"]["fps"] = fps
    nodes = spec["nodes"]
    nodes.pop("webcam")
    nodes["demo"] = {"type": "capture.demo", "params": {"width": width, "height": height, "fps": 0, "frames": frames}}
    nodes["camera"]["params"]["labels"] = ["demo"]
    nodes["camera"]["inputs"] = {"candidates": {"from": ["demo.frame"], "queue": queue}}
    nodes.pop("virtualcam")
    nodes.pop("preview")
    nodes.update(sinks if sinks is not None else
                 {"virtualcam": {"type": "output.null", "inputs": {"frame": {"from": "composite.out", "queue": queue}}}})
    return spec


def stream_text(*args: Any, **kwargs: Any) -> str:
    return yaml.safe_dump(stream_spec(*args, **kwargs), sort_keys=False)
