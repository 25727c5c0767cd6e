"""`segment.hybrid`: MUSE's priority switch for person masks, personalized > base > bundled, as one node.

Kept for existing graphs. The shipped graphs include `graphs/include/segment_hybrid.yaml`
instead: the same switch as visible nodes (segment.student, segment.modnet, segment.selfie
and a flow.switch), each branch's state in `--stats` and the editor.

It owns its segmenters: the profile's student (personalized), MODNet when a checkpoint
is set (base), and the bundled selfie model (bundled). A branch that fails to load,
raises, gives NaN, or stays empty while a lower branch sees a person is dropped (safe
mode) and retried later; a newly exported student is loaded in the background and swapped in.
With a clean plate (the `plate` input or field `plate_file`) the model's mask is fused with the
plate difference and the previous matte (`segment.fused`'s maths) before it leaves the node.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.capture import LateValue, is_recording
from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.graph.stats import NodeStats
from muse.nodes.cpu import wanted
from muse.nodes.segment._prep import frame_batch, user_path
from muse.nodes.segment.fused import FusedMatte, FusedSettings, working_size
from muse.nodes.segment.person import REACH, with_person
from muse.nodes.segment.student import LoadedStudent, load_student_runner, profile_live_model
from muse.nodes.segment.student_watch import Retired, StudentWatcher
from muse.nodes.switch import SwitchPolicy

__all__ = ["HybridSegment"]

log = logging.getLogger("muse.segment.hybrid")

MODES = {"student": "personalized", "modnet": "base", "selfie": "bundled"}


@dataclass
class _Branch:
    """One candidate segmenter; `run` is None while it has no model loaded."""

    label: str
    run: Callable[[Frame], Mask] | None = None
    closer: Callable[[], None] | None = None
    error: str = ""
    empty_run: int = 0

    @property
    def mode(self) -> str:
        return MODES[self.label]


@dataclass
class _Health:
    """The health numbers [non-finite flag, coverage] of one model's mask, read a frame late."""

    value: LateValue
    judged: int = -1  # the version of `value` last judged


def _mask_stats(alpha: torch.Tensor) -> torch.Tensor:
    if not alpha.is_cuda and not is_recording():  # issue 13: numpy on the CPU (torch's thread pool costs more than the sums)
        from muse.nodes.cpu.masks import mask_stats

        return mask_stats(alpha)
    bad = (~torch.isfinite(alpha)).any().float()
    return torch.stack((bad, torch.nan_to_num(alpha.float(), nan=0.0).mean()))


