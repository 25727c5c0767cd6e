"""SSD anchors and detection decoding for MediaPipe's BlazeFace/BlazePose
detectors, on the device: anchors per SsdAnchorsCalculator options, box and
keypoint decoding per TensorsToDetections, and the best detection after
weighted non-max suppression (one person or face is what the nodes track).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DetectorSpec:
    """What a MediaPipe detector graph configures around its model."""

    input_size: int
    strides: tuple[int, ...]
    num_keypoints: int
    min_scale: float = 0.1484375
    max_scale: float = 0.75
    score_clip: float = 100.0
    min_score: float = 0.5
    nms_iou: float = 0.3


# Options copied from mediapipe/modules/*/..._cpu.pbtxt (0.10.14 models).
POSE_DETECTOR = DetectorSpec(input_size=224, strides=(8, 16, 32, 32, 32), num_keypoints=4, min_score=0.5)
FACE_DETECTOR = DetectorSpec(input_size=128, strides=(8, 16, 16, 16), num_keypoints=6, min_score=0.5)


def anchors(spec: DetectorSpec) -> torch.Tensor:
    """(A, 2) anchor centres in [0, 1] (fixed anchor size 1, aspect ratio 1 plus
    the interpolated one: two anchors per layer and position)."""
    out: list[torch.Tensor] = []
    layer = 0
    strides = list(spec.strides)
    while layer < len(strides):
        per_position = 0
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            per_position += 2  # aspect ratio 1.0 + interpolated scale anchor
            last += 1
        stride = strides[layer]
        fm = -(-spec.input_size // stride)  # ceil, as the calculator does
        ys, xs = torch.meshgrid(torch.arange(fm), torch.arange(fm), indexing="ij")
        centres = torch.stack([(xs + 0.5) / fm, (ys + 0.5) / fm], dim=-1).reshape(-1, 1, 2)
        out.append(centres.expand(-1, per_position, -1).reshape(-1, 2))
        layer = last
    return torch.cat(out).float()


def decode(raw_boxes: torch.Tensor, raw_scores: torch.Tensor, anchor_xy: torch.Tensor, spec: DetectorSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one image's detector output.

    Returns boxes (A, 4) as x0, y0, x1, y1, keypoints (A, K, 2) and scores (A,),
    all normalised to the detector's input square.
    """
    s = float(spec.input_size)
    raw = raw_boxes.reshape(raw_boxes.shape[-2], -1).float()
    a = anchor_xy.to(raw.device)
    cx = raw[:, 0] / s + a[:, 0]
    cy = raw[:, 1] / s + a[:, 1]
    w = raw[:, 2] / s
    h = raw[:, 3] / s
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    kp = raw[:, 4 : 4 + 2 * spec.num_keypoints].reshape(-1, spec.num_keypoints, 2) / s + a[:, None, :]
    scores = torch.sigmoid(raw_scores.reshape(-1).float().clamp(-spec.score_clip, spec.score_clip))
    return boxes, kp, scores


def _iou(box: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    lo = torch.maximum(box[:2], boxes[:, :2])
    hi = torch.minimum(box[2:], boxes[:, 2:])
    inter = (hi - lo).clamp(min=0).prod(-1)
    area = (box[2:] - box[:2]).clamp(min=0).prod()
    areas = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(-1)
    return inter / (area + areas - inter).clamp(min=1e-9)


def best_detection(boxes: torch.Tensor, keypoints: torch.Tensor, scores: torch.Tensor, spec: DetectorSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The top detection after weighted NMS, without a host sync.

    Every candidate above `min_score` that overlaps the top-scoring one by more
    than `nms_iou` is averaged in, weighted by score (MediaPipe's WEIGHTED
    algorithm, first cluster only). Returns box (4,), keypoints (K, 2) and the
    top score (a 0-d tensor; below `min_score` means nothing was found).
    """
    # index_select with a 1-element index tensor: `t[top]` with a 0-d tensor reads `top` on the host
    top = torch.argmax(scores).reshape(1)
    top_score = scores.index_select(0, top)
    iou = _iou(boxes.index_select(0, top)[0], boxes)
    weight = torch.where((iou > spec.nms_iou) & (scores >= spec.min_score), scores, torch.zeros_like(scores))
    weight = weight.index_put((top,), top_score)  # the top one always counts
    weight = weight / weight.sum()
    box = (boxes * weight[:, None]).sum(0)
    kp = (keypoints * weight[:, None, None]).sum(0)
    return box, kp, top_score[0]
