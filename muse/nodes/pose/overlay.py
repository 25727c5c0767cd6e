"""`pose.overlay`: a debug picture for the preview: the body skeleton (person's
left in one colour, right in another) and the face mesh with its jaw line and
irises drawn onto the frame, on the device, without a host round trip.
"""

from __future__ import annotations

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeParams, Out
from muse.graph.payloads import FaceLandmarks, Frame, Keypoints
from muse.nodes.pose.formats import BONES, bone_indices, skeleton_names

LEFT = (255, 160, 40)  # person's left: orange
RIGHT = (40, 160, 255)  # person's right: blue
CENTRE = (235, 235, 235)
MESH = (120, 255, 120)
JAW = (255, 80, 200)
IRIS = (255, 255, 60)


def _side_colour(a: str, b: str) -> tuple[int, int, int]:
    if a.startswith("left") or b.startswith("left"):
        return LEFT if not (a.startswith("right") or b.startswith("right")) else CENTRE
    if a.startswith("right") or b.startswith("right"):
        return RIGHT
    return CENTRE


def draw_dots(image: torch.Tensor, points: torch.Tensor, colours: torch.Tensor, valid: torch.Tensor, radius: int) -> None:
    """Stamp squares of side 2*radius+1 at (P, 2) pixel points into (H, W, 3) uint8, in place.

    Invalid or off-frame points write into a spare pixel, so no host-side filtering (no sync)."""
    h, w = image.shape[:2]
    r = torch.arange(-radius, radius + 1, device=image.device)
    oy, ox = torch.meshgrid(r, r, indexing="ij")
    px = (points[:, 0:1].floor().long() + ox.reshape(1, -1))
    py = (points[:, 1:2].floor().long() + oy.reshape(1, -1))
    inside = (px >= 0) & (px < w) & (py >= 0) & (py < h) & valid[:, None]
    flat_index = torch.where(inside, py * w + px, torch.full_like(px, h * w))
    canvas = torch.cat([image.reshape(-1, 3), image.new_zeros(1, 3)])
    canvas.index_put_((flat_index.reshape(-1),), colours[:, None, :].expand(-1, flat_index.shape[1], -1).reshape(-1, 3))
    image.copy_(canvas[:-1].reshape(h, w, 3))


def draw_lines(image: torch.Tensor, start: torch.Tensor, end: torch.Tensor, colours: torch.Tensor, valid: torch.Tensor, radius: int) -> None:
    """Draw (S, 2) -> (S, 2) segments by stamping dots along them, at most
    `radius` apart: a fixed count per segment sized for the frame's diagonal, so
    segment lengths never need a host read."""
    h, w = image.shape[:2]
    steps = int((h * h + w * w) ** 0.5 / max(1, radius)) + 2
    t = torch.linspace(0, 1, steps, device=image.device)
    pts = start[:, None, :] + (end - start)[:, None, :] * t[None, :, None]
    keep = valid[:, None].expand(-1, steps)
    draw_dots(image, pts.reshape(-1, 2), colours[:, None, :].expand(-1, steps, -1).reshape(-1, 3), keep.reshape(-1), radius)


class Overlay(Node):
    node_type = "pose.overlay"
    capturable = True
    display_name = "Pose/face overlay"
    description = "Draws the body skeleton and the face mesh (jaw, irises) on the frame for the preview."

    frame: In[Frame]
    keypoints: In[Keypoints] = In(optional=True, description="Body keypoints to draw")
    face: In[FaceLandmarks] = In(optional=True, description="Face landmarks to draw")
    out: Out[Frame]

    class Params(NodeParams):
        min_confidence: float = Field(0.5, ge=0.0, le=1.0, description="Keypoints below this confidence are not drawn")
        thickness: int = Field(0, ge=0, le=32, description="Line half-width in pixels; 0 = scale with the frame (1 px per 540 rows)")
        face_mesh: bool = Field(True, description="Draw every face mesh point (else only jaw and irises)")

    params: Params

    def _const(self, key: tuple, make) -> torch.Tensor:
        """Device constants (bones, colours, indices) built once: a host->device copy per frame may sync."""
        cache = self.__dict__.setdefault("_consts", {})
        if key not in cache:
            cache[key] = make()
        return cache[key]

    def process(self, frame: Frame, keypoints: Keypoints | None = None, face: FaceLandmarks | None = None) -> dict[str, Frame]:
        image = frame.hwc_uint8().clone()
        dev = image.device
        radius = self.params.thickness or max(1, frame.height // 540)
        if keypoints is not None:
            names = skeleton_names(keypoints.skeleton)
            sx = frame.width / keypoints.image_size[0]
            sy = frame.height / keypoints.image_size[1]
            pts = keypoints.points.to(dev).float()
            pts = torch.stack([pts[:, 0] * sx, pts[:, 1] * sy], dim=-1)
            ok = keypoints.confidence.to(dev) >= self.params.min_confidence
            sk = keypoints.skeleton
            bones = self._const(("bones", sk, dev), lambda: bone_indices(sk).to(dev))
            colours = self._const(("bone_colours", sk, dev), lambda: torch.tensor([_side_colour(a, b) for a, b in BONES[sk]], dtype=torch.uint8, device=dev))
            draw_lines(image, pts[bones[:, 0]], pts[bones[:, 1]], colours, ok[bones[:, 0]] & ok[bones[:, 1]], radius)
            joint_colours = self._const(("joint_colours", sk, dev), lambda: torch.tensor([_side_colour(n, n) for n in names], dtype=torch.uint8, device=dev))
            draw_dots(image, pts, joint_colours, ok, radius + 1)
        if face is not None:
            sx = frame.width / face.image_size[0]
            sy = frame.height / face.image_size[1]
            pts = face.points[:, :2].to(dev).float()
            pts = torch.stack([pts[:, 0] * sx, pts[:, 1] * sy], dim=-1)
            conf = torch.as_tensor(face.confidence, dtype=torch.float32).to(dev)
            ok = (conf >= self.params.min_confidence).expand(pts.shape[0])
            colour = lambda c: self._const(("colour", c, dev), lambda: torch.tensor(c, dtype=torch.uint8, device=dev))  # noqa: E731
            if self.params.face_mesh:
                draw_dots(image, pts, colour(MESH).expand(pts.shape[0], 3), ok, max(0, radius - 1))
            jaw = tuple(face.regions.get("jaw", ()))
            if jaw:
                j = self._const(("idx", jaw, dev), lambda: torch.tensor(jaw, device=dev))
                draw_lines(image, pts[j[:-1]], pts[j[1:]], colour(JAW).expand(len(jaw) - 1, 3), ok[: len(jaw) - 1], radius)
            for name in ("left_iris", "right_iris"):
                idx = tuple(face.regions.get(name, ()))
                if idx:
                    i = self._const(("idx", idx, dev), lambda: torch.tensor(idx, device=dev))
                    draw_dots(image, pts[i], colour(IRIS).expand(len(idx), 3), ok[: len(idx)], radius)
        return {"out": frame.with_image(image, layout="hwc")}