class HybridSegment(Node):
    node_type = "segment.hybrid"
    capturable = True
    display_name = "Hybrid segmenter"
    description = (
        "Personalized student when the profile has one, else MODNet (if a checkpoint is set), else the bundled "
        "selfie model; falls back automatically on failures and picks up newly exported students live. "
        "One node (kept for existing graphs); graphs/include/segment_hybrid.yaml shows the same as visible nodes."
    )

    frame: In[Frame]
    plate: In[Frame] = In(optional=True, description="Recorded clean plate: when present the mask is fused with it (segment.fused)")
    person: In[Mask] = In(optional=True, description="The pose tracker's person mask (pose.blazepose's mask), merged into the bundled selfie model's (as segment.person does)")
    mask: Out[Mask]

    class Params(NodeParams):
        profile: str = Field("", description="Profile folder whose live student model is Priority 1")
        modnet_checkpoint: str = Field("", description="MODNet checkpoint for the base model (Priority 2); empty = bundled selfie")
        modnet_height: int = Field(544, ge=64, le=2176, description="MODNet working height")
        bundled: bool = Field(True, description="Keep the bundled selfie model as the last resort")
        selfie_crop: bool = Field(False, description="The bundled model's second look at a crop around the person (segment.selfie `crop`)")
        prefer: Literal["auto", "personalized", "base", "bundled"] = Field(
            "auto", description="auto = best available; otherwise try this one first (still falls back on failure)"
        )
        backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field("auto", description="Inference backend for student and MODNet")
        cuda_graph: bool = Field(True, description="torch on a GPU: replay models as CUDA graphs")
        cache_dir: str = Field("", description="ONNX/TensorRT cache; empty = ~/.cache/muse/engines")
        retry_s: float = Field(10.0, ge=0.0, le=3600.0, description="Retry a failed better model after this long")
        watch_s: float = Field(1.0, ge=0.1, le=60.0, description="How often the profile's live model file is checked")
        empty_frames: int = Field(30, ge=1, le=10_000, description="Frames of empty mask before asking the next model whether someone is there")
        min_coverage: float = Field(0.002, ge=0.0, le=0.5, description="Mask mean below which a mask counts as empty")
        plate_file: str = Field("", description="Image of the empty room; with it (or the plate input) the mask is fused with the plate")
        fuse_plate: bool = Field(True, description="Fuse model, clean plate and time whenever a plate exists (off = model mask only)")

    params: Params

    # -- lifecycle -------------------------------------------------------
    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        self._host_merge = wanted(ctx)  # the person merge's CPU path (segment.person's)
        self._watcher: StudentWatcher | None = None
        self._retired = Retired()
        self._health: dict[tuple[str, int, int], _Health] = {}
        self._plan: tuple[int | None, int | None] = (None, None)
        self._planned = False
        self._last_good: torch.Tensor | None = None
        self._frames = 0
        self._switches = 0
        self._swaps = 0
        self._live: int | None = None
        self._profile = user_path(p.profile, ctx) if p.profile else None
        self._student_path: Path | None = None  # the student file loaded at open (the watcher starts from it)
        self._fuse: FusedMatte | None = None
        self._file_plate: torch.Tensor | None = None
        if p.plate_file:
            from muse.nodes.background import load_image

            path = user_path(p.plate_file, ctx)
            self._file_plate = load_image(str(path), self.name, "plate_file").to(ctx.device)

        self.branches: list[_Branch] = []
        if self._profile is not None:
            self.branches.append(self._open_student())
        if p.modnet_checkpoint:
            self.branches.append(self._open_child("modnet", "muse.nodes.segment.modnet", "ModnetSegment", {
                "checkpoint": str(user_path(p.modnet_checkpoint, ctx)), "height": p.modnet_height,
                "backend": p.backend, "cuda_graph": p.cuda_graph, "cache_dir": p.cache_dir,
            }))
        if p.bundled:
            self.branches.append(self._open_selfie())
        if not any(b.run for b in self.branches):
            detail = "; ".join(f"{b.label}: {b.error}" for b in self.branches) or "no segmenter configured"
            raise NodeError(
                f"node '{self.name}' (segment.hybrid): no segmenter could be loaded ({detail}). Set field 'profile', "
                "field 'modnet_checkpoint', or run `muse models import` for the bundled selfie model."
            )
        self._policy = SwitchPolicy(len(self.branches), p.retry_s)
        for i, b in enumerate(self.branches):
            if b.run is None and b.error:
                self._policy.failed(i)
        self._report()
        if self._profile is not None:
            self._watcher = StudentWatcher(self.name, self._profile, self._load_student_file, ctx, lambda: self.params.watch_s,
                                           self._student_path).start()

    def close(self) -> None:
        if getattr(self, "_watcher", None) is not None:
            self._watcher.stop()
        for b in getattr(self, "branches", []):
            if b.closer:
                b.closer()
        if getattr(self, "_retired", None) is not None:
            self._retired.close()

    def update_params(self, params: Params) -> bool:
        live_ok = ("prefer", "retry_s", "watch_s", "empty_frames", "min_coverage")
        if any(getattr(params, k) != getattr(self.params, k) for k in type(params).model_fields if k not in live_ok):
            return False
        self.params = params
        self._policy.retry_s = params.retry_s
        return True

    # -- building branches ----------------------------------------------
    def _child_ctx(self, label: str) -> NodeContext:
        assert self.ctx is not None
        return dataclasses.replace(self.ctx, name=f"{self.name}/{label}", stats=NodeStats(f"{self.name}/{label}", ""))

    def _load_student_file(self, path: Path) -> LoadedStudent:
        p, ctx = self.params, self.ctx
        assert ctx is not None
        return load_student_runner(path, ctx.device, ctx.dtype, backend=p.backend, cuda_graph=p.cuda_graph,
                                   cache_dir=p.cache_dir or None)

    def _open_student(self) -> _Branch:
        branch = _Branch("student")
        assert self._profile is not None
        if not self._profile.is_dir():  # most likely a typo; the watcher still picks it up if it appears
            branch.error = f"profile folder {self._profile} does not exist (field 'profile')"
            log.warning("%s: %s", self.name, branch.error)
            return branch
        try:
            path = profile_live_model(self._profile)
        except FileNotFoundError as exc:  # a profile without a trained student yet is normal
            branch.error = ""
            log.info("%s: no personalized model yet (%s)", self.name, exc)
            return branch
        except Exception as exc:
            branch.error = f"profile {self._profile}: {exc}"
            log.warning("%s: cannot read profile: %s", self.name, exc)
            return branch
        self._student_path = path
        try:
            student = self._load_student_file(path)
        except Exception as exc:
            branch.error = f"{path}: {type(exc).__name__}: {exc}"
            log.warning("%s: personalized model failed to load, safe mode: %s", self.name, branch.error)
            return branch
        self._install_student(branch, student)
        return branch

    @staticmethod
    def _install_student(branch: _Branch, student: LoadedStudent) -> None:
        branch.run, branch.closer, branch.error, branch.empty_run = student, student.close, "", 0

    def _open_child(self, label: str, module: str, cls_name: str, params: dict[str, Any]) -> _Branch:
        branch = _Branch(label)
        try:
            cls = getattr(importlib.import_module(module), cls_name)
            node = cls(f"{self.name}/{label}", cls.Params(**params))
            node.open(self._child_ctx(label))
        except Exception as exc:
            branch.error = f"{type(exc).__name__}: {exc}"
            log.warning("%s: %s failed to load: %s", self.name, label, branch.error)
            return branch
        port = next(iter(cls.outputs_spec))
        branch.run = lambda frame, node=node, port=port: node.process(frame=frame)[port]
        branch.closer = node.close
        return branch

    def _open_selfie(self) -> _Branch:
        return self._open_child("selfie", "muse.nodes.segment.selfie", "SelfieSegment", {"crop": self.params.selfie_crop})

    # -- the frame path --------------------------------------------------
    def _order(self) -> list[int]:
        order = self._policy.order()
        prefer = self.params.prefer
        if prefer != "auto":  # the preferred model goes first unless it is waiting out a failure
            pol, now = self._policy, self._policy.clock()
            first = [i for i in order if self.branches[i].mode == prefer
                     and (i not in pol.failed_at or now - pol.failed_at[i] >= pol.retry_s)]
            order = first + [i for i in order if i not in first]
        return [i for i in order if self.branches[i].run is not None]

    def capture_blocker(self) -> str | None:
        if self.ctx is not None and "plate" in self.ctx.connected and self.params.fuse_plate:
            return "a plate input is compared by identity each frame to notice a new plate (a host choice)"
        return None

    def frame_variant(self) -> tuple:
        """Host choices for this frame: which model is live, whether a lower one is asked
        (its empty-mask probe), judged from the health numbers of earlier frames."""
        self._frames += 1
        self._adopt_pending()
        self._drain()
        order = self._order()
        if not order:
            self._plan = (None, None)
        else:
            live = order[0]
            probe = None
            if self.branches[live].empty_run >= self.params.empty_frames and len(order) > 1:
                self.branches[live].empty_run = 0
                probe = order[1]
            self._plan = (live, probe)
        self._planned = True
        live, probe = self._plan
        return (live, probe, id(self.branches[live].run) if live is not None else None)

    def process(self, frame: Frame, plate: Frame | None = None, person: Mask | None = None) -> dict[str, Mask]:
        self._plate_now = plate
        if not self._planned:  # called directly (tests, other nodes), not by the runtime
            self.frame_variant()
        self._planned = False
        live, probe = self._plan
        if live is None:
            raise NodeError(
                f"node '{self.name}' (segment.hybrid): every segmenter failed "
                f"({'; '.join(f'{b.label}: {b.error}' for b in self.branches if b.error) or 'none loaded'})"
            )
        b = self.branches[live]
        try:
            assert b.run is not None  # live branches are loaded
            mask = b.run(frame)
            if person is not None and b.label == "selfie":  # the bundled model only: a student or MODNet draws its own outline
                mask = Mask(with_person(mask.alpha, person.to(mask.alpha.device), REACH, host=self._host_merge),
                            mask.timestamp, mask.index)
        except Exception as exc:  # a failing model is exactly what this node guards against
            if is_recording():
                raise
            self._fail(live, f"raised {type(exc).__name__}: {exc}")
            self._plan, self._planned = (self._order()[0] if self._order() else None, None), True
            return self.process(frame, plate, person)
        self._check(("live", live, -1), mask.alpha)
        if probe is not None:
            try:
                probe_run = self.branches[probe].run
                assert probe_run is not None  # probes are loaded branches
                lower = probe_run(frame)
                self._check(("probe", probe, live), lower.alpha)
            except Exception as exc:
                if is_recording():
                    raise
                self._fail(probe, f"raised {type(exc).__name__}: {exc}")
        return self._emit(live, mask, frame)

    def _emit(self, i: int, mask: Mask, frame: Frame) -> dict[str, Mask]:
        if self._policy.succeeded(i) or self._live != i:
            if self._live is not None:
                self._switches += 1
                log.warning("%s: switched from %s to %s", self.name, self.branches[self._live].mode, self.branches[i].mode)
                if self.ctx is not None:
                    self.logger.warning("segment.hybrid '%s': live model is now %s (%s)", self.name,
                                            self.branches[i].mode, self.branches[i].label)
            self._live = i
            self._report()
        alpha = mask.alpha
        # The NaN check is read a frame later; meanwhile never pass NaN downstream: the last good mask
        # stands in, kept in a buffer this node owns and updates in place.
        if self._last_good is None or self._last_good.shape != alpha.shape or self._last_good.dtype != alpha.dtype:
            self._last_good = torch.zeros_like(alpha)
        self._last_good.copy_(torch.where(torch.isfinite(alpha), alpha, self._last_good))
        self._retired.tick()
        alpha = self._fused(self._last_good, frame)
        return {"mask": Mask(alpha, frame.timestamp, frame.index)}

    def _fused(self, alpha: torch.Tensor, frame: Frame) -> torch.Tensor:
        """With a clean plate: the model's mask fused with the plate and the previous matte (working resolution)."""
        plate = getattr(self, "_plate_now", None)
        if not self.params.fuse_plate or (plate is None and self._file_plate is None):
            return alpha
        ctx = self.ctx
        assert ctx is not None
        w, h = working_size(frame, FusedSettings().working_height)
        if self._fuse is None:
            self._fuse = FusedMatte(FusedSettings(), ctx.device, ctx.fps)
        if self._fuse.size != (w, h):
            self._fuse._alloc(w, h)
        if plate is not None:
            src = plate
        else:
            assert self._file_plate is not None  # checked at the top
            src = Frame(self._file_plate)
        key = id(plate.image) if plate is not None else "file"
        self._fuse.set_plate(lambda: frame_batch(src, (w, h), torch.float32).to(ctx.device), key)
        pm = F.interpolate(alpha.float()[None, None], size=(h, w), mode="bilinear", align_corners=False)
        x = frame_batch(frame, (w, h), torch.float32).to(ctx.device)
        return self._fuse.step(x, pm)[0, 0].to(alpha.dtype).clone()


    # -- health checks (never stall the GPU) ----------------------------
    def _check(self, key: tuple[str, int, int], alpha: torch.Tensor) -> None:
        """Publish [non-finite flag, coverage] of a mask; judged on the host a frame later."""
        late = self._health.get(key)
        if late is None:
            late = self._health[key] = _Health(LateValue(alpha.device, (2,)))
        late.value.publish(_mask_stats(alpha))

    def _drain(self) -> None:
        for (kind, branch, about), h in self._health.items():
            v = h.value
            if not v.published or v.version == h.judged or not v.ready():
                continue
            h.judged = v.version
            bad, coverage = (float(x) for x in v.view.tolist())  # ready(): host memory, no device sync
            self._judge(kind, branch, about, bad, coverage)

    def _judge(self, kind: str, branch: int, about: int, bad: float, coverage: float) -> str:
        b = self.branches[branch]
        if kind == "probe":
            if bad == 0 and coverage >= max(self.params.min_coverage * 10, 0.01):
                self._fail(about, f"empty mask for {self.params.empty_frames} frames while {b.label} sees a person")
                return "person"
            return "ok"
        if bad:
            self._fail(branch, "NaN/Inf in the mask")
            return "bad"
        if coverage < self.params.min_coverage:
            b.empty_run += 1  # reaching empty_frames makes the next frame probe the next model
            return "empty"
        b.empty_run = 0
        return "ok"

    def _fail(self, i: int, reason: str) -> None:
        b = self.branches[i]
        b.error = reason
        b.empty_run = 0
        self._policy.failed(i)
        log.warning("%s: %s model (%s) failed: %s; safe mode", self.name, b.mode, b.label, reason)
        if self.ctx is not None:
            self.report("last_fault", f"{b.label}: {reason}")
        self._report()

    def _report(self) -> None:
        if self.ctx is None:
            return
        live = self.branches[self._live] if self._live is not None else None
        self.report("mode", live.mode if live else "none")
        self.report("live", live.label if live else "none")
        self.report("switches", self._switches)
        self.report("student_swaps", self._swaps)
        self.report("branches", {
            b.label: ("failed: " + b.error) if b.error else ("loaded" if b.run else "not loaded") for b in self.branches
        })

    # -- picking up a new student (muse.nodes.segment.student_watch) ----
    def _adopt_pending(self) -> None:
        student = self._watcher.take() if self._watcher is not None else None
        if student is None:
            return
        i = next(k for k, b in enumerate(self.branches) if b.label == "student")
        b = self.branches[i]
        if b.closer is not None:  # frames queued on the stream may still use the old model: close it a bit later
            self._retired.add(b.closer)
        self._install_student(b, student)
        self._policy.failed_at.pop(i, None)
        self._swaps += 1
        log.warning("%s: picked up new personalized model %s", self.name, student.path)
        if self.ctx is not None:
            self.report("student_model", str(student.path))
        self._report()
