"""`pose.hybrid`: MUSE's priority switch for body pose, one node owning its
candidates (kept for existing graphs; the shipped graphs include
`graphs/include/pose_hybrid.yaml`, the same switch as visible nodes): the profile's student (personalized) > ViTPose if a checkpoint is
configured (base) > bundled BlazePose (bundled), with safe mode: a candidate
that fails to load, raises, or returns NaN keypoints hands over to the next.

The live mode is published with `ctx.report("mode", ...)`. A newly exported
student pose head (the file changes) is loaded next to the live one and swapped
in; if it does not load, the old one stays. A NaN check would
need a host read, so it rides on the one-frame-late `HostFlag`: the bad frame's
confidences are zeroed on the device, and the switch happens on the next frame.
Retries follow `SwitchPolicy`, the one policy of every MUSE switch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from pydantic import Field

from muse.graph.capture import is_recording
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Keypoints, Mask
from muse.nodes.landmarks.tracking import HostFlag
from muse.nodes.pose.blazepose import BlazePose
from muse.nodes.pose.formats import convert
from muse.nodes.pose.student import StudentPoseNode, resolve_student_pose
from muse.nodes.pose.vitpose import ViTPose
from muse.nodes.switch import SwitchPolicy

MODES = ("personalized", "base", "bundled")


@dataclass
class Candidate:
    mode: str
    cls: type[Node]
    params: dict[str, Any]
    node: Node | None = None
    error: str = ""
    bad: HostFlag | None = field(default=None, repr=False)


class PoseHybrid(Node):
    capturable = True
    node_type = "pose.hybrid"
    display_name = "Pose (hybrid)"
    description = ("Student > ViTPose > bundled BlazePose, falling back automatically (safe mode); reports the live mode. "
                   "One node (kept for existing graphs); graphs/include/pose_hybrid.yaml shows the same as visible nodes.")

    frame: In[Frame]
    mask: In[Mask] = In(optional=True, description="Person mask, handed to ViTPose for its person box")
    keypoints: Out[Keypoints]

    class Params(NodeParams):
        profile: str = Field("", description="Profile folder: its student pose head is priority 1")
        student_model: str = Field("", description="A student pose checkpoint (overrides profile)")
        vitpose_checkpoint: str = Field("", description="ViTPose checkpoint folder: priority 2 when set")
        output: Literal["native", "blazepose33", "coco17"] = Field("native", description="Skeleton of the output; native = whatever the live model gives")
        retry_after_s: float = Field(30.0, ge=0.0, le=3600.0, description="Retry a failed higher-priority model after this many seconds; 0 = never")
        backend: Literal["auto", "torch", "onnxruntime"] = Field("auto", description="Bundled pose models: auto = torch on a GPU, ONNX Runtime on the CPU")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self.candidates: list[Candidate] = []
        if resolve_student_pose(p.student_model, p.profile) is not None:
            self.candidates.append(Candidate("personalized", StudentPoseNode, {"profile": p.profile, "model": p.student_model}))
        if p.vitpose_checkpoint:
            self.candidates.append(Candidate("base", ViTPose, {"checkpoint": p.vitpose_checkpoint}))
        self.candidates.append(Candidate("bundled", BlazePose, {"backend": p.backend}))
        self.live: Candidate | None = None
        # The switches' one retry policy; retry_after_s 0 = a failed model is never retried.
        self._policy = SwitchPolicy(len(self.candidates), p.retry_after_s or None)
        self.switches = 0
        self.swaps = 0
        self._student_path = resolve_student_pose(p.student_model, p.profile)
        self._student_key = self._file_key(self._student_path)
        self._last_check = time.monotonic()
        self._activate(time.monotonic())

    def _fail(self, c: Candidate, exc: BaseException | str) -> None:
        assert self.ctx is not None
        self._policy.failed(self.candidates.index(c))
        c.error = str(exc)
        if c.node is not None:
            try:
                c.node.close()
            except Exception:  # closing a broken model must not hide the real error
                pass
        c.node = None
        self.logger.warning("node %r: %s pose model failed (%s); falling back", self.name, c.mode, c.error)

    def _activate(self, now: float) -> Candidate:
        assert self.ctx is not None
        while True:
            ready = self._policy.ready()
            c = self.candidates[ready[0]] if ready else None
            if c is None:
                errors = "; ".join(f"{x.mode}: {x.error}" for x in self.candidates)
                raise NodeError(f"node {self.name!r}: every pose model failed ({errors})")
            if c.node is None:
                try:
                    node = c.cls(f"{self.name}.{c.mode}", c.cls.Params(**c.params))
                    node.open(self.ctx)
                except Exception as exc:
                    self._fail(c, exc)
                    continue
                c.node, c.bad = node, HostFlag(self.ctx.device)
                self._policy.failed_at.pop(self.candidates.index(c), None)  # loaded again: healthy until it fails
            if c is not self.live:
                if self.live is not None:
                    self.switches += 1
                    self.logger.info("node %r: pose mode %s -> %s", self.name, self.live.mode, c.mode)
                self.live = c
                self.report("mode", c.mode)
                self.report("switches", self.switches)
                self.report("failed", {x.mode: x.error for x in self.candidates if x.error})
            return c

    @staticmethod
    def _file_key(path: Any) -> tuple[int, int] | None:
        try:
            st = path.stat()
        except (OSError, AttributeError):
            return None
        return st.st_mtime_ns, st.st_size

    def _watch_student(self, now: float) -> None:
        """Pick up a newly exported student pose head: load it next to the live one
        and swap the reference; a file that does not load leaves the old one live.
        One stat() per second at most, so the frame never waits on the disk."""
        if self._student_path is None or now - self._last_check < 1.0:
            return
        self._last_check = now
        key = self._file_key(self._student_path)
        if key is None or key == self._student_key:
            return
        self._student_key = key
        assert self.ctx is not None
        c = next(x for x in self.candidates if x.mode == "personalized")
        try:
            node = c.cls(f"{self.name}.{c.mode}", c.cls.Params(**c.params))
            node.open(self.ctx)
        except Exception as exc:  # keep the old model: a half-written or broken export must not stop the stream
            self.logger.warning("node %r: new student pose model %s did not load (%s); keeping the old one", self.name, self._student_path, exc)
            self.report("failed", {**{x.mode: x.error for x in self.candidates if x.error}, "personalized (new file)": str(exc)})
            return
        old, c.node, c.error, c.bad = c.node, node, "", HostFlag(self.ctx.device)
        self._policy.failed_at.pop(self.candidates.index(c), None)
        self.swaps += 1
        self.report("student_swaps", self.swaps)
        self.logger.info("node %r: new student pose model %s is live", self.name, self._student_path)
        if old is not None:
            old.close()

    def close(self) -> None:
        for c in getattr(self, "candidates", []):
            if c.node is not None:
                c.node.close()
                c.node = None

    def capture_blocker(self) -> str | None:
        for c in getattr(self, "candidates", []):
            if not getattr(c.cls, "capturable", False):
                return f"its {c.mode} pose model ({c.cls.node_type}) is not capturable yet"
            why = c.node.capture_blocker() if c.node is not None else None
            if why:
                return f"its {c.mode} pose model: {why}"
        return None

    def frame_variant(self) -> tuple:
        """Host choices: which model is live (from last frame's NaN flag and retry timers) and its own variant."""
        now = time.monotonic()
        self._watch_student(now)
        live = self._activate(now)
        if live.bad is not None and live.bad.is_set():  # last frame's keypoints were NaN
            self._fail(live, "NaN keypoints")
            live = self._activate(now)
        elif self.live is not self.candidates[0]:
            live = self._activate(now)  # a higher-priority model may be due for a retry
        self._planned = True
        return (id(live.node), live.node.frame_variant() if live.node is not None else None)

    def process(self, frame: Frame, mask: Mask | None = None) -> dict[str, Keypoints]:
        now = time.monotonic()
        if not getattr(self, "_planned", False):  # called directly, not by the runtime
            self.frame_variant()
        self._planned = False
        live = self.live
        assert live is not None
        while True:
            try:
                inputs: dict[str, Any] = {"frame": frame}
                if mask is not None and "mask" in live.cls.inputs_spec:
                    inputs["mask"] = mask
                assert live.node is not None  # the live candidate is open
                out = live.node.process(**inputs)
                kp: Keypoints = out["keypoints"]
                break
            except Exception as exc:  # safe mode: any failure of the live model hands over
                if is_recording():
                    raise  # the runtime runs this frame eagerly instead, where the fallback can happen
                self._fail(live, exc)
                live = self._activate(now)
                if live.node is not None:
                    live.node.frame_variant()
        nan = torch.isnan(kp.points).any() | torch.isnan(kp.confidence).any()
        assert live.bad is not None
        live.bad.publish(nan)
        kp = Keypoints(
            torch.nan_to_num(kp.points),
            torch.where(nan, torch.zeros_like(kp.confidence), torch.nan_to_num(kp.confidence)),
            kp.skeleton, kp.image_size, kp.timestamp, kp.index,
        )
        if self.params.output != "native":
            kp = convert(kp, self.params.output)
        return {"keypoints": kp}
