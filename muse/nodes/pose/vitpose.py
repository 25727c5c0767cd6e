"""`pose.vitpose`: ViTPose (transformers' `VitPoseForPoseEstimation`), top-down
on one person box, COCO-17 keypoints. The checkpoint is a local folder in
`save_pretrained` layout (any ViTPose size, ViTPose++ included); fp16 on GPU.

The box comes from a connected person mask, else from the last frame's
keypoints while tracking, else from the bundled BlazePose person detector.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from muse.graph.node import In, Node, NodeAbsent, NodeContext, NodeError, NodeParams, Out
from muse.graph.payloads import Frame, Keypoints, Mask
from muse.nodes.landmarks import roi as R
from muse.nodes.landmarks.tracking import HostFlag

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BOX_PADDING = 1.25  # ViTPose's top-down margin around the person box


def load_vitpose(path: str | Path, device: torch.device, dtype: torch.dtype, where: str = "pose.vitpose") -> tuple[torch.nn.Module, dict]:
    """Load a ViTPose checkpoint folder; returns (model, info with input size and normalisation)."""
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise NodeError(
            f"{where}: checkpoint {folder} is not a ViTPose folder (no config.json); point `checkpoint` at a folder "
            "saved with save_pretrained, e.g. a local copy of usyd-community/vitpose-base-simple"
        )
    try:
        from transformers import VitPoseForPoseEstimation
    except ImportError as exc:
        raise NodeError(f"{where}: ViTPose needs the `transformers` package (MUSE's `studio` extra: pip install -e \".[studio]\"): {exc}") from None
    try:
        model = VitPoseForPoseEstimation.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except Exception as exc:
        raise NodeError(f"{where}: cannot load ViTPose from {folder}: {exc}") from exc
    cfg = model.config
    heads = getattr(cfg, "num_labels", 17)
    if heads != 17:
        raise NodeError(f"{where}: checkpoint {folder} predicts {heads} keypoints; pose.vitpose needs a COCO-17 model")
    height, width = cfg.backbone_config.image_size
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    pre = folder / "preprocessor_config.json"
    if pre.is_file():  # honour the checkpoint's own normalisation
        spec = json.loads(pre.read_text())
        mean = tuple(spec.get("image_mean", mean))
        std = tuple(spec.get("image_std", std))
    info = {
        "size": (int(width), int(height)),
        "mean": torch.tensor(mean, device=device).view(1, 3, 1, 1),
        "std": torch.tensor(std, device=device).view(1, 3, 1, 1),
        "experts": int(getattr(cfg.backbone_config, "num_experts", 1)),
    }
    return model.to(device).eval(), info


def decode_heatmaps(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, h, w) heatmaps -> points (B, K, 2) in heatmap pixels (continuous,
    centre of cell i at i + 0.5) with the usual quarter-cell shift towards the
    higher neighbour, and confidence (B, K) = peak value in [0, 1]."""
    b, k, h, w = heatmaps.shape
    hm = heatmaps.float()
    conf, idx = hm.flatten(2).max(-1)
    y = torch.div(idx, w, rounding_mode="floor")
    x = idx % w
    flat = hm.flatten(0, 1)
    n = torch.arange(flat.shape[0], device=hm.device)
    xf, yf = x.flatten(), y.flatten()
    right = flat[n, yf, (xf + 1).clamp(max=w - 1)]
    left = flat[n, yf, (xf - 1).clamp(min=0)]
    down = flat[n, (yf + 1).clamp(max=h - 1), xf]
    up = flat[n, (yf - 1).clamp(min=0), xf]
    dx = 0.25 * torch.sign(right - left)
    dy = 0.25 * torch.sign(down - up)
    px = xf.float() + dx + 0.5
    py = yf.float() + dy + 0.5
    return torch.stack([px, py], -1).reshape(b, k, 2), conf.clamp(0, 1)


def person_roi(x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, aspect: float) -> torch.Tensor:
    """(1, 5) ROI around a box, grown to the model's aspect (w/h) and padded like ViTPose."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    w, h = (x1 - x0).clamp(min=1), (y1 - y0).clamp(min=1)
    w2 = torch.maximum(w, h * aspect)
    h2 = torch.maximum(h, w / aspect)
    return torch.stack([cx, cy, w2 * BOX_PADDING, h2 * BOX_PADDING, torch.zeros_like(cx)])[None]


def mask_box(alpha: torch.Tensor, frame_size: tuple[int, int], threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Box (x0, y0, x1, y1) in frame pixels of a mask's person pixels, and whether there were any (device, no sync)."""
    h, w = alpha.shape
    rows = (alpha > threshold).any(1)
    cols = (alpha > threshold).any(0)
    y0 = torch.argmax(rows.int())
    y1 = h - torch.argmax(rows.flip(0).int())
    x0 = torch.argmax(cols.int())
    x1 = w - torch.argmax(cols.flip(0).int())
    sx, sy = frame_size[0] / w, frame_size[1] / h
    box = torch.stack([x0 * sx, y0 * sy, x1 * sx, y1 * sy]).float()
    return box, rows.any()


