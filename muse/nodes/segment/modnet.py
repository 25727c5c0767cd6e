"""`segment.modnet`: MODNet portrait matting from an official checkpoint, at 544p by default.

The matte comes out at the working resolution; `segment.refine` brings it to
full frame size. The model runs through `muse.models.backends` (torch + CUDA graph,
ONNX Runtime or TensorRT).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeAbsent, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.models.backends import BackendError, InferenceBackend, create_backend
from muse.models.modnet import MODNetMatte, ModnetCheckpointError, load_modnet, working_size
from muse.nodes.segment._prep import frame_batch, user_path

__all__ = ["ModnetSegment"]


class ModnetSegment(Node):
    node_type = "segment.modnet"
    display_name = "MODNet matting"
    description = "Person alpha matte from a MODNet checkpoint (official webcam or photographic weights)."

    frame: In[Frame]
    mask: Out[Mask]

    class Params(NodeParams):
        checkpoint: str = Field("", description="Path of modnet_webcam_portrait_matting.ckpt (or the photographic one)")
        height: int = Field(544, ge=64, le=2176, description="Working height in pixels (rounded to a multiple of 32)")
        width: int = Field(0, ge=0, le=3840, description="Working width; 0 = from the frame's aspect ratio")
        backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
            "auto", description="Inference backend; auto = TensorRT on a GPU when installed, else torch"
        )
        cuda_graph: bool = Field(True, description="torch on a GPU: replay the model as a CUDA graph")
        cache_dir: str = Field("", description="Where ONNX exports and TensorRT engines are cached; empty = ~/.cache/muse/engines")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        if not p.checkpoint:
            raise NodeAbsent(
                f"node '{self.name}' (segment.modnet): field 'checkpoint' is empty; set it to the path of "
                "modnet_webcam_portrait_matting.ckpt from the official MODNet release"
            )
        path = user_path(p.checkpoint, ctx)
        if not path.exists():
            raise NodeAbsent(f"node '{self.name}' (segment.modnet), field 'checkpoint': {path} not found")
        try:
            model = load_modnet(path, "cpu")
        except ModnetCheckpointError as exc:
            raise NodeError(f"node '{self.name}' (segment.modnet), field 'checkpoint': {exc}") from exc
        self._matte = MODNetMatte(model)
        self._backend: InferenceBackend | None = None
        self._size = working_size(ctx.resolution, p.height, p.width)
        self._build()

    def _build(self) -> None:
        ctx, p = self.ctx, self.params
        assert ctx is not None
        example = torch.zeros(1, 3, self._size[1], self._size[0], device=ctx.device, dtype=ctx.dtype)
        try:
            self._backend = create_backend(
                backend=p.backend, device=ctx.device, dtype=ctx.dtype, model=self._matte, example=example,
                cache_dir=p.cache_dir or None, stem="modnet", cuda_graph=p.cuda_graph,
            )
        except BackendError as exc:
            raise NodeError(f"node '{self.name}' (segment.modnet), field 'backend': {exc}") from exc
        ctx.report("backend", self._backend.describe())
        ctx.report("working_size", list(self._size))

    def process(self, frame: Frame) -> dict[str, Mask]:
        ctx, p = self.ctx, self.params
        assert ctx is not None and self._backend is not None
        size = working_size(frame.size, p.height, p.width)
        if size != self._size:  # the camera changed resolution: new static shapes
            ctx.logger.info("%s: frame is %dx%d, MODNet now runs at %dx%d", self.name, *frame.size, *size)
            self._backend.close()
            self._size = size
            self._build()
        x = frame_batch(frame, self._size, ctx.dtype)
        matte = self._backend(x)
        return {"mask": Mask(matte[0, 0], frame.timestamp, frame.index)}

    def update_params(self, params: Params) -> bool:
        same = all(getattr(params, k) == getattr(self.params, k) for k in ("checkpoint", "height", "width", "backend", "cuda_graph"))
        if same:
            self.params = params
        return same

    def close(self) -> None:
        if getattr(self, "_backend", None) is not None:
            self._backend.close()
            self._backend = None
