"""`warp.face`: bigger eyes, V-line jaw and a slimmer face as one smooth Displacement.

Built at low resolution from FaceLandmarks regions (never raw mesh indices):
local radial scaling around each eye, and landmark-guided inward shifts of the
face outline (jaw for `v_line`, cheeks for `slim`), spread by a compact kernel.
"""

from __future__ import annotations

import torch
from pydantic import Field

from muse.graph.capture import device_constant
from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import Displacement, FaceLandmarks, Frame
from muse.nodes.cpu import wanted
from muse.nodes.warp.face_kernel import face_field_cuda
from muse.nodes.warp.fields import bump, compact_gaussian, field_points, smoothstep, zero_field

# Strength 1 maps to these; chosen so the map stays one-to-one (no fold-over).
EYE_MAX_SCALE = 0.35  # centre magnification 1 / (1 - 0.35) = 1.54x
V_LINE_MAX = 0.16  # jaw points move inward by 16 % of their distance to the face axis
SLIM_MAX = 0.10  # cheek points move inward by 10 %


def eye_field(
    xs: torch.Tensor, ys: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor, scale: float | torch.Tensor
) -> torch.Tensor:
    """Backward field of a local magnifier: d = -(p - c) * s * (1 - r^2/R^2)^2 inside R, 0 outside."""
    px, py = xs - centre[0], ys - centre[1]
    rho2 = (px * px + py * py) / (radius * radius)
    k = scale * (1 - rho2).clamp_min(0) ** 2
    return torch.stack((-px * k, -py * k))


def outline_field(
    xs: torch.Tensor, ys: torch.Tensor, points: torch.Tensor, shifts: torch.Tensor, sigma: torch.Tensor
) -> torch.Tensor:
    """Backward field that moves each outline point by its shift, spread smoothly around it.

    d(p) = -sum_j shift_j k_j(p) / max(1, sum_j k_j(p)): near the outline the
    points move by about their shift; it decays to exactly 0 at 3 sigma.
    """
    dx = xs[None] - points[:, 0, None, None]
    dy = ys[None] - points[:, 1, None, None]
    k = compact_gaussian(dx * dx + dy * dy, sigma)  # (N, h, w)
    norm = k.sum(0).clamp_min(1.0)
    # both components in one contraction over the N points (no (N, h, w) product per component)
    return torch.tensordot(-shifts.float(), k, dims=([0], [0])) / norm


def eyes_field(grid: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, scale: float) -> torch.Tensor:
    """`eye_field` of several eyes at once, summed: grid (2, h, w), centres (E, 2), radii (E,)."""
    p = grid[None] - centres[:, :, None, None]  # (E, 2, h, w)
    rho2 = (p * p).sum(1) / (radii * radii)[:, None, None]
    k = (1 - rho2).clamp_min(0) ** 2
    return (p * k[:, None]).sum(0) * -scale


