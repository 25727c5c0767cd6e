"""`output.tracking`: body keypoints and face landmarks written per frame, as
JSON lines or CSV, with the source frame's index and timestamp, so tracking
can be recorded, analysed or replayed. Optionally the avatar solve (bone
rotations, blendshapes) of `output.vmc` is written alongside.

Never overwrites: an existing file is an error. Writing happens in the node's
own thread; the frame only starts a copy of the numbers to the host.
"""

from __future__ import annotations

import csv
import json
import logging
import queue
import threading
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams
from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.nodes.motion.hostcopy import HostRing, Snapshot, capture_tracking
from muse.nodes.motion.solve import ARKIT_SHAPES, BONES, VRM_SHAPES, AvatarSolver, SolveSettings
from muse.nodes.motion.vmc import solve_snapshot
from muse.nodes.output.file import expand_path
from muse.nodes.pose.skeletons import BLAZEPOSE33

log = logging.getLogger("muse.tracking")

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv"}


def _round(a: np.ndarray, digits: int = 3) -> list:
    return np.round(a.astype(np.float64), digits).tolist()


class TrackingOutput(Node):
    node_type = "output.tracking"
    output_paths = {"path": True}  # checked at validation: allowed folders, one writer per file
    display_name = "Record tracking"
    description = (
        "Writes body keypoints and face landmarks per frame (JSON lines or CSV) with the frame index and timestamp; "
        "optionally the avatar solve (bones, blendshapes); never overwrites."
    )
    capturable = True  # process only starts a device->host copy

    keypoints: In[Keypoints] = In(optional=True, description="Body keypoints to record")
    face: In[FaceLandmarks] = In(optional=True, description="Face landmarks to record")

    class Params(NodeParams):
        path: str = Field("", description="File to write (.jsonl or .csv); strftime fields allowed; an existing file is an error; "
                          "empty = tracking_DATE_TIME.jsonl in your recordings folder")
        format: Literal["auto", "jsonl", "csv"] = Field("auto", description="auto = from the file name (.jsonl / .csv)")
        solve: bool = Field(False, description="Also write the avatar solve: bone rotations (quaternions) and blendshapes, as output.vmc sends them")
        face_points: bool = Field(True, description="Write the face mesh points (478 x 3 per frame; off keeps files small)")
        buffer_frames: int = Field(256, ge=4, le=10_000, description="Frames that may wait for the writer before frames are dropped (and counted)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self.path = expand_path(p.path, ctx.graph_file, default_name="tracking_%Y%m%d_%H%M%S.jsonl")
        fmt = p.format
        if fmt == "auto":
            fmt = FORMATS.get(self.path.suffix.lower(), "")
            if not fmt:
                raise NodeError(f"node {self.name!r}: cannot tell the format from {str(self.path)!r} (field `path`); "
                                "end it with .jsonl or .csv, or set `format`")
        self.fmt = fmt
        if self.path.exists():
            raise NodeError(f"node {self.name!r}: {str(self.path)!r} already exists and would be overwritten (field `path`); "
                            "choose another path (strftime fields like %Y%m%d_%H%M%S make unique names)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._file = open(self.path, "x", newline="", encoding="utf-8")  # "x": never replaces a file made meanwhile
        except OSError as exc:
            raise NodeError(f"node {self.name!r}: cannot create {str(self.path)!r} (field `path`): {exc}") from exc
        self._ring = HostRing(ctx.device, slots=p.buffer_frames)
        self._queue: queue.Queue[Snapshot | None] = queue.Queue()
        self._solver = AvatarSolver(SolveSettings()) if p.solve else None
        self._csv: Any = None
        self.written = 0
        self.errors = 0
        ctx.report("path", str(self.path))
        self._thread = threading.Thread(target=self._loop, name=f"muse-tracking-{self.name}", daemon=True)
        self._thread.start()

    def process(self, keypoints: Keypoints | None = None, face: FaceLandmarks | None = None) -> None:
        snap = capture_tracking(self._ring, keypoints, face)
        if snap is not None:
            self._queue.put(snap)
        elif keypoints is not None or face is not None:
            assert self.ctx is not None
            self.report("dropped", self._ring.dropped)
        return None

    # -- writer thread ---------------------------------------------------
    def _record(self, snap: Snapshot) -> dict[str, Any]:
        rec: dict[str, Any] = {"frame": snap.index, "timestamp": round(snap.timestamp, 6), "image_size": list(snap.image_size)}
        body, conf = snap.array("body"), snap.array("body_conf")
        if body is not None and conf is not None:
            rec["skeleton"] = snap.skeleton
            rec["keypoints"] = _round(body)
            rec["keypoint_confidence"] = _round(conf)
        face, fconf = snap.array("face"), snap.array("face_conf")
        if face is not None and fconf is not None:
            rec["face_confidence"] = round(float(fconf[0]), 4)
            if self.params.face_points:
                rec["face"] = _round(face, 2)
        if self._solver is not None:
            solved = solve_snapshot(self._solver, snap)
            rec["bones"] = {b: _round(solved.rotations[b], 5) for b in BONES}
            rec["blendshapes"] = {k: round(v, 4) for k, v in solved.blend.items()}
        return rec

    def _write_csv(self, rec: dict[str, Any]) -> None:
        """One row per frame; the columns come from the first frame's inputs and the skeleton's names."""
        if self._csv is None:
            cols = ["frame", "timestamp", "width", "height"]
            names = BLAZEPOSE33
            if "keypoints" in rec:
                dims = len(rec["keypoints"][0]) if rec["keypoints"] else 2
                names = BLAZEPOSE33 if rec.get("skeleton") == "blazepose33" else [f"kp{i}" for i in range(len(rec["keypoints"]))]
                for n in names:
                    cols += [f"{n}_{a}" for a in "xyz"[:dims]] + [f"{n}_conf"]
            self._kp_names = names if "keypoints" in rec else []
            if "face_confidence" in rec:
                cols.append("face_confidence")
                if "face" in rec:
                    cols += [f"face{i}_{a}" for i in range(len(rec["face"])) for a in "xyz"]
            if "bones" in rec:
                cols += [f"{b}_{a}" for b in BONES for a in ("qx", "qy", "qz", "qw")]
                cols += list(dict.fromkeys(VRM_SHAPES + ARKIT_SHAPES))
            self._cols = cols
            self._csv = csv.writer(self._file)
            self._csv.writerow(cols)
        row: dict[str, Any] = {"frame": rec["frame"], "timestamp": rec["timestamp"], "width": rec["image_size"][0], "height": rec["image_size"][1]}
        for n, pt, c in zip(self._kp_names, rec.get("keypoints", []), rec.get("keypoint_confidence", [])):
            for a, v in zip("xyz", pt):
                row[f"{n}_{a}"] = v
            row[f"{n}_conf"] = c
        if "face_confidence" in rec:
            row["face_confidence"] = rec["face_confidence"]
            for i, pt in enumerate(rec.get("face", [])):
                for a, v in zip("xyz", pt):
                    row[f"face{i}_{a}"] = v
        for b, q in rec.get("bones", {}).items():
            for a, v in zip(("qx", "qy", "qz", "qw"), q):
                row[f"{b}_{a}"] = v
        row.update(rec.get("blendshapes", {}))
        self._csv.writerow([row.get(c, "") for c in self._cols])

    def _loop(self) -> None:
        while True:
            snap = self._queue.get()
            if snap is None:
                break
            try:
                snap.ready()
                rec = self._record(snap)
                if self.fmt == "csv":
                    self._write_csv(rec)
                else:
                    self._file.write(json.dumps(rec, separators=(",", ":")) + "\n")
                self.written += 1
            except Exception:
                self.errors += 1
                log.exception("%s: could not write frame %d to %s", self.name, snap.index, self.path)
            finally:
                snap.release()
        self._file.flush()

    def close(self) -> None:
        if getattr(self, "_thread", None) is None:
            return
        self._queue.put(None)  # after every queued frame: nothing recorded is lost
        self._thread.join(timeout=30)
        self._thread = None
        self._file.close()
        assert self.ctx is not None
        self.report("frames", self.written)
        log.info("%s: %d frames of tracking written to %s", self.name, self.written, self.path)


def read_tracking(path: str | Path) -> list[dict[str, Any]]:
    """The records of a .jsonl tracking file (for replay and analysis)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
