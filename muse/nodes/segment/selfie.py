"""`segment.selfie`: MediaPipe's bundled selfie segmenter (general 256x256 or
landscape 256x144), converted to torch. Frame -> person Mask at the model's
resolution; the frame is resized (or letterboxed) on the graph's device. With `crop` on the model also
looks at a crop around the person and that view replaces the whole frame's there (`selfie_crop`). The pose
tracker's person is merged in after it by `segment.person` (`person.py`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Mask
from muse.nodes.cpu import wanted
from muse.nodes.exposure import brighten
from muse.nodes.segment.selfie_crop import SecondLook, source_size
from muse.nodes.segment.shrink import shrink_u8

__all__ = ["SelfieSegment", "SELFIE_MODELS"]

# param value -> bundled model name (muse.models.bundled)
SELFIE_MODELS = {"general": "selfie_segmentation", "landscape": "selfie_segmentation_landscape"}


class _SelfieMask(nn.Module):
    """The converted model with its (1, H, W, 1) NHWC output reduced to a (1, H, W) person mask."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[0][..., 0]


class SelfieSegment(Node):
    node_type = "segment.selfie"
    display_name = "Selfie segmentation"
    description = (
        "Person mask from MediaPipe's bundled selfie model (no weights to download by hand). "
        "Fast; soft edges at 256 px: follow it with segment.refine for full-resolution edges."
    )
    capturable = True  # static shapes per frame size, no host sync in process

    frame: In[Frame]
    mask: Out[Mask]

    class Params(NodeParams):
        model: Literal["general", "landscape"] = Field(
            "general", description="general: 256x256, any framing; landscape: 256x144, faster, for 16:9 webcams"
        )
        fit: Literal["letterbox", "stretch"] = Field(
            "letterbox",
            description="letterbox: keep proportions with black borders (the mask is cropped back to the frame's "
            "aspect; more reliable on wide frames with the general model); stretch: squeeze the whole frame in",
        )
        backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
            "auto", description="Inference backend; auto = torch (CUDA graph on a GPU) unless TensorRT is installed"
        )
        cuda_graph: bool = Field(True, description="torch on a GPU: replay the model as a CUDA graph")
        auto_exposure: bool = Field(
            True, description="Brighten dark frames before the model (it was trained on well-lit selfies; low light halves its accuracy)"
        )
        crop: bool = Field(
            False,
            description="Also run the model on a crop around the person (the box of everything the last frame's mask "
            "was sure of) and use that closer view there: small or far people get their limbs and outline, mostly "
            "without a clean plate. One model call more a frame: +9 ms of CPU a 720p frame on the CPU path (webcam_720p "
            "108 -> 67 fps on two cores), +1.0 ms of GPU a 4K frame on the H200, so off unless asked for (an edit "
            "re-records a captured frame)",
        )
        crop_margin: float = Field(0.15, ge=0.0, le=1.0, description="Room around the person's box in the crop, as a fraction of the box on each side")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._backend = None
        self._cpu = None
        self._look = SecondLook(ctx.device, self.params.crop_margin)  # the crop's box, kept across frames
        self._load()

    def _load(self) -> None:
        from muse.models import bundled  # the model layer; imported here so listing nodes stays light
        from muse.models.backends import BackendError, create_backend

        ctx, p = self.ctx, self.params
        assert ctx is not None
        self._cpu = None
        name = SELFIE_MODELS[p.model]
        try:
            model = bundled.load_model(name, device="cpu")
        except bundled.ModelImportError as exc:
            raise NodeError(
                f"node '{self.name}' (segment.selfie), field 'model' = {p.model!r}: bundled model {name!r} "
                f"is not available: {exc}"
            ) from exc
        w, h = bundled.CATALOGUE[name].input_size
        self._model_size = (w, h)
        if wanted(ctx) and p.backend in ("auto", "onnxruntime"):  # issue 13: the CPU path
            from muse.nodes.cpu.selfie import SelfieCPU

            self._cpu = SelfieCPU(str(bundled.onnx_model_path(name)), (w, h), self._layout, lambda: self.params.auto_exposure,
                                  lambda: self._look if self.params.crop else None)
            self._backend = self._cpu
            ctx.report("model", name)
            ctx.report("backend", self._cpu.describe())
            ctx.report("working_size", [w, h])
            return
        example = torch.zeros(1, 3, h, w, device=ctx.device, dtype=ctx.dtype)
        try:
            self._backend = create_backend(
                backend=p.backend, device=ctx.device, dtype=ctx.dtype, model=_SelfieMask(model),
                example=example, stem=name, cuda_graph=p.cuda_graph,
            )
        except BackendError as exc:
            raise NodeError(f"node '{self.name}' (segment.selfie), field 'backend': {exc}") from exc
        ctx.report("model", name)
        ctx.report("backend", self._backend.describe())
        ctx.report("working_size", [w, h])

    def update_params(self, params: Params) -> bool:
        old = self.params
        self.params = params
        if self.ctx is None:
            return True
        self._look.margin = params.crop_margin
        if (params.model, params.backend, params.cuda_graph) != (old.model, old.backend, old.cuda_graph):
            if self._backend is not None:
                self._backend.close()
            self._load()  # a model switch loads from the cache in milliseconds
        return True

    def _layout(self, frame_w: int, frame_h: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h): where the frame lands inside the model input."""
        mw, mh = self._model_size
        if self.params.fit == "stretch":
            return 0, 0, mw, mh
        scale = min(mw / frame_w, mh / frame_h)
        w = max(1, min(mw, round(frame_w * scale)))
        h = max(1, min(mh, round(frame_h * scale)))
        return (mw - w) // 2, (mh - h) // 2, w, h

    def process(self, frame: Frame) -> dict[str, Mask]:
        if self._cpu is not None:
            return self._cpu.process(frame)
        ctx = self.ctx
        assert ctx is not None and self._backend is not None
        mw, mh = self._model_size
        x0, y0, w, h = self._layout(frame.width, frame.height)
        resize = (frame.width, frame.height) != (w, h)
        if resize and frame.layout == "hwc" and frame.image.dtype == torch.uint8 and frame.image.device.type == "cpu":
            # CPU: shrink the uint8 picture first (torch's channels-last uint8 path is ~30x cheaper than
            # converting the whole frame to float), then convert the 256 px result.
            small = F.interpolate(frame.image.permute(2, 0, 1).unsqueeze(0), size=(h, w), mode="bilinear",
                                  align_corners=False, antialias=True)
            img = small.to(ctx.dtype).div_(255.0).contiguous()
            resize = False
        else:
            # CUDA: resized straight from the uint8 bytes (shrink.py); None where it cannot, then torch's ops
            small = shrink_u8(frame.image, (w, h), ctx.dtype) if resize and frame.layout == "hwc" else None
            img, resize = (small, False) if small is not None else (frame.chw(ctx.dtype).unsqueeze(0), resize)
        if img.device != ctx.device:
            img = img.to(ctx.device, non_blocking=True)
        if resize:
            # antialias: a 4K frame squeezed to 256 px would alias badly with plain bilinear taps
            img = F.interpolate(img, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if self.params.auto_exposure:
            img = brighten(img)
        if (w, h) != (mw, mh):
            img = F.pad(img, (x0, mw - w - x0, y0, mh - h - y0))  # black borders, as MediaPipe's BORDER_ZERO
        alpha = self._backend(img)[0]
        if (w, h) != (mw, mh):
            alpha = alpha[y0 : y0 + h, x0 : x0 + w]
        if self.params.crop:
            alpha = self._look(alpha, (frame.width, frame.height), (mw, mh), min(w / frame.width, h / frame.height),
                               lambda: self._source(frame), self._crop_model)
        return {"mask": Mask(alpha.contiguous(), frame.timestamp, frame.index)}

    def _source(self, frame: Frame) -> torch.Tensor:
        """The picture the crop is sampled from: the frame, shrunk (antialiased) where it is far larger than needed."""
        ctx = self.ctx
        assert ctx is not None
        _, _, w, h = self._layout(frame.width, frame.height)
        sw, sh = source_size(frame.width, frame.height, w, h)
        small = shrink_u8(frame.image, (sw, sh), ctx.dtype) if (sw, sh) != (frame.width, frame.height) and frame.layout == "hwc" else None
        if small is not None:
            return small
        img = frame.chw(ctx.dtype).unsqueeze(0).to(ctx.device, non_blocking=True)
        if (sw, sh) != (frame.width, frame.height):
            img = F.interpolate(img, size=(sh, sw), mode="bilinear", align_corners=False, antialias=True)
        return img

    def _crop_model(self, img: torch.Tensor) -> torch.Tensor:
        assert self._backend is not None and self.ctx is not None
        img = img.to(self.ctx.dtype)
        if self.params.auto_exposure:
            img = brighten(img)
        return self._backend(img.contiguous())[0]

    def close(self) -> None:
        if getattr(self, "_backend", None) is not None:
            self._backend.close()
            self._backend = None
