"""`capture.tracking`: plays back a tracking recording (`output.tracking`'s
JSON lines) as body keypoints and face landmarks, at the recorded pace or a
fixed fps, so an avatar can be driven (or a warp tuned) without a camera.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from muse.graph.node import Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.nodes.face.regions import REFINED_POINTS, face_regions


class TrackingReplay(Node):
    node_type = "capture.tracking"
    display_name = "Replay tracking"
    category = "capture"
    description = "Plays back a tracking recording (output.tracking's .jsonl) as body keypoints and face landmarks, at the recorded pace."

    keypoints: Out[Keypoints]
    face: Out[FaceLandmarks]

    class Params(NodeParams):
        path: str = Field("", description="A .jsonl file written by output.tracking")
        fps: float = Field(0.0, ge=0, le=240, description="Frames per second; 0 = as recorded (the records' timestamps)")
        loop: bool = Field(False, description="Start over after the last record")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        path = Path(self.params.path).expanduser()
        if not self.params.path or not path.is_file():
            raise NodeError(f"node {self.name!r}: no tracking recording at {str(path)!r} (field `path`); record one with output.tracking")
        self._records: list[dict[str, Any]] = []
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    float(rec["timestamp"]), int(rec["frame"])
                except (ValueError, KeyError, TypeError) as exc:
                    raise NodeError(f"node {self.name!r}: {str(path)!r} line {n} is not an output.tracking record ({exc}) (field `path`)") from exc
                self._records.append(rec)
        if not self._records:
            raise NodeError(f"node {self.name!r}: {str(path)!r} holds no records (field `path`)")
        self._i = 0
        self._emitted = 0
        self._start: float | None = None
        self._t0 = float(self._records[0]["timestamp"])

    def _due(self, rec: dict[str, Any]) -> float:
        if self.params.fps > 0:
            return self._emitted / self.params.fps
        return float(rec["timestamp"]) - self._t0

    def process(self) -> dict[str, Keypoints | FaceLandmarks] | None:
        if self._i >= len(self._records):
            if not self.params.loop:
                return None
            self._i = 0
            self._start = None  # the next lap starts its own clock
            self._emitted = 0
        rec = self._records[self._i]
        now = time.perf_counter()
        if self._start is None:
            self._start = now - self._due(rec)
        wait = self._start + self._due(rec) - now
        if wait > 0:
            time.sleep(wait)
        self._i += 1
        self._emitted += 1
        dev = self.context.device
        size = tuple(rec.get("image_size", (0, 0)))
        ts, index = float(rec["timestamp"]), int(rec["frame"])
        out: dict[str, Keypoints | FaceLandmarks] = {}
        if "keypoints" in rec:
            out["keypoints"] = Keypoints(
                torch.tensor(rec["keypoints"], dtype=torch.float32, device=dev),
                torch.tensor(rec["keypoint_confidence"], dtype=torch.float32, device=dev),
                rec.get("skeleton", "blazepose33"), size, ts, index,
            )
        if "face" in rec:
            points = torch.tensor(rec["face"], dtype=torch.float32, device=dev)
            out["face"] = FaceLandmarks(
                points, torch.tensor(float(rec.get("face_confidence", 1.0)), device=dev),
                face_regions(points.shape[0] >= REFINED_POINTS), size,
                torch.cat([points[:, :2].amin(0), points[:, :2].amax(0)]), ts, index,
            )
        return out
