"""`landmarks.smooth`: One-Euro filtering of body keypoints and face landmarks,
so warps stay still when the person is still and keep up when they move.

The cutoff rises with speed (`beta`); speed is measured in body (or face)
sizes per second, so one setting suits a close-up and a full-body shot alike.
All state stays on the device; points whose confidence drops below
`min_confidence` pass through and restart their filter.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
import torch.nn.functional as F
from pydantic import Field

from muse.graph.node import In, Node, NodeContext, NodeParams, Out
from muse.graph.payloads import FaceLandmarks, Keypoints
from muse.nodes.cpu import wanted
from muse.nodes.landmarks.smooth_kernel import one_euro_both_cuda


class OneEuro:
    """One-Euro filter over (N, D) points; `valid` (N,) bool marks points to filter.

    State (last value, speed, time) lives in device buffers updated in place, and time
    is a device scalar, so a recorded frame replays the filter correctly."""

    def __init__(self, min_cutoff: float, beta: float, d_cutoff: float) -> None:
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.x: torch.Tensor | None = None
        self.dx: torch.Tensor | None = None
        self.t: torch.Tensor | None = None  # float64 seconds

    def reset(self) -> None:
        self.x = self.dx = self.t = None

    def ready_for(self, shape: torch.Size) -> bool:
        return self.x is not None and self.x.shape == shape

    def __call__(self, x: torch.Tensor, t: torch.Tensor | float, scale: torch.Tensor, valid: torch.Tensor | None = None, default_dt: float = 1 / 30) -> torch.Tensor:
        """Filter one sample taken at time `t` (seconds; a device scalar, or a float); a time that
        does not advance (unstamped frames) counts as `default_dt` later."""
        x = x.float()
        t = torch.as_tensor(t, dtype=torch.float64, device=x.device)
        if self.x is None or self.t is None or self.dx is None or self.x.shape != x.shape:
            self.x, self.dx, self.t = x.clone(), torch.zeros_like(x), t.clone()
            return x
        # Few ops on a few hundred floats: each is a kernel launch on the GPU (the whole filter was ~37).
        # alpha(cutoff) = 1 / (1 + tau / dt) with tau = 1 / (2 pi cutoff) is k c / (k c + 1), k = 2 pi dt.
        step = t - self.t
        dt64 = torch.where(step > 0, step, default_dt)
        dt = dt64.float()
        k = dt * (2 * math.pi)
        speed = (x - self.x) / (dt * scale)  # sizes per second
        kd = k * self.d_cutoff
        dx = torch.lerp(self.dx, speed, kd / (kd + 1))
        magnitude = torch.linalg.vector_norm(dx[..., :2], dim=-1, keepdim=True)  # one cutoff per point, isotropic
        kc = torch.addcmul(k * self.min_cutoff, k, magnitude, value=self.beta)  # k (min_cutoff + beta |dx|)
        out = torch.lerp(self.x, x, kc / (kc + 1))
        if valid is not None:  # lost points restart from the raw value
            keep = valid.reshape(-1, *([1] * (x.dim() - 1)))
            out = torch.where(keep, out, x)
            dx = dx * keep  # 0 where lost (one op: a where with a number also makes that number a tensor)
        self.x.copy_(out)
        self.dx.copy_(dx)
        self.t.add_(dt64)
        return out


def _extent(points: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Size of the body or face in pixels (larger side of the box of valid points), never below 1."""
    xy = points[:, :2].float()
    if valid is not None:
        # no valid point: lo = +inf, hi = -inf, so the size is -inf and the clamp gives 1
        lo = torch.where(valid[:, None], xy, math.inf).amin(0)
        hi = torch.where(valid[:, None], xy, -math.inf).amax(0)
    else:
        lo, hi = torch.aminmax(xy, dim=0)
    return (hi - lo).amax().clamp(min=1.0)