class FaceWarp(Node):
    node_type = "warp.face"
    display_name = "Face warp"
    description = "Bigger eyes, V-line jaw and face slimming from face landmarks, as a low-resolution Displacement."
    capturable = True  # region lists are fixed per face model; a new shape is a new recording

    landmarks: In[FaceLandmarks] = In(optional=True, description="No face this frame -> identity field")
    frame: In[Frame] = In(optional=True, description="Only for the picture size when no face is found")
    field: Out[Displacement]

    class Params(NodeParams):
        eyes: float = Field(0.0, ge=0.0, le=1.0, description="Eye enlargement; 0 = off, 1 = 1.5x at the pupil")
        v_line: float = Field(0.0, ge=0.0, le=1.0, description="V-line: pull the lower jaw in; 0 = off")
        slim: float = Field(0.0, ge=0.0, le=1.0, description="Face slimming: pull the cheeks in; 0 = off")
        eye_radius: float = Field(2.0, ge=1.2, le=3.0, description="Eye warp radius, in eye half-widths")
        cell: int = Field(8, ge=1, le=32, description="Field resolution: one value per cell x cell pixels")
        min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Below this face confidence the field is identity")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._warned: set[str] = set()
        self._cpu = None
        if wanted(ctx):  # issue 13: numpy over the cells each term reaches
            from muse.nodes.cpu.face_warp import FaceWarpCPU

            self._cpu = FaceWarpCPU(self)

    def fallback(self, landmarks: FaceLandmarks | None = None, frame: Frame | None = None) -> dict[str, Displacement]:
        """No reshaping (a zero field): what `on_error: fallback` stands in with, and `hold_last` before a good frame."""
        ctx = self.context
        if landmarks is not None:
            size, device = (int(landmarks.image_size[0]), int(landmarks.image_size[1])), landmarks.points.device
        elif frame is not None:
            size, device = (int(frame.size[0]), int(frame.size[1])), frame.image.device
        else:
            size, device = (int(ctx.resolution[0]), int(ctx.resolution[1])), ctx.device
        stamp = landmarks or frame
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        return {"field": Displacement(zero_field(size, self.params.cell, device), size, ts, idx)}

    def process(self, landmarks: FaceLandmarks | None = None, frame: Frame | None = None) -> dict[str, Displacement]:
        if self._cpu is not None:
            return self._cpu.process(landmarks, frame)
        ctx = self.ctx
        assert ctx is not None
        if landmarks is not None:
            size = tuple(landmarks.image_size)
        elif frame is not None:
            size = frame.size
        else:
            size = tuple(ctx.resolution)
        size = (int(size[0]), int(size[1]))
        device = landmarks.points.device if landmarks is not None else (frame.image.device if frame is not None else ctx.device)
        stamp = landmarks or frame
        ts, idx = (stamp.timestamp, stamp.index) if stamp is not None else (0.0, 0)
        p = self.params
        conf = landmarks.confidence if landmarks is not None else 0.0
        # face.landmarks gives a 0-d device tensor: gate on the device instead of syncing to test it
        weak = not isinstance(conf, torch.Tensor) and float(conf) < p.min_confidence
        if landmarks is None or weak or (p.eyes == 0 and p.v_line == 0 and p.slim == 0):
            return {"field": Displacement(zero_field(size, p.cell, device), size, ts, idx)}
        xs, ys, grid = field_points(size, p.cell, device)
        pts = landmarks.points[:, :2].float()
        regions = landmarks.regions

        eyes = self._eyes(pts, regions)
        eye_terms: tuple[torch.Tensor, torch.Tensor, float] | None = None
        if p.eyes > 0 and eyes is not None:
            centres, half_widths = eyes  # (left, right)
            gap = (centres[1] - centres[0]).norm()
            radii = torch.minimum(half_widths * p.eye_radius, 0.45 * gap)  # the two eyes never overlap
            eye_terms = (centres, radii, EYE_MAX_SCALE * p.eyes)

        outline_terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        outline_name = "face_oval" if "face_oval" in regions else ("jaw" if "jaw" in regions else None)
        if (p.v_line > 0 or p.slim > 0) and outline_name and eyes is not None:
            outline_terms = self._outline(pts[device_constant(regions[outline_name], pts.device)], eyes[0][0], eyes[0][1])
        elif (p.v_line > 0 or p.slim > 0) and "outline" not in self._warned:
            self._warned.add("outline")
            ctx.logger.warning("node %r: landmarks have no 'face_oval'/'jaw' or eye regions; v_line/slim are off", self.name)
        gate = conf if isinstance(conf, torch.Tensor) else None
        # on CUDA one kernel a frame (face_kernel.py); torch's steps elsewhere, or where it cannot run
        field = face_field_cuda(size, tuple(xs.shape), device, eye_terms, outline_terms, gate, p.min_confidence)
        if field is None:
            field = self._field_torch(xs, ys, grid, eye_terms, outline_terms, gate)
        return {"field": Displacement(field, size, ts, idx)}

    def _field_torch(self, xs: torch.Tensor, ys: torch.Tensor, grid: torch.Tensor,
                     eye_terms: tuple[torch.Tensor, torch.Tensor, float] | None,
                     outline_terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
                     gate: torch.Tensor | None) -> torch.Tensor:
        """The field in torch steps: the eyes' magnifiers plus the outline's shifts, gated by the confidence."""
        field = eyes_field(grid, *eye_terms) if eye_terms is not None else None
        if outline_terms is not None:
            outline = outline_field(xs, ys, *outline_terms)
            field = outline if field is None else field + outline
        if field is None:
            field = torch.zeros((2, *xs.shape), device=xs.device, dtype=torch.float32)
        if gate is not None:
            c = gate if gate.device == field.device and gate.dtype == torch.float32 else gate.to(field.device, torch.float32)
            field = torch.where(c >= self.params.min_confidence, field, 0.0)
        return field

    def _eyes(self, pts: torch.Tensor, regions: dict[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Both eyes, (left, right): centres (2, 2) and half-widths (2,); None (and a warning once) without them."""
        contours: list[list[int]] = []
        for side in ("left", "right"):
            contour = self._eye_contour(regions, side)
            if contour is None:
                return None
            contours.append(contour)
        irises = [regions.get("left_iris"), regions.get("right_iris")]
        if len(contours[0]) != len(contours[1]) or bool(irises[0]) != bool(irises[1]) or (irises[0] and len(irises[0]) != len(irises[1] or ())):
            found = [self._eye(pts, regions, side) for side in ("left", "right")]  # contours of different lengths
            return torch.stack([f[0] for f in found if f is not None]), torch.stack([f[1] for f in found if f is not None])
        eye = pts[device_constant(contours, pts.device)]  # (2, n, 2), one gather for both eyes
        centres = pts[device_constant(irises, pts.device)].mean(1) if irises[0] else eye.mean(1)
        half_widths = (eye[:, :, None, :] - eye[:, None, :, :]).norm(dim=-1).amax((1, 2)) * 0.5
        return centres, half_widths.clamp_min(1.0)

    def _eye_contour(self, regions: dict[str, list[int]], side: str) -> list[int] | None:
        """The eye's contour indices; None (and a warning once) when the landmarks have none."""
        contour = regions.get(f"{side}_eye")
        if not contour and f"{side}_eye" not in self._warned:
            self._warned.add(f"{side}_eye")
            self.logger.warning("node %r: landmarks have no %r region; eyes are off", self.name, f"{side}_eye")
        return contour or None

    def _eye(self, pts: torch.Tensor, regions: dict[str, list[int]], side: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        contour = self._eye_contour(regions, side)
        if contour is None:
            return None
        eye = pts[device_constant(contour, pts.device)]
        iris = regions.get(f"{side}_iris")
        centre = pts[device_constant(iris, pts.device)].mean(0) if iris else eye.mean(0)
        half_width = (eye[:, None, :] - eye[None, :, :]).norm(dim=-1).max() / 2
        return centre, half_width.clamp_min(1.0)

    def _outline(self, outline: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inward shifts of the outline below the eyes, in a face frame that follows head roll: the outline's
        points, their shifts and the spread (sigma) that `outline_field` takes."""
        p = self.params
        eye_mid = (left + right) / 2
        across = right - left
        across = across / across.norm().clamp_min(1e-6)
        down = torch.stack((-across[1], across[0]))
        # the face outline's mass lies below the eyes: orient `down` towards it
        sign = torch.sign((outline.mean(0) - eye_mid) @ down)
        down = down * torch.where(sign == 0, 1.0, sign)
        rel = outline - eye_mid
        t = rel @ down
        t = t / t.max().clamp_min(1.0)  # 0 at the eyes, 1 at the chin
        s = rel @ across  # signed distance from the face axis
        jaw_w = smoothstep(0.35, 0.75, t) * (1 - smoothstep(0.92, 1.05, t))
        cheek_w = bump(t, 0.45, 0.45) * (t > 0)
        inward = -(s * (V_LINE_MAX * p.v_line * jaw_w + SLIM_MAX * p.slim * cheek_w))
        shifts = inward[:, None] * across[None, :]
        face_width = (s.max() - s.min()).clamp_min(4.0)
        return outline, shifts, 0.15 * face_width