def keypoint_box(points: torch.Tensor, confidence: torch.Tensor, threshold: float = 0.3) -> torch.Tensor:
    """Box of the confident keypoints (x0, y0, x1, y1); all points if none are confident."""
    ok = confidence >= threshold
    ok = torch.where(ok.any(), ok, torch.ones_like(ok))
    big = 1e9
    lo = torch.where(ok[:, None], points, torch.full_like(points, big)).amin(0)
    hi = torch.where(ok[:, None], points, torch.full_like(points, -big)).amax(0)
    return torch.cat([lo, hi])


class ViTPose(Node):
    node_type = "pose.vitpose"
    display_name = "Pose (ViTPose)"
    description = "COCO-17 keypoints from a local ViTPose checkpoint, top-down on the person box (mask, last pose or detector)."

    frame: In[Frame]
    mask: In[Mask] = In(optional=True, description="Person mask: its box is where ViTPose looks")
    keypoints: Out[Keypoints]

    class Params(NodeParams):
        checkpoint: str = Field("", description="Folder of a ViTPose checkpoint (save_pretrained layout: config.json + weights)")
        box_source: Literal["auto", "mask", "detector", "frame"] = Field("auto", description="auto = mask if connected, else last frame's keypoints while tracking, else the bundled person detector")
        min_tracking: float = Field(0.3, ge=0.0, le=1.0, description="Mean keypoint confidence below which the person counts as lost")
        dataset: int = Field(0, ge=0, le=16, description="ViTPose++ only: which dataset head to use (0 = COCO)")

    params: Params

    def open(self, ctx: NodeContext) -> None:
        super().open(ctx)
        p = self.params
        if not p.checkpoint:
            raise NodeAbsent(f"node {self.name!r}: field 'checkpoint' is empty; set it to a ViTPose checkpoint folder (see docs/pose_face.md)")
        if not Path(p.checkpoint).expanduser().exists():
            raise NodeAbsent(f"node {self.name!r}, field 'checkpoint': {p.checkpoint} does not exist")
        self.model, self.info = load_vitpose(p.checkpoint, ctx.device, ctx.dtype, f"node {self.name!r} field 'checkpoint'")
        self.tracking = HostFlag(ctx.device)
        self.last: Keypoints | None = None
        self._detector = None

    def _detector_roi(self, image: torch.Tensor) -> torch.Tensor:
        if self._detector is None:
            from muse.nodes.pose.blazepose import BlazePoseTracker

            assert self.ctx is not None
            self._detector = BlazePoseTracker(self.name, self.ctx.device, self.ctx.dtype, landmarks=False)
        roi, _ = self._detector.detect(image)
        r = roi[0, 2] / 2.5  # the detector ROI is 1.25 x the body circle's diameter
        cx, cy = roi[0, 0], roi[0, 1]
        return torch.stack([cx - 0.75 * r, cy - r, cx + 0.75 * r, cy + r])

    def _full_box(self, frame: Frame, device: torch.device) -> torch.Tensor:
        key = (frame.width, frame.height)
        if getattr(self, "_full", (None, None))[0] != key:  # built once per size: a host->device copy may sync
            self._full = (key, torch.tensor([0.0, 0.0, float(frame.width), float(frame.height)], device=device))
        return self._full[1]

    def _box(self, image: torch.Tensor, frame: Frame, mask: Mask | None) -> torch.Tensor:
        p = self.params
        source = p.box_source
        if source == "mask" and mask is None:
            raise NodeError(f"node {self.name!r}: box_source is 'mask' but the `mask` input is not connected")
        full = self._full_box(frame, image.device)
        if source == "frame":
            return full
        if mask is not None and source in ("auto", "mask"):
            box, any_person = mask_box(mask.alpha.to(image.device), frame.size)
            return torch.where(any_person, box, full)
        if source == "auto" and self.last is not None and self.tracking.is_set():
            return keypoint_box(self.last.points, self.last.confidence)
        return self._detector_roi(image)

    @torch.inference_mode()
    def process(self, frame: Frame, mask: Mask | None = None) -> dict[str, Keypoints]:
        image = frame.chw(torch.float32)
        width, height = self.info["size"]
        box = self._box(image, frame, mask)
        roi = person_roi(box[0], box[1], box[2], box[3], width / height)
        crop = R.crop(image, roi, (height, width))
        x = ((crop - self.info["mean"]) / self.info["std"]).to(self.model.dtype)
        kwargs = {}
        if self.info["experts"] > 1:  # ViTPose++ picks a dataset head
            kwargs["dataset_index"] = torch.full((1,), self.params.dataset, device=x.device, dtype=torch.long)
        heatmaps = self.model(pixel_values=x, **kwargs).heatmaps
        pts, conf = decode_heatmaps(heatmaps)
        hm_h, hm_w = heatmaps.shape[-2:]
        pts = R.to_frame(pts, roi, (float(hm_w), float(hm_h)))[0]
        conf = conf[0]
        kp = Keypoints(pts, conf, "coco17", frame.size, frame.timestamp, frame.index)
        self.last = kp
        self.tracking.publish(conf.mean() >= self.params.min_tracking)
        return {"keypoints": kp}