class Smooth(Node):
    node_type = "landmarks.smooth"
    display_name = "Smooth landmarks"
    description = "One-Euro filter for body keypoints and/or face landmarks: steady when still, no lag when moving."
    capturable = True

    keypoints: In[Keypoints] = In(optional=True, description="Body keypoints to smooth")
    face: In[FaceLandmarks] = In(optional=True, description="Face landmarks to smooth")
    smoothed_keypoints: Out[Keypoints]
    smoothed_face: Out[FaceLandmarks]

    class Params(NodeParams):
        min_cutoff: float = Field(1.0, gt=0.0, le=30.0, description="Hz; lower = steadier when still (more lag at rest)")
        beta: float = Field(20.0, ge=0.0, le=1000.0, description="How fast the cutoff rises with speed; higher = less lag when moving")
        d_cutoff: float = Field(1.0, gt=0.0, le=30.0, description="Hz; smoothing of the speed estimate itself")
        min_confidence: float = Field(0.3, ge=0.0, le=1.0, description="Keypoints below this confidence are passed through and restart")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        self._filters: dict[str, OneEuro] = {}
        self._count = 0
        self._cpu = None
        if wanted(ctx):  # issue 13: numpy on the host, each payload's own time
            from muse.nodes.cpu.smooth import SmoothCPU

            self._cpu = SmoothCPU(self)

    def update_params(self, params: Params) -> bool:
        self.params = params
        for f in getattr(self, "_filters", {}).values():
            f.min_cutoff, f.beta, f.d_cutoff = params.min_cutoff, params.beta, params.d_cutoff
        if getattr(self, "_cpu", None) is not None:
            self._cpu.update(params)
        return True

    def _filter(self, key: str) -> OneEuro:
        f = self._filters.get(key)
        if f is None:
            p = self.params
            f = self._filters[key] = OneEuro(p.min_cutoff, p.beta, p.d_cutoff)
        return f

    def _fps(self) -> float:
        return self.ctx.fps if self.ctx is not None and self.ctx.fps > 0 else 30.0

    def frame_variant(self) -> tuple[bool, ...]:
        return tuple(f.x is not None for f in self._filters.values())

    def _now(self, timestamp: float, device: torch.device) -> torch.Tensor | float:
        """The frame's time: the runtime's device clock (replays see it advance), else the payload's."""
        clock = self.ctx.clock if self.ctx is not None else None
        if clock is not None and clock.device == device:
            return clock
        return timestamp

    def process(self, keypoints: Keypoints | None = None, face: FaceLandmarks | None = None) -> dict[str, Keypoints | FaceLandmarks]:
        self._count += 1
        if self._cpu is not None:
            return self._cpu.process(keypoints, face)
        if keypoints is not None and face is not None and keypoints.timestamp == face.timestamp:
            fast = self._both_in_one_kernel(keypoints, face)
            if fast is not None:
                return fast
        out: dict[str, Keypoints | FaceLandmarks] = {}
        kp_valid = kp_scale = face_valid = face_scale = None
        if keypoints is not None:
            kp_valid = keypoints.confidence >= self.params.min_confidence
            kp_scale = _extent(keypoints.points, kp_valid)
        if face is not None:
            # confidence may be a 0-d device tensor: compare on the device, never branch on it here
            face_valid = (self._face_confidence(face) >= self.params.min_confidence).expand(face.points.shape[0])
            face_scale = _extent(face.points, None)
        if keypoints is not None and face is not None and keypoints.points.device == face.points.device and keypoints.timestamp == face.timestamp:
            # Body and face through one filter: its ~23 ops run once on the stacked points (each row keeps its
            # own scale and validity; the time is the same frame's), not once per payload.
            assert kp_scale is not None and kp_valid is not None and face_scale is not None and face_valid is not None
            (k, n), (m, nf) = keypoints.points.shape, face.points.shape
            d = max(n, nf)
            parts = [p if p.shape[1] == d else F.pad(p, (0, d - p.shape[1])) for p in (keypoints.points.float(), face.points.float())]
            x = torch.cat(parts)
            scale = torch.cat([kp_scale.expand(k), face_scale.expand(m)])[:, None]
            valid = torch.cat([kp_valid, face_valid])
            pts = self._filter("both")(x, self._now(keypoints.timestamp, x.device), scale, valid, 1 / self._fps())
            out["smoothed_keypoints"] = replace(keypoints, points=pts[:k, :n].to(keypoints.points.dtype).contiguous())
            out["smoothed_face"] = replace(face, points=pts[k:, :nf].to(face.points.dtype))
            return out
        if keypoints is not None:
            f = self._filter("keypoints")
            now = self._now(keypoints.timestamp, keypoints.points.device)
            pts = f(keypoints.points, now, kp_scale, kp_valid, 1 / self._fps())
            out["smoothed_keypoints"] = replace(keypoints, points=pts.to(keypoints.points.dtype))
        if face is not None:
            f = self._filter("face")
            pts = f(face.points, self._now(face.timestamp, face.points.device), face_scale, face_valid, 1 / self._fps())
            out["smoothed_face"] = replace(face, points=pts.to(face.points.dtype))
        return out

    def _face_confidence(self, face: FaceLandmarks) -> torch.Tensor:
        """The face's confidence as a tensor on its points' device (it may come as a number)."""
        conf = face.confidence
        if not (isinstance(conf, torch.Tensor) and conf.device == face.points.device):
            conf = torch.as_tensor(conf, device=face.points.device, dtype=torch.float32)
        return conf

    def _both_in_one_kernel(self, keypoints: Keypoints, face: FaceLandmarks) -> dict[str, Keypoints | FaceLandmarks] | None:
        """Body and face through the filter in one CUDA launch (smooth_kernel.py), once the filter holds their
        state; None on its first frame, off CUDA, or for inputs the kernel does not take (the torch steps then)."""
        f = self._filters.get("both")
        dev = keypoints.points.device
        if f is None or dev.type != "cuda" or face.points.device != dev:
            return None
        now = torch.as_tensor(self._now(keypoints.timestamp, dev), dtype=torch.float64, device=dev)
        got = one_euro_both_cuda(f, keypoints.points, keypoints.confidence, face.points, self._face_confidence(face), now,
                                 self.params.min_confidence, 1 / self._fps())
        if got is None:
            return None
        return {"smoothed_keypoints": replace(keypoints, points=got[0]), "smoothed_face": replace(face, points=got[1])}
