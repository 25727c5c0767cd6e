"""`segment.student`: the personal student segmenter a profile trained in MUSE Studio.

Reads the profile's live model (`profile.yaml` -> `live_model`): a torch checkpoint
(`muse.models.student.load_student`) or an exported `student.onnx` with its `student.json`.
Given a profile, a newly exported live model is picked up while streaming
(`muse.nodes.segment.student_watch`). No profile, or a profile without a trained student
yet, is `NodeAbsent`: the hybrid sub-graph's switch then reports this branch absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeAbsent, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.models.backends import InferenceBackend, create_backend
from muse.nodes.segment._prep import frame_batch, user_path

__all__ = ["StudentSegment", "LoadedStudent", "load_student_runner", "profile_live_model"]


def profile_live_model(profile: Path) -> Path:
    """The live model file named by the profile; FileNotFoundError when the profile has none yet."""
    from muse.models.student import live_model_path

    return live_model_path(profile)


class LoadedStudent:
    """A student model ready to run: backend + its input size; `__call__(frame) -> Mask`."""

    def __init__(self, path: Path, backend: InferenceBackend, meta: dict[str, Any], dtype: torch.dtype) -> None:
        self.path, self.backend, self.meta, self.dtype = path, backend, meta, dtype
        self.size = (int(meta["input_size"][0]), int(meta["input_size"][1]))

    def __call__(self, frame: Frame) -> Mask:
        logits = self.backend(frame_batch(frame, self.size, self.dtype))
        return Mask(torch.sigmoid(logits[0, 0]), frame.timestamp, frame.index)

    def close(self) -> None:
        self.backend.close()


def load_student_runner(
    path: Path, device: torch.device, dtype: torch.dtype, *, backend: str = "auto",
    cuda_graph: bool = True, cache_dir: str | None = None,
) -> LoadedStudent:
    """Load a student from a torch checkpoint or an ONNX export and warm it up (raises on any problem)."""
    if not path.is_file():
        raise FileNotFoundError(f"student model {path} not found; export one with `muse studio export PROFILE`")
    if path.suffix.lower() == ".onnx":
        from muse.models.student import read_onnx_meta

        meta = read_onnx_meta(path)
        w, h = meta["input_size"]
        example = torch.zeros(1, 3, int(h), int(w), device=device, dtype=dtype)
        runner = create_backend(backend=backend, device=device, dtype=dtype, onnx_path=path, example=example,
                                cache_dir=cache_dir, stem="student")
    else:
        from muse.models.student import load_student

        model, meta = load_student(path, "cpu")
        w, h = meta["input_size"]
        example = torch.zeros(1, 3, int(h), int(w), device=device, dtype=dtype)
        runner = create_backend(backend=backend, device=device, dtype=dtype, model=model, example=example,
                                cache_dir=cache_dir, stem="student", cuda_graph=cuda_graph)
    return LoadedStudent(path, runner, meta, dtype)


class StudentSegment(Node):
    node_type = "segment.student"
    display_name = "Personal student"
    description = "Person mask from the profile's trained student model (MUSE Studio)."

    frame: In[Frame]
    mask: Out[Mask]

    class Params(NodeParams):
        profile: str = Field("", description="Profile folder (holds profile.yaml with live_model)")
        model: str = Field("", description="Or a student file directly (.pt checkpoint or student.onnx); overrides profile")
        backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field("auto", description="Inference backend")
        cuda_graph: bool = Field(True, description="torch on a GPU: replay the model as a CUDA graph")
        cache_dir: str = Field("", description="Where ONNX exports and TensorRT engines are cached; empty = ~/.cache/muse/engines")
        watch_s: float = Field(1.0, ge=0.1, le=60.0, description="With a profile: how often its live model file is checked for a new export")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        field = "model" if p.model else "profile"
        folder: Path | None = None
        if not p.model and not p.profile:
            raise NodeAbsent(f"node '{self.name}' (segment.student): set field 'profile' to a profile folder or field 'model' to a student file")
        try:
            if p.model:
                path = user_path(p.model, ctx)
            else:
                folder = user_path(p.profile, ctx)
                if not folder.is_dir():
                    raise NodeAbsent(f"node '{self.name}' (segment.student), field 'profile': {folder} does not exist")
                path = profile_live_model(folder)
            if not path.exists():
                raise FileNotFoundError(f"{path} does not exist")
        except FileNotFoundError as exc:  # no student trained yet: a normal state, not a fault
            raise NodeAbsent(f"node '{self.name}' (segment.student), field '{field}': {exc}") from exc
        try:
            self._student = self._load(path)
        except Exception as exc:
            raise NodeError(f"node '{self.name}' (segment.student), field '{field}': {exc}") from exc
        ctx.report("model", str(self._student.path))
        ctx.report("backend", self._student.backend.describe())
        from muse.nodes.segment.student_watch import Retired, StudentWatcher

        self._retired = Retired()
        self._swaps = 0
        self._watcher = (StudentWatcher(self.name, folder, self._load, ctx, lambda: self.params.watch_s, path).start()
                         if folder is not None else None)

    def _load(self, path: Path) -> LoadedStudent:
        p, ctx = self.params, self.context
        return load_student_runner(path, ctx.device, ctx.dtype, backend=p.backend, cuda_graph=p.cuda_graph,
                                   cache_dir=p.cache_dir or None)

    def process(self, frame: Frame) -> dict[str, Mask]:
        new = self._watcher.take() if self._watcher is not None else None
        if new is not None:  # a new export: the old model is closed once no queued frame uses it
            self._retired.add(self._student.close)
            self._student = new
            self._swaps += 1
            self.logger.warning("%s: picked up new personalized model %s", self.name, new.path)
            self.report("model", str(new.path))
            self.report("student_swaps", self._swaps)
        self._retired.tick()
        return {"mask": self._student(frame)}

    def update_params(self, params: Params) -> bool:
        if params.model_copy(update={"watch_s": self.params.watch_s}) != self.params:
            return False
        self.params = params
        return True

    def close(self) -> None:
        if getattr(self, "_watcher", None) is not None:
            self._watcher.stop()
        if getattr(self, "_retired", None) is not None:
            self._retired.close()
        if getattr(self, "_student", None) is not None:
            self._student.close()
