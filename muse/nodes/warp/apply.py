"""`warp.apply`: one full-resolution pass that applies the face and body fields.

Sums the low-resolution Displacements, zeroes them outside the person's
dilated mask (rooms stay straight), then samples the frame once: the fused
CuPy kernel on CUDA, OpenCV on the CPU path. Uncovered pixels come from the
clean plate, and only where the room behind was seen (`coverage`): elsewhere the
person keeps their shape. The warped person mask is an output for the compositor.
"""

from __future__ import annotations

from typing import Literal

import torch
from muse.graph.capture import device_constant
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Displacement, Frame, Mask
from muse.nodes.cpu import wanted
from muse.nodes.warp import kernels
from muse.nodes.warp.fields import mask_gate, unseen_gate


def combine_fields(fields: list[Displacement], size: tuple[int, int]) -> torch.Tensor | None:
    """Sum fields on the finest grid among them, offsets rescaled to pictures of `size` (w, h)."""
    if not fields:
        return None
    grid = max((f.field.shape[-2:] for f in fields), key=lambda hw: hw[0] * hw[1])
    total = None
    for f in fields:
        v = f.field.float()
        if tuple(v.shape[-2:]) != tuple(grid):
            v = F.interpolate(v[None], size=tuple(grid), mode="bilinear", align_corners=False)[0]
        iw, ih = f.image_size
        if (iw, ih) != size:  # offsets are in pixels of the picture the field was made for
            v = v * device_constant([size[0] / iw, size[1] / ih], v.device, v.dtype)[:, None, None]
        total = v if total is None else total + v
    return total


class WarpApply(Node):
    node_type = "warp.apply"
    display_name = "Apply warp"
    description = "Applies face and body Displacements to a frame in one pass; fills uncovered pixels from the clean plate."
    capturable = True  # an input that comes or goes changes the signature: a new recording

    frame: In[Frame]
    face: In[Displacement] = In(optional=True, description="From warp.face")
    body: In[Displacement] = In(optional=True, description="From warp.body")
    mask: In[Mask] = In(optional=True, description="Person mask: limits the field and marks what moves")
    plate: In[Frame] = In(optional=True, description="Clean plate (background.adaptive) for uncovered pixels")
    coverage: In[Mask] = In(
        optional=True,
        description="background.adaptive's coverage: where the room behind was never seen, the person keeps their shape (no guessed room shows)",
    )
    out: Out[Frame]
    warped_mask: Out[Mask] = Out(description="The person mask after the warp (for composite); only with a mask input")

    class Params(NodeParams):
        margin: float = Field(0.04, ge=0.0, le=0.2, description="How far past the mask outline the field may reach, as a fraction of the frame height")
        unseen_room: Literal["hold", "reveal"] = Field(
            "hold",
            description="With a coverage input: 'hold' keeps the person's outline where the room behind was never seen "
            "(no made-up room shows through); 'reveal' warps anyway and shows the plate's filled-in guess",
        )
        backend: Literal["auto", "cupy", "torch"] = Field("auto", description="auto = CuPy kernel on CUDA when installed, torch elsewhere")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        if self.params.backend == "cupy":
            if not ctx.cuda:
                raise NodeError(f"node {self.name!r}: backend 'cupy' needs a CUDA device (settings.device is {ctx.device}); use backend: auto")
            if not kernels.cupy_available():
                raise NodeError(f"node {self.name!r}: backend 'cupy' but CuPy is not installed; pip install 'muse-engine[cuda]' or use backend: auto")
        self._backend = "cupy" if ctx.cuda and self.params.backend != "torch" and kernels.cupy_available() else "torch"
        if ctx.cuda and self._backend == "torch" and self.params.backend == "auto":
            ctx.logger.warning("node %r: CuPy not installed; the warp runs on torch grid_sample (slower)", self.name)
        ctx.report("backend", self._backend)
        self._cpu = None
        if wanted(ctx) and self.params.backend == "auto":  # issue 13: the CPU path
            from muse.nodes.cpu.warp import WarpCPU

            self._cpu = WarpCPU(self)
            ctx.report("backend", "opencv")

    def update_params(self, params: Params) -> bool:
        if params.backend != self.params.backend:
            return False  # rebuild: open() decides the backend
        self.params = params
        return True

    def process(
        self,
        frame: Frame,
        face: Displacement | None = None,
        body: Displacement | None = None,
        mask: Mask | None = None,
        plate: Frame | None = None,
        coverage: Mask | None = None,
    ) -> dict[str, object]:
        if coverage is not None and mask is not None and plate is not None and self.params.unseen_room == "hold":
            face, body = self._hold_unseen(frame, face, body, mask, coverage), None
        if self._cpu is not None:
            return self._cpu.process(frame, face, body, mask, plate)
        ctx = self.ctx
        assert ctx is not None
        field = combine_fields([f for f in (face, body) if f is not None], frame.size)
        outputs: dict[str, object] = {}
        if field is None:  # nothing to warp: pass the frame through untouched
            outputs["out"] = frame
            if mask is not None:
                outputs["warped_mask"] = mask
            return outputs
        src = frame.hwc_uint8()
        alpha = mask.alpha if mask is not None else None
        if alpha is not None:
            field = field * mask_gate(alpha, tuple(field.shape[-2:]), self.params.margin * field.shape[-2])
        plate_img = None
        if plate is not None and alpha is not None:
            plate_img = plate.hwc_uint8()
            if plate_img.shape != src.shape:
                plate_img = (
                    F.interpolate(plate_img.permute(2, 0, 1)[None].float(), size=src.shape[:2], mode="bilinear", align_corners=False)[0]
                    .round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).contiguous()
                )
        if self._backend == "cupy":
            img, warped = kernels.warp_apply_cupy(src, field, alpha, plate_img, stream=ctx.cupy_stream())
        else:
            img, warped = kernels.warp_apply_torch(src, field, alpha, plate_img)
        outputs["out"] = frame.with_image(img, layout="hwc")
        if warped is not None and mask is not None:
            outputs["warped_mask"] = Mask(warped, mask.timestamp, mask.index)
        return outputs

    def _hold_unseen(self, frame: Frame, face: Displacement | None, body: Displacement | None, mask: Mask,
                     coverage: Mask) -> Displacement | None:
        """The fields as one, held still where they would uncover never-seen room (`unseen_gate`)."""
        field = combine_fields([f for f in (face, body) if f is not None], frame.size)
        if field is None:
            return None
        if self._cpu is not None:
            from muse.nodes.cpu.unseen import unseen_gate_np

            field = field * unseen_gate_np(field, mask.alpha, coverage.alpha, frame.size)
        else:
            field = field * unseen_gate(field, mask.alpha, coverage.alpha, frame.size)
        return Displacement(field, frame.size, frame.timestamp, frame.index)
