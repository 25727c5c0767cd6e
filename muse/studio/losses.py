"""Training losses for the student segmenter: OHEM (online hard example mining
on pixels) with a boundary-weighted term, plus a soft IoU term that matches
the metric the student is judged on."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def boundary_band(target: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """1 on pixels within `radius` of the mask edge, 0 elsewhere; target (B,1,H,W) in [0,1]."""
    hard = (target > 0.5).float()
    k = 2 * radius + 1
    dilated = F.max_pool2d(hard, k, 1, radius)
    eroded = 1.0 - F.max_pool2d(1.0 - hard, k, 1, radius)
    return dilated - eroded


def ohem_loss(logits: torch.Tensor, target: torch.Tensor, keep_ratio: float = 0.25, boundary_weight: float = 4.0, min_kept: int = 256) -> torch.Tensor:
    """Mean of the hardest `keep_ratio` of per-pixel BCE losses per image, each pixel
    weighted by 1 + boundary_weight near the mask edge (hair, shoulders, fingers)."""
    per_px = F.binary_cross_entropy_with_logits(logits.float(), target.float(), reduction="none")
    if boundary_weight:
        per_px = per_px * (1.0 + boundary_weight * boundary_band(target))
    flat = per_px.flatten(1)
    k = min(flat.shape[1], max(min_kept, int(flat.shape[1] * keep_ratio)))
    hardest, _ = flat.topk(k, dim=1, sorted=False)
    return hardest.mean()


def soft_iou_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    p = torch.sigmoid(logits.float()).flatten(1)
    t = target.float().flatten(1)
    inter = (p * t).sum(1)
    union = (p + t - p * t).sum(1)
    return (1.0 - (inter + eps) / (union + eps)).mean()


def student_loss(logits: torch.Tensor, target: torch.Tensor, keep_ratio: float = 0.25, boundary_weight: float = 4.0) -> torch.Tensor:
    return ohem_loss(logits, target, keep_ratio, boundary_weight) + 0.5 * soft_iou_loss(logits, target)


@torch.no_grad()
def batch_iou(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """IoU per image of logits > 0 against target > 0.5 (two empty masks score 1)."""
    p = (logits > 0).flatten(1)
    t = (target > 0.5).flatten(1)
    inter = (p & t).sum(1).float()
    union = (p | t).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
